process.env.COWVOL_LOCK_CHECKS = '1'; // lock-order assertion on for this file

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mulberry32 } from '@cowvol/test-support';
import { Volume } from '../src/index.js';
import { MAP_PARTIAL_MAX_REGIONS, MAP_REGION_BLOCKS } from '../src/snapshot-map.js';
import { DATA_MODES } from './modes.js';

/**
 * The COW path loads only the regions of the active snapshot's map that a
 * write touches (docs/ARCHITECTURE.md §4.15): a small write after an open
 * costs the same whatever the snapshot has mapped, and every whole-map user
 * (snapshot reads, diff, check, delete) still sees the whole map — the
 * partial one completed in place, under writes in flight.
 */
const BS = 4096;
const REGIONS = 8;
const SIZE_BLOCKS = REGIONS * MAP_REGION_BLOCKS;
/** `a` maps the even groups of this many blocks. */
const GROUP = 8;
const copied = (b: number): boolean => Math.floor(b / GROUP) % 2 === 0;
const SEEDS = Number(process.env.COWVOL_PARTIAL_MAP_SEEDS ?? 3);
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-partial-map-'));
  path = join(dir, 'vol.img');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Block `b`'s bytes in generation `g` (every block of every generation tells itself apart). */
function blockOf(b: number, g: number): Buffer {
  const buf = Buffer.alloc(BS, (b * 7 + g * 13) & 0xff);
  buf.writeUInt32LE(b, 0);
  buf.writeUInt32LE(g, 4);
  return buf;
}

/**
 * A volume of generation 0 whose active snapshot `a` maps every even group of `GROUP` blocks
 * (generation 1 written after it); its older snapshot `base` owns nothing.
 * Both read generation 0. Closed.
 */
async function prepare(dataMode: (typeof DATA_MODES)[number]): Promise<void> {
  const v = await Volume.create(path, { sizeBytes: SIZE_BLOCKS * BS, dataMode });
  for (let b = 0; b < SIZE_BLOCKS; b += 256) await v.write(b * BS, Buffer.concat(Array.from({ length: 256 }, (_, k) => blockOf(b + k, 0))));
  await v.createSnapshot('base');
  await v.createSnapshot('a');
  for (let b = 0; b < SIZE_BLOCKS; b += 2 * GROUP) await v.write(b * BS, Buffer.concat(Array.from({ length: GROUP }, (_, k) => blockOf(b + k, 1))));
  await v.close();
}

describe('partial snapshot maps: the region bound', () => {
  it(`past MAP_PARTIAL_MAX_REGIONS regions the whole map is loaded instead, and answers the same`, async () => {
    // 512-byte blocks keep a volume of MAP_PARTIAL_MAX_REGIONS + 2 regions small (about 130 MiB, sparse).
    const bs = 512;
    const regions = MAP_PARTIAL_MAX_REGIONS + 2;
    const v0 = await Volume.create(path, { sizeBytes: regions * MAP_REGION_BLOCKS * bs, blockSizeBytes: bs });
    await v0.createSnapshot('a');
    for (let r = 0; r < regions; r++) await v0.write(r * MAP_REGION_BLOCKS * bs, Buffer.alloc(bs, 1)); // a maps block 0 of every region
    await v0.close();
    const v = await Volume.open(path);
    try {
      for (let r = 0; r < regions; r++) await v.write((r * MAP_REGION_BLOCKS + 1) * bs, Buffer.alloc(bs, 2));
      await v.flush();
      expect(v.stats.mapRegionScans).toBe(MAP_PARTIAL_MAX_REGIONS);
      expect(v.stats.mapScans).toBe(1);
      expect(v.stats.cows).toBe(regions); // block 1 of each region copied once; block 0 was copied before
      expect(await v.checkConsistency()).toMatchObject({ problems: [], leakedBlocks: 0 });
    } finally {
      await v.close();
    }
  });
});

