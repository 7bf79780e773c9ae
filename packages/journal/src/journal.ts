import { randomBytes } from 'node:crypto';
import { pack } from 'msgpackr';
import { assert, type BlockDevice } from '@cowvol/base';
import { Checkpoint } from './checkpoint.js';
import { CommitWriter, type ApplyFn } from './commit-writer.js';
import { JournalAbortedError, JournalCorruptError, JournalCreditsExceededError } from './errors.js';
import {
  MIN_JOURNAL_BLOCKS,
  isJournalBlockSize,
  SUPERBLOCK_AREA_BYTES,
  UUID_BYTES,
  decodeSuperblock,
  encodeSuperblock,
  entriesPerRevoke,
  firstLogBlock,
  slotOffset,
  tagsPerDescriptor,
} from './format.js';
import { LogState, type JournalStats } from './log-state.js';
import { replayHome, type ReplayedTransaction } from './recovery-replay.js';
import { scanJournal } from './recovery-scan.js';
import { creditsForRecordBytes, Handle, type HandleOwner } from './transaction.js';

export { MAX_HANDLES_PER_COMMIT, type ApplyFn } from './commit-writer.js';
export type { JournalStats } from './log-state.js';

/**
 * Called once per committed transaction found at open, oldest first, after
 * its images are home. May run again after a crash during recovery.
 * `tx.records` is decoded on first access; `tx.last` marks the final call,
 * by which everything deferred must be applied (see {@link ReplayedTransaction}).
 */
export type ReplayFn = (tx: ReplayedTransaction) => Promise<void>;

/** What `Journal.open` found and did. */
export interface RecoveryReport {
  replayedTransactions: number;
  replayedRecords: number;
  replayedImages: number;
  /** Images skipped because a later transaction revoked their block. */
  revokedImages: number;
  /** The decision-table rule that ended the scan. */
  stopReason: string;
  /** Sequence of the last transaction replayed, or tail-1 when none. */
  lastSequence: number;
}

export interface JournalOpenOptions {
  /** A journal with another uuid is refused (`JOURNAL_CORRUPT`). */
  expectedUuid?: Buffer;
  /**
   * A journal whose superblock gives another block size is refused
   * (`JOURNAL_CORRUPT`) before anything is replayed: its images would land
   * home at offsets of the wrong size.
   */
  expectedBlockSizeBytes?: number;
  /** Home devices of block images, by target id. */
  targets?: ReadonlyMap<number, BlockDevice>;
  replay: ReplayFn;
  apply?: ApplyFn;
  /**
   * Checkpoint hook: make the owner's own state (e.g. LevelDB) durable up
   * to `sequence` before the tail moves past it.
   */
  beforeTailMove?: (sequence: number) => Promise<void>;
  /** Start a background checkpoint when the log is this full (0–1). Default 0.5. */
  checkpointFill?: number;
  /** A stopped handle is committed at most this long after it stopped, when nothing else triggers a commit. Default 5000 (jbd2's default commit interval). */
  commitIntervalMs?: number;
  /** Read-ahead window of each recovery pass, in bytes. Default `LOG_WINDOW_BYTES` (4 MiB). */
  recoveryWindowBytes?: number;
  /**
   * Open without writing anything: recovery passes committed records to
   * `replay` (the owner applies them somewhere private) but refuses with
   * `JOURNAL_NEEDS_RECOVERY` at the first block image it would have to
   * write home; the file is not extended; `start` and `checkpoint` are
   * refused (assertion). docs/ARCHITECTURE.md, "Read-only opens".
   */
  readOnly?: boolean;
}

/** Default journal size when formatting: 64 MiB. */
export const DEFAULT_JOURNAL_BYTES = 64 * 1024 * 1024;

