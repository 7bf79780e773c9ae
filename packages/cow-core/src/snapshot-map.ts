import { assert } from '@cowvol/journal';
import { decodeValue, keys, parseHexSuffix, type MetadataDb } from './metadata.js';

/** One mapping: logical block → store block, with the CRC32C of the copy. */
export type MapEntry = [block: number, storeBlock: number, crc: number];

/**
 * Blocks per region of the range index: a region's mapped blocks are kept
 * sorted in one array of at most this many numbers, so an insert or delete
 * out of order moves at most this many entries.
 */
export const MAP_REGION_BLOCKS = 1024;

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
 * Besides the per-block lookup it keeps a range index (`forEachInRange`):
 * the mapped blocks of each region of `MAP_REGION_BLOCKS` blocks, sorted, so
 * that a read of n blocks visits only the mappings inside its range instead
 * of looking up every block (read-through.ts). `version` counts changes, so
 * a reader can tell that nothing was published while it read.
 */
export class SnapshotMap {
  private readonly storeBlocks = new Map<number, number>();
  private readonly crcs = new Map<number, number>();
  /** Region number → the region's mapped blocks, ascending (never empty). */
  private readonly regions = new Map<number, number[]>();
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
    return this.storeBlocks.size;
  }

  /** Incremented by every `set` and `delete`: equal versions mean an unchanged map. */
  get version(): number {
    return this.changes;
  }

  /** Store block holding `block`, or undefined when this snapshot has no copy of it. */
  storeBlockOf(block: number): number | undefined {
    return this.storeBlocks.get(block);
  }

  crcOf(block: number): number {
    const crc = this.crcs.get(block);
    assert(crc !== undefined, `snapshot ${this.snapshotId} has no checksum for block ${block}`);
    return crc;
  }

  has(block: number): boolean {
    return this.storeBlocks.has(block);
  }

  set(block: number, storeBlock: number, crc: number): void {
    if (this.storeBlocks.has(block)) assert(false, `snapshot ${this.snapshotId} already maps block ${block}`); // message built only on failure: a map load calls this per block
    this.storeBlocks.set(block, storeBlock);
    this.crcs.set(block, crc);
    const region = Math.floor(block / MAP_REGION_BLOCKS);
    const blocks = this.regions.get(region);
    if (!blocks) this.regions.set(region, [block]);
    else if (block > blocks[blocks.length - 1]!) blocks.push(block); // the common case: a load scans in block order
    else blocks.splice(lowerBound(blocks, block), 0, block);
    this.changes += 1;
  }

  delete(block: number): void {
    assert(this.storeBlocks.delete(block), `snapshot ${this.snapshotId} does not map block ${block}`);
    this.crcs.delete(block);
    const region = Math.floor(block / MAP_REGION_BLOCKS);
    const blocks = this.regions.get(region);
    const at = blocks ? lowerBound(blocks, block) : -1;
    assert(blocks !== undefined && blocks[at] === block, `snapshot ${this.snapshotId}: block ${block} missing from its range index`);
    if (blocks.length === 1) this.regions.delete(region);
    else blocks.splice(at, 1);
    this.changes += 1;
  }

  /**
   * Calls `visit` for every mapped block in [first, last], ascending, with
   * its store block and CRC32C. Cost O(regions in the range + mappings in
   * the range + log of a region's size); `visit` must not change this map.
   */
  forEachInRange(first: number, last: number, visit: (block: number, storeBlock: number, crc: number) => void): void {
    if (this.storeBlocks.size === 0 || last < first) return;
    const lastRegion = Math.floor(last / MAP_REGION_BLOCKS);
    for (let region = Math.floor(first / MAP_REGION_BLOCKS); region <= lastRegion; region++) {
      const blocks = this.regions.get(region);
      if (!blocks) continue;
      for (let i = blocks[0]! >= first ? 0 : lowerBound(blocks, first); i < blocks.length; i++) {
        const block = blocks[i]!;
        if (block > last) break;
        visit(block, this.storeBlocks.get(block)!, this.crcs.get(block)!);
      }
    }
  }

  /** Up to `limit` entries (bounded batches for delete). */
  take(limit: number): MapEntry[] {
    const out: MapEntry[] = [];
    for (const [block, storeBlock] of this.storeBlocks) {
      if (out.length >= limit) break;
      out.push([block, storeBlock, this.crcs.get(block)!]);
    }
    return out;
  }

  /** Every mapping, unordered. */
  *entries(): IterableIterator<MapEntry> {
    for (const [block, storeBlock] of this.storeBlocks) yield [block, storeBlock, this.crcs.get(block)!];
  }
}

/** Index of the first element of ascending `sorted` that is ≥ `value` (`sorted.length` if none). */
function lowerBound(sorted: number[], value: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
