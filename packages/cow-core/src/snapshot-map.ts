import { assert } from '@cowvol/journal';
import { decodeValue, keys, parseHexSuffix, type MetadataDb } from './metadata.js';

/** One mapping: logical block → store block, with the CRC32C of the copy. */
export type MapEntry = [block: number, storeBlock: number, crc: number];

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
 */
export class SnapshotMap {
  private readonly storeBlocks = new Map<number, number>();
  private readonly crcs = new Map<number, number>();

  constructor(readonly snapshotId: number) {}

  static async load(db: MetadataDb, snapshotId: number): Promise<SnapshotMap> {
    const map = new SnapshotMap(snapshotId);
    const prefix = keys.mapPrefix(snapshotId);
    for await (const [key, value] of db.scan(prefix)) {
      const rec = decodeValue.map(key, value);
      map.set(parseHexSuffix(key, prefix), rec.storeBlock, rec.crc);
    }
    return map;
  }

  get size(): number {
    return this.storeBlocks.size;
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
    assert(!this.storeBlocks.has(block), `snapshot ${this.snapshotId} already maps block ${block}`);
    this.storeBlocks.set(block, storeBlock);
    this.crcs.set(block, crc);
  }

  delete(block: number): void {
    assert(this.storeBlocks.delete(block), `snapshot ${this.snapshotId} does not map block ${block}`);
    this.crcs.delete(block);
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