/**
 * A jbd2-style journal on one file: a fixed-size circular log of blocks
 * (layout: ./format.ts, docs/FORMAT.md "Journal file"). This class is the
 * facade (docs/ARCHITECTURE.md §5): it checks arguments and state, and the
 * modules below do the work.
 *
 * - Handles with credits join the running transaction; `start` reserves log
 *   space and waits (for a checkpoint) when there is not enough — so it must
 *   be called before any lock a checkpoint might need (lock order, docs/ARCHITECTURE.md §7.3).
 * - Group commit (commit-writer.ts): handles that stop while a transaction
 *   is being written queue up and go out together in the next one:
 *   ordered-data devices are synced, then all blocks (descriptors, images,
 *   revokes, records, commit; transaction-encoder.ts) are written in one go
 *   and the journal is synced once (async commit).
 * - After a commit: images enter the image cache (image-cache.ts; latest
 *   image of each home block, read by `readImage`), revokes drop older
 *   images, the `apply` callback runs, and only then do the handles' commits resolve.
 * - Frozen copies (docs/ARCHITECTURE.md §5.2): images are copied at log time and the cache
 *   replaces entries, never mutates them; a checkpoint writes home the
 *   buffers it captured, so newer handles never wait for commit or
 *   checkpoint I/O of the same block.
 * - Checkpoint (checkpoint.ts; by fill level, on request): write the latest
 *   images of transactions ≤ n home, sync them, run `beforeTailMove(n)`,
 *   move the tail in the superblock.
 * - Recovery at open: a scan pass with the decision table (recovery-scan.ts)
 *   building the revoke table, then a replay pass reading the log again
 *   (recovery-replay.ts): images home, records through `replay` — bounded memory, idempotent.
 *
 * A failed commit or checkpoint aborts the journal (jbd2 abort): later calls
 * throw `JOURNAL_ABORTED` until reopened.
 */
export class Journal implements HandleOwner {
  readonly blockSizeBytes: number;
  readonly lengthBlocks: number;
  readonly stats: JournalStats;
  private readonly readOnly: boolean;
  private readonly checkpointer: Checkpoint;
  private readonly writer: CommitWriter;

  private constructor(
    private readonly state: LogState,
    options: JournalOpenOptions,
  ) {
    this.blockSizeBytes = state.blockSizeBytes;
    this.lengthBlocks = state.lengthBlocks;
    this.stats = state.stats;
    this.readOnly = options.readOnly === true;
    this.checkpointer = new Checkpoint(state, {
      targets: options.targets ?? new Map<number, BlockDevice>(),
      beforeTailMove: options.beforeTailMove ?? (async () => undefined),
      checkpointFill: options.checkpointFill ?? 0.5,
      readOnly: this.readOnly,
    });
    this.writer = new CommitWriter(state, this.checkpointer, options.apply ?? (async () => undefined), options.commitIntervalMs ?? 5000);
  }

  get uuid(): Buffer {
    return this.state.uuid;
  }

  /**
   * Formats `device` as an empty journal of `lengthBlocks` blocks of
   * `blockSizeBytes` (sparse), and syncs it. `tailSequence` (default 1) is
   * the sequence of its first transaction (a repaired journal starts above
   * every sequence it held, repair.ts).
   * @throws ASSERTION_FAILED for impossible geometry (a block size that is not a power of two in [512, 65536], fewer than 64 blocks); IO_ERROR, NO_SPACE
   */
  static async format(device: BlockDevice, options: { uuid?: Buffer; blockSizeBytes?: number; lengthBlocks?: number; tailSequence?: number } = {}): Promise<void> {
    const uuid = options.uuid ?? randomBytes(UUID_BYTES);
    const blockSizeBytes = options.blockSizeBytes ?? 4096;
    const lengthBlocks = options.lengthBlocks ?? Math.floor(DEFAULT_JOURNAL_BYTES / blockSizeBytes);
    assert(isJournalBlockSize(blockSizeBytes), `journal block size ${blockSizeBytes}`);
    assert(Number.isInteger(lengthBlocks) && lengthBlocks >= MIN_JOURNAL_BLOCKS && lengthBlocks < 2 ** 32, `journal length ${lengthBlocks} blocks`);
    const tailSequence = options.tailSequence ?? 1;
    assert(Number.isSafeInteger(tailSequence) && tailSequence >= 1, `journal tail sequence ${tailSequence}`);
    await device.truncate(0);
    await device.truncate(lengthBlocks * blockSizeBytes);
    const tailBlock = firstLogBlock(blockSizeBytes);
    // Both slots hold the initial tail (generations 0 and 1).
    for (const generation of [0, 1]) await device.write(slotOffset(generation), encodeSuperblock({ generation, uuid, blockSizeBytes, lengthBlocks, tailSequence, tailBlock }));
    await device.sync();
  }

