import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hasCode } from '@cowvol/base';
import { Volume, selectSnapshots, type DeleteSelection, type SelectableSnapshot } from '../src/index.js';
import { mulberry32 } from './prng.js';

/**
 * Snapshot policy in the core (snapshot-policy.ts, docs/ARCHITECTURE.md
 * §15.4): the delete filter's choice against a reference written from the
 * README's words, and the two races the core call closes — a hold, create
 * or label change running while a delete by filter chooses, and two label
 * changes of one snapshot at once (a read-then-set loses one of them).
 */
const BS = 4096;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-policy-'));
  path = join(dir, 'vol.img');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The README's rule, spelled out independently: match labels, keep the newest n of those, then only those older than the age; held ones are reported, not chosen. */
function reference(snapshots: SelectableSnapshot[], s: DeleteSelection, nowMs: number): { chosen: string[]; skippedHeld: string[] } {
  const matching = snapshots.filter((x) => (s.labels ?? []).every(([k, v]) => x.labels?.[k] === v));
  const kept = new Set(s.keepNewest === undefined ? [] : matching.slice(Math.max(0, matching.length - s.keepNewest)).map((x) => x.name));
  const chosen: string[] = [];
  const skippedHeld: string[] = [];
  for (const x of matching) {
    if (kept.has(x.name)) continue;
    if (s.olderThanMs !== undefined && !(Date.parse(x.createdAt) < nowMs - s.olderThanMs)) continue;
    (x.held === true ? skippedHeld : chosen).push(x.name);
  }
  return { chosen, skippedHeld };
}

describe('selectSnapshots', () => {
  it('chooses as the reference rule for generated catalogs and filters (fast-check)', () => {
    const snapshot = fc.record({
      ageMs: fc.integer({ min: 0, max: 10_000 }),
      labels: fc.dictionary(fc.constantFrom('kind', 'host'), fc.constantFrom('a', 'b')),
      held: fc.boolean(),
    });
    const selection = fc.record(
      {
        olderThanMs: fc.integer({ min: 0, max: 10_000 }),
        keepNewest: fc.integer({ min: 0, max: 8 }),
        labels: fc.array(fc.tuple(fc.constantFrom('kind', 'host'), fc.constantFrom('a', 'b')), { maxLength: 2 }),
      },
      { requiredKeys: [] },
    );
    fc.assert(
      fc.property(fc.array(snapshot, { maxLength: 12 }), selection, (list, sel) => {
        const now = 1_000_000_000_000;
        // Oldest first, as the catalog is: ages decrease along the list.
        const ages = list.map((x) => x.ageMs).sort((a, b) => b - a);
        const snapshots = list.map((x, i) => ({ name: `s${i}`, createdAt: new Date(now - ages[i]!).toISOString(), labels: x.labels, held: x.held }));
        expect(selectSnapshots(snapshots, sel, now)).toEqual(reference(snapshots, sel, now));
      }),
    );
  });

  it('a label key the snapshot does not carry never matches, even one an object inherits', () => {
    const snapshots = [{ name: 'a', createdAt: new Date(0).toISOString(), labels: {} }];
    expect(selectSnapshots(snapshots, { keepNewest: 0, labels: [['constructor', '']] }, Date.now()).chosen).toEqual([]);
    expect(selectSnapshots(snapshots, { keepNewest: 0, labels: [['toString', 'x']] }, Date.now()).chosen).toEqual([]);
  });
});

