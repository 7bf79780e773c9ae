import { assert } from '@cowvol/base';
import { decodeValue, keys, parseHexSuffix } from './metadata.js';
import { type MetadataDb } from './metadata-db.js';

/** One mapping: logical block → store block, with the CRC32C of the copy. */
export type MapEntry = [block: number, storeBlock: number, crc: number];

/**
 * Blocks per region: a region's mappings are kept sorted in one typed array
 * of at most this many entries, so an insert or delete out of order moves at
 * most this many entries, and a block's offset in its region fits 10 bits.
 */
export const MAP_REGION_BLOCKS = 1024;

/**
 * Most regions a partial map loads one by one (docs/ARCHITECTURE.md §4.15);
 * past it the whole map is loaded by one scan. Bounds the range scans a
 * long write pays (one per region, each a LevelDB iterator) against the
 * one scan of the whole map: 256 regions are 1 GiB of volume at 4 KiB blocks.
 */
export const MAP_PARTIAL_MAX_REGIONS = 256;

/** 2^32: a packed entry key is offset × 2^32 + crc (42 bits, exact in a double). */
const CRC_SPAN = 0x1_0000_0000;
/** Entries a region's array starts with; it doubles up to MAP_REGION_BLOCKS. */
const REGION_INITIAL_ENTRIES = 4;

/**
 * The mappings of one region, sorted by block: entry i is two doubles,
 * `data[2i]` = offset in the region × 2^32 + CRC32C and `data[2i + 1]` =
 * store block. Sixteen bytes per mapping and one array per region — a map
 * of a million blocks is tens of MiB, not hundreds (the memory target of
 * the 1M-mapping scenarios).
 */
interface Region {
  count: number;
  data: Float64Array;
}

/**
 * One snapshot's block map: logical block → store block holding that
 * block's content as of the snapshot (Next3's snapshot file block map), plus
 * the CRC32C of each copy so every read of the store can be verified.
 * For the active snapshot it doubles as the COW bitmap: a block in the map
 * has already been copied since the snapshot was taken.
 *
 * Loaded from LevelDB by one range scan of `map:<id>:` (sorted by block),
 * then kept in step with every committed change — and only after the
 * commit, so what it answers is always durable (guarantee 2).
 *
 * **Partial maps** (docs/ARCHITECTURE.md §4.15): a map made with
 * {@link SnapshotMap.partial} holds only the regions loaded so far
 * ({@link loadRegions}: one range scan of their keys); the COW path loads
 * the regions a write touches, so a small write's cost does not grow with
 * the snapshot's mapped blocks. {@link complete} loads the rest. Rule that
 * keeps it exact: a region's mappings change (`set`, `delete`) only once it
 * is loaded (asserted), so while a region is not loaded nobody can commit a
 * change to its keys, and a scan of them reads exactly the live view; a
 * scan's result is laid in only for regions still not loaded when it
 * arrives (a region loaded meanwhile is already exact and may have changed
 * since). `has` and `forEachInRange` of a partial map may ask only for
 * loaded regions, `size`, `entries` and `take` only of a complete map
 * (asserted).
 *
 * Layout: region number → {@link Region} (sorted, packed entries), so a
 * lookup is a binary search in at most MAP_REGION_BLOCKS entries and a range
 * (`forEachInRange`) visits only the mappings inside it (read-through.ts).
 * `version` counts changes, so a reader can tell that nothing was published
 * while it read.
 */
export class SnapshotMap {
  /** Region number → the region's mappings (never empty). */
  private readonly regions = new Map<number, Region>();
  private mapped = 0;
  /** Incremented by every `set` and `delete`: equal versions mean an unchanged map. */
  private changes = 0;
  /** Partial map: the regions loaded (or found empty) so far; undefined once complete. */
  private loaded: Set<number> | undefined;
  /** Partial map: region number → its scan in flight (concurrent loads of a region share it). */
  private readonly regionLoads = new Map<number, Promise<void>>();

