import { assert } from '@cowvol/base';
import { StoreCorruptError } from './errors.js';
import { TARGET_STORE, TARGET_VOLUME } from './layout.js';
import type { BlockSources } from './read-through.js';
import { storeBlockCrc } from './store-crc.js';
import type { VolumeContext } from './volume-context.js';
import { SYNC_BACKOFF_CALLS, SYNC_DECISION_CALLS, SYNC_MAX_BYTES, SYNC_SLOW_CALL_MS, SyncIoPolicy } from './sync-io-policy.js';

/**
 * The reads of one snapshot read request (docs/ARCHITECTURE.md §4.3): a
 * plan of live spans and store runs for a {@link BlockSources}, issued
 * concurrently, store runs either through the thread pool or — while they
 * come from the page cache — synchronously in bounded slices; every store
 * block CRC-checked.
 */

/** Store reads and live reads one request keeps in flight at most (per pool: see {@link SnapshotReader}). */
export const READS_IN_FLIGHT = 32;

/**
 * Live runs separated by at most this many store-sourced blocks are read
 * with one live read (the blocks in between are read and then overwritten
 * by their store copies): one read of a few extra KiB costs less than one
 * more read call.
 */
export const LIVE_GAP_BLOCKS = 8;

/** Longest store run read synchronously (the policy's bound); longer runs go through the thread pool. */
export const SYNC_MAX_RUN_BYTES = SYNC_MAX_BYTES;
/** The reader's names for the policy's bounds (sync-io-policy.ts): a store read is one call, a store run one read. */
export { SYNC_SLICE_MS, SYNC_SLOW_SHARE } from './sync-io-policy.js';
export const SYNC_SLOW_READ_MS = SYNC_SLOW_CALL_MS;
export const SYNC_DECISION_READS = SYNC_DECISION_CALLS;
export const SYNC_BACKOFF_RUNS = SYNC_BACKOFF_CALLS;

/** The reads a {@link SnapshotReader} issues: the journal-overlaid home reads of the volume (`HomeIo.readHomeInto`, see `snapshotReaderOf`). */
export interface ReadThroughIo {
  /** Live bytes at `offsetBytes` into all of `into` (journal mode: the journal's cached images laid over). */
  readLiveInto(offsetBytes: number, into: Buffer): Promise<void>;
  /** `into.length / blockSize` store blocks from `storeBlock` into `into` (journal mode: cached copies laid over); may come from a read cache. */
  readStoreInto(storeBlock: number, into: Buffer): Promise<void>;
  /** The same, from the store file itself, dropping any cached copy of those blocks (after a checksum mismatch). */
  rereadStoreInto(storeBlock: number, into: Buffer): Promise<void>;
  /** Optional: `readStoreInto`, synchronously on the calling thread (the store device's `readIntoSync`). @throws IO_ERROR */
  readStoreIntoSync?(storeBlock: number, into: Buffer): void;
}

/** Counters of a {@link SnapshotReader}'s store reads. */
export interface SnapshotReaderStats {
  /** Store runs read synchronously. */
  syncRuns: number;
  /** Store runs read through the thread pool. */
  asyncRuns: number;
  /** Times synchronous reads turned out slow and the reader went back to the thread pool. */
  syncBackoffs: number;
  /** Times a request yielded to the event loop between slices of synchronous reads. */
  syncYields: number;
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
 * A request's reads, taken from both ends: the thread pool's workers take
 * from the front (`next`), the synchronous reader from the back (`end`),
 * never below `syncFrom` (the short store runs sit at the back).
 */
interface OpQueue {
  readonly ops: readonly ReadOp[];
  next: number;
  end: number;
  readonly syncFrom: number;
}

/** The failure of the lowest block among a request's reads. */
class LowestFailure {
  index = Infinity;
  error: unknown;

  note(index: number, error: unknown): void {
    if (index < this.index) {
      this.index = index;
      this.error = error;
    }
  }

  get failed(): boolean {
    return this.index !== Infinity;
  }
}

/**
 * Reads the blocks a {@link BlockSources} names into one output buffer,
 * verifying every store block against its CRC32C.
 *
 * Plan: live runs separated by at most `LIVE_GAP_BLOCKS` store blocks are
 * merged into one live read straight into the output; each run of store
 * blocks consecutive in the store is one store read — into the output, or,
 * when it lies inside a merged live span, into a scratch buffer copied over
 * the span once every read has ended. Each store run is checked as soon as
 * it arrives, and one that fails is read again from the store file
 * (`rereadStoreInto`: the failure may be a bad cached copy) before it is
 * reported.
 *
 * Issue: one queue per request, live spans and long store runs at the
 * front, short store runs (at most `SYNC_MAX_RUN_BYTES`) at the back. The
 * thread pool takes from the front, `READS_IN_FLIGHT` at a time. When the
 * store device offers it, the main thread takes short store runs from the
 * back and reads them synchronously, while those reads come from the page
 * cache: a 4 KiB `pread` served from memory costs a few µs on the calling
 * thread, against a thread-pool round trip (submission, a worker's
 * wake-up, the completion callback) that costs several times that in
 * main-thread CPU. Both ends work at once, so the pool's threads still
 * help where the main thread alone would get too little CPU (a loaded
 * machine). Bounded by the reader's {@link SyncIoPolicy}
 * (sync-io-policy.ts, docs/ARCHITECTURE.md §4.14): once the synchronous
 * reads of an event-loop turn took `SYNC_SLICE_MS`, the request waits for
 * the next turn before it reads on; when more than
 * `SYNC_SLOW_SHARE` of the last `SYNC_DECISION_READS` reads took longer
 * than `SYNC_SLOW_READ_MS` (the data came from the disk), the rest of the
 * request and the next `SYNC_BACKOFF_RUNS` store runs are left to the
 * pool, where a disk gets its reads concurrently.
 */
export class SnapshotReader {
  /**
   * @param io the reads to issue
   * @param policy when store runs are read synchronously (sync-io-policy.ts); one per reader, across its requests
   */
  constructor(
    private readonly io: ReadThroughIo,
    private readonly policy = new SyncIoPolicy(),
  ) {}

