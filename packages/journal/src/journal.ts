import { randomBytes } from 'node:crypto';
import { unpackMultiple } from 'msgpackr';
import { Mutex } from 'async-mutex';
import { assert, type BlockDevice } from '@cowvol/base';
import {
  MAX_JOURNAL_BLOCK_BYTES,
  MIN_JOURNAL_BLOCKS,
  MIN_JOURNAL_BLOCK_BYTES,
  UUID_BYTES,
  chainCrc,
  decodeSuperblock,
  encodeCommit,
  encodeDescriptor,
  encodeRecords,
  encodeRevoke,
  encodeSuperblock,
  entriesPerRevoke,
  firstLogBlock,
  slotOffset,
  SUPERBLOCK_AREA_BYTES,
  tagsPerDescriptor,
  transactionSeed,
  type BlockImage,
  type Revocation,
} from './format.js';
import { replayJournal, revokeKey, scanJournal, type RecoveredTransaction, type ReplayedTransaction } from './recovery.js';
import { Handle, Transaction, type HandleOwner } from './transaction.js';
import { JournalAbortedError, JournalApplyError, JournalCorruptError, JournalCreditsExceededError, JournalNeedsRecoveryError, OutcomeUnknownError } from './errors.js';

/**
 * Called once per committed transaction found at open, oldest first, after
 * its images are home. May run again after a crash during recovery.
 * `tx.records` is decoded on first access; `tx.last` marks the final call,
 * by which everything deferred must be applied (see {@link ReplayedTransaction}).
 */
export type ReplayFn = (tx: ReplayedTransaction) => Promise<void>;

/**
 * Called for every transaction this journal commits, in sequence order,
 * right after it is durable and before any of its handles' commit resolves
 * — the place to apply records to their home. Commits wait for it.
 */
export type ApplyFn = (tx: { sequence: number; records: unknown[] }) => Promise<void>;

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

export interface JournalStats {
  /** Transactions committed. */
  commits: number;
  /** Handles committed (≥ commits: group commit puts many handles in one transaction). */
  handles: number;
  /** fdatasyncs of the journal file. */
  syncs: number;
  /** fdatasyncs of ordered-data devices before commits. */
  orderedSyncs: number;
  bytesWritten: number;
  checkpoints: number;
  /** Times `start` waited for log space. */
  spaceWaits: number;
}

