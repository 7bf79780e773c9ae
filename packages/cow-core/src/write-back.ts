import { failedRangesError } from './failed-ranges.js';
import { CowvolError, assert, type BlockDevice } from '@cowvol/base';
import type { BufferPool } from './buffer-pool.js';

/** One overwrite of the live volume held back until the COW of its blocks is committed. */
export interface WriteBackEntry {
  readonly offsetBytes: number;
  /** A private copy of the caller's bytes (the caller may reuse its buffer once write() resolves). */
  readonly data: Buffer;
  /** First and last volume block the overwrite touches. */
  readonly firstBlock: number;
  readonly lastBlock: number;
  /** Settles (never rejects) once the entry has landed in the live volume or failed. */
  readonly landed: Promise<void>;
}

/** A stage without a pool: plain allocations, left to the garbage collector. */
const UNPOOLED: Pick<BufferPool, 'take' | 'give'> = { take: (lengthBytes) => Buffer.allocUnsafe(lengthBytes), give: () => undefined };

/** An entry as the stage keeps it: readers that pinned it, and whether it has landed (or failed). */
interface HeldEntry extends WriteBackEntry {
  pins: number;
  over: boolean;
}

/**
 * The COW an entry waits for: `published` settles once the mapping is
 * committed and published (rejects when the COW was cancelled); `end()`
 * ends its pending-COW markers, once the entry has landed (pending-cow.ts
 * `CowTicket`).
 */
export interface HeldCow {
  readonly published: Promise<void>;
  readonly end: () => void;
}

/** A write-back failure not yet reported: the byte range that did not reach the live volume, and why. */
export interface WriteBackFailure {
  offsetBytes: number;
  lengthBytes: number;
  error: unknown;
}

/**
 * The write-back stage of data=ordered mode: a bounded set of live-volume
 * overwrites whose blocks needed a COW, held in memory from the moment the
 * copy is in the store (and its mapping handed to the journal) until that
 * mapping is committed — only then may the overwrite reach the volume file
 * (guarantee 3, COW before overwrite). `write()` resolves as soon as its
 * entry is here, so the commit (store fsync, journal write and fsync,
 * LevelDB apply) of one write overlaps the next writes and many writes
 * share one group commit — the volume behaves like a disk with a volatile
 * write cache (guarantee 4); `flush()` drains the stage.
 *
 * Rules (docs/ARCHITECTURE.md "Write-back"):
 * - Bounded: at most `maxBytes` of entries; a writer waits for room.
 * - At most one entry per block: a later write touching an entry's blocks
 *   waits for it to land, so overwrites reach the volume in call order.
 * - Live reads overlay the entries (a read sees every acknowledged write).
 * - A failure to land is kept until `takeFailures()` (flush, close) reports
 *   it, like a disk reporting a write-cache error at the next flush.
 * - An entry's bytes come from the buffer pool (§3.4) and go back to it
 *   once the entry has landed and no reader still has it pinned
 *   ({@link pin}): a reader that picked an entry before reading the file
 *   lays it over afterwards, so its bytes must outlive the landing.
 */
export class WriteBackStage {
  private readonly byBlock = new Map<number, HeldEntry>();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly failures: WriteBackFailure[] = [];
  private heldBytes = 0;
  private roomWaiters: Array<() => void> = [];

  /**
   * @param blockSizeBytes the volume's block size
   * @param maxBytes bound on the bytes held (entries of up to one write piece each); 0 = the stage is not used (write-through)
   * @param live the live volume file, where entries land
   * @param pool where an entry's copy is taken from, and given back to once it has landed and is unpinned (default: plain allocations)
   */
  constructor(
    private readonly blockSizeBytes: number,
    readonly maxBytes: number,
    private readonly live: Pick<BlockDevice, 'write'>,
    private readonly pool: Pick<BufferPool, 'take' | 'give'> = UNPOOLED,
  ) {
    assert(maxBytes === 0 || maxBytes >= blockSizeBytes, 'write-back bound below one block');
  }

  /**
   * Admission to the live volume for an overwrite of blocks [first, last]
   * (ARCHITECTURE "Write-back", admission). Waits until no entry touches
   * those blocks and, when `lengthBytes` > 0 (the overwrite is to be held),
   * until it fits under the bound; then — in the same synchronous step as
   * the last check, so no other writer can slip an overlapping entry in
   * between — calls `admitted` and returns its result. `admitted` must
   * either `add()` the entry or start the direct volume write before it
   * returns (it must not await first).
   *
   * Waiting is bounded by the entries in the stage: each lands or fails
   * once its commit settles, which never waits on a writer being admitted.
   */
  async admit<T>(first: number, last: number, lengthBytes: number, admitted: () => T): Promise<T> {
    assert(first <= last, 'admission of an empty block range');
    for (;;) {
      const overlapping = this.overlapping(first, last);
      if (overlapping.length > 0) {
        await Promise.all(overlapping.map((e) => e.landed));
        continue;
      }
      if (lengthBytes > 0 && this.heldBytes > 0 && this.heldBytes + lengthBytes > this.maxBytes) {
        // An entry larger than the bound waits for an empty stage.
        await new Promise<void>((wake) => this.roomWaiters.push(wake));
        continue;
      }
      return admitted();
    }
  }