  /** The counters, from the policy's: a store run is one call. */
  get stats(): SnapshotReaderStats {
    const s = this.policy.stats;
    return { syncRuns: s.syncCalls, asyncRuns: s.asyncCalls, syncBackoffs: s.backoffs, syncYields: s.yields };
  }

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
    const failure = new LowestFailure();
    const syncRead = this.io.readStoreIntoSync?.bind(this.io);
    const short = (op: ReadOp): boolean => op.storeBlock >= 0 && op.blocks * bs <= SYNC_MAX_RUN_BYTES;
    const useSync = syncRead !== undefined && !this.policy.backingOff;
    // Live spans and long runs first, the short store runs behind them: the pool starts at the front, the synchronous reader at the back.
    const ordered = useSync ? [...ops.filter((op) => !short(op)), ...ops.filter(short)] : ops;
    const queue: OpQueue = { ops: ordered, next: 0, end: ordered.length, syncFrom: useSync ? ordered.length - ops.filter(short).length : ordered.length };
    const pooled = this.readPooled(snapshotName, sources, queue, failure);
    const left = syncRead !== undefined && useSync ? await this.readSync(sources, queue, syncRead, failure) : [];
    await pooled;
    await this.readPooled(snapshotName, sources, { ops: left, next: 0, end: left.length, syncFrom: left.length }, failure);
    if (failure.failed) throw failure.error;
    // Store copies inside live spans go over the live bytes read there.
    for (const op of ops) if (op.scratch) op.into.copy(out, op.index * bs);
  }

  /** Reads from the front of `queue` through the thread pool, `READS_IN_FLIGHT` at a time; stops taking new ones after a failure. */
  private async readPooled(snapshotName: string, sources: BlockSources, queue: OpQueue, failure: LowestFailure): Promise<void> {
    const bs = sources.blockSizeBytes;
    const worker = async (): Promise<void> => {
      while (queue.next < queue.end && !failure.failed) {
        const op = queue.ops[queue.next++]!;
        try {
          if (op.storeBlock < 0) {
            await this.io.readLiveInto((sources.first + op.index) * bs, op.into);
            continue;
          }
          this.policy.noteAsync();
          await this.io.readStoreInto(op.storeBlock, op.into);
          if (this.firstBadBlock(sources, op) >= 0) {
            // Maybe only the cached copy is bad: read the file before calling the store corrupt.
            await this.io.rereadStoreInto(op.storeBlock, op.into);
            this.verify(snapshotName, sources, op);
          }
        } catch (error) {
          failure.note(op.index, error);
        }
      }
    };
    const workers: Array<Promise<void>> = [];
    for (let w = 0; w < Math.min(READS_IN_FLIGHT, queue.end - queue.next); w++) workers.push(worker());
    await Promise.all(workers);
  }

  /**
   * Reads store runs from the back of `queue` synchronously while the
   * policy allows it, waiting for the next event-loop turn when a slice is
   * spent, until it meets the pool's workers or the policy backs off (the
   * rest is left in the queue for the pool). Returns the runs whose copy
   * failed its checksum, to be read again through the pool (then from the
   * file before `STORE_CORRUPT`).
   */
  private async readSync(sources: BlockSources, queue: OpQueue, syncRead: (storeBlock: number, into: Buffer) => void, failure: LowestFailure): Promise<ReadOp[]> {
    const left: ReadOp[] = [];
    const policy = this.policy;
    while (queue.end > Math.max(queue.next, queue.syncFrom) && !failure.failed) {
      if (!policy.trySync()) {
        if (policy.backingOff) break;
        await policy.nextTurn();
        continue;
      }
      const op = queue.ops[--queue.end]!;
      try {
        policy.run(() => {
          syncRead(op.storeBlock, op.into);
        });
        if (this.firstBadBlock(sources, op) >= 0) left.push(op);
      } catch (error) {
        failure.note(op.index, error);
      }
    }
    return left;
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

/**
 * The snapshot reader of a volume: its reads go to the journal-overlaid home
 * reads of the live volume and the store (`HomeIo.readHomeInto`);
 * store reads synchronously too when the store file's device offers it.
 */
export function snapshotReaderOf(ctx: VolumeContext): SnapshotReader {
  const { volume, store } = ctx.parts;
  const io: ReadThroughIo = {
    readLiveInto: (offsetBytes, into) => ctx.home.readHomeInto(TARGET_VOLUME, volume, offsetBytes, into),
    readStoreInto: (storeBlock, into) => ctx.home.readHomeInto(TARGET_STORE, store.cache, store.offsetOf(storeBlock), into),
    rereadStoreInto: (storeBlock, into) => ctx.home.readHomeInto(TARGET_STORE, { readInto: (offsetBytes, fresh) => store.cache.readFresh(offsetBytes, fresh) }, store.offsetOf(storeBlock), into),
  };
  if (store.cache.syncReads) {
    io.readStoreIntoSync = (storeBlock, into) => {
      ctx.home.readHomeIntoSync(TARGET_STORE, store.cache, store.offsetOf(storeBlock), into);
    };
  }
  return new SnapshotReader(io);
}