describe('Volume.deleteSelected and planDeleteSelected', () => {
  it('plans what it then deletes; held ones are skipped, never refused', async () => {
    const v = await Volume.create(path, { sizeBytes: 16 * BS });
    try {
      for (const [i, name] of ['a', 'b', 'c', 'd'].entries()) {
        await v.write(0, Buffer.alloc(BS, i + 1));
        await v.createSnapshot(name, { labels: { kind: name === 'd' ? 'weekly' : 'nightly' } });
      }
      await v.holdSnapshot('b');
      const selection: DeleteSelection = { keepNewest: 1, labels: [['kind', 'nightly']] };
      const plan = await v.planDeleteSelected(selection);
      expect([plan.snapshots.map((s) => s.name), plan.skippedHeld]).toEqual([['a'], ['b']]);
      const done = await v.deleteSelected(selection);
      expect([done.deleted.map((d) => d.name), done.skippedHeld, done.freedBlocks]).toEqual([['a'], ['b'], plan.freedBlocks]);
      expect((await v.listSnapshots()).map((s) => s.name)).toEqual(['b', 'c', 'd']);
      // Nothing chosen: nothing deleted, no error.
      expect(await v.deleteSelected({ olderThanMs: 3_600_000 })).toMatchObject({ deleted: [], skippedHeld: [] });
    } finally {
      await v.close();
    }
  });

  it('refuses a selection without --older-than or --keep-newest, and bad numbers or labels', async () => {
    const v = await Volume.create(path, { sizeBytes: 16 * BS });
    try {
      const codeOf = (p: Promise<unknown>): Promise<string> =>
        p.then(
          () => 'ACCEPTED',
          (err: unknown) => (hasCode(err, 'INVALID_ARGUMENT') ? 'INVALID_ARGUMENT' : hasCode(err, 'INVALID_LABEL') ? 'INVALID_LABEL' : String(err)),
        );
      expect(await codeOf(v.deleteSelected({ labels: [['kind', 'x']] }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(v.deleteSelected({ keepNewest: -1 }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(v.planDeleteSelected({ olderThanMs: Number.NaN }))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(v.deleteSelected({ keepNewest: 0, labels: [['bad key', 'x']] }))).toBe('INVALID_LABEL');
    } finally {
      await v.close();
    }
  });

  const ROUNDS = Number(process.env.COWVOL_POLICY_ROUNDS ?? 12);
  it(`a hold, a create and a label change racing a delete by filter: the choice is one consistent view (${ROUNDS} rounds)`, async () => {
    const seed = Number(process.env.COWVOL_SEED ?? Date.now() % 1_000_000);
    console.log(`snapshot-policy race seed ${seed} (COWVOL_SEED to repeat)`);
    const rand = mulberry32(seed);
    const v = await Volume.create(path, { sizeBytes: 64 * BS });
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const where = `seed ${seed} round ${round}`;
        const names = Array.from({ length: 5 }, (_, i) => `r${round}-${i}`);
        for (const [i, name] of names.entries()) {
          await v.write(((round * 5 + i) % 64) * BS, Buffer.alloc(BS, i + 1));
          await v.createSnapshot(name, { labels: { round: String(round) } });
        }
        const target = names[Math.floor(rand() * names.length)]!;
        const relabel = names[Math.floor(rand() * names.length)]!;
        const late = `r${round}-late`;
        // Started in a seeded order around the delete: each is queued behind or ahead of its freeze.
        let hold: Promise<'held' | 'gone'> | undefined;
        let create: Promise<unknown> | undefined;
        let relabelled: Promise<unknown> | undefined;
        const starts = [
          () =>
            (hold = v.holdSnapshot(target).then(
              () => 'held' as const,
              (err: unknown) => {
                if (hasCode(err, 'SNAPSHOT_NOT_FOUND')) return 'gone' as const;
                throw err;
              },
            )),
          () => (create = v.createSnapshot(late, { labels: { round: String(round) } })),
          () =>
            (relabelled = v.changeSnapshotLabels(relabel, { remove: ['round'] }).catch((err: unknown) => {
              if (!hasCode(err, 'SNAPSHOT_NOT_FOUND')) throw err;
            })),
        ];
        let deleting: Promise<{ deleted: Array<{ name: string }>; skippedHeld: string[] }> | undefined;
        const at = Math.floor(rand() * (starts.length + 1));
        for (const [i, start] of starts.entries()) {
          if (i === at) deleting = v.deleteSelected({ keepNewest: 0, labels: [['round', String(round)]] });
          void start();
        }
        deleting ??= v.deleteSelected({ keepNewest: 0, labels: [['round', String(round)]] });
        const [result, held] = await Promise.all([deleting, hold, create, relabelled]);
        const left = new Set((await v.listSnapshots()).map((s) => s.name));
        const deleted = result.deleted.map((d) => d.name);
        for (const name of deleted) expect(left.has(name), `${where}: ${name} deleted and still listed`).toBe(false);
        for (const name of result.skippedHeld) expect(left.has(name), `${where}: skipped ${name} not listed`).toBe(true);
        // The hold either came first (the snapshot is skipped, held) or found it deleted; never a SNAPSHOT_HELD refusal.
        if (held === 'held') expect(deleted.includes(target), `${where}: held ${target} deleted`).toBe(false);
        else expect(deleted, where).toContain(target);
        // Every snapshot of the round still labelled is either deleted, skipped held, or was created or labelled after the choice.
        for (const s of await v.listSnapshots()) {
          if (s.labels.round !== String(round) || s.held) continue;
          expect(s.name, `${where}: ${s.name} matched, was not held, and was neither deleted nor created after the choice`).toBe(late);
        }
        for (const s of await v.listSnapshots()) if (s.held) await v.holdSnapshot(s.name, false);
        await v.deleteSelected({ keepNewest: 0 });
      }
    } finally {
      await v.close();
    }
  }, 120_000);
});

describe('Volume.changeSnapshotLabels', () => {
  it('concurrent changes of one snapshot all land (no lost update); removals first, then the keys set', async () => {
    const v = await Volume.create(path, { sizeBytes: 16 * BS });
    try {
      await v.createSnapshot('s', { labels: { keep: 'yes', old: 'x' } });
      const keys = Array.from({ length: 16 }, (_, i) => `k${i}`);
      await Promise.all(keys.map((k) => v.changeSnapshotLabels('s', { set: { [k]: k } })));
      const [s] = await v.listSnapshots();
      expect(Object.keys(s!.labels).sort()).toEqual([...keys, 'keep', 'old'].sort());
      expect((await v.changeSnapshotLabels('s', { set: { old: 'y' }, remove: ['old', ...keys] })).labels).toEqual({ keep: 'yes', old: 'y' });
      expect((await v.changeSnapshotLabels('s', { remove: ['keep', 'old', 'absent'] })).labels).toEqual({});
    } finally {
      await v.close();
    }
  });

  it('SNAPSHOT_NOT_FOUND for a missing snapshot; INVALID_LABEL (nothing changed) for a result with too many labels or a bad key', async () => {
    const v = await Volume.create(path, { sizeBytes: 16 * BS });
    try {
      await v.createSnapshot('s', { labels: { a: '1' } });
      await expect(v.changeSnapshotLabels('nope', { set: { a: '1' } })).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
      const many = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`m${i}`, 'v']));
      await expect(v.changeSnapshotLabels('s', { set: many })).rejects.toMatchObject({ code: 'INVALID_LABEL' });
      await expect(v.changeSnapshotLabels('s', { set: { 'bad key': 'v' } })).rejects.toMatchObject({ code: 'INVALID_LABEL' });
      // A key to remove is a key too: `--remove a new=2` takes `new=2` as a second key, which must not remove `a` quietly and set nothing.
      for (const remove of [['a', 'new=2'], ['bad key!'], ['__proto__'], ['']]) {
        await expect(v.changeSnapshotLabels('s', { set: { b: '2' }, remove }), JSON.stringify(remove)).rejects.toMatchObject({ code: 'INVALID_LABEL' });
      }
      expect((await v.listSnapshots())[0]!.labels).toEqual({ a: '1' });
      // 31 new and one removed: 32, the limit, accepted.
      expect(Object.keys((await v.changeSnapshotLabels('s', { set: Object.fromEntries(Object.entries(many).slice(0, 32)), remove: ['a'] })).labels)).toHaveLength(32);
    } finally {
      await v.close();
    }
  });
});

describe('Volume.holdSnapshots', () => {
  it('all or none: a missing name changes nothing; the holds that change go in one transaction; idempotent', async () => {
    const v = await Volume.create(path, { sizeBytes: 16 * BS });
    try {
      await v.createSnapshot('a');
      await v.createSnapshot('b');
      await expect(v.holdSnapshots(['a', 'nope', 'b'])).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
      expect((await v.listSnapshots()).map((s) => s.held)).toEqual([false, false]);
      const commits = (await v.info()).journal.commits;
      expect((await v.holdSnapshots(['b', 'a', 'b'])).map((s) => [s.name, s.held])).toEqual([
        ['b', true],
        ['a', true],
        ['b', true],
      ]);
      expect((await v.info()).journal.commits).toBe(commits + 1);
      await v.holdSnapshots(['a', 'b']);
      expect((await v.info()).journal.commits).toBe(commits + 1);
      await v.holdSnapshots(['a'], false);
      expect((await v.listSnapshots()).map((s) => s.held)).toEqual([false, true]);
    } finally {
      await v.close();
    }
  });
});