  /**
   * Holds an overwrite until every COW of `cows` is published, then lands
   * it in the live volume file. A COW that fails (its commit failed, it was
   * cancelled) drops the overwrite — the live block keeps its old content,
   * consistent with the snapshot — and records the failure. Either way the
   * COWs' pending markers end (`end()`) once the entry is gone, so a writer
   * or snapshot reader waiting on them sees the copy published and the live
   * block final. Call it only from {@link admit}'s callback: entries never
   * overlap. The stage keeps its own copy of `data` (one memcpy into a
   * buffer from its pool, given back once the entry landed and is
   * unpinned), so the caller may reuse `data` once this returns.
   * `Buffer.from(buffer)` would zero-fill a large copy first and go through
   * the typed-array constructor, about twice the cost (docs/PERFORMANCE.md
   * "The CLI write path"); a fresh buffer per entry costs a full garbage
   * collection every few tens of MiB ("Buffer reuse"). Validates before it
   * changes or copies anything: a violated invariant leaves the stage as it
   * was (and no `end()` is called; the caller still owns its markers).
   * @throws ASSERTION_FAILED when an entry already touches one of the blocks
   */
  add(offsetBytes: number, data: Buffer, cows: readonly HeldCow[]): WriteBackEntry {
    assert(data.length > 0, 'empty write-back entry');
    const bs = this.blockSizeBytes;
    const firstBlock = Math.floor(offsetBytes / bs);
    const lastBlock = Math.floor((offsetBytes + data.length - 1) / bs);
    for (let b = firstBlock; b <= lastBlock; b++) assert(!this.byBlock.has(b), `block ${b} already has a write-back entry`);
    let settle: () => void = () => undefined;
    const landed = new Promise<void>((resolve) => (settle = resolve));
    const copy = this.pool.take(data.length); // every byte is overwritten next
    data.copy(copy);
    const entry: HeldEntry = { offsetBytes, data: copy, firstBlock, lastBlock, landed, pins: 0, over: false };
    for (let b = firstBlock; b <= lastBlock; b++) this.byBlock.set(b, entry);
    this.heldBytes += data.length;
    const task: Promise<void> = Promise.all(cows.map((c) => c.published))
      .then(() => this.live.write(entry.offsetBytes, entry.data))
      .catch((error: unknown) => {
        this.failures.push({ offsetBytes, lengthBytes: data.length, error });
      })
      .finally(() => {
        for (let b = firstBlock; b <= lastBlock; b++) if (this.byBlock.get(b) === entry) this.byBlock.delete(b);
        this.heldBytes -= data.length;
        assert(this.heldBytes >= 0, 'negative write-back bytes');
        this.inFlight.delete(task);
        entry.over = true;
        if (entry.pins === 0) this.pool.give(entry.data);
        settle();
        for (const c of cows) c.end();
        for (const wake of this.roomWaiters.splice(0)) wake();
      });
    this.inFlight.add(task);
    return entry;
  }

  /** Entries touching blocks [first, last], each once, in block order. */
  overlapping(first: number, last: number): WriteBackEntry[] {
    if (this.byBlock.size === 0) return [];
    const out: WriteBackEntry[] = [];
    for (let b = first; b <= last; b++) {
      const e = this.byBlock.get(b);
      if (e && out.at(-1) !== e) out.push(e);
    }
    return out;
  }

  /**
   * Keeps the entries' bytes valid until {@link unpin}, even if they land
   * meanwhile: a reader pins what {@link overlapping} gave it before it
   * reads the file, and unpins once it has laid them over (write-path.ts
   * `readCurrent`). Every pin must be matched by one unpin.
   */
  pin(entries: readonly WriteBackEntry[]): void {
    for (const e of entries) (e as HeldEntry).pins += 1;
  }

  /** Ends a {@link pin}; an entry landed meanwhile gives its bytes back to the pool now. */
  unpin(entries: readonly WriteBackEntry[]): void {
    for (const e of entries) {
      const held = e as HeldEntry;
      held.pins -= 1;
      assert(held.pins >= 0, 'write-back entry unpinned more often than pinned');
      if (held.pins === 0 && held.over) this.pool.give(held.data);
    }
  }

  /** Copies the entries' bytes over `out`, which holds the volume bytes at `offsetBytes`. */
  static overlay(entries: WriteBackEntry[], offsetBytes: number, out: Buffer): void {
    const end = offsetBytes + out.length;
    for (const e of entries) {
      const from = Math.max(offsetBytes, e.offsetBytes);
      const to = Math.min(end, e.offsetBytes + e.data.length);
      if (from < to) e.data.copy(out, from - offsetBytes, from - e.offsetBytes, to - e.offsetBytes);
    }
  }

  /** Waits for the entries held now to land (or fail); later ones are not waited for, so it ends under a steady stream of writes. */
  async settleHeld(): Promise<void> {
    await Promise.all([...this.inFlight]);
  }

  /** Resolves once every entry held now, and any added meanwhile, has landed or failed. */
  async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all([...this.inFlight]);
  }

  /** The failures since the last call, oldest first (each reported once). */
  takeFailures(): WriteBackFailure[] {
    return this.failures.splice(0);
  }
}

/** The error a flush reports for overwrites that never reached the volume: the first failure's code, every range in `details.failedRanges`. */
export function writeBackError(failures: WriteBackFailure[]): CowvolError {
  assert(failures.length > 0, 'no write-back failure to report');
  const first = failures[0]!.error;
  const failedRanges = failures.map((f) => ({ offsetBytes: f.offsetBytes, lengthBytes: f.lengthBytes }));
  return failedRangesError(first, failedRanges, (ranges) => `earlier writes to byte ranges ${ranges} did not reach the volume (their snapshots are intact)`);
}
