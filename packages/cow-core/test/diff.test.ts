import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Volume, restoreSnapshot, type DiffResult } from '../src/index.js';
import { CountingOpener, envInt, prng, randomBuffer } from './backup-helpers.js';

/**
 * Snapshot diff (changed-block tracking from the snapshot maps, BRIEF §3).
 *
 * What is asserted, for every pair (A, B) of surviving snapshots with A
 * older, and for every (A, live), after a seeded random workload of writes
 * (random, all-zero, and rewrites of a range with the bytes it already
 * holds), snapshot creates, deletes of random snapshots and restores:
 *
 *  1. cover: every byte where the full contents of A and B (read back in
 *     full from the volume, and checked against the in-memory model) differ
 *     lies inside an extent of diff(A, B);
 *  2. exactness: the blocks of diff(A, B) are exactly the blocks touched by
 *     the writes issued between A and B (restores included) — so the diff
 *     is a superset of the differing bytes only by (a) the rest of a block a
 *     write touched partially and (b) blocks rewritten with identical bytes;
 *  3. shape: extents are sorted, non-overlapping, block-aligned, inside the
 *     volume; consecutive blocks from the same map are merged; each names a
 *     snapshot in [A, B); diff(B, A) = diff(A, B);
 *  4. a diff over a random byte range is the full diff cut to the blocks
 *     that range touches.
 *
 * Knobs: COWVOL_BACKUP_SEEDS (default 8), COWVOL_BACKUP_OPS (default 50).
 * Replay one seed: COWVOL_BACKUP_SEEDS=K ... -t "seed K:".
 */
const SEEDS = Array.from({ length: envInt('COWVOL_BACKUP_SEEDS', 8) }, (_, i) => i + 1);
const OPS = envInt('COWVOL_BACKUP_OPS', 50);
const BS = 512;
const BLOCKS = 96;
const SIZE = BS * BLOCKS;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-diff-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface ModelSnapshot {
  name: string;
  content: Buffer;
  /** Index in the write log at the moment it was taken. */
  at: number;
}

function blocksOf(d: DiffResult): Set<number> {
  const s = new Set<number>();
  for (const e of d.extents) for (let o = e.offsetBytes; o < e.offsetBytes + e.lengthBytes; o += d.blockSizeBytes) s.add(o / d.blockSizeBytes);
  return s;
}

function sorted(s: Set<number>): number[] {
  return [...s].sort((a, b) => a - b);
}

