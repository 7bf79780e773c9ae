import { assert } from '@cowvol/base';
import { StoreCorruptError } from './errors.js';
import { TARGET_STORE, TARGET_VOLUME } from './layout.js';
import type { SnapshotRecord } from './metadata.js';
import type { SnapshotMap } from './snapshot-map.js';
import { storeBlockCrc } from './store-crc.js';
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

/** Store reads and live reads one request keeps in flight at most. */
export const READS_IN_FLIGHT = 32;

/**
 * Live runs separated by at most this many store-sourced blocks are read
 * with one live read (the blocks in between are read and then overwritten
 * by their store copies): one read of a few extra KiB costs less than one
 * more read call.
 */
export const LIVE_GAP_BLOCKS = 8;

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

/** The reads a {@link SnapshotReader} issues: the journal-overlaid home reads of the volume (`VolumeContext.readHomeInto`, see `snapshotReaderOf`). */
export interface ReadThroughIo {
  /** Live bytes at `offsetBytes` into all of `into` (journal mode: the journal's cached images laid over). */
  readLiveInto(offsetBytes: number, into: Buffer): Promise<void>;
  /** `into.length / blockSize` store blocks from `storeBlock` into `into` (journal mode: cached copies laid over); may come from a read cache. */
  readStoreInto(storeBlock: number, into: Buffer): Promise<void>;
  /** The same, from the store file itself, dropping any cached copy of those blocks (after a checksum mismatch). */
  rereadStoreInto(storeBlock: number, into: Buffer): Promise<void>;
}

/** One read of a request's plan: a live span or a run of consecutive store blocks. */
interface ReadOp {
  /** Index in the request of the op's first block. */
  index: number;
  blocks: number;
  /** Store run: its first store block; live span: -1. */
  storeBlock: number;
  /** Where the bytes land: part of `out`, or of the scratch buffer for a store run inside a live span. */
  into: Buffer;
  /** `into` is scratch: copied to `out` at `index` after every read has ended. */
  scratch: boolean;
}

/**
 * Reads the blocks a {@link BlockSources} names into one output buffer,
 * verifying every store block against its CRC32C.
 *
 * Plan: live runs separated by at most `LIVE_GAP_BLOCKS` store blocks are
 * merged into one live read straight into the output; each run of store
 * blocks consecutive in the store is one store read — into the output, or,
 * when it lies inside a merged live span, into a scratch buffer copied over
 * the span once every read has ended. Up to `READS_IN_FLIGHT` reads run
 * concurrently; each store run is checked as soon as it arrives, and one
 * that fails is read again from the store file (`rereadStoreInto`: the
 * failure may be a bad cached copy) before it is reported.
 */
export class SnapshotReader {
  constructor(private readonly io: ReadThroughIo) {}