describe('partial snapshot maps under the COW path', () => {
  for (const dataMode of DATA_MODES) {
    it(`a small write after an open loads one region of the active map, not the whole map (${dataMode})`, async () => {
      await prepare(dataMode);
      const v = await Volume.open(path);
      try {
        const b = 5 * MAP_REGION_BLOCKS + GROUP; // an odd group: not copied yet
        await v.write(b * BS, blockOf(b, 2));
        await v.flush(); // the COW published (ordered mode lands overwrites from its write-back stage)
        expect(v.stats).toMatchObject({ mapScans: 0, mapRegionScans: 1, cows: 1 });
        const even = 5 * MAP_REGION_BLOCKS + 2; // an even group: copied already, no second copy
        await v.write(even * BS, blockOf(even, 2));
        await v.flush();
        expect(v.stats).toMatchObject({ mapScans: 0, mapRegionScans: 1, cows: 1 });
        // A whole-map user completes the partial map in place.
        expect((await v.readSnapshot('a', b * BS, BS)).equals(blockOf(b, 0))).toBe(true);
        expect((await v.readSnapshot('a', even * BS, BS)).equals(blockOf(even, 0))).toBe(true);
        expect(v.stats.mapScans).toBeGreaterThanOrEqual(1);
        expect(await v.checkConsistency()).toMatchObject({ problems: [], leakedBlocks: 0 });
      } finally {
        await v.close();
      }
    });

    it(`a partial map survives a create above it, shared counts against it, and deletes on both sides of it (${dataMode})`, async () => {
      await prepare(dataMode);
      const v = await Volume.open(path);
      try {
        const odd = 3 * MAP_REGION_BLOCKS + GROUP; // not copied into a yet
        await v.write(odd * BS, blockOf(odd, 2));
        await v.flush();
        expect(v.stats).toMatchObject({ mapScans: 0, mapRegionScans: 1 });
        // a is no longer active: b receives copies, and each COW counts what a (partial) maps of its blocks.
        await v.createSnapshot('b');
        await v.write(0, Buffer.concat(Array.from({ length: 4 * GROUP }, (_, k) => blockOf(k, 3)))); // groups 0..3: a maps 0 and 2
        await v.write(odd * BS, blockOf(odd, 3));
        await v.flush();
        expect(await v.checkConsistency()).toMatchObject({ problems: [], leakedBlocks: 0 });
        // Delete a: its copies are handed over to base (a's map completed first); then b, the active one.
        await v.deleteSnapshot('a');
        expect((await v.readSnapshot('base', 0, 4 * GROUP * BS)).equals(Buffer.concat(Array.from({ length: 4 * GROUP }, (_, k) => blockOf(k, 0))))).toBe(true);
        expect((await v.readSnapshot('base', odd * BS, BS)).equals(blockOf(odd, 0))).toBe(true);
        expect((await v.readSnapshot('b', 0, BS)).equals(blockOf(0, 1))).toBe(true);
        expect((await v.readSnapshot('b', odd * BS, BS)).equals(blockOf(odd, 2))).toBe(true);
        await v.deleteSnapshot('b');
        expect(await v.checkConsistency()).toMatchObject({ problems: [], leakedBlocks: 0 });
        expect((await v.read(odd * BS, BS)).equals(blockOf(odd, 3))).toBe(true);
      } finally {
        await v.close();
      }
    });

    for (let seed = 1; seed <= SEEDS; seed++) {
      it(`64 overlapping writes in flight across regions while snapshot reads, diff and check complete the map, seed ${seed} (${dataMode})`, async () => {
        await prepare(dataMode);
        const rnd = mulberry32(seed);
        const v = await Volume.open(path);
        // The live model: generation 1 on even groups, 0 on odd ones; the writes below add generation 2. Snapshots read generation 0.
        const live: number[] = Array.from({ length: SIZE_BLOCKS }, (_, b) => (copied(b) ? 1 : 0));
        try {
          // One write first: the open's stamp (§13) is written, so the burst below goes straight to the COW path.
          live[SIZE_BLOCKS - 1] = 2;
          await v.write((SIZE_BLOCKS - 1) * BS, blockOf(SIZE_BLOCKS - 1, 2));
          const regionScansBefore = v.stats.mapRegionScans;
          const writes: Array<Promise<void>> = [];
          const others: Array<Promise<unknown>> = [];
          for (let k = 0; k < 64; k++) {
            const first = Math.floor(rnd() * SIZE_BLOCKS);
            const n = Math.min(SIZE_BLOCKS - first, 1 + Math.floor(rnd() * (rnd() < 0.2 ? 1500 : 8)));
            for (let b = first; b < first + n; b++) live[b] = 2;
            writes.push(v.write(first * BS, Buffer.concat(Array.from({ length: n }, (_, i) => blockOf(first + i, 2)))));
            // Let the first writes reach their region loads, so the completion below starts while those scans are in flight.
            for (let turn = 0; k === 20 && turn < 5000 && v.stats.mapRegionScans === regionScansBefore; turn++) await new Promise<void>((resolve) => setTimeout(resolve, 1));
            if (k === 20) others.push(v.readSnapshot('a', Math.floor(rnd() * (SIZE_BLOCKS - 64)) * BS, 64 * BS));
            if (k === 40) others.push(v.diff('base', 'a'));
          }
          await Promise.all([...writes, ...others]);
          const what = `seed ${seed} (${dataMode})`;
          for (let b = 0; b < SIZE_BLOCKS; b += 512) {
            const n = 512;
            const snap = await v.readSnapshot('a', b * BS, n * BS);
            const cur = await v.read(b * BS, n * BS);
            for (let i = 0; i < n; i++) {
              const block = b + i;
              expect(snap.subarray(i * BS, (i + 1) * BS).equals(blockOf(block, 0)), `${what}: snapshot a, block ${block}`).toBe(true);
              expect(cur.subarray(i * BS, (i + 1) * BS).equals(blockOf(block, live[block]!)), `${what}: live block ${block}`).toBe(true);
            }
          }
          expect(await v.checkConsistency(), what).toMatchObject({ problems: [], leakedBlocks: 0 });
          // Both ways of loading ran: region loads for the writes, a completion for the readers.
          expect(v.stats.mapRegionScans, what).toBeGreaterThan(regionScansBefore);
          expect(v.stats.mapScans, what).toBeGreaterThan(0);
        } finally {
          await v.close();
        }
        // And the committed state agrees after a reopen.
        const again = await Volume.open(path);
        try {
          expect(await again.checkConsistency()).toMatchObject({ problems: [], leakedBlocks: 0 });
          const b = Math.floor(rnd() * SIZE_BLOCKS);
          expect((await again.readSnapshot('base', b * BS, BS)).equals(blockOf(b, 0))).toBe(true);
        } finally {
          await again.close();
        }
      });
    }
  }
});