export interface JournalOpenOptions {
  /** A journal with another uuid is refused (`JOURNAL_CORRUPT`). */
  expectedUuid?: Buffer;
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

/** Bounds of one group commit. */
export const MAX_HANDLES_PER_COMMIT = 4096;
/** Default journal size when formatting: 64 MiB. */
export const DEFAULT_JOURNAL_BYTES = 64 * 1024 * 1024;


/**
 * A jbd2-style journal on one file: a fixed-size circular log of blocks
 * (layout: ./format.ts, docs/FORMAT.md "Journal file").
 *
 * - Handles with credits join the running transaction; `start` reserves log
 *   space and waits (for a checkpoint) when there is not enough — so it must
 *   be called before any lock a checkpoint might need (lock order, docs/ARCHITECTURE.md §7.3).
 * - Group commit: handles that stop while a transaction is being written
 *   queue up and go out together in the next one: ordered-data devices are
 *   synced, then all blocks (descriptors, images, revokes, records, commit)
 *   are written in one go and the journal is synced once (async commit).
 * - After a commit: images enter the in-memory image cache (latest image of
 *   each home block, read by `readImage`), revokes drop older images, the
 *   `apply` callback runs, and only then do the handles' commits resolve.
 * - Frozen copies (docs/ARCHITECTURE.md §5.2): images are copied at log time and the cache
 *   replaces entries, never mutates them; a checkpoint writes home the
 *   buffers it captured, so newer handles never wait for commit or
 *   checkpoint I/O of the same block.
 * - Checkpoint (by fill level, on request, at close): write the latest
 *   images of transactions ≤ n home, sync them, run `beforeTailMove(n)`,
 *   move the tail in the superblock.
 * - Recovery at open: a scan pass with the decision table (recovery.ts)
 *   building the revoke table, then a replay pass reading the log again:
 *   images home, records through `replay` — bounded memory, idempotent.
 *
 * A failed commit or checkpoint aborts the journal (jbd2 abort): later calls
 * throw `JOURNAL_ABORTED` until reopened.
 */
export class Journal implements HandleOwner {
  readonly blockSizeBytes: number;
  readonly lengthBlocks: number;
  private readonly dataBlocks: number;
  private readonly firstBlock: number;
  private generation: number;
  private head: number;
  private nextSequence: number;
  private tailBlock: number;
  private tailSequence: number;
  private lastAppliedSequence: number;
  /** Committed transactions not yet checkpointed, oldest first. */
  private readonly committed: Transaction[] = [];
  private readonly checkpointLock = new Mutex();
  private usedBlocks = 0;
  private reservedBlocks = 0;
  private readonly cache = new Map<string, { target: number; homeBlock: number; data: Buffer; sequence: number }>();
  private queue: Handle[] = [];
  private readonly waiters = new Map<Handle, { resolve: (s: number) => void; reject: (e: unknown) => void }>();
  private committing = false;
  private idleWaiters: Array<() => void> = [];
  private spaceWaiters: Array<() => void> = [];
  private abortedBy: unknown = undefined;
  private closed = false;
  private readonly apply: ApplyFn;
  private readonly beforeTailMove: (sequence: number) => Promise<void>;
  private readonly checkpointFill: number;
  private readonly commitIntervalMs: number;
  private commitTimer: NodeJS.Timeout | undefined;
  private queuedBlocks = 0;
  private readonly readOnly: boolean;
  readonly stats: JournalStats = { commits: 0, handles: 0, syncs: 0, orderedSyncs: 0, bytesWritten: 0, checkpoints: 0, spaceWaits: 0 };

  private constructor(
    private readonly device: BlockDevice,
    readonly uuid: Buffer,
    sb: { generation: number; blockSizeBytes: number; lengthBlocks: number; tailBlock: number; tailSequence: number },
    scanned: { head: number; nextSequence: number; transactions: RecoveredTransaction[] },
    private readonly targets: ReadonlyMap<number, BlockDevice>,
    options: JournalOpenOptions,
  ) {
    this.blockSizeBytes = sb.blockSizeBytes;
    this.lengthBlocks = sb.lengthBlocks;
    this.firstBlock = firstLogBlock(sb.blockSizeBytes);
    this.dataBlocks = sb.lengthBlocks - this.firstBlock;
    this.generation = sb.generation;
    this.head = scanned.head;
    this.nextSequence = scanned.nextSequence;
    this.tailBlock = sb.tailBlock;
    this.tailSequence = sb.tailSequence;
    this.lastAppliedSequence = scanned.nextSequence - 1;
    for (const rec of scanned.transactions) {
      this.committed.push(Transaction.recovered(rec.sequence, rec.startBlock, rec.blocks));
      this.usedBlocks += rec.blocks;
    }
    this.apply = options.apply ?? (async () => undefined);
    this.beforeTailMove = options.beforeTailMove ?? (async () => undefined);
    this.checkpointFill = options.checkpointFill ?? 0.5;
    this.commitIntervalMs = options.commitIntervalMs ?? 5000;
    this.readOnly = options.readOnly === true;
  }

