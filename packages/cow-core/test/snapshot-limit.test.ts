import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_SNAPSHOTS, Volume, restoreSnapshot } from '../src/index.js';

/**
 * The catalog bound (MAX_SNAPSHOTS, docs/ARCHITECTURE.md §16): a volume
 * holding the most snapshots refuses another with SNAPSHOT_LIMIT and changes
 * nothing — not the catalog, not the live volume, not a restore that would
 * need a safety snapshot — and a delete makes room again. The volume lives on
 * /dev/shm when there is one (a real tmpfs file system: the thousands of
 * commits cost no disk flushes), else in the temporary folder.
 */
const BS = 4096;
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'cowvol-limit-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('snapshot limit', () => {
  it(`a volume holding ${MAX_SNAPSHOTS} snapshots refuses another (SNAPSHOT_LIMIT) and a restore that needs a safety snapshot, changing nothing; a delete makes room`, async () => {
    const v = await Volume.create(join(dir, 'v.img'), { sizeBytes: 16 * BS, blockSizeBytes: BS, journalSizeBytes: 1024 * 1024 });
    try {
      await v.write(0, Buffer.alloc(BS, 1));
      for (let i = 0; i < MAX_SNAPSHOTS; i++) {
        await v.createSnapshot(`s${i}`);
        if (i === 0) await v.write(0, Buffer.alloc(BS, 2)); // s0 differs from live: a restore of it would change live
      }
      const before = (await v.listSnapshots()).map((s) => s.name);
      expect(before).toHaveLength(MAX_SNAPSHOTS);

      await expect(v.createSnapshot('one-too-many')).rejects.toMatchObject({ code: 'SNAPSHOT_LIMIT' });
      await expect(restoreSnapshot(v, 's0')).rejects.toMatchObject({ code: 'SNAPSHOT_LIMIT' });
      expect((await v.listSnapshots()).map((s) => s.name)).toEqual(before);
      expect((await v.read(0, BS)).equals(Buffer.alloc(BS, 2)), 'live untouched by the refused restore').toBe(true);

      await v.deleteSnapshots(['s5']);
      await v.createSnapshot('room');
      expect(await v.listSnapshots()).toHaveLength(MAX_SNAPSHOTS);
      expect((await v.readSnapshot('s0', 0, BS)).equals(Buffer.alloc(BS, 1))).toBe(true);
    } finally {
      await v.close();
    }
    // A lazy open checks the limit against the catalog index's count, reading no catalog (docs/ARCHITECTURE.md §4.4).
    const lazy = await Volume.open(join(dir, 'v.img'), { catalog: 'lazy' });
    try {
      await expect(lazy.createSnapshot('one-too-many')).rejects.toMatchObject({ code: 'SNAPSHOT_LIMIT' });
      await expect(lazy.createSnapshot('s7')).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
      expect(lazy.stats.catalogReads).toBe(0);
      await lazy.deleteSnapshots(['s6']);
      await lazy.createSnapshot('one-too-many');
      expect(await lazy.listSnapshots()).toHaveLength(MAX_SNAPSHOTS);
    } finally {
      await lazy.close();
    }
  }, 600_000);
});
