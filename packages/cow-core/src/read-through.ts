import { assert } from '@cowvol/base';
import type { SnapshotRecord } from './metadata.js';
import type { SnapshotMap } from './snapshot-map.js';
import type { SnapshotReader } from './snapshot-reader.js';
import type { VolumeContext } from './volume-context.js';

/**
 * Read-through of one snapshot read request (docs/ARCHITECTURE.md §4.3):
 * where each block comes from ({@link BlockSources}) and the reads that fetch
 * them ({@link SnapshotReader}), and the read of a snapshot range with the
 * race against overwrites closed ({@link readThrough}: the pending-COW wait
 * and the re-check of live blocks, docs/ARCHITECTURE.md §7.4).
 */

/** Snapshot maps one snapshot read loads concurrently (each is one LevelDB range scan). */
const MAP_LOADS_IN_FLIGHT = 4;

/**
 * Where each block of one read request comes from: for block `first + i`,
 * `storeBlocks[i]` is the store block holding the snapshot's copy (with its
 * bound CRC32C in `crcs[i]` and the id of the snapshot whose map holds it in
 * `owners[i]`), or -1 when the snapshot reads through to the live volume;
 * `storeIndexes` lists the i of every store-sourced block, ascending.
 * Built by walking each map of the chain once over the range
 * (`SnapshotMap.forEachInRange`), oldest map first, so the first map that
 * holds a block names its copy — O(maps + mappings in the range), not
 * O(blocks × maps).
 */
export class BlockSources {
  /** Store block of each block, -1 for live. Float64: store blocks may exceed 2^32. */
  readonly storeBlocks: Float64Array;
  /** Bound CRC32C of each block's store copy (docs/FORMAT.md §4.2; unused for live blocks). */
  readonly crcs: Uint32Array;
  /** Id of the snapshot whose map holds each block's copy: part of what its CRC32C binds (unused for live blocks). */
  readonly owners: Uint32Array;
  /** Indexes of the store-sourced blocks, ascending: a prefix of `indexes` (set by the factories). */
  storeIndexes: Int32Array;
  private readonly indexes: Int32Array;

  private constructor(
    readonly first: number,
    readonly count: number,
    readonly blockSizeBytes: number,
  ) {
    assert(Number.isSafeInteger(first) && first >= 0 && Number.isSafeInteger(count) && count > 0 && count < 2 ** 31, `bad block range ${first}+${count}`);
    assert(Number.isSafeInteger(blockSizeBytes) && blockSizeBytes > 0, `bad block size ${blockSizeBytes}`);
    // One backing store for the four arrays (fewer allocations per request): 8 + 4 + 4 + 4 bytes per block.
    const backing = new ArrayBuffer(20 * count);
    this.storeBlocks = new Float64Array(backing, 0, count).fill(-1);
    this.crcs = new Uint32Array(backing, 8 * count, count);
    this.owners = new Uint32Array(backing, 12 * count, count);
    this.indexes = new Int32Array(backing, 16 * count, count);
    this.storeIndexes = this.indexes.subarray(0, 0);
  }

  /**
   * Resolves blocks [first, first + count) of `blockSizeBytes` against
   * `chain`: the snapshot's own map, then each newer snapshot's map, oldest
   * first.
   */
  static resolve(chain: readonly SnapshotMap[], first: number, count: number, blockSizeBytes: number): BlockSources {
    const sources = new BlockSources(first, count, blockSizeBytes);
    const last = first + count - 1;
    const { storeBlocks, crcs, owners, indexes } = sources;
    let found = 0;
    let descents = 0; // found blocks whose index is below the one found before (a later map of the chain)
    for (const map of chain) {
      if (found === count) break;
      map.forEachInRange(first, last, (block, storeBlock, crc) => {
        const i = block - first;
        if (storeBlocks[i]! >= 0) return; // an older map of the chain holds it
        storeBlocks[i] = storeBlock;
        crcs[i] = crc;
        owners[i] = map.snapshotId;
        if (found > 0 && indexes[found - 1]! > i) descents += 1;
        indexes[found++] = i;
      });
    }
    sources.storeIndexes = indexes.subarray(0, found);
    if (descents > 0) sources.storeIndexes.sort();
    return sources;
  }

  /** A one-block source: block `i` of `from` (a re-check's re-read of a copy published during a read). */
  static ofStoreBlock(from: BlockSources, i: number): BlockSources {
    assert(!from.isLive(i), `block ${from.first + i} reads through to live`);
    const sources = new BlockSources(from.first + i, 1, from.blockSizeBytes);
    sources.storeBlocks[0] = from.storeBlocks[i]!;
    sources.crcs[0] = from.crcs[i]!;
    sources.owners[0] = from.owners[i]!;
    sources.indexes[0] = 0;
    sources.storeIndexes = sources.indexes.subarray(0, 1);
    return sources;
  }

  /** Blocks that read from the live volume. */
  get liveBlocks(): number {
    return this.count - this.storeIndexes.length;
  }

  isLive(i: number): boolean {
    return this.storeBlocks[i]! < 0;
  }
}