describe('snapshot diff: cover and exactness against full reads, on seeded random workloads', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: diff of every pair of snapshots and of each snapshot with live covers every differing byte and equals the written blocks`, async () => {
      const replay = `COWVOL_BACKUP_SEEDS=${seed} COWVOL_BACKUP_OPS=${OPS} npx vitest run packages/cow-core/test/diff.test.ts -t "seed ${seed}:"`;
      console.log(`[diff] seed=${seed} ops=${OPS}; replay: ${replay}`);
      const rnd = prng(seed);
      const rangeRnd = prng(seed + 0x5eed); // the ranges of check 4, apart so the workload of a seed stays as it was
      const int = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
      const v = await Volume.create(join(dir, 'v.img'), { sizeBytes: SIZE, blockSizeBytes: BS });
      const live = Buffer.alloc(SIZE);
      const log: Array<Set<number>> = []; // blocks touched by each write, in order
      const snaps: ModelSnapshot[] = [];
      let next = 1;
      let strictSupersets = 0;
      const write = async (offset: number, data: Buffer): Promise<void> => {
        await v.write(offset, data);
        data.copy(live, offset);
        const touched = new Set<number>();
        for (let b = Math.floor(offset / BS); b <= Math.floor((offset + data.length - 1) / BS); b++) touched.add(b);
        log.push(touched);
      };

      const check = async (when: string): Promise<void> => {
        const ctx = `seed ${seed}, ${when} (replay: ${replay})`;
        const contents = new Map<string, Buffer>();
        for (const s of snaps) {
          const got = await v.readSnapshot(s.name, 0, SIZE);
          expect(got.equals(s.content), `snapshot ${s.name} reads its model content, ${ctx}`).toBe(true);
          contents.set(s.name, got);
        }
        const liveNow = await v.read(0, SIZE);
        expect(liveNow.equals(live), `live reads the model, ${ctx}`).toBe(true);
        const ids = new Map((await v.listSnapshots()).map((s) => [s.name, s.id]));
        for (let i = 0; i < snaps.length; i++) {
          for (let j = i + 1; j <= snaps.length; j++) {
            const a = snaps[i]!;
            const b = snaps[j];
            const label = `diff(${a.name}, ${b?.name ?? 'live'}), ${ctx}`;
            const d = await v.diff(a.name, b?.name);
            // 3. shape
            let end = 0;
            for (let k = 0; k < d.extents.length; k++) {
              const e = d.extents[k]!;
              expect(e.offsetBytes % BS === 0 && e.lengthBytes % BS === 0 && e.lengthBytes > 0, `aligned, ${label}`).toBe(true);
              expect(e.offsetBytes, `sorted and disjoint, ${label}`).toBeGreaterThanOrEqual(end);
              if (k > 0 && e.offsetBytes === end) expect(e.snapshot, `adjacent extents of one map are merged, ${label}`).not.toBe(d.extents[k - 1]!.snapshot);
              end = e.offsetBytes + e.lengthBytes;
              const id = ids.get(e.snapshot)!;
              expect(id >= ids.get(a.name)! && (b === undefined || id < ids.get(b.name)!), `extent names a map in the range, ${label}`).toBe(true);
            }
            expect(end).toBeLessThanOrEqual(SIZE);
            expect(d.bytes).toBe(d.extents.reduce((n, e) => n + e.lengthBytes, 0));
            const got = blocksOf(d);
            // 2. exactness: the blocks written between the two points.
            const written = new Set<number>();
            for (let w = a.at; w < (b?.at ?? log.length); w++) for (const blk of log[w]!) written.add(blk);
            expect(sorted(got), `blocks of ${label} = blocks written between them`).toEqual(sorted(written));
            // 1. cover: every differing byte of the full contents is inside an extent.
            const x = contents.get(a.name)!;
            const y = b ? contents.get(b.name)! : liveNow;
            let differing = 0;
            for (let blk = 0; blk < BLOCKS; blk++) {
              if (x.subarray(blk * BS, (blk + 1) * BS).equals(y.subarray(blk * BS, (blk + 1) * BS))) continue;
              differing += 1;
              expect(got.has(blk), `differing block ${blk} is covered by ${label}`).toBe(true);
            }
            if (got.size > differing) strictSupersets += 1;
            if (b) expect((await v.diff(b.name, a.name)).extents, `diff is symmetric, ${label}`).toEqual(d.extents);
            // 4. a ranged diff (what an NBD BLOCK_STATUS of a dirty bitmap asks) is the full one cut to the blocks the range touches.
            const offsetBytes = Math.floor(rangeRnd() * SIZE);
            const lengthBytes = Math.floor(rangeRnd() * (SIZE - offsetBytes + 1));
            const [lo, hi] = [Math.floor(offsetBytes / BS) * BS, Math.ceil((offsetBytes + lengthBytes) / BS) * BS];
            const cut = d.extents
              .map((e) => ({ ...e, offsetBytes: Math.max(e.offsetBytes, lo), lengthBytes: Math.min(e.offsetBytes + e.lengthBytes, hi) - Math.max(e.offsetBytes, lo) }))
              .filter((e) => e.lengthBytes > 0);
            expect((await v.diff(a.name, b?.name, { offsetBytes, lengthBytes })).extents, `diff over [${offsetBytes}, +${lengthBytes}), ${label}`).toEqual(cut);
          }
        }
      };

      for (let op = 0; op < OPS; op++) {
        const r = rnd();
        if (r < 0.18 || snaps.length === 0) {
          const name = `s${next++}`;
          await v.createSnapshot(name);
          snaps.push({ name, content: Buffer.from(live), at: log.length });
        } else if (r < 0.26 && snaps.length > 1) {
          const [victim] = snaps.splice(int(0, snaps.length - 1), 1);
          await v.deleteSnapshot(victim!.name);
        } else if (r < 0.3) {
          // Restore a random snapshot without a safety snapshot: its writes go to the log.
          const target = snaps[int(0, snaps.length - 1)]!;
          // Restore rewrites exactly the blocks whose content differs: those are its writes.
          const differing = new Set<number>();
          for (let b = 0; b < BLOCKS; b++) if (!live.subarray(b * BS, (b + 1) * BS).equals(target.content.subarray(b * BS, (b + 1) * BS))) differing.add(b);
          const r = await restoreSnapshot(v, target.name, { safetySnapshot: false });
          expect(r.restoredBlocks).toBe(differing.size);
          log.push(differing);
          target.content.copy(live);
        } else if (r < 0.4) {
          // Rewrite a range with the bytes it already holds: written, but nothing differs.
          const offset = int(0, SIZE - 1);
          const len = int(1, Math.min(3 * BS, SIZE - offset));
          await write(offset, Buffer.from(live.subarray(offset, offset + len)));
        } else {
          const offset = int(0, SIZE - 1);
          const len = int(1, Math.min(4 * BS, SIZE - offset));
          await write(offset, rnd() < 0.15 ? Buffer.alloc(len) : randomBuffer(rnd, len));
        }
        if (op === Math.floor(OPS / 2)) await check(`midpoint, op ${op}`);
      }
      await check('end');
      // Reopen: the maps come back from LevelDB and give the same diffs.
      const before = await Promise.all(snaps.map((s) => v.diff(s.name)));
      await v.close();
      const r = await Volume.open(join(dir, 'v.img'));
      const after = await Promise.all(snaps.map((s) => r.diff(s.name)));
      expect(after, `diffs after reopen, seed ${seed}`).toEqual(before);
      await r.close();
      console.log(`[diff] seed=${seed}: ${snaps.length} snapshots checked; ${strictSupersets} pair(s) where the diff was a strict superset of the differing blocks`);
    });
  }
});

describe('snapshot diff: cost is the blocks changed, not the volume size', () => {
  it('on a 64 GiB sparse volume, diff returns the three written ranges without reading any data', async () => {
    const opener = new CountingOpener();
    const path = join(dir, 'big.img');
    const created = await Volume.create(path, { sizeBytes: 64 * 1024 ** 3 });
    await created.close();
    const v = await Volume.open(path, { opener });
    await v.createSnapshot('a');
    await v.write(0, Buffer.alloc(1, 1)); // block 0
    await v.write(10 * 1024 ** 3 + 4095, Buffer.alloc(2, 2)); // straddles two blocks
    await v.write(64 * 1024 ** 3 - 4096, Buffer.alloc(4096, 3)); // the last block
    await v.createSnapshot('b');
    await v.write(5 * 4096, Buffer.alloc(4096, 4));
    const readsBefore = new Map(opener.reads);
    const ab = await v.diff('a', 'b');
    const aLive = await v.diff('a');
    const bLive = await v.diff('b');
    expect(opener.reads, 'diff reads no data from the volume or the store').toEqual(readsBefore);
    expect(ab.extents).toEqual([
      { offsetBytes: 0, lengthBytes: 4096, snapshot: 'a', snapshotId: 1 },
      { offsetBytes: 10 * 1024 ** 3, lengthBytes: 8192, snapshot: 'a', snapshotId: 1 },
      { offsetBytes: 64 * 1024 ** 3 - 4096, lengthBytes: 4096, snapshot: 'a', snapshotId: 1 },
    ]);
    expect(aLive.bytes).toBe(ab.bytes + 4096);
    expect(aLive.extents.find((e) => e.offsetBytes === 5 * 4096)?.snapshot).toBe('b');
    expect(bLive.extents).toEqual([{ offsetBytes: 5 * 4096, lengthBytes: 4096, snapshot: 'b', snapshotId: 2 }]);
    await expect(v.diff('nope')).rejects.toMatchObject({ code: 'SNAPSHOT_NOT_FOUND' });
    // A range: the one extent inside it, cut to the blocks the range touches; a range past the end is refused.
    expect((await v.diff('a', 'b', { offsetBytes: 10 * 1024 ** 3 + 4096, lengthBytes: 1 })).extents).toEqual([{ offsetBytes: 10 * 1024 ** 3 + 4096, lengthBytes: 4096, snapshot: 'a', snapshotId: 1 }]);
    expect((await v.diff('a', undefined, { offsetBytes: 4096, lengthBytes: 4096 })).extents).toEqual([]);
    await expect(v.diff('a', undefined, { offsetBytes: 64 * 1024 ** 3, lengthBytes: 1 })).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await v.close();
  });
});