  /** A complete map (every region known), empty until `set` fills it. */
  constructor(readonly snapshotId: number) {}

  /** A partial map of snapshot `snapshotId` with no region loaded yet (class comment). */
  static partial(snapshotId: number): SnapshotMap {
    const map = new SnapshotMap(snapshotId);
    map.loaded = new Set<number>();
    return map;
  }

  /** The whole map of `snapshotId`, by one range scan. @throws CORRUPT_METADATA */
  static async load(db: MetadataDb, snapshotId: number): Promise<SnapshotMap> {
    const map = new SnapshotMap(snapshotId);
    const prefix = keys.mapPrefix(snapshotId);
    for await (const batch of db.scanBatches(prefix)) {
      for (const [key, value] of batch) {
        const rec = decodeValue.map(key, value);
        map.set(parseHexSuffix(key, prefix), rec.storeBlock, rec.crc);
      }
    }
    return map;
  }

  /** Whether every region is loaded (a map from `load` or the constructor, or a partial one after `complete`). */
  get isComplete(): boolean {
    return this.loaded === undefined;
  }

  /** Regions of a partial map loaded or being loaded (0 for a complete one): what `MAP_PARTIAL_MAX_REGIONS` bounds. */
  get loadedRegions(): number {
    return this.loaded === undefined ? 0 : this.loaded.size + this.regionLoads.size;
  }

  /** Whether every region of blocks [first, last] is loaded (always, for a complete map). */
  covers(first: number, last: number): boolean {
    if (this.loaded === undefined) return true;
    for (let n = Math.floor(first / MAP_REGION_BLOCKS); n <= Math.floor(last / MAP_REGION_BLOCKS); n++) if (!this.loaded.has(n)) return false;
    return true;
  }

  /**
   * Loads the regions of blocks [first, last] not loaded yet, by one range
   * scan of their keys (regions another call is loading are waited for, not
   * scanned twice). Bounded: a call covers at most `maxRegions` regions.
   * @throws CORRUPT_METADATA, LevelDB errors (nothing is laid in then)
   */
  async loadRegions(db: MetadataDb, first: number, last: number, maxRegions: number): Promise<void> {
    const loaded = this.loaded;
    if (loaded === undefined) return;
    const firstRegion = Math.floor(first / MAP_REGION_BLOCKS);
    const lastRegion = Math.floor(last / MAP_REGION_BLOCKS);
    assert(lastRegion - firstRegion < maxRegions, `a region load of ${lastRegion - firstRegion + 1} regions`);
    const mine: number[] = [];
    const waits: Array<Promise<void>> = [];
    for (let n = firstRegion; n <= lastRegion; n++) {
      if (loaded.has(n)) continue;
      const other = this.regionLoads.get(n);
      if (other) waits.push(other);
      else mine.push(n);
    }
    if (mine.length > 0) {
      const lo = mine[0]!;
      const hi = mine[mine.length - 1]!;
      const scan = this.scanInto(db, keys.map(this.snapshotId, lo * MAP_REGION_BLOCKS), keys.map(this.snapshotId, (hi + 1) * MAP_REGION_BLOCKS - 1), new Set(mine));
      const settled = scan.finally(() => {
        for (const n of mine) this.regionLoads.delete(n);
      });
      // A waiter sees a failed scan as "not loaded" and scans again itself.
      const waited = settled.catch(() => undefined);
      for (const n of mine) this.regionLoads.set(n, waited);
      waits.push(settled);
    }
    await Promise.all(waits);
    // A waited-for load that failed left its regions unloaded: load them here (its error surfaces from this scan if it persists).
    if (!this.covers(first, last)) await this.loadRegions(db, first, last, maxRegions);
  }

  /** Loads every region not loaded yet (one scan of the whole map); afterwards the map is complete. @throws CORRUPT_METADATA, LevelDB errors */
  async complete(db: MetadataDb): Promise<void> {
    if (this.loaded === undefined) return;
    const prefix = keys.mapPrefix(this.snapshotId);
    await this.scanInto(db, prefix, `${prefix}\xff`, undefined);
    assert(this.isComplete, `snapshot ${this.snapshotId}: a completion left the map partial`);
  }