  /**
   * Fills `out` (exactly `sources.count` blocks) from `sources`. Waits for
   * every read it started, even after a failure, then throws the failure of
   * the lowest block.
   * @throws STORE_CORRUPT (a store block fails its CRC32C; details: snapshot,
   *   storeBlock, offsetBytes and lengthBytes of the volume block), IO_ERROR
   */
  async read(snapshotName: string, sources: BlockSources, out: Buffer): Promise<void> {
    const bs = sources.blockSizeBytes;
    assert(out.length === sources.count * bs, `output of ${out.length} bytes for ${sources.count} blocks`);
    const ops = this.plan(sources, out);
    let failure: { index: number; error: unknown } | undefined;
    const fail = (index: number, error: unknown): void => {
      if (!failure || index < failure.index) failure = { index, error };
    };
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < ops.length && !failure) {
        const op = ops[next++]!;
        try {
          if (op.storeBlock < 0) {
            await this.io.readLiveInto((sources.first + op.index) * bs, op.into);
          } else {
            await this.io.readStoreInto(op.storeBlock, op.into);
            if (this.firstBadBlock(sources, op) >= 0) {
              // Maybe only the cached copy is bad: read the file before calling the store corrupt.
              await this.io.rereadStoreInto(op.storeBlock, op.into);
              this.verify(snapshotName, sources, op);
            }
          }
        } catch (error) {
          fail(op.index, error);
        }
      }
    };
    const workers: Array<Promise<void>> = [];
    for (let w = 0; w < Math.min(READS_IN_FLIGHT, ops.length); w++) workers.push(worker());
    await Promise.all(workers);
    if (failure) throw failure.error;
    // Store copies inside live spans go over the live bytes read there.
    for (const op of ops) if (op.scratch) op.into.copy(out, op.index * bs);
  }

  /** Index in `op` of the first store block that fails its bound CRC32C (docs/FORMAT.md §4.2), or -1. */
  private firstBadBlock(sources: BlockSources, op: ReadOp): number {
    const bs = sources.blockSizeBytes;
    for (let k = 0; k < op.blocks; k++) {
      const i = op.index + k;
      const id = { snapshotId: sources.owners[i]!, volumeBlock: sources.first + i, storeBlock: sources.storeBlocks[i]! };
      if (storeBlockCrc(id, op.into.subarray(k * bs, (k + 1) * bs)) !== sources.crcs[i]) return k;
    }
    return -1;
  }

  /** Checks the store blocks of `op` against their CRC32C. @throws STORE_CORRUPT */
  private verify(snapshotName: string, sources: BlockSources, op: ReadOp): void {
    const k = this.firstBadBlock(sources, op);
    if (k < 0) return;
    const bs = sources.blockSizeBytes;
    const i = op.index + k;
    const storeBlock = sources.storeBlocks[i]!;
    const block = sources.first + i;
    throw new StoreCorruptError(`store block ${storeBlock} (volume block ${block} of snapshot ${snapshotName}) fails its checksum: the copy is damaged, or its mapping names another block`, {
      details: { snapshot: snapshotName, storeBlock, offsetBytes: block * bs, lengthBytes: bs },
    });
  }

  /**
   * The reads for `sources`: merged live spans and store runs, every block
   * of `out` covered by a span or by a store run outside the spans. O(store
   * blocks + spans): built from `storeIndexes`, the live runs being the gaps
   * between them.
   */
  private plan(sources: BlockSources, out: Buffer): ReadOp[] {
    const bs = sources.blockSizeBytes;
    const { count, storeBlocks, storeIndexes } = sources;
    const m = storeIndexes.length;
    const ops: ReadOp[] = [];
    // Live spans [start, end): the gaps between store blocks, merged across at most LIVE_GAP_BLOCKS store blocks.
    const spans: Array<[number, number]> = [];
    for (let k = 0; k <= m; k++) {
      const start = k === 0 ? 0 : storeIndexes[k - 1]! + 1;
      const end = k === m ? count : storeIndexes[k]!;
      if (end <= start) continue;
      const prev = spans[spans.length - 1];
      if (prev && start - prev[1] <= LIVE_GAP_BLOCKS) prev[1] = end;
      else spans.push([start, end]);
    }
    let covered = 0;
    for (const [start, end] of spans) {
      ops.push({ index: start, blocks: end - start, storeBlock: -1, into: out.subarray(start * bs, end * bs), scratch: false });
      covered += end - start;
    }
    // Store runs (consecutive in the request and in the store); those inside a span read into scratch (they would race with the span's read).
    const runs: Array<{ index: number; blocks: number; inside: boolean }> = [];
    let scratchBlocks = 0;
    let span = 0;
    for (let k = 0; k < m;) {
      const i = storeIndexes[k]!;
      let n = 1;
      while (k + n < m && storeIndexes[k + n] === i + n && storeBlocks[i + n] === storeBlocks[i]! + n) n++;
      while (span < spans.length && spans[span]![1] <= i) span++;
      const inside = span < spans.length && spans[span]![0] <= i;
      assert(!inside || i + n <= spans[span]![1], 'a store run straddles a live span');
      runs.push({ index: i, blocks: n, inside });
      if (inside) scratchBlocks += n;
      else covered += n;
      k += n;
    }
    assert(covered === count, `read plan covers ${covered} of ${count} blocks`);
    const scratch = Buffer.allocUnsafe(scratchBlocks * bs); // empty when no run is inside a span
    let at = 0;
    for (const run of runs) {
      const into = run.inside ? scratch.subarray(at * bs, (at += run.blocks) * bs) : out.subarray(run.index * bs, (run.index + run.blocks) * bs);
      ops.push({ index: run.index, blocks: run.blocks, storeBlock: storeBlocks[run.index]!, into, scratch: run.inside });
    }
    return ops;
  }
}

/** The snapshot reader of a volume: its reads go to the journal-overlaid home reads of the live volume and the store. */
export function snapshotReaderOf(ctx: VolumeContext): SnapshotReader {
  const { volume, store } = ctx.parts;
  return new SnapshotReader({
    readLiveInto: (offsetBytes, into) => ctx.readHomeInto(TARGET_VOLUME, volume, offsetBytes, into),
    readStoreInto: (storeBlock, into) => ctx.readHomeInto(TARGET_STORE, store.cache, store.offsetOf(storeBlock), into),
    rereadStoreInto: (storeBlock, into) => ctx.readHomeInto(TARGET_STORE, { readInto: (offsetBytes, fresh) => store.cache.readFresh(offsetBytes, fresh) }, store.offsetOf(storeBlock), into),
  });
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
 * no map of the chain changed during the read.
 * @throws STORE_CORRUPT, IO_ERROR
 */
export async function readThrough(ctx: VolumeContext, reader: SnapshotReader, rec: SnapshotRecord, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  if (lengthBytes === 0) return Buffer.alloc(0);
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
  const out = Buffer.allocUnsafe(count * bs); // the read plan covers every byte (asserted there)
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
  return out.subarray(start, start + lengthBytes);
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
  for (const r of ctx.catalog) {
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
  return Promise.all(Array.from({ length: Math.min(MAP_LOADS_IN_FLIGHT, missing.length) }, loader)).then(() => chainOf(ctx, rec));
}
