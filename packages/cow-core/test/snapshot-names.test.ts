import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SCHEMA_VERSION, type SnapshotRecord } from '../src/metadata.js';
import { SnapshotNames, catalogIndexAfter, catalogIndexOf } from '../src/snapshot-names.js';
import { Volume, restoreSnapshot } from '../src/index.js';

/**
 * The catalog's name index (snapshot-names.ts, docs/ARCHITECTURE.md §4.4):
 * lookups by name agree with the catalog after every change that touches
 * it — create, rename, delete (a name freed, taken again), restore's safety
 * snapshot, reopen — as `checkConsistency` (which compares the index with
 * the catalog) and the lookups themselves show; a disagreement is found;
 * the catalog's id searches agree with a linear scan; a page of the list
 * walks every live snapshot exactly once.
 */
const BS = 4096;
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-names-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The names listed, and a check that every one resolves by name (a read) and the index agrees with the catalog. */
async function namesOf(v: Volume): Promise<string[]> {
  const names = (await v.listSnapshots()).map((s) => s.name);
  for (const name of names) expect((await v.snapshotInfo(name)).snapshot.name).toBe(name);
  expect((await v.checkConsistency()).problems).toEqual([]);
  return names;
}

describe('snapshot name index', () => {
  it('agrees with the catalog across create, rename, delete, restore and reopen', async () => {
    const path = join(dir, 'v.img');
    let v = await Volume.create(path, { sizeBytes: 16 * BS, blockSizeBytes: BS });
    try {
      await v.write(0, Buffer.alloc(BS, 1));
      for (const name of ['a', 'b', 'c']) await v.createSnapshot(name);
      await v.write(0, Buffer.alloc(BS, 2));
      expect(await namesOf(v)).toEqual(['a', 'b', 'c']);

      await v.renameSnapshot('b', 'b2');
      await expect(v.snapshotInfo('b')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
      await expect(v.readSnapshot('b', 0, BS)).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
      await expect(v.renameSnapshot('c', 'a')).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
      await expect(v.createSnapshot('b2')).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
      await v.createSnapshot('b'); // the old name is free again
      expect(await namesOf(v)).toEqual(['a', 'b2', 'c', 'b']);

      await v.deleteSnapshots(['a', 'c']);
      await expect(v.snapshotInfo('a')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
      await v.createSnapshot('a'); // a deleted name is free again
      await v.renameSnapshot('a', 'c');
      expect(await namesOf(v)).toEqual(['b2', 'b', 'c']);

      const restored = await restoreSnapshot(v, 'b2', { safetyName: 'safety' });
      expect(restored.safetySnapshot).toBe('safety');
      expect((await v.readSnapshot('safety', 0, BS)).equals(Buffer.alloc(BS, 2))).toBe(true);
      expect(await namesOf(v)).toEqual(['b2', 'b', 'c', 'safety']);
    } finally {
      await v.close();
    }
    v = await Volume.open(path);
    try {
      expect(await namesOf(v)).toEqual(['b2', 'b', 'c', 'safety']);
      await expect(v.createSnapshot('c')).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
      await v.deleteSnapshot('b');
      await v.renameSnapshot('c', 'b');
      expect(await namesOf(v)).toEqual(['b2', 'b', 'safety']);
      expect((await v.readSnapshot('b2', 0, BS)).equals(Buffer.alloc(BS, 1))).toBe(true);
    } finally {
      await v.close();
    }
  });

  it('finds a catalog changed behind its back (the check can fail)', () => {
    const rec = (id: number, name: string, state: 'live' | 'deleting' = 'live'): SnapshotRecord => ({ v: SCHEMA_VERSION, id, name, createdAt: '2026-01-01T00:00:00.000Z', state, ownedBlocks: 0 });
    const catalog = [rec(1, 'x', 'deleting'), rec(2, 'x'), rec(3, 'y')];
    const names = SnapshotNames.of(catalog);
    expect(names.problems(catalog)).toEqual([]);
    expect(names.findLive('x')).toBe(catalog[1]);
    expect(names.taken('x')).toBe(true);
    catalog[2]!.name = 'z'; // renamed without telling the index
    expect(names.problems(catalog).length).toBeGreaterThan(0);
    catalog[2]!.name = 'y';
    catalog.push(rec(4, 'w')); // added without telling it
    expect(names.problems(catalog).length).toBeGreaterThan(0);
    names.added(catalog[3]!);
    expect(names.problems(catalog)).toEqual([]);
    catalog.splice(0, 1); // dropped without telling it
    expect(names.problems(catalog).length).toBeGreaterThan(0);
    expect(() => SnapshotNames.of([rec(1, 'x'), rec(2, 'x')])).toThrow(expect.objectContaining({ code: 'CORRUPT_METADATA' }) as Error);
  });

  it('catalogIndexOf and catalogIndexAfter agree with a linear scan', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: 200 }), { maxLength: 60 }), fc.integer({ min: 0, max: 210 }), (ids, probe) => {
        const catalog = [...ids].sort((a, b) => a - b).map((id): SnapshotRecord => ({ v: SCHEMA_VERSION, id, name: `s${id}`, createdAt: '', state: 'live', ownedBlocks: 0 }));
        expect(catalogIndexOf(catalog, probe)).toBe(catalog.findIndex((r) => r.id === probe));
        const after = catalog.findIndex((r) => r.id > probe);
        expect(catalogIndexAfter(catalog, probe)).toBe(after < 0 ? catalog.length : after);
      }),
    );
  });

  it('pages of the list walk every live snapshot once, oldest first, whatever the page size', async () => {
    const v = await Volume.create(join(dir, 'p.img'), { sizeBytes: 16 * BS, blockSizeBytes: BS });
    try {
      for (let i = 0; i < 40; i++) await v.createSnapshot(`s${i}`);
      await v.deleteSnapshots(['s0', 's7', 's8', 's39']);
      await v.write(0, Buffer.alloc(BS, 3)); // the newest owns a block, its older neighbour shares none
      const all = (await v.listSnapshots()).map((s) => s.id);
      const rows = (await v.spaceUsage()).snapshots;
      for (const size of [1, 3, 36, 100]) {
        const seen: number[] = [];
        const seenRows: typeof rows = [];
        let pages = 0;
        for (let after: number | null = 0; after !== null; pages++) {
          const page = await v.listSnapshotsPage(after, (_info, taken) => taken < size);
          expect(page.space.snapshots.map((s) => s.id)).toEqual(page.snapshots.map((s) => s.id));
          seen.push(...page.snapshots.map((s) => s.id));
          seenRows.push(...page.space.snapshots);
          after = page.nextAfterId;
        }
        expect(seen).toEqual(all);
        expect(seenRows).toEqual(rows);
        expect(pages).toBe(Math.max(1, Math.ceil(all.length / size)));
      }
      await expect(v.listSnapshotsPage(-1)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    } finally {
      await v.close();
    }
  });
});
