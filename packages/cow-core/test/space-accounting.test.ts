import { mkdtemp, rm } from 'node:fs/promises';
import { randomInt } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FORMAT_VERSION, Volume, type SpaceReport } from '../src/index.js';
import { withDb } from './meta-db.js';
import { DATA_MODES } from './modes.js';
import { mulberry32 } from './prng.js';
import { cowvol } from '../../../test/helpers.js';

/**
 * Space accounting kept by the transactions (docs/ARCHITECTURE.md §15.3):
 * `spaceUsage` reads counters, and must report exactly what a recount of
 * the persisted maps gives — owned blocks per snapshot, freeable blocks
 * (all of them for the oldest, else those its older neighbour maps too),
 * the store's owned total — after any mix of COWs, creates and deletes,
 * after an upgrade from format version 2, and after `check --repair`.
 * Knobs: COWVOL_SPACE_SEED (replay), COWVOL_SPACE_STEPS (default 60).
 */
const BS = 4096;
const BLOCKS = 48;
const SEED = process.env.COWVOL_SPACE_SEED !== undefined ? Number(process.env.COWVOL_SPACE_SEED) >>> 0 : randomInt(2 ** 32);
const STEPS = Number(process.env.COWVOL_SPACE_STEPS ?? 60);
const REPLAY = `seed ${SEED} (replay: COWVOL_SPACE_SEED=${SEED})`;

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

interface Expected {
  snapshots: Array<{ id: number; name: string; ownedBlocks: number; freeableBlocks: number }>;
  ownedBlocks: number;
}

/** The space report recounted from the persisted maps, the way it was computed before it was kept (the volume closed). */
async function recount(vol: string): Promise<Expected> {
  return withDb(vol, async (db) => {
    const snaps: Array<{ id: number; name: string; state: string }> = [];
    const maps = new Map<number, Set<number>>();
    for await (const key of db.keys({ gte: 'map:', lt: 'map;' })) {
      const id = Number.parseInt(key.slice(4, 12), 16);
      let set = maps.get(id);
      if (!set) maps.set(id, (set = new Set()));
      set.add(Number.parseInt(key.slice(13), 16));
    }
    for await (const [, value] of db.iterator({ gte: 'snap:', lt: 'snap;' })) {
      const rec = packr.unpack(value) as { id: number; name: string; state: string };
      snaps.push(rec);
    }
    snaps.sort((a, b) => a.id - b.id);
    const out: Expected = { snapshots: [], ownedBlocks: 0 };
    snaps.forEach((s, i) => {
      const map = maps.get(s.id) ?? new Set<number>();
      out.ownedBlocks += map.size;
      if (s.state !== 'live') return;
      const older = i > 0 ? (maps.get(snaps[i - 1]!.id) ?? new Set<number>()) : undefined;
      const freeable = older ? [...map].filter((b) => older.has(b)).length : map.size;
      out.snapshots.push({ id: s.id, name: s.name, ownedBlocks: map.size, freeableBlocks: freeable });
    });
    return out;
  });
}

function reported(space: SpaceReport): Expected {
  return {
    snapshots: space.snapshots.map((s) => {
      expect(s.ownedBytes).toBe(s.ownedBlocks * BS);
      expect(s.freeableBytes).toBe(s.freeableBlocks * BS);
      return { id: s.id, name: s.name, ownedBlocks: s.ownedBlocks, freeableBlocks: s.freeableBlocks };
    }),
    ownedBlocks: space.store.ownedBlocks,
  };
}