  /**
   * Formats `device` as an empty journal of `lengthBlocks` blocks of
   * `blockSizeBytes` (sparse), and syncs it. `tailSequence` (default 1) is
   * the sequence of its first transaction (a repaired journal starts above
   * every sequence it held, repair.ts).
   * @throws INVALID_ARGUMENT-like assertion failures for impossible geometry
   */
  static async format(device: BlockDevice, options: { uuid?: Buffer; blockSizeBytes?: number; lengthBlocks?: number; tailSequence?: number } = {}): Promise<void> {
    const uuid = options.uuid ?? randomBytes(UUID_BYTES);
    const blockSizeBytes = options.blockSizeBytes ?? 4096;
    const lengthBlocks = options.lengthBlocks ?? Math.floor(DEFAULT_JOURNAL_BYTES / blockSizeBytes);
    assert(blockSizeBytes >= MIN_JOURNAL_BLOCK_BYTES && blockSizeBytes <= MAX_JOURNAL_BLOCK_BYTES && (blockSizeBytes & (blockSizeBytes - 1)) === 0, `journal block size ${blockSizeBytes}`);
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
   * Opens a journal and runs recovery (recovery.ts): a scan pass
   * (decision table; positions and the revoke table only), then a replay
   * pass reading the log again — images written home (skipping revoked
   * ones), records passed to `replay` — then syncs the homes. Memory is
   * bounded by the read-ahead window and one transaction's records, not by
   * the size of the log. The tail stays where it was until the
   * owner checkpoints, so a crash during recovery just recovers again.
   * With `readOnly`, nothing is written (see {@link JournalOpenOptions.readOnly}).
   * @throws JOURNAL_CORRUPT (bad superblock, foreign uuid, image for an unknown target, a transaction that changed between the passes), JOURNAL_NEEDS_RECOVERY (read-only, an image to write home), UNSUPPORTED_VERSION, IO_ERROR, whatever `replay` throws
   */
  static async open(device: BlockDevice, options: JournalOpenOptions): Promise<{ journal: Journal; recovery: RecoveryReport }> {
    const sb = decodeSuperblock(await device.read(0, SUPERBLOCK_AREA_BYTES), device.name);
    if (options.expectedUuid && !options.expectedUuid.equals(sb.uuid)) {
      throw new JournalCorruptError(`${device.name}: journal belongs to another volume (uuid mismatch)`);
    }
    if (!options.readOnly && (await device.sizeBytes()) < sb.lengthBlocks * sb.blockSizeBytes) {
      // A short file reads as zeros past its end: those blocks end the scan. Extend it so writes land in place.
      await device.truncate(sb.lengthBlocks * sb.blockSizeBytes);
    }
    const targets = options.targets ?? new Map<number, BlockDevice>();
    // Two passes, each through one bounded read-ahead window (recovery.ts):
    // the scan keeps positions and the revoke table, the replay reads again.
    const passOptions = { windowBytes: options.recoveryWindowBytes };
    const scan = await scanJournal(device, sb, passOptions);
    const touched = new Set<BlockDevice>();
    const replayed = await replayJournal(
      device,
      sb,
      scan,
      {
        image: async (target, homeBlock, data, sequence) => {
          const home = targets.get(target);
          if (!home) throw new JournalCorruptError(`${device.name}: transaction ${sequence} holds an image for unknown target ${target}`);
          if (options.readOnly) {
            throw new JournalNeedsRecoveryError(`${device.name}: committed transaction ${sequence} holds block images that recovery must write home; open the volume writable once`, {
              details: { sequence },
            });
          }
          await home.write(homeBlock * sb.blockSizeBytes, data);
          touched.add(home);
        },
        transaction: (tx) => options.replay(tx),
      },
      passOptions,
    );
    for (const home of touched) await home.sync();
    const journal = new Journal(device, sb.uuid, sb, { head: scan.headBlock, nextSequence: scan.nextSequence, transactions: scan.transactions }, targets, options);
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

  /** Log blocks one handle of `credits` items may need at most (descriptor/revoke/records overhead included). */
  blocksForCredits(credits: number): number {
    const per = Math.min(tagsPerDescriptor(this.blockSizeBytes), entriesPerRevoke(this.blockSizeBytes));
    return credits + Math.ceil(credits / per) + 2;
  }

  /** The most credits one handle may start with (its log blocks may take a quarter of the log). */
  get maxHandleCredits(): number {
    const limit = Math.floor(this.dataBlocks / 4);
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
   * Starts a handle that may log up to `credits` items (jbd2
   * `jbd2_journal_start`). Reserves log space, waiting for a checkpoint
   * when the log is too full — call it before taking any lock.
   * @throws JOURNAL_CREDITS_EXCEEDED (more than a quarter of the log), JOURNAL_ABORTED
   */
  async start(credits: number): Promise<Handle> {
    this.checkUsable();
    assert(!this.readOnly, 'handle started on a read-only journal');
    assert(Number.isInteger(credits) && credits > 0, `credits must be a positive integer, got ${credits}`);
    const need = this.blocksForCredits(credits);
    if (need > Math.floor(this.dataBlocks / 4)) {
      throw new JournalCreditsExceededError(`a handle of ${credits} credits needs ${need} log blocks; the journal allows ${Math.floor(this.dataBlocks / 4)} per handle`);
    }
    while (this.usedBlocks + this.reservedBlocks + need + 2 > this.dataBlocks) {
      this.stats.spaceWaits += 1;
      if (this.committed.length > 0 && this.committed[0]!.sequence <= this.lastAppliedSequence) {
        // Applied transactions are in the way: a checkpoint frees them. Test again.
        await this.checkpoint();
        this.checkUsable();
        continue;
      }
      // Nothing to checkpoint yet (the transactions in the way are still
      // being applied, or the space is reserved by handles in flight): wait
      // for an apply, a release or a checkpoint, never spin. The waiter is
      // registered in the same tick as the test above, so a wake-up cannot
      // fall between them (one was lost when the test ran before an await).
      await new Promise<void>((wake) => this.spaceWaiters.push(wake));
      this.checkUsable();
    }
    this.reservedBlocks += need;
    return new Handle(this, credits, need, this.blockSizeBytes);
  }

  /** Convenience: one handle with exactly these records, committed. Resolves with the sequence once durable and applied. */
  async commit(records: unknown[]): Promise<number> {
    const handle = await this.start(Math.max(1, records.length));
    for (const r of records) handle.log(r);
    return handle.commit();
  }

  /**
   * @internal HandleOwner. Commit triggers (jbd2): a flush request
   * (`force`, i.e. `Handle.commit()` or `flush()`), the running transaction
   * reaching its size limit (an eighth of the log), or the commit interval.
   */
  stopHandle(handle: Handle, force: boolean): Promise<number> {
    if (this.abortedBy !== undefined || this.closed) {
      this.releaseHandle(handle);
      return Promise.reject(new JournalAbortedError('journal aborted or closed', { cause: this.abortedBy }));
    }
    return new Promise<number>((resolve, reject) => {
      this.waiters.set(handle, { resolve, reject });
      this.queue.push(handle);
      this.queuedBlocks += handle.reservedBlocks;
      if (force || this.queuedBlocks > this.dataBlocks / 8) this.kickCommit();
      else if (!this.commitTimer) {
        // Not unref'd: a process waiting on a stopped handle stays alive until it commits.
        this.commitTimer = setTimeout(() => this.kickCommit(), this.commitIntervalMs);
      }
    });
  }

  /** Commits every stopped handle now (a flush request) and waits until they are durable and applied. */
  async flush(): Promise<void> {
    if (this.queue.length === 0 && !this.committing) return;
    this.kickCommit();
    while (this.committing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private kickCommit(): void {
    if (this.commitTimer) {
      clearTimeout(this.commitTimer);
      this.commitTimer = undefined;
    }
    if (!this.committing && this.queue.length > 0) void this.runCommits();
  }

  /** @internal HandleOwner */
  releaseHandle(handle: Handle): void {
    this.reservedBlocks -= handle.reservedBlocks;
    assert(this.reservedBlocks >= 0, 'negative log reservation');
    this.wakeSpaceWaiters();
  }

  /** The newest committed image of a home block not yet checkpointed, or undefined (read it from home). */
  readImage(target: number, homeBlock: number): Buffer | undefined {
    return this.cache.get(revokeKey(target, homeBlock))?.data;
  }

  /** Sequence of the newest committed transaction. */
  get lastCommittedSequence(): number {
    return this.nextSequence - 1;
  }

  /** Log blocks holding committed, not yet checkpointed transactions. */
  get uncheckpointedBlocks(): number {
    return this.usedBlocks;
  }

  get uncheckpointedBytes(): number {
    return this.usedBlocks * this.blockSizeBytes;
  }

  /** Handles waiting for the next commit. */
  get queuedHandles(): number {
    return this.queue.length;
  }

  // ---------------------------------------------------------------- commit

  private async runCommits(): Promise<void> {
    this.committing = true;
    try {
      while (this.queue.length > 0) {
        const tx = new Transaction();
        const limit = Math.floor(this.dataBlocks / 2);
        let blocks = 1;
        while (this.queue.length > 0 && tx.handles.length < MAX_HANDLES_PER_COMMIT) {
          const next = this.queue[0]!;
          if (tx.handles.length > 0 && blocks + next.reservedBlocks > limit) break;
          tx.handles.push(this.queue.shift()!);
          this.queuedBlocks -= next.reservedBlocks;
          blocks += next.reservedBlocks;
        }
        tx.advance('locked');
        try {
          await this.writeTransaction(tx);
          for (const h of tx.handles) this.waiters.get(h)!.resolve(tx.sequence);
        } catch (err) {
          for (const h of tx.handles) this.waiters.get(h)!.reject(err);
          // Nothing queued after an aborting commit may commit: fail them too.
          if (this.abortedBy !== undefined) for (const h of this.queue.splice(0)) {
            this.queuedBlocks -= h.reservedBlocks;
            this.releaseHandle(h);
            this.waiters.get(h)!.reject(new JournalAbortedError('journal aborted by an earlier failed commit', { cause: err }));
            this.waiters.delete(h);
          }
        } finally {
          for (const h of tx.handles) this.waiters.delete(h);
          // Committed: keep only sequence, start and length for the checkpoint,
          // not the handles' records and images (memory bounded by the log's metadata).
          tx.handles.length = 0;
        }
      }
    } finally {
      this.committing = false;
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  /** Builds, writes, syncs and applies one transaction. */
  private async writeTransaction(tx: Transaction): Promise<void> {
    this.checkUsable();
    tx.sequence = this.nextSequence;
    const bs = this.blockSizeBytes;
    const seed = transactionSeed(this.uuid, tx.sequence);
    const images: BlockImage[] = [];
    const revokes: Revocation[] = [];
    const recordBuffers: Buffer[] = [];
    let recordBytes = 0;
    const ordered = new Set<BlockDevice>();
    // The last word on a block within the transaction wins, in handle order
    // (within one handle, its images come after its revokes): an image after
    // a revoke cancels the revoke (jbd2 cancel_revoke); a revoke after an
    // image drops the image. The cache and recovery then agree.
    const last = new Map<string, 'image' | 'revoke'>();
    for (const h of tx.handles) {
      for (const r of h.revokes) last.set(revokeKey(r.target, r.homeBlock), 'revoke');
      for (const img of h.images) last.set(revokeKey(img.target, img.homeBlock), 'image');
      recordBuffers.push(...h.records);
      recordBytes += h.recordBytes;
      for (const d of h.orderedDevices) ordered.add(d);
    }
    const revoked = new Set<string>();
    for (const h of tx.handles) {
      for (const r of h.revokes) {
        const k = revokeKey(r.target, r.homeBlock);
        if (last.get(k) === 'revoke' && !revoked.has(k)) {
          revoked.add(k);
          revokes.push(r);
        }
      }
      for (const img of h.images) if (last.get(revokeKey(img.target, img.homeBlock)) === 'image') images.push(img);
    }
    const out: Buffer[] = [];
    const per = tagsPerDescriptor(bs);
    for (let i = 0; i < images.length; i += per) out.push(...encodeDescriptor(images.slice(i, i + per), bs, tx.sequence, seed));
    const perRevoke = entriesPerRevoke(bs);
    for (let i = 0; i < revokes.length; i += perRevoke) out.push(encodeRevoke(revokes.slice(i, i + perRevoke), bs, tx.sequence, seed));
    const payload = Buffer.concat(recordBuffers, recordBytes);
    if (recordBuffers.length > 0) out.push(...encodeRecords(payload, recordBuffers.length, bs, tx.sequence, seed));
    let crc = seed;
    for (const b of out) crc = chainCrc(crc, b);
    out.push(encodeCommit(out.length, crc, bs, tx.sequence, seed));
    tx.blocks = out.length;
    assert(tx.blocks <= this.dataBlocks - this.usedBlocks - 1, `transaction of ${tx.blocks} blocks does not fit the free log (${this.dataBlocks - this.usedBlocks - 1})`);
    tx.advance('committing');
    tx.startBlock = this.head;
    // Ordered data first: it must be durable before the commit block can be.
    // A failure here leaves the journal untouched: the batch fails, the
    // journal does not abort (a full disk under the data is not fatal).
    try {
      for (const d of ordered) {
        await d.sync();
        this.stats.orderedSyncs += 1;
      }
    } catch (err) {
      for (const h of tx.handles) this.reservedBlocks -= h.reservedBlocks;
      this.wakeSpaceWaiters();
      throw err;
    }
    // Outcome of a failure by phase (docs/ARCHITECTURE.md, "Outcomes of a
    // failed command"): a failed write leaves no valid commit block (it is
    // written last; a torn one fails its checksum): the transaction did not
    // happen. A failed flush after it: unknown (OUTCOME_UNKNOWN). A failed
    // apply after the flush: it happened (JOURNAL_APPLY_FAILED; replayed at
    // the next open). Each aborts the journal.
    let phase: 'write' | 'flush' | 'apply' = 'write';
    try {
      // Write the blocks at head, wrapping at the end of the log.
      let at = this.head;
      let i = 0;
      while (i < out.length) {
        const run = Math.min(out.length - i, this.lengthBlocks - at);
        const data = run === 1 ? out[i]! : Buffer.concat(out.slice(i, i + run));
        await this.device.write(at * bs, data);
        this.stats.bytesWritten += data.length;
        i += run;
        at = at + run >= this.lengthBlocks ? this.firstBlock : at + run;
      }
      phase = 'flush';
      await this.device.sync();
      phase = 'apply';
      this.stats.syncs += 1;
      this.head = at;
      this.nextSequence = tx.sequence + 1;
      this.committed.push(tx);
      this.usedBlocks += tx.blocks;
      for (const h of tx.handles) this.reservedBlocks -= h.reservedBlocks;
      // The cache now holds the newest image of each block; revokes drop older ones.
      for (const r of revokes) {
        const k = revokeKey(r.target, r.homeBlock);
        const e = this.cache.get(k);
        if (e && e.sequence <= tx.sequence) this.cache.delete(k);
      }
      for (const img of images) this.cache.set(revokeKey(img.target, img.homeBlock), { ...img, sequence: tx.sequence });
      this.stats.commits += 1;
      this.stats.handles += tx.handles.length;
      // The home sees exactly what recovery would replay: decode the committed bytes.
      await this.apply({ sequence: tx.sequence, records: payload.length === 0 ? [] : (unpackMultiple(payload) as unknown[]) });
      this.lastAppliedSequence = tx.sequence;
      tx.advance('committed');
    } catch (err) {
      this.abortedBy ??= err;
      if (phase === 'flush') {
        throw new OutcomeUnknownError(`transaction ${tx.sequence} was written to ${this.device.name} but its flush failed: it may or may not be durable`, { cause: err, details: { sequence: tx.sequence } });
      }
      if (phase === 'apply') throw new JournalApplyError(tx.sequence, err);
      throw err;
    }
    this.wakeSpaceWaiters();
    if (this.usedBlocks > this.dataBlocks * this.checkpointFill && !this.checkpointLock.isLocked()) {
      // Background checkpoint: writers are not blocked by it unless the log is full.
      void this.checkpoint().catch(() => undefined);
    }
  }

  // ------------------------------------------------------------ checkpoint

  /**
   * Checkpoints every applied transaction: writes the latest images home,
   * syncs the homes, runs `beforeTailMove`, then moves the tail (superblock
   * write + sync). One at a time; concurrent callers share it.
   */
  checkpoint(): Promise<void> {
    // Serialized, and each call covers every transaction applied when it
    // runs (a call never returns the result of an older, narrower one).
    return this.checkpointLock.runExclusive(() => this.runCheckpoint());
  }

  private async runCheckpoint(): Promise<void> {
    this.checkUsable();
    assert(!this.readOnly, 'checkpoint of a read-only journal');
    const n = this.lastAppliedSequence;
    if (this.committed.length === 0 || this.committed[0]!.sequence > n) return;
    try {
      // Frozen copies: the buffers captured here are written; newer images replace cache entries, never these buffers.
      const captured = [...this.cache.values()].filter((e) => e.sequence <= n);
      const homes = new Set<BlockDevice>();
      captured.sort((a, b) => a.target - b.target || a.homeBlock - b.homeBlock);
      for (const e of captured) {
        const home = this.targets.get(e.target);
        assert(home !== undefined, `no home device for target ${e.target}`);
        await home.write(e.homeBlock * this.blockSizeBytes, e.data);
        homes.add(home);
      }
      for (const home of homes) await home.sync();
      await this.beforeTailMove(n);
      const after = this.committed.find((c) => c.sequence > n);
      const tailBlock = after ? after.startBlock : this.head;
      const tailSequence = after ? after.sequence : this.nextSequence;
      const generation = (this.generation + 1) >>> 0;
      await this.device.write(slotOffset(generation), encodeSuperblock({ generation, uuid: this.uuid, blockSizeBytes: this.blockSizeBytes, lengthBlocks: this.lengthBlocks, tailSequence, tailBlock }));
      await this.device.sync();
      this.generation = generation;
      this.stats.syncs += 1;
      while (this.committed.length > 0 && this.committed[0]!.sequence <= n) {
        const done = this.committed.shift()!;
        done.advance('checkpointed');
        this.usedBlocks -= done.blocks;
      }
      this.tailBlock = tailBlock;
      this.tailSequence = tailSequence;
      for (const e of captured) {
        const k = revokeKey(e.target, e.homeBlock);
        if (this.cache.get(k) === e) this.cache.delete(k);
      }
      this.stats.checkpoints += 1;
    } catch (err) {
      this.abortedBy ??= err;
      throw err;
    }
    this.wakeSpaceWaiters();
  }

  /** Waits for queued handles to commit, then closes the device. Does not checkpoint (the owner decides). */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.abortedBy === undefined) this.kickCommit(); // stopped handles commit before close
    while (this.committing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    if (this.commitTimer) clearTimeout(this.commitTimer);
    await this.checkpointLock.waitForUnlock();
    this.closed = true;
    this.wakeSpaceWaiters();
    await this.device.close();
  }

  /** True once a commit or checkpoint failed after touching the log (jbd2 abort): reopen to recover. */
  get aborted(): boolean {
    return this.abortedBy !== undefined;
  }

  /** Superblock tail, for tests and `info`. */
  get tail(): { block: number; sequence: number } {
    return { block: this.tailBlock, sequence: this.tailSequence };
  }

  private wakeSpaceWaiters(): void {
    for (const wake of this.spaceWaiters.splice(0)) wake();
  }

  private checkUsable(): void {
    if (this.closed) throw new JournalAbortedError('journal is closed');
    if (this.abortedBy !== undefined) throw new JournalAbortedError('journal aborted after a failed commit or checkpoint; reopen to recover', { cause: this.abortedBy });
  }
}