/**
 * Reads `lengthBytes` at `offsetBytes` of snapshot `rec` with the race
 * closed (docs/ARCHITECTURE.md §4.3, §7.4): resolve each block's source in
 * the chain (each map walked once over the range), wait for a pending COW
 * of any block that would come from live and resolve again, read (one live
 * read per span, store runs concurrently, straight into the result; every
 * store block CRC-checked), then re-check the blocks that came from the
 * live volume — if a COW published one meanwhile, the live read may show a
 * newer write, so the copy is read instead. The re-check is skipped when
 * no map of the chain changed during the read. With `into` (exactly
 * `lengthBytes` long) the bytes land there — straight, when the range is
 * block-aligned; else through a block-aligned buffer — and `into` is
 * returned.
 * @throws STORE_CORRUPT, IO_ERROR
 */
export async function readThrough(ctx: VolumeContext, reader: SnapshotReader, rec: SnapshotRecord, offsetBytes: number, lengthBytes: number, into?: Buffer): Promise<Buffer> {
  assert(into === undefined || into.length === lengthBytes, 'a snapshot read into a buffer of another length');
  if (lengthBytes === 0) return into ?? Buffer.alloc(0);
  const bs = ctx.blockSizeBytes;
  const first = Math.floor(offsetBytes / bs);
  const count = Math.floor((offsetBytes + lengthBytes - 1) / bs) - first + 1;
  const found = chainOf(ctx, rec);
  const chain = Array.isArray(found) ? found : await found;
  const chainVersion = (): number => chain.reduce((n, m) => n + m.version, 0);
  let version = chainVersion();
  let sources = BlockSources.resolve(chain, first, count, bs);
  // A snapshot reader that meets a pending copy waits for it, then reads the copy.
  if (await waitForPendingCopies(ctx, sources)) {
    version = chainVersion();
    sources = BlockSources.resolve(chain, first, count, bs);
  }
  const aligned = into !== undefined && offsetBytes % bs === 0 && lengthBytes % bs === 0;
  const out = aligned ? into : Buffer.allocUnsafe(count * bs); // the read plan covers every byte (asserted there)
  await reader.read(rec.name, sources, out);
  // Re-check: blocks read from live that a COW published in the meantime.
  if (sources.liveBlocks > 0 && chainVersion() !== version) {
    const now = BlockSources.resolve(chain, first, count, bs);
    for (let i = 0; i < count; i++) {
      if (!sources.isLive(i)) {
        assert(now.storeBlocks[i] === sources.storeBlocks[i], `block ${first + i} of snapshot ${rec.name} changed its copy during a read`);
        continue;
      }
      if (now.isLive(i)) continue;
      ctx.stats.readRechecks += 1;
      await reader.read(rec.name, BlockSources.ofStoreBlock(now, i), out.subarray(i * bs, (i + 1) * bs));
    }
  }
  const start = offsetBytes - first * bs;
  if (aligned) return out;
  if (into === undefined) return out.subarray(start, start + lengthBytes);
  out.copy(into, 0, start, start + lengthBytes);
  return into;
}

/** Waits for the pending COWs of the blocks `sources` reads from live; true when there were any. */
async function waitForPendingCopies(ctx: VolumeContext, sources: BlockSources): Promise<boolean> {
  if (ctx.pending.size === 0 || sources.liveBlocks === 0) return false;
  const waits: Array<Promise<void>> = [];
  for (let i = 0; i < sources.count; i++) {
    const p = sources.isLive(i) ? ctx.pending.get(sources.first + i) : undefined;
    if (p) waits.push(p.done);
  }
  if (waits.length === 0) return false;
  ctx.stats.pendingWaits += waits.length;
  await Promise.all(waits);
  return true;
}

/**
 * The read-through chain of `rec`: its map, then every newer snapshot's
 * (deleting ones too), oldest first. Synchronous when every map is loaded
 * (the common case); else loads the missing ones, `MAP_LOADS_IN_FLIGHT` at
 * a time. Loaded maps stay loaded while the gate is shared (only a frozen
 * delete drops one).
 */
function chainOf(ctx: VolumeContext, rec: SnapshotRecord): SnapshotMap[] | Promise<SnapshotMap[]> {
  const chain: SnapshotMap[] = [];
  const missing: number[] = [];
  const { catalog } = ctx;
  for (let i = Math.max(0, ctx.catalogIndexOf(rec.id)); i < catalog.length; i++) {
    const r = catalog[i]!;
    if (r.id < rec.id) continue;
    const map = ctx.maps.get(r.id);
    if (map) chain.push(map);
    else missing.push(r.id);
  }
  if (missing.length === 0) return chain;
  let next = 0;
  const loader = async (): Promise<void> => {
    for (let id = missing[next++]; id !== undefined; id = missing[next++]) await ctx.mapOf(id);
  };
  // Every loader settles before the read goes on or fails: none may outlive the read's shared gate (a delete could
  // then drop a snapshot whose map a stray load puts back).
  return Promise.allSettled(Array.from({ length: Math.min(MAP_LOADS_IN_FLIGHT, missing.length) }, loader)).then((results) => {
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    return chainOf(ctx, rec);
  });
}
