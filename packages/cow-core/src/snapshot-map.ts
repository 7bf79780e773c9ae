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

  constructor(readonly snapshotId: number) {}

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

  get size(): number {
    return this.mapped;
  }

  get version(): number {
    return this.changes;
  }

  has(block: number): boolean {
    const region = this.regions.get(Math.floor(block / MAP_REGION_BLOCKS));
    return region !== undefined && indexOf(region, block % MAP_REGION_BLOCKS) >= 0;
  }

  set(block: number, storeBlock: number, crc: number): void {
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
    if (this.mapped === 0 || last < first) return;
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
