import { describe, expect, it } from 'vitest';
import { MAP_REGION_BLOCKS, SnapshotMap } from '../src/snapshot-map.js';
import { mappingOf } from './map-lookup.js';
import { mulberry32 } from './prng.js';

/**
 * SnapshotMap packs each region's mappings into one sorted array of doubles
 * (offset × 2^32 + CRC, store block). A seeded model check against a plain
 * Map: every answer equal after every step, in sparse and dense regions,
 * with out-of-order inserts, deletes down to empty regions, and CRCs and
 * store blocks at their extremes.
 */
describe('SnapshotMap (packed regions) against a Map model', () => {
  for (const seed of [1, 2, 3, 4]) {
    it(`seed ${seed}: set, delete, lookups, ranges and entries agree with the model`, () => {
      const rnd = mulberry32(seed);
      const map = new SnapshotMap(1);
      const model = new Map<number, [number, number]>();
      // Dense seeds crowd a few regions (full regions, shifting inserts); sparse ones spread wide.
      const span = seed % 2 === 0 ? 3 * MAP_REGION_BLOCKS : 2 ** 40;
      const pick = (): number => Math.floor(rnd() * span);
      const crcOf = (): number => (rnd() < 0.1 ? [0, 0xffffffff, 0x80000000][Math.floor(rnd() * 3)]! : Math.floor(rnd() * 2 ** 32));
      const storeOf = (): number => (rnd() < 0.05 ? 2 ** 48 - 1 : Math.floor(rnd() * 2 ** 30));
      for (let step = 0; step < 6000; step++) {
        const b = rnd() < 0.3 && model.size > 0 ? [...model.keys()][Math.floor(rnd() * model.size)]! : pick();
        if (model.has(b) && rnd() < 0.6) {
          map.delete(b);
          model.delete(b);
        } else if (!model.has(b)) {
          const p = storeOf();
          const crc = crcOf();
          map.set(b, p, crc);
          model.set(b, [p, crc]);
        }
        const probe = rnd() < 0.5 ? b : pick();
        const want = model.get(probe);
        expect(map.has(probe), `seed ${seed} step ${step}: has(${probe})`).toBe(want !== undefined);
        expect(mappingOf(map, probe), `seed ${seed} step ${step}: mapping of ${probe}`).toEqual(want);
        expect(map.size).toBe(model.size);
      }
      const sorted = [...model.entries()].sort((x, y) => x[0] - y[0]).map(([b, [p, c]]) => [b, p, c]);
      expect(
        [...map.entries()].sort((x, y) => x[0] - y[0]),
        `seed ${seed}: entries`,
      ).toEqual(sorted);
      for (let k = 0; k < 50; k++) {
        const first = pick();
        const last = first + Math.floor(rnd() * 4 * MAP_REGION_BLOCKS);
        const got: number[][] = [];
        map.forEachInRange(first, last, (b, p, c) => got.push([b, p, c]));
        expect(got, `seed ${seed}: range [${first}, ${last}]`).toEqual(sorted.filter(([b]) => b! >= first && b! <= last));
      }
      expect(() => map.set(sorted[0]![0]!, 1, 1), 'a second mapping of a block is refused').toThrow(/already maps/);
    });
  }
});