  /**
   * Opens a journal and runs recovery (docs/ARCHITECTURE.md §5.4): a scan
   * pass (decision table; positions and the revoke table only), then a
   * replay pass reading the log again — images written home (skipping
   * revoked ones), records passed to `replay` — then syncs the homes. Memory
   * is bounded by the read-ahead window and one transaction's records, not
   * by the size of the log. The tail stays where it was until the
   * owner checkpoints, so a crash during recovery just recovers again.
   * With `readOnly`, nothing is written (see {@link JournalOpenOptions.readOnly}).
   * @throws JOURNAL_CORRUPT (bad superblock, foreign uuid, another block size than expected, a file shorter than its log, image for an unknown target, a transaction that changed between the passes), JOURNAL_NEEDS_RECOVERY (read-only, an image to write home), UNSUPPORTED_VERSION, IO_ERROR, whatever `replay` throws
   */
  static async open(device: BlockDevice, options: JournalOpenOptions): Promise<{ journal: Journal; recovery: RecoveryReport }> {
    const sb = decodeSuperblock(await device.read(0, SUPERBLOCK_AREA_BYTES), device.name);
    if (options.expectedUuid && !options.expectedUuid.equals(sb.uuid)) {
      throw new JournalCorruptError(`${device.name}: journal belongs to another volume (uuid mismatch)`);
    }
    if (options.expectedBlockSizeBytes !== undefined && options.expectedBlockSizeBytes !== sb.blockSizeBytes) {
      throw new JournalCorruptError(`${device.name} has ${sb.blockSizeBytes}-byte blocks; its owner has ${options.expectedBlockSizeBytes}`);
    }
    // `format` sizes the file to the whole log before it writes a superblock, and nothing shrinks it: a shorter
    // file was cut outside the journal, and the transactions past the cut are gone (committed, perhaps never
    // applied). Reading zeros there would end the scan early and lose them without a word.
    const fileBytes = await device.sizeBytes();
    if (fileBytes < sb.lengthBlocks * sb.blockSizeBytes) {
      throw new JournalCorruptError(`${device.name} is ${fileBytes} bytes; its superblock gives a log of ${sb.lengthBlocks * sb.blockSizeBytes}: the file was truncated`);
    }
    // Two passes, each through one bounded read-ahead window: the scan
    // keeps positions and the revoke table, the replay reads again.
    const scan = await scanJournal(device, sb, { windowBytes: options.recoveryWindowBytes });
    const replayed = await replayHome(device, sb, scan, {
      targets: options.targets ?? new Map<number, BlockDevice>(),
      replay: options.replay,
      readOnly: options.readOnly,
      windowBytes: options.recoveryWindowBytes,
    });
    const journal = new Journal(new LogState(device, sb.uuid, sb, scan), options);
    return {
      journal,
      recovery: {
        replayedTransactions: scan.transactions.length,
        replayedRecords: scan.transactions.reduce((n, tx) => n + tx.records, 0),
        replayedImages: replayed.images,
        revokedImages: replayed.revokedImages,
        stopReason: scan.stopReason,
        lastSequence: scan.nextSequence - 1,
      },
    };
  }

  // --------------------------------------------------------------- handles

  /**
   * Log blocks one handle of `credits` may need at most: its credits (images,
   * revokes, payload blocks) plus their descriptor and revoke blocks, the
   * records block and the commit block (docs/ARCHITECTURE.md §5.1).
   */
  blocksForCredits(credits: number): number {
    const per = Math.min(tagsPerDescriptor(this.blockSizeBytes), entriesPerRevoke(this.blockSizeBytes));
    return credits + Math.ceil(credits / per) + 2;
  }

  /**
   * Credits a handle needs to log `records` (msgpackr-encodable values) and
   * nothing else: the payload blocks their encoded bytes fill,
   * `ceil(bytes / (blockSize − 4))` (docs/FORMAT.md §5.5); 0 for none. Add
   * one per image and revoke the handle also logs. Compare with
   * {@link maxHandleCredits} to know whether they fit one handle.
   */
  creditsForRecords(records: readonly unknown[]): number {
    let bytes = 0;
    for (const r of records) bytes += pack(r).length;
    return creditsForRecordBytes(bytes, this.blockSizeBytes);
  }