  /**
   * Scans keys [gte, lte] of this map and lays in the regions of `only`
   * (every region when undefined) that are still not loaded once the whole
   * scan has arrived, marking them loaded (the map complete, for every
   * region). Synchronous after the scan, so no change to the map and no
   * other scan's lay-in comes between the check, the lay-in and the mark.
   */
  private async scanInto(db: MetadataDb, gte: string, lte: string, only: Set<number> | undefined): Promise<void> {
    const prefix = keys.mapPrefix(this.snapshotId);
    // Block, store block, CRC triples in key (block) order, held until the whole scan is in: 24 bytes per mapping
    // in one growing typed array (a completion of a million mappings holds 24 MiB beside the map, not boxed numbers).
    let found = new Float64Array(3 * 1024);
    let length = 0;
    for await (const batch of db.scanBatches(gte, undefined, lte)) {
      for (const [key, value] of batch) {
        const rec = decodeValue.map(key, value);
        if (length + 3 > found.length) {
          const grown = new Float64Array(2 * found.length);
          grown.set(found);
          found = grown;
        }
        found[length++] = parseHexSuffix(key, prefix);
        found[length++] = rec.storeBlock;
        found[length++] = rec.crc;
      }
    }
    const loaded = this.loaded;
    if (loaded === undefined) return; // completed meanwhile: every region is exact already
    for (let i = 0; i < length; i += 3) {
      const n = Math.floor(found[i]! / MAP_REGION_BLOCKS);
      if (loaded.has(n) || (only !== undefined && !only.has(n))) continue;
      this.insert(found[i]!, found[i + 1]!, found[i + 2]!);
    }
    // In the same synchronous step as the lay-in: a scan arriving later must find these regions loaded.
    if (only !== undefined) for (const n of only) loaded.add(n);
    else this.loaded = undefined;
  }

  /** Mapped blocks. @throws ASSERTION_FAILED on a partial map */
  get size(): number {
    if (this.loaded !== undefined) assert(false, `size of the partial map of snapshot ${this.snapshotId}`);
    return this.mapped;
  }

  get version(): number {
    return this.changes;
  }

  has(block: number): boolean {
    const number = Math.floor(block / MAP_REGION_BLOCKS);
    if (this.loaded !== undefined && !this.loaded.has(number)) assert(false, `snapshot ${this.snapshotId}: block ${block} asked of a region not loaded`);
    const region = this.regions.get(number);
    return region !== undefined && indexOf(region, block % MAP_REGION_BLOCKS) >= 0;
  }

  set(block: number, storeBlock: number, crc: number): void {
    if (this.loaded !== undefined && !this.loaded.has(Math.floor(block / MAP_REGION_BLOCKS))) assert(false, `snapshot ${this.snapshotId}: block ${block} mapped in a region not loaded`);
    this.insert(block, storeBlock, crc);
  }

  /** `set` without the loaded-region check (the lay-in of a scan). */
  private insert(block: number, storeBlock: number, crc: number): void {
    const number = Math.floor(block / MAP_REGION_BLOCKS);
    const offset = block % MAP_REGION_BLOCKS;
    let region = this.regions.get(number);
    if (!region) {
      region = { count: 0, data: new Float64Array(2 * REGION_INITIAL_ENTRIES) };
      this.regions.set(number, region);
    }
    // The common case (a load scans in block order): append.
    const at = region.count === 0 || keyOffset(region.data[2 * (region.count - 1)]!) < offset ? region.count : lowerBound(region, offset);
    if (at < region.count && keyOffset(region.data[2 * at]!) === offset) assert(false, `snapshot ${this.snapshotId} already maps block ${block}`); // message built only on failure
    if (region.count * 2 === region.data.length) {
      const grown = new Float64Array(Math.min(2 * MAP_REGION_BLOCKS, region.data.length * 2));
      grown.set(region.data);
      region.data = grown;
    }
    if (at < region.count) region.data.copyWithin(2 * at + 2, 2 * at, 2 * region.count);
    region.data[2 * at] = offset * CRC_SPAN + (crc >>> 0); // a CRC is a u32 (an int32 view of one is taken as its u32)
    region.data[2 * at + 1] = storeBlock;
    region.count += 1;
    this.mapped += 1;
    this.changes += 1;
  }

