import { mkdtemp, readFile, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DATA_MODES } from './modes.js';
import { Volume, volumeLayout } from '../src/index.js';

const BS = 4096;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-volume-'));
  path = join(dir, 'vol.img');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function fill(length: number, byte: number): Buffer {
  return Buffer.alloc(length, byte);
}

async function expectSnapshot(volume: Volume, name: string, expected: Buffer): Promise<void> {
  const got = await volume.readSnapshot(name, 0, expected.length);
  expect(got.equals(expected), `snapshot ${name} differs from its content when taken`).toBe(true);
}

/** Both data modes run every test of this file. */
describe.each(DATA_MODES)('data mode %s', (dataMode) => {
  describe('guarantee 1: snapshot immutability', () => {
    it('holds through overwrites, repeated overwrites and partial-block writes', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 64 * BS });
      await v.write(0, randomBytes(64 * BS));
      const before = await v.read(0, 64 * BS);
      await v.createSnapshot('s1');
      await v.write(3 * BS, randomBytes(BS)); // whole block
      await v.write(10 * BS + 17, randomBytes(100)); // partial block: the whole block is COWed
      await v.write(20 * BS - 5, randomBytes(10)); // straddles two blocks
      await v.write(3 * BS, randomBytes(BS)); // second write of an already COWed block
      await v.write(30 * BS + 1, randomBytes(5 * BS)); // unaligned multi-block
      await expectSnapshot(v, 's1', before);
      // Unaligned snapshot reads return the same bytes as slices.
      expect((await v.readSnapshot('s1', 10 * BS + 3, 200)).equals(before.subarray(10 * BS + 3, 10 * BS + 203))).toBe(true);
      const snapshots = await v.listSnapshots();
      expect(snapshots[0]!.ownedBlocks).toBe(1 + 1 + 2 + 6);
      await v.close();
    });

    it('holds when the oldest, a middle or the newest other snapshot is deleted', async () => {
      for (const victim of ['a', 'c', 'e']) {
        const p = join(dir, `v-${victim}.img`);
        const v = await Volume.create(p, { dataMode, sizeBytes: 32 * BS });
        const expected = new Map<string, Buffer>();
        for (const name of ['a', 'b', 'c', 'd', 'e']) {
          await v.write(0, randomBytes(32 * BS).subarray(0, (name.charCodeAt(0) - 96) * 5 * BS)); // varying overlap
          await v.write(7 * BS + 11, randomBytes(3 * BS));
          expected.set(name, await v.read(0, 32 * BS));
          await v.createSnapshot(name);
        }
        await v.write(0, randomBytes(32 * BS));
        await v.deleteSnapshot(victim);
        expected.delete(victim);
        for (const [name, content] of expected) await expectSnapshot(v, name, content);
        expect((await v.listSnapshots()).map((s) => s.name)).toEqual([...expected.keys()]);
        await v.close();
      }
    });
  });

  describe('read-through', () => {
    it('reads across three or more snapshots to the live volume', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 8 * BS });
      await v.write(0, fill(8 * BS, 0));
      const states: Buffer[] = [];
      // Each snapshot is followed by writes to different blocks, so every read
      // of s1 must go through s1's map, s2's, s3's and finally the live volume.
      for (let i = 1; i <= 4; i++) {
        states.push(await v.read(0, 8 * BS));
        await v.createSnapshot(`s${i}`);
        await v.write(i * BS, fill(BS, i));
      }
      for (let i = 1; i <= 4; i++) await expectSnapshot(v, `s${i}`, states[i - 1]!);
      // s1's own map holds only block 1; blocks 2, 3, 4 come from s2, s3, s4; the rest from live.
      expect((await v.listSnapshots()).map((s) => s.ownedBlocks)).toEqual([1, 1, 1, 1]);
      await v.close();
    });

    it('deleting the active snapshot makes the next older one active, and it keeps COWing', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 8 * BS });
      await v.write(0, fill(8 * BS, 1));
      await v.createSnapshot('old');
      await v.write(0, fill(BS, 2));
      await v.createSnapshot('new');
      await v.write(BS, fill(BS, 3));
      const result = await v.deleteSnapshot('new');
      expect(result).toEqual({ name: 'new', freedBlocks: 0, handedOverBlocks: 1 });
      expect((await v.listSnapshots()).map((s) => [s.name, s.active, s.ownedBlocks])).toEqual([['old', true, 2]]);
      await v.write(2 * BS, fill(BS, 4));
      await expectSnapshot(v, 'old', fill(8 * BS, 1));
      await v.close();
    });
  });

  describe('store allocator', () => {
    it('store blocks freed by delete are reused before the store grows', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 16 * BS });
      await v.createSnapshot('a');
      await v.write(0, randomBytes(10 * BS));
      expect((await v.info()).store.highWaterBlocks).toBe(10);
      const res = await v.deleteSnapshot('a');
      expect(res.freedBlocks).toBe(10);
      expect((await v.info()).store).toMatchObject({ highWaterBlocks: 10, freeBlocks: 10, usedBlocks: 0 });
      await v.createSnapshot('b');
      await v.write(0, randomBytes(16 * BS));
      const info = await v.info();
      expect(info.store).toMatchObject({ highWaterBlocks: 16, freeBlocks: 0, usedBlocks: 16 });
      await v.close();
    });
  });

  describe('reopen', () => {
    it('preserves data, snapshots, maps and the allocator across close and open', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 16 * BS, blockSizeBytes: BS });
      await v.write(0, randomBytes(16 * BS));
      const s1 = await v.read(0, 16 * BS);
      await v.createSnapshot('s1');
      await v.write(5 * BS + 1, randomBytes(2 * BS));
      const s2 = await v.read(0, 16 * BS);
      await v.createSnapshot('s2');
      await v.write(0, randomBytes(16 * BS));
      const live = await v.read(0, 16 * BS);
      const infoBefore = await v.info();
      await v.close();

      const r = await Volume.open(path);
      await expectSnapshot(r, 's1', s1);
      await expectSnapshot(r, 's2', s2);
      expect((await r.read(0, 16 * BS)).equals(live)).toBe(true);
      const infoAfter = await r.info();
      expect(infoAfter.snapshots).toEqual(infoBefore.snapshots);
      // (the store file's size may grow at close in journal mode: copies reach it at checkpoint)
      expect({ ...infoAfter.store, fileBytes: 0 }).toEqual({ ...infoBefore.store, fileBytes: 0 });
      // New COWs after reopen land in the active snapshot and do not disturb the others.
      await r.write(0, randomBytes(BS));
      await expectSnapshot(r, 's2', s2);
      await r.close();
    });

    it('replays committed metadata that was never checkpointed (reopen after an unclean stop)', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 8 * BS });
      await v.write(0, fill(8 * BS, 9));
      await v.createSnapshot('s');
      await v.write(0, fill(8 * BS, 1));
      await v.flush(); // the COW is committed (flush does not checkpoint)
      // Stop without close(): copy the sidecar as it is now (journal not checkpointed).
      const layout = volumeLayout(path);
      const journalBytes = await readFile(layout.journalPath);
      expect(journalBytes.length).toBeGreaterThan(4096);
      await v.close();
      // Put back the un-checkpointed journal: recovery must replay it idempotently.
      await writeFile(layout.journalPath, journalBytes);
      const r = await Volume.open(path);
      expect((await r.info()).recovery.replayedTransactions).toBeGreaterThan(0);
      await expectSnapshot(r, 's', fill(8 * BS, 9));
      await r.close();
    });
  });

  describe('integrity of store blocks', () => {
    it('a corrupted store block is detected on read (STORE_CORRUPT), not returned as snapshot data', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 8 * BS });
      await v.write(0, fill(8 * BS, 7));
      await v.createSnapshot('s');
      await v.write(0, fill(BS, 8));
      await v.close();
      const storePath = volumeLayout(path).storePath;
      const store = await readFile(storePath);
      store[BS + 100]! ^= 0xff; // store block 0 sits after the header block
      await writeFile(storePath, store);
      const r = await Volume.open(path);
      await expect(r.readSnapshot('s', 0, BS)).rejects.toMatchObject({ code: 'STORE_CORRUPT', details: { offsetBytes: 0, lengthBytes: BS } });
      // Blocks that read through to live are unaffected.
      expect((await r.readSnapshot('s', BS, BS)).equals(fill(BS, 7))).toBe(true);
      await r.close();
    });
  });

  /** Hash of every file of the volume and its sidecar except the lock. */
  async function fingerprint(volumePath: string): Promise<string> {
    const h = createHash('sha256');
    h.update(await readFile(volumePath));
    const layout = volumeLayout(volumePath);
    for (const f of [layout.storePath, layout.journalPath]) h.update(await readFile(f));
    const meta = (await readdir(layout.metaPath)).filter((f) => f.endsWith('.ldb') || f.endsWith('.log')).sort();
    for (const f of meta) h.update(f).update(String((await stat(join(layout.metaPath, f))).size));
    return h.digest('hex');
  }

  describe('guarantee 7: bad input is refused, nothing is lost', () => {
    it('refuses each bad argument with its stable code and leaves the volume and its snapshots as they were', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 8 * BS });
      await v.write(0, fill(8 * BS, 3));
      await v.createSnapshot('keep');
      await v.write(0, fill(BS, 4));
      await v.flush();
      const before = await fingerprint(path);
      const cases: Array<[string, () => Promise<unknown>]> = [
        ['SNAPSHOT_NOT_FOUND', () => v.readSnapshot('missing', 0, 1)],
        ['SNAPSHOT_NOT_FOUND', () => v.deleteSnapshot('missing')],
        ['SNAPSHOT_EXISTS', () => v.createSnapshot('keep')],
        ['INVALID_SNAPSHOT_NAME', () => v.createSnapshot('')],
        ['INVALID_SNAPSHOT_NAME', () => v.createSnapshot('has space')],
        ['INVALID_SNAPSHOT_NAME', () => v.createSnapshot('x'.repeat(129))],
        ['INVALID_SNAPSHOT_NAME', () => v.createSnapshot('slash/name')],
        ['OUT_OF_RANGE', () => v.write(8 * BS - 1, fill(2, 1))],
        ['OUT_OF_RANGE', () => v.read(8 * BS + 1, 0)],
        ['OUT_OF_RANGE', () => v.readSnapshot('keep', 0, 8 * BS + 1)],
        ['INVALID_ARGUMENT', () => v.write(-1, fill(1, 1))],
        ['INVALID_ARGUMENT', () => v.read(0.5, 1)],
        ['VOLUME_BUSY', () => Volume.open(path)],
        ['VOLUME_EXISTS', () => Volume.create(path, { dataMode, sizeBytes: 8 * BS })],
        ['VOLUME_EXISTS', () => Volume.create(path, { dataMode, adopt: true })],
      ];
      for (const [code, attempt] of cases) {
        await expect(attempt(), code).rejects.toMatchObject({ code });
      }
      expect(await fingerprint(path)).toBe(before);
      await expectSnapshot(v, 'keep', fill(8 * BS, 3));
      await v.close();
    });

    it('refuses bad create arguments without leaving files behind', async () => {
      await expect(Volume.create(path, { dataMode, sizeBytes: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(Volume.create(path, { dataMode, sizeBytes: 1000 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(Volume.create(path, { dataMode, sizeBytes: 8192, blockSizeBytes: 3000 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(Volume.create(path, { dataMode, adopt: true })).rejects.toMatchObject({ code: 'VOLUME_NOT_FOUND' });
      expect(await readdir(dir)).toEqual([]);
    });

    it('refuses files that are not volumes, foreign sidecars and truncated volume files', async () => {
      await writeFile(path, fill(8 * BS, 1));
      await expect(Volume.open(path)).rejects.toMatchObject({ code: 'NOT_A_VOLUME' });
      await expect(Volume.open(join(dir, 'absent.img'))).rejects.toMatchObject({ code: 'VOLUME_NOT_FOUND' });
      const v = await Volume.create(path, { dataMode, adopt: true });
      expect((await v.read(0, 8 * BS)).equals(fill(8 * BS, 1))).toBe(true);
      await v.createSnapshot('s');
      await v.close();
      // Another volume's store in this sidecar: uuid mismatch.
      const other = join(dir, 'other.img');
      await (await Volume.create(other, { dataMode, sizeBytes: 8 * BS })).close();
      const ownStore = await readFile(volumeLayout(path).storePath);
      await writeFile(volumeLayout(path).storePath, await readFile(volumeLayout(other).storePath));
      // The metadata is this volume's: its store is damaged, it is not "not a volume".
      await expect(Volume.open(path)).rejects.toMatchObject({ code: 'STORE_CORRUPT' });
      await writeFile(volumeLayout(path).storePath, ownStore);
      // A truncated volume file: a change made outside cowvol (outside-writes.test.ts), whose size cannot be accepted.
      const volumeBytes = await readFile(path);
      await truncate(path, 4 * BS);
      await expect(Volume.open(path)).rejects.toMatchObject({ code: 'VOLUME_MODIFIED_OUTSIDE' });
      await expect(Volume.open(path, { outsideChanges: 'hold' })).rejects.toMatchObject({ code: 'VOLUME_SIZE_MISMATCH' });
      await writeFile(path, volumeBytes);
      const ok = await Volume.open(path, { outsideChanges: 'hold' });
      await ok.acceptOutsideChanges();
      await expectSnapshot(ok, 's', fill(8 * BS, 1));
      await ok.close();
    });
  });

  describe('small journals', () => {
    it('deleting a snapshot that owns more blocks than one handle can carry works, and the volume reopens', async () => {
      // 256 blocks of journal: a handle may carry only ~60 credits.
      const v = await Volume.create(path, { dataMode, sizeBytes: 2048 * BS, journalSizeBytes: 256 * BS });
      await v.write(0, randomBytes(2048 * BS));
      await v.createSnapshot('big');
      await v.write(0, randomBytes(2048 * BS)); // a 1 MiB-plus write: pieces sized to the journal
      expect((await v.listSnapshots())[0]!.ownedBlocks).toBe(2048);
      const res = await v.deleteSnapshot('big');
      expect(res.freedBlocks).toBe(2048);
      await v.close();
      const r = await Volume.open(path);
      expect(await r.listSnapshots()).toEqual([]);
      expect((await r.check()).status).toBe('clean');
      await r.close();
    });
  });
});

/** `readSnapshotInto` (docs/ARCHITECTURE.md §4.3): the bytes `readSnapshot` gives, into the caller's buffer, aligned or not. */
describe('readSnapshotInto', () => {
  it('reads what readSnapshot reads, block-aligned or not, through store copies and live blocks; refuses bad buffers and ranges', async () => {
    const v = await Volume.create(path, { sizeBytes: 32 * BS });
    try {
      await v.write(0, randomBytes(32 * BS));
      await v.createSnapshot('s');
      await v.write(5 * BS, randomBytes(3 * BS)); // blocks 5–7 now read from the store
      await v.write(20 * BS + 9, randomBytes(BS)); // blocks 20–21, partly
      const into = Buffer.alloc(32 * BS, 0xee);
      for (const [offsetBytes, lengthBytes] of [
        [0, 32 * BS],
        [4 * BS, 4 * BS],
        [5 * BS + 100, 2 * BS - 50],
        [20 * BS + 3, 1],
        [31 * BS, BS],
        [7, 0],
      ] as const) {
        const part = into.subarray(0, lengthBytes);
        await v.readSnapshotInto('s', offsetBytes, part);
        expect(part.equals(await v.readSnapshot('s', offsetBytes, lengthBytes)), `${lengthBytes} bytes at ${offsetBytes}`).toBe(true);
      }
      await expect(v.readSnapshotInto('s', 31 * BS, Buffer.alloc(BS + 1))).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
      await expect(v.readSnapshotInto('nope', 0, Buffer.alloc(BS))).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
      await expect(v.readSnapshotInto('s', 0, new Uint8Array(BS) as Buffer)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    } finally {
      await v.close();
    }
  });
});