  /** The most credits (log blocks, see {@link start}) one handle may start with: its log blocks may take a quarter of the log. */
  get maxHandleCredits(): number {
    const limit = Math.floor(this.state.dataBlocks / 4);
    let lo = 1;
    let hi = limit;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (this.blocksForCredits(mid) <= limit) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /**
   * Starts a handle of `credits` (jbd2 `jbd2_journal_start`; credits are log
   * blocks: one per image or revoke, and the payload blocks its records
   * fill, {@link creditsForRecords}). Reserves `blocksForCredits(credits)`
   * log blocks, waiting for a checkpoint when the log is too full — call it
   * before taking any lock.
   * @throws JOURNAL_CREDITS_EXCEEDED (more than a quarter of the log), JOURNAL_ABORTED; ASSERTION_FAILED (read-only journal, credits not a positive integer)
   */
  async start(credits: number): Promise<Handle> {
    const s = this.state;
    s.checkUsable();
    assert(!this.readOnly, 'handle started on a read-only journal');
    assert(Number.isInteger(credits) && credits > 0, `credits must be a positive integer, got ${credits}`);
    const need = this.blocksForCredits(credits);
    if (need > Math.floor(s.dataBlocks / 4)) {
      throw new JournalCreditsExceededError(`a handle of ${credits} credits needs ${need} log blocks; the journal allows ${Math.floor(s.dataBlocks / 4)} per handle`);
    }
    while (s.usedBlocks + s.reservedBlocks + need + 2 > s.dataBlocks) {
      s.stats.spaceWaits += 1;
      const [oldest] = s.committed;
      if (oldest !== undefined && oldest.sequence <= s.lastAppliedSequence) {
        // Applied transactions are in the way: a checkpoint frees them. Test again.
        await this.checkpointer.run();
        s.checkUsable();
        continue;
      }
      // Nothing to checkpoint yet (the transactions in the way are still
      // being applied, or the space is reserved by handles in flight): wait
      // for an apply, a release or a checkpoint, never spin. The waiter is
      // registered in the same tick as the test above, so a wake-up cannot
      // fall between them (one was lost when the test ran before an await).
      await s.waitForSpace();
      s.checkUsable();
    }
    s.reservedBlocks += need;
    return new Handle(this, credits, need, this.blockSizeBytes);
  }

  /**
   * @internal HandleOwner. Commit triggers (jbd2): a flush request
   * (`force`, i.e. `Handle.commit()` or `flush()`), the running transaction
   * reaching its size limit (an eighth of the log), or the commit interval.
   */
  stopHandle(handle: Handle, force: boolean): Promise<number> {
    if (this.state.abortedBy !== undefined || this.state.closed) {
      this.releaseHandle(handle);
      return Promise.reject(new JournalAbortedError('journal aborted or closed', { cause: this.state.abortedBy }));
    }
    return this.writer.enqueue(handle, force);
  }

  /** @internal HandleOwner */
  releaseHandle(handle: Handle): void {
    this.state.releaseReserved(handle.reservedBlocks);
    this.state.wakeSpaceWaiters();
  }

  /** Commits every stopped handle now (a flush request) and waits until they are durable and applied. */
  flush(): Promise<void> {
    return this.writer.flush();
  }

  /** The newest committed image of a home block not yet checkpointed, or undefined (read it from home). */
  readImage(target: number, homeBlock: number): Buffer | undefined {
    return this.state.images.get(target, homeBlock);
  }

  /** Sequence of the newest committed transaction. */
  get lastCommittedSequence(): number {
    return this.state.nextSequence - 1;
  }

  /** Log blocks holding committed, not yet checkpointed transactions. */
  get uncheckpointedBlocks(): number {
    return this.state.usedBlocks;
  }

  /** Bytes of the log holding committed, not yet checkpointed transactions. */
  get uncheckpointedBytes(): number {
    return this.state.usedBlocks * this.blockSizeBytes;
  }

  // ------------------------------------------------------------ checkpoint

  /**
   * Checkpoints every applied transaction: writes the latest images home,
   * syncs the homes, runs `beforeTailMove`, then moves the tail (superblock
   * write + sync). One at a time: a call waits for the running one, then
   * covers every transaction applied by then.
   * @throws JOURNAL_ABORTED, IO_ERROR, NO_SPACE, whatever `beforeTailMove` throws; ASSERTION_FAILED on a read-only journal
   */
  checkpoint(): Promise<void> {
    return this.checkpointer.run();
  }

  /** Waits for queued handles to commit, then closes the device. Does not checkpoint (the owner decides). */
  async close(): Promise<void> {
    const s = this.state;
    if (s.closed) return;
    if (s.abortedBy === undefined) this.writer.kick(); // stopped handles commit before close
    await this.writer.waitIdle();
    this.writer.stopTimer();
    await this.checkpointer.waitIdle();
    s.closed = true;
    s.wakeSpaceWaiters();
    await s.device.close();
  }

  /** True once a commit or checkpoint failed after touching the log (jbd2 abort): reopen to recover. */
  get aborted(): boolean {
    return this.state.abortedBy !== undefined;
  }
}