  delete(block: number): void {
    const number = Math.floor(block / MAP_REGION_BLOCKS);
    if (this.loaded !== undefined && !this.loaded.has(number)) assert(false, `snapshot ${this.snapshotId}: block ${block} unmapped in a region not loaded`);
    const region = this.regions.get(number);
    const at = region ? indexOf(region, block % MAP_REGION_BLOCKS) : -1;
    assert(region !== undefined && at >= 0, `snapshot ${this.snapshotId} does not map block ${block}`);
    if (region.count === 1) this.regions.delete(number);
    else {
      region.data.copyWithin(2 * at, 2 * at + 2, 2 * region.count);
      region.count -= 1;
    }
    this.mapped -= 1;
    this.changes += 1;
  }

  /**
   * Calls `visit` for every mapped block in [first, last], ascending, with
   * its store block and CRC32C. Cost O(regions in the range + mappings in
   * the range + log of a region's size); `visit` must not change this map.
   */
  forEachInRange(first: number, last: number, visit: (block: number, storeBlock: number, crc: number) => void): void {
    if (last < first) return;
    // Message built only on failure: every snapshot read request walks each map of its chain here.
    if (!this.covers(first, last)) assert(false, `snapshot ${this.snapshotId}: blocks ${first}..${last} asked of regions not loaded`);
    if (this.mapped === 0) return;
    const lastRegion = Math.floor(last / MAP_REGION_BLOCKS);
    for (let number = Math.floor(first / MAP_REGION_BLOCKS); number <= lastRegion; number++) {
      const region = this.regions.get(number);
      if (!region) continue;
      const base = number * MAP_REGION_BLOCKS;
      for (let i = first > base ? lowerBound(region, first - base) : 0; i < region.count; i++) {
        const key = region.data[2 * i]!;
        const block = base + keyOffset(key);
        if (block > last) break;
        visit(block, region.data[2 * i + 1]!, key % CRC_SPAN);
      }
    }
  }

  /** Up to `limit` entries (bounded batches for delete). */
  take(limit: number): MapEntry[] {
    const out: MapEntry[] = [];
    for (const entry of this.entries()) {
      if (out.length >= limit) break;
      out.push(entry);
    }
    return out;
  }

  /** Every mapping, ascending within a region; regions in the order they were first mapped. */
  *entries(): IterableIterator<MapEntry> {
    if (this.loaded !== undefined) assert(false, `entries of the partial map of snapshot ${this.snapshotId}`);
    for (const [number, region] of this.regions) {
      const base = number * MAP_REGION_BLOCKS;
      for (let i = 0; i < region.count; i++) {
        const key = region.data[2 * i]!;
        yield [base + keyOffset(key), region.data[2 * i + 1]!, key % CRC_SPAN];
      }
    }
  }
}

function keyOffset(key: number): number {
  return Math.floor(key / CRC_SPAN);
}

/** Index of the first entry of `region` whose offset is ≥ `offset` (`region.count` if none). */
function lowerBound(region: Region, offset: number): number {
  const target = offset * CRC_SPAN;
  let lo = 0;
  let hi = region.count;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (region.data[2 * mid]! < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Index of the entry for `offset`, or −1. */
function indexOf(region: Region, offset: number): number {
  const i = lowerBound(region, offset);
  return i < region.count && keyOffset(region.data[2 * i]!) === offset ? i : -1;
}
