import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAP_PARTIAL_MAX_REGIONS, MAP_REGION_BLOCKS, SnapshotMap } from '../src/snapshot-map.js';
import { MetadataDb } from '../src/metadata-db.js';
import { putMapOp } from '../src/metadata.js';
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

/**
 * Partial maps (docs/ARCHITECTURE.md §4.15): regions loaded by range scans
 * of a real LevelDB, laid in only while still not loaded, completed by one
 * scan of the rest; asking a partial map about a region it has not loaded
 * is an assertion, not a silent "not mapped".
 */
describe('SnapshotMap, partial: regions loaded on demand', () => {
  let dir: string;
  let db: MetadataDb;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowvol-partial-map-'));
    db = await MetadataDb.open(dir, true);
  });
  afterEach(async () => {
    await db.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** Mappings of snapshot 7 in LevelDB: `perRegion` blocks in each of regions 0..regions-1, and one of snapshot 8 beside them. */
  async function seed(regions: number, perRegion: number): Promise<Array<[number, number, number]>> {
    const entries: Array<[number, number, number]> = [];
    for (let r = 0; r < regions; r++) for (let k = 0; k < perRegion; k++) entries.push([r * MAP_REGION_BLOCKS + 3 * k, 1000 + entries.length, 0xfeed0000 + entries.length]);
    await db.apply([...entries.map(([b, p, c]) => putMapOp(7, b, p, c)), putMapOp(8, 5, 1, 2), putMapOp(6, MAP_REGION_BLOCKS + 5, 1, 2)]);
    return entries;
  }

  const rangeOf = (map: SnapshotMap, first: number, last: number): number[][] => {
    const got: number[][] = [];
    map.forEachInRange(first, last, (b, p, c) => got.push([b, p, c]));
    return got;
  };

  it('loads exactly the regions asked for, and answers for them as the whole map does', async () => {
    const entries = await seed(6, 40);
    const whole = await SnapshotMap.load(db, 7);
    const partial = SnapshotMap.partial(7);
    expect(partial.isComplete).toBe(false);
    expect(partial.covers(0, 0)).toBe(false);
    await partial.loadRegions(db, 2 * MAP_REGION_BLOCKS + 10, 3 * MAP_REGION_BLOCKS + 1, MAP_PARTIAL_MAX_REGIONS);
    expect(partial.loadedRegions).toBe(2);
    expect(partial.covers(2 * MAP_REGION_BLOCKS, 4 * MAP_REGION_BLOCKS - 1)).toBe(true);
    expect(partial.covers(MAP_REGION_BLOCKS, 2 * MAP_REGION_BLOCKS)).toBe(false);
    const first = 2 * MAP_REGION_BLOCKS;
    const last = 4 * MAP_REGION_BLOCKS - 1;
    expect(rangeOf(partial, first, last)).toEqual(rangeOf(whole, first, last));
    expect(rangeOf(partial, first, last)).toHaveLength(80);
    expect(partial.has(entries[100]![0])).toBe(whole.has(entries[100]![0]));
    // Regions not loaded: an assertion, never a silent "not mapped".
    expect(() => partial.has(5)).toThrow(/not loaded/);
    expect(() => rangeOf(partial, 0, 10)).toThrow(/not loaded/);
    expect(() => partial.set(5, 1, 1)).toThrow(/not loaded/);
    expect(() => partial.delete(0)).toThrow(/not loaded/);
    expect(() => partial.size).toThrow(/partial/);
    expect(() => [...partial.entries()]).toThrow(/partial/);
    await partial.complete(db);
    expect(partial.isComplete).toBe(true);
    expect([...partial.entries()].sort((a, b) => a[0] - b[0])).toEqual([...whole.entries()]);
    expect(partial.size).toBe(entries.length);
  });

  it('a scan lays in only regions still not loaded when it arrives: changes made meanwhile are kept, nothing twice', async () => {
    await seed(4, 10);
    const partial = SnapshotMap.partial(7);
    await partial.loadRegions(db, MAP_REGION_BLOCKS, MAP_REGION_BLOCKS, MAP_PARTIAL_MAX_REGIONS);
    // Region 1 is loaded: a change there (a COW published) is the live view, ahead of what a scan of LevelDB would say.
    partial.set(MAP_REGION_BLOCKS + 1, 77, 78);
    partial.delete(MAP_REGION_BLOCKS); // mapped in LevelDB (offset 0 of region 1)
    // The completion and a region load race over the same regions.
    await Promise.all([partial.complete(db), partial.loadRegions(db, 0, 3 * MAP_REGION_BLOCKS, MAP_PARTIAL_MAX_REGIONS)]);
    expect(partial.isComplete).toBe(true);
    expect(partial.size).toBe(40);
    expect(partial.has(MAP_REGION_BLOCKS)).toBe(false);
    expect(rangeOf(partial, MAP_REGION_BLOCKS + 1, MAP_REGION_BLOCKS + 1)).toEqual([[MAP_REGION_BLOCKS + 1, 77, 78]]);
  });

  it('completions and region loads started in every order, seeded: each region laid in once, the result the whole map', async () => {
    const entries = await seed(6, 30);
    const want = [...(await SnapshotMap.load(db, 7)).entries()];
    const seedValue = 11;
    const rnd = mulberry32(seedValue);
    const turns = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
    };
    for (let round = 0; round < 150; round++) {
      const map = SnapshotMap.partial(7);
      const jobs: Array<Promise<void>> = [];
      for (let k = 0; k < 4; k++) {
        const delay = Math.floor(rnd() * 4);
        const region = Math.floor(rnd() * 6);
        jobs.push(turns(delay).then(() => (rnd() < 0.3 ? map.complete(db) : map.loadRegions(db, region * MAP_REGION_BLOCKS, region * MAP_REGION_BLOCKS + 5, MAP_PARTIAL_MAX_REGIONS))));
      }
      await Promise.all(jobs);
      await map.complete(db);
      expect(
        [...map.entries()].sort((a, b) => a[0] - b[0]),
        `seed ${seedValue} round ${round}`,
      ).toEqual(want);
    }
    expect(want).toHaveLength(entries.length);
  });

  it('concurrent loads of one region share one scan; a failed scan lays in nothing and the next call loads it', async () => {
    await seed(3, 5);
    const partial = SnapshotMap.partial(7);
    let scans = 0;
    const counting = Object.create(db) as MetadataDb;
    counting.scanBatches = (...args: Parameters<MetadataDb['scanBatches']>) => {
      scans += 1;
      return db.scanBatches(...args);
    };
    await Promise.all(Array.from({ length: 8 }, () => partial.loadRegions(counting, 0, 10, MAP_PARTIAL_MAX_REGIONS)));
    expect(scans).toBe(1);
    expect(rangeOf(partial, 0, MAP_REGION_BLOCKS - 1)).toHaveLength(5);
    const failing = Object.create(db) as MetadataDb;
    failing.scanBatches = async function* () {
      yield* [];
      throw new Error('injected scan failure');
    };
    await expect(partial.loadRegions(failing, MAP_REGION_BLOCKS, MAP_REGION_BLOCKS, MAP_PARTIAL_MAX_REGIONS)).rejects.toThrow(/injected/);
    expect(partial.covers(MAP_REGION_BLOCKS, MAP_REGION_BLOCKS)).toBe(false);
    await partial.loadRegions(db, MAP_REGION_BLOCKS, MAP_REGION_BLOCKS, MAP_PARTIAL_MAX_REGIONS);
    expect(rangeOf(partial, MAP_REGION_BLOCKS, 2 * MAP_REGION_BLOCKS - 1)).toHaveLength(5);
    // A caller waiting on another's scan of its region that fails scans again itself, and gets the region.
    const shared = Promise.allSettled([
      partial.loadRegions(failing, 2 * MAP_REGION_BLOCKS, 2 * MAP_REGION_BLOCKS, MAP_PARTIAL_MAX_REGIONS),
      partial.loadRegions(counting, 2 * MAP_REGION_BLOCKS, 2 * MAP_REGION_BLOCKS, MAP_PARTIAL_MAX_REGIONS),
    ]);
    expect(partial.loadedRegions, 'a region being loaded counts against the bound').toBe(3);
    const [owner, waiter] = await shared;
    expect(owner.status).toBe('rejected');
    expect(waiter.status).toBe('fulfilled');
    expect(rangeOf(partial, 2 * MAP_REGION_BLOCKS, 3 * MAP_REGION_BLOCKS - 1)).toHaveLength(5);
  });
});
