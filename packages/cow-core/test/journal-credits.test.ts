import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Volume } from '../src/index.js';

/**
 * Operations that log one record per snapshot in one handle (delete of many
 * snapshots at once, accept-changes marking many suspect) on a small journal
 * (docs/ARCHITECTURE.md §5.1, credits): records take the payload blocks
 * their bytes fill, so hundreds of snapshots fit one handle of a 1 MiB
 * journal; when even that is more than one handle may take, the operation is
 * refused with INVALID_ARGUMENT before anything is written.
 */
const BS = 4096;
const BLOCKS = 64;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-credits-'));
  path = join(dir, 'v.img');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A volume of `blockSizeBytes` blocks with a journal of `journalBytes` and `count` snapshots named `name(i)`, a block written after each (block 0 to BLOCKS − 2; the last block is never written). */
async function withSnapshots(journalBytes: number, count: number, name: (i: number) => string, blockSizeBytes = BS): Promise<Volume> {
  const v = await Volume.create(path, { sizeBytes: BLOCKS * blockSizeBytes, blockSizeBytes, journalSizeBytes: journalBytes, reserveBytes: 0 });
  for (let i = 0; i < count; i++) {
    await v.createSnapshot(name(i));
    await v.write((i % (BLOCKS - 1)) * blockSizeBytes, Buffer.alloc(blockSizeBytes, (i % 255) + 1));
  }
  return v;
}

const names = (v: Volume) => v.listSnapshots().then((list) => list.map((s) => s.name));

describe('one handle of many snapshot records on a small journal', () => {
  it('deletes 250 snapshots at once on a 1 MiB journal, and the volume is clean after a reopen', async () => {
    const count = 250;
    const v = await withSnapshots(1024 * 1024, count, (i) => `snap-${i}`);
    const live = await v.read(0, BLOCKS * BS);
    const all = await names(v);
    expect(all).toHaveLength(count);
    const result = await v.deleteSnapshots(all);
    expect(result.deleted).toHaveLength(count);
    expect(await names(v)).toEqual([]);
    await v.close();
    const r = await Volume.open(path);
    expect(await names(r)).toEqual([]);
    expect((await r.read(0, BLOCKS * BS)).equals(live)).toBe(true);
    expect(await r.check()).toMatchObject({ status: 'clean', snapshots: 0, mappedBlocks: 0 });
    await r.close();
  });

  it('refuses (INVALID_ARGUMENT) a delete whose records exceed one handle of the smallest journal, and changes nothing', async () => {
    // The smallest journal (256 blocks of 512 bytes): a handle may take
    // under 64 credits (about 30 KB of records); 200 records of ~190 bytes
    // (128-character names) need more.
    const count = 200;
    const v = await withSnapshots(256 * 512, count, (i) => `${String(i).padStart(4, '0')}-${'x'.repeat(123)}`, 512);
    const all = await names(v);
    const err = await v.deleteSnapshots(all).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect((err as Error).message).toMatch(/cannot hold one atomic step of 200 metadata records.*--journal-size/);
    expect(await names(v)).toEqual(all);
    // Smaller groups go through.
    await v.deleteSnapshots(all.slice(0, 100));
    await v.deleteSnapshots(all.slice(100));
    expect(await names(v)).toEqual([]);
    await v.close();
  });

  it('accept-changes marks 250 snapshots suspect in one step on a 1 MiB journal', async () => {
    const count = 250;
    const v = await withSnapshots(1024 * 1024, count, (i) => `snap-${i}`);
    await v.close();
    // Every snapshot reads the last block through to the live volume.
    const fh = await open(path, 'r+');
    await fh.write(Buffer.alloc(BS, 0xee), 0, BS, (BLOCKS - 1) * BS);
    await fh.close();
    const h = await Volume.open(path, { outsideChanges: 'hold' });
    const report = await h.acceptOutsideChanges();
    expect(report.suspectSnapshots).toHaveLength(count);
    await h.close();
    const r = await Volume.open(path);
    const list = await r.listSnapshots();
    expect(list.filter((s) => s.suspect)).toHaveLength(count);
    await r.close();
  });
});

describe('a delete batch that frees every block, in journal mode (revokes)', () => {
  // A batch is half of what one handle may take (`deleteBatchBlocks`); in `journal` mode each freed block also
  // logs a revoke. Counting one credit per record as well asked for 2 × batch + the `shared` record: one credit
  // more than a handle may take, so the delete's first batch could never commit (JOURNAL_CREDITS_EXCEEDED at
  // every writable open). Records take the payload blocks their bytes fill (§5.1), far fewer.
  for (const blockSizeBytes of [512, BS]) {
    it(`deletes the oldest snapshot of two, every block freed, on a 1 MiB journal (${blockSizeBytes}-byte blocks), and a reopen finds it clean`, async () => {
      const blocks = 256;
      const fill = (byte: number) => Buffer.alloc(blocks * blockSizeBytes, byte);
      const v = await Volume.create(path, { sizeBytes: blocks * blockSizeBytes, blockSizeBytes, journalSizeBytes: 1024 * 1024, reserveBytes: 0, dataMode: 'journal' });
      await v.write(0, fill(1));
      await v.createSnapshot('s1');
      await v.write(0, fill(2)); // every block COWed into s1
      await v.createSnapshot('s2');
      await v.write(0, fill(3)); // and into s2, which shares them all with s1
      const result = await v.deleteSnapshot('s1');
      expect(result).toEqual({ name: 's1', freedBlocks: blocks, handedOverBlocks: 0 });
      expect((await v.readSnapshot('s2', 0, blocks * blockSizeBytes)).equals(fill(2))).toBe(true);
      await v.write(0, Buffer.alloc(blockSizeBytes, 4)); // the volume still takes changes
      await v.close();
      const r = await Volume.open(path);
      expect((await r.listSnapshots()).map((s) => s.name)).toEqual(['s2']);
      expect((await r.readSnapshot('s2', 0, blocks * blockSizeBytes)).equals(fill(2))).toBe(true);
      expect(await r.check()).toMatchObject({ status: 'clean', snapshots: 1, mappedBlocks: blocks });
      await r.close();
    });
  }
});