/** A workload of COWs, creates and deletes (any snapshot: oldest, middle, newest, several at once), seeded. */
async function churn(v: Volume, r: () => number, steps: number, names: { next: number; live: string[] }): Promise<void> {
  for (let step = 0; step < steps; step++) {
    const x = r();
    if (x < 0.55) {
      const first = Math.floor(r() * BLOCKS);
      const count = 1 + Math.floor(r() * Math.min(8, BLOCKS - first));
      await v.write(first * BS, Buffer.alloc(count * BS, Math.floor(r() * 256)));
    } else if (x < 0.78 || names.live.length < 2) {
      const name = `s${names.next++}`;
      await v.createSnapshot(name);
      names.live.push(name);
    } else if (x < 0.93) {
      const [name] = names.live.splice(Math.floor(r() * names.live.length), 1);
      await v.deleteSnapshot(name!);
    } else {
      const a = names.live.splice(Math.floor(r() * names.live.length), 1);
      const b = names.live.splice(Math.floor(r() * names.live.length), 1);
      await v.deleteSnapshots([...a, ...b]);
    }
  }
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-space-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe.each(DATA_MODES)('space accounting kept by the transactions, data mode %s', (dataMode) => {
  it(`spaceUsage equals a recount of the persisted maps after every round of COWs, creates and deletes (${REPLAY})`, async () => {
    const r = mulberry32(SEED);
    const vol = join(dir, `churn-${dataMode}.img`);
    let v = await Volume.create(vol, { dataMode, sizeBytes: BLOCKS * BS, blockSizeBytes: BS });
    const names = { next: 1, live: [] as string[] };
    try {
      for (let round = 0; round * 10 < STEPS; round++) {
        await churn(v, r, 10, names);
        const live = reported(await v.spaceUsage());
        expect((await v.checkConsistency()).problems, `round ${round}, ${REPLAY}`).toEqual([]);
        await v.close();
        const expected = await recount(vol);
        expect(live, `round ${round}, ${REPLAY}`).toEqual(expected);
        v = await Volume.open(vol);
        expect(reported(await v.spaceUsage()), `round ${round} after reopen, ${REPLAY}`).toEqual(expected);
      }
      expect((await v.check()).status, REPLAY).toBe('clean');
    } finally {
      await v.close();
    }
  });
});

/** Turns a closed volume into what format version 2 wrote: no shared counts, version 2 in the volume record. */
async function makeVersion2(vol: string): Promise<void> {
  await withDb(vol, async (db) => {
    const sb = packr.unpack(await db.get('sb')) as Record<string, unknown>;
    await db.put('sb', packr.pack({ ...sb, formatVersion: 2 }));
    for await (const [key, value] of db.iterator({ gte: 'snap:', lt: 'snap;' })) {
      const rec = packr.unpack(value) as Record<string, unknown>;
      delete rec.sharedBlocks;
      await db.put(key, packr.pack(rec));
    }
  });
}

async function snapshotRecords(vol: string): Promise<Array<Record<string, unknown>>> {
  return withDb(vol, async (db) => {
    const out: Array<Record<string, unknown>> = [];
    for await (const [, value] of db.iterator({ gte: 'snap:', lt: 'snap;' })) out.push(packr.unpack(value) as Record<string, unknown>);
    return out;
  });
}

/** Three snapshots over overlapping COWs: s2 and s3 share blocks with their older neighbours. */
/** Marks the snapshot record `key` of the closed volume `vol` as being deleted, nothing handed over yet: what a crash right after the delete's mark leaves. */
async function markDeleting(vol: string, key: string): Promise<void> {
  await withDb(vol, async (db) => {
    const rec = packr.unpack(await db.get(key)) as Record<string, unknown>;
    await db.put(key, packr.pack({ ...rec, state: 'deleting' }));
  });
}

async function overlapping(vol: string): Promise<void> {
  const v = await Volume.create(vol, { sizeBytes: BLOCKS * BS, blockSizeBytes: BS });
  try {
    await v.createSnapshot('s1');
    await v.write(0, Buffer.alloc(16 * BS, 1));
    await v.createSnapshot('s2');
    await v.write(8 * BS, Buffer.alloc(16 * BS, 2));
    await v.createSnapshot('s3');
    await v.write(4 * BS, Buffer.alloc(8 * BS, 3));
  } finally {
    await v.close();
  }
}

describe('format version 2 volumes', () => {
  it('open read-only with counts made in memory, then upgrade at the first writable open (version 3, counts persisted, check clean)', async () => {
    const vol = join(dir, 'v2.img');
    await overlapping(vol);
    const expected = await recount(vol);
    expect(expected.snapshots.map((s) => s.freeableBlocks)).toEqual([16, 8, 4]); // s1 oldest: all; s2 ∩ s1 = 8..15; s3 ∩ s2 = 8..11
    await makeVersion2(vol);
    expect((await snapshotRecords(vol)).some((rec) => rec.sharedBlocks !== undefined)).toBe(false);

    const ro = await Volume.open(vol, { readOnly: true });
    try {
      expect((await ro.info()).formatVersion).toBe(2);
      expect(reported(await ro.spaceUsage())).toEqual(expected);
      expect((await ro.checkConsistency()).problems).toEqual([]);
    } finally {
      await ro.close();
    }
    const v = await Volume.open(vol);
    try {
      expect((await v.info()).formatVersion).toBe(FORMAT_VERSION);
      expect(reported(await v.spaceUsage())).toEqual(expected);
      expect((await v.check()).status).toBe('clean');
    } finally {
      await v.close();
    }
    expect((await snapshotRecords(vol)).map((rec) => rec.sharedBlocks ?? 0)).toEqual([0, 8, 4]);
  });

  it('a version 2 volume with a delete it did not finish: counted first, then the delete finishes with the counters right', async () => {
    const vol = join(dir, 'v2-deleting.img');
    await overlapping(vol);
    await makeVersion2(vol);
    // s2 marked deleting, nothing handed over yet: what a crash right after the mark leaves.
    await markDeleting(vol, 'snap:00000002');
    const v = await Volume.open(vol);
    try {
      expect((await v.listSnapshots()).map((s) => s.name)).toEqual(['s1', 's3']);
      expect((await v.checkConsistency()).problems).toEqual([]);
    } finally {
      await v.close();
    }
    const expected = await recount(vol);
    // s2's 16 blocks: 8..15 freed (s1 maps them), 16..23 handed over to s1; s3 (4..11) now shares 4..11 with s1 (0..23).
    expect(expected.snapshots.map((s) => [s.name, s.ownedBlocks, s.freeableBlocks])).toEqual([
      ['s1', 24, 24],
      ['s3', 8, 8],
    ]);
    const again = await Volume.open(vol);
    try {
      expect(reported(await again.spaceUsage())).toEqual(expected);
      expect((await again.check()).status).toBe('clean');
    } finally {
      await again.close();
    }
  });
});

describe('check and the kept counts', () => {
  it('a wrong shared count is a shared-count-mismatch; --repair sets it to the recount and the report is right again', async () => {
    const vol = join(dir, 'damaged.img');
    await overlapping(vol);
    const expected = await recount(vol);
    await withDb(vol, async (db) => {
      const key = 'snap:00000003';
      const rec = packr.unpack(await db.get(key)) as Record<string, unknown>;
      await db.put(key, packr.pack({ ...rec, sharedBlocks: 7 }));
    });
    const v = await Volume.open(vol);
    try {
      const report = await v.check();
      expect(report.status).toBe('corrupt');
      expect(report.corruptions.map((c) => c.kind)).toEqual(['shared-count-mismatch']);
      expect(report.corruptions[0]!.message).toContain('counts 7 blocks shared');
      const repaired = await v.check({ repair: true });
      expect(repaired).toMatchObject({ status: 'clean', repairedCounts: 1, corruptions: [] });
      expect(reported(await v.spaceUsage())).toEqual(expected);
      expect((await v.checkConsistency()).problems).toEqual([]);
    } finally {
      await v.close();
    }
    const reopened = await Volume.open(vol);
    try {
      expect((await reopened.check()).status).toBe('clean');
      expect(reported(await reopened.spaceUsage())).toEqual(expected);
    } finally {
      await reopened.close();
    }
  });
});

describe('cowvol check and the kept counts', () => {
  it('exits 2 naming shared-count-mismatch; --repair recounts, says so, and exits 0', async () => {
    const vol = join(dir, 'damaged-cli.img');
    await overlapping(vol);
    await withDb(vol, async (db) => {
      const key = 'snap:00000002';
      const rec = packr.unpack(await db.get(key)) as Record<string, unknown>;
      await db.put(key, packr.pack({ ...rec, sharedBlocks: 1 }));
    });
    const damaged = await cowvol(['check', vol, '--json']);
    expect(damaged.code, damaged.stderr).toBe(2);
    expect(JSON.parse(damaged.stdout.toString('utf8'))).toMatchObject({ status: 'corrupt', corruptions: [{ kind: 'shared-count-mismatch' }], repairedCounts: 0 });
    const repaired = await cowvol(['check', vol, '--repair']);
    expect(repaired.code, repaired.stderr).toBe(0);
    expect(repaired.stdout.toString('utf8')).toContain('recounted the shared blocks of 1 snapshots');
    const list = await cowvol(['snapshot', 'list', vol, '--json']);
    const rows = (JSON.parse(list.stdout.toString('utf8')) as { snapshots: Array<{ name: string; freeableBlocks: number }> }).snapshots;
    expect(rows.map((r) => [r.name, r.freeableBlocks])).toEqual([
      ['s1', 16],
      ['s2', 8],
      ['s3', 4],
    ]);
  });
});

describe('a delete plan with a delete left unfinished', () => {
  it('counts the hand-over the next writable open finishes first: the dry run frees exactly what the delete then frees', async () => {
    const vol = join(dir, 'pending-delete.img');
    await overlapping(vol);
    // s2 marked deleting, nothing handed over yet: what a crash right after the mark leaves.
    await markDeleting(vol, 'snap:00000002');
    // A read-only open leaves the delete unfinished, as `--dry-run` does.
    const ro = await Volume.openForReading(vol);
    let planned: { s1: number; s3: number; both: number };
    try {
      expect((await ro.listSnapshots()).map((s) => s.name)).toEqual(['s1', 's3']);
      planned = {
        s1: (await ro.planDelete(['s1'])).freedBlocks,
        s3: (await ro.planDelete(['s3'])).freedBlocks,
        both: (await ro.planDelete(['s1', 's3'])).freedBlocks,
      };
    } finally {
      await ro.close();
    }
    // s2's blocks 16..23 go to s1 first (it maps 0..15): deleting s1 (the oldest) frees those too.
    expect(planned).toEqual({ s1: 24, s3: 8, both: 32 });
    for (const [names, want] of [
      [['s1'], planned.s1],
      [['s3'], planned.s3],
      [['s1', 's3'], planned.both],
    ] as const) {
      const copy = join(dir, `pending-delete-${names.join('-')}.img`);
      await overlapping(copy);
      await markDeleting(copy, 'snap:00000002');
      const v = await Volume.open(copy); // finishes s2's delete first
      try {
        expect((await v.deleteSnapshots([...names])).freedBlocks, names.join(',')).toBe(want);
      } finally {
        await v.close();
      }
    }
  });
});
