import { assert } from '@cowvol/base';
import { unpackMultiple } from 'msgpackr';
import type { Checkpoint } from './checkpoint.js';
import { JournalAbortedError, JournalApplyError, OutcomeUnknownError } from './errors.js';
import type { LogState } from './log-state.js';
import { encodeTransaction, type EncodedTransaction } from './transaction-encoder.js';
import { Transaction, type Handle } from './transaction.js';

/**
 * Called for every transaction this journal commits, in sequence order,
 * right after it is durable and before any of its handles' commit resolves
 * — the place to apply records to their home. Commits wait for it.
 */
export type ApplyFn = (tx: { sequence: number; records: unknown[] }) => Promise<void>;

/** Bounds of one group commit. */
export const MAX_HANDLES_PER_COMMIT = 4096;

/**
 * The group-commit writer (jbd2's commit thread, `kjournald2`;
 * docs/ARCHITECTURE.md §5.2): stopped handles queue up; at a commit trigger
 * (a flush request, an eighth of the log queued, or the commit interval) the
 * queue goes out as transactions, one at a time: ordered-data devices
 * synced, every block written in one go, one journal sync, then the image
 * cache, `apply`, and only then the handles' commits resolve. The apply of
 * one transaction overlaps the write and sync of the next (`runCommits`).
 * A failure after the log was touched aborts the journal.
 */
export class CommitWriter {
  private queue: Handle[] = [];
  private readonly waiters = new Map<Handle, { resolve: (sequence: number) => void; reject: (e: unknown) => void }>();
  private committing = false;
  /** Set while `runCommits` waits for an apply with nothing queued: a kick calls it. */
  private kickWaiter: (() => void) | undefined;
  /** The first failed apply: no later transaction is applied (applies stay in sequence order). */
  private applyFailure: { cause: unknown } | undefined;
  private idleWaiters: Array<() => void> = [];
  private commitTimer: NodeJS.Timeout | undefined;
  private queuedBlocks = 0;

  constructor(
    private readonly state: LogState,
    private readonly checkpoint: Checkpoint,
    private readonly apply: ApplyFn,
    private readonly commitIntervalMs: number,
  ) {}

  /**
   * Queues a stopped handle; resolves with its transaction's sequence once
   * durable and applied. `force`: commit now (a flush request).
   * @throws JOURNAL_ABORTED, OUTCOME_UNKNOWN, JOURNAL_APPLY_FAILED, IO_ERROR, NO_SPACE (as rejections)
   */
  enqueue(handle: Handle, force: boolean): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.waiters.set(handle, { resolve, reject });
      this.queue.push(handle);
      this.queuedBlocks += handle.reservedBlocks;
      if (force || this.queuedBlocks > this.state.dataBlocks / 8) this.kick();
      else {
        // Not unref'd: a process waiting on a stopped handle stays alive until it commits.
        this.commitTimer ??= setTimeout(() => this.kick(), this.commitIntervalMs);
      }
    });
  }

  /** Commits every queued handle now and waits until the writer is idle. */
  async flush(): Promise<void> {
    if (this.queue.length === 0 && !this.committing) return;
    this.kick();
    await this.waitIdle();
  }

  /** Starts committing the queue now (a commit trigger). */
  kick(): void {
    this.stopTimer();
    // A pass waiting on an apply takes the queue now (`appliedOrKicked`).
    if (this.committing) this.kickWaiter?.();
    else if (this.queue.length > 0) void this.runCommits();
  }

  /** Resolves once no transaction is being written. */
  async waitIdle(): Promise<void> {
    while (this.committing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  stopTimer(): void {
    if (this.commitTimer) {
      clearTimeout(this.commitTimer);
      this.commitTimer = undefined;
    }
  }

  /**
   * Commits the queue, one transaction at a time, with one stage of
   * pipelining (docs/ARCHITECTURE.md §5.2): once a transaction is durable
   * and published, the next one is written and synced while the first one's
   * `apply` runs. Applies run in sequence order, each after the one before;
   * a transaction's handles resolve only once it is applied, as before. At
   * most one apply is in flight (the next transaction's apply waits for it).
   */
  private async runCommits(): Promise<void> {
    this.committing = true;
    // The apply of the last transaction written, and of the one before it (settled before the next is written).
    let applying: Promise<void> = Promise.resolve();
    let applyingBefore: Promise<void> = applying;
    try {
      for (;;) {
        while (this.queue.length > 0) {
          // Bounded: one apply at most runs behind the transaction being written.
          await applyingBefore;
          const tx = this.lockNextTransaction();
          try {
            const { applied } = await this.writeTransaction(tx, applying);
            applyingBefore = applying;
            applying = this.settleHandles(tx, applied);
          } catch (err) {
            this.rejectHandles(tx, err);
          }
        }
        // Idle once the last apply is done and nothing was queued meanwhile; a kick while it runs starts the next transaction at once.
        if ((await this.appliedOrKicked(applying)) && this.queue.length === 0) break;
      }
    } finally {
      this.committing = false;
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  /** Waits for `applying` (which never rejects) or a kick, whichever comes first; true when `applying` settled. */
  private async appliedOrKicked(applying: Promise<void>): Promise<boolean> {
    let applied = false;
    const settled = applying.then(() => void (applied = true));
    const kicked = new Promise<void>((resolve) => (this.kickWaiter = resolve));
    await Promise.race([settled, kicked]);
    this.kickWaiter = undefined;
    return applied;
  }

  /** Resolves (or rejects) `tx`'s handles once `applied` settles; never rejects. */
  private async settleHandles(tx: Transaction, applied: Promise<void>): Promise<void> {
    try {
      await applied;
      for (const h of tx.handles) this.waiters.get(h)?.resolve(tx.sequence);
      for (const h of tx.handles) this.waiters.delete(h);
      // Committed: keep only sequence, start and length for the checkpoint,
      // not the handles' records and images (memory bounded by the log's metadata).
      tx.handles.length = 0;
    } catch (err) {
      this.rejectHandles(tx, err);
    }
  }

  /** Rejects `tx`'s handles with `err`; after an aborting failure, every queued handle too. */
  private rejectHandles(tx: Transaction, err: unknown): void {
    for (const h of tx.handles) this.waiters.get(h)?.reject(err);
    for (const h of tx.handles) this.waiters.delete(h);
    tx.handles.length = 0;
    // Nothing queued after an aborting commit may commit: fail them too.
    if (this.state.abortedBy !== undefined) this.failQueued(err);
  }

  /** Takes queued handles into a new transaction, up to half the log or MAX_HANDLES_PER_COMMIT handles (at least one), and locks it. */
  private lockNextTransaction(): Transaction {
    const tx = new Transaction();
    const limitBlocks = Math.floor(this.state.dataBlocks / 2);
    let batchBlocks = 1;
    for (let next = this.queue[0]; next !== undefined && tx.handles.length < MAX_HANDLES_PER_COMMIT; next = this.queue[0]) {
      if (tx.handles.length > 0 && batchBlocks + next.reservedBlocks > limitBlocks) break;
      this.queue.shift();
      tx.handles.push(next);
      this.queuedBlocks -= next.reservedBlocks;
      batchBlocks += next.reservedBlocks;
    }
    tx.advance('locked');
    return tx;
  }

  /** Rejects every queued handle with JOURNAL_ABORTED and returns its log space. */
  private failQueued(cause: unknown): void {
    for (const h of this.queue.splice(0)) {
      this.queuedBlocks -= h.reservedBlocks;
      this.state.releaseReserved(h.reservedBlocks);
      this.state.wakeSpaceWaiters();
      this.waiters.get(h)?.reject(new JournalAbortedError('journal aborted by an earlier failed commit', { cause }));
      this.waiters.delete(h);
    }
  }

  /**
   * Builds, writes and syncs one transaction, and publishes it; returns once
   * it is durable, with a promise that settles once it is applied — after
   * `previousApply`, the apply of the transaction before it.
   * @throws JOURNAL_ABORTED, OUTCOME_UNKNOWN, IO_ERROR, NO_SPACE (the transaction did not happen, or may not have)
   */
  private async writeTransaction(tx: Transaction, previousApply: Promise<void>): Promise<{ applied: Promise<void> }> {
    const s = this.state;
    s.checkUsable();
    tx.sequence = s.nextSequence;
    const encoded = encodeTransaction(tx.handles, s.uuid, tx.sequence, s.blockSizeBytes);
    tx.blocks = encoded.blocks.length;
    assert(tx.blocks <= s.dataBlocks - s.usedBlocks - 1, `transaction of ${tx.blocks} blocks does not fit the free log (${s.dataBlocks - s.usedBlocks - 1})`);
    tx.advance('committing');
    tx.startBlock = s.headBlock;
    await this.syncOrderedData(tx, encoded);
    // Outcome of a failure by phase (docs/ARCHITECTURE.md, "Outcomes of a
    // failed command"): a failed write leaves no valid commit block (it is
    // written last; a torn one fails its checksum): the transaction did not
    // happen. A failed flush after it: unknown (OUTCOME_UNKNOWN). A failed
    // apply after the flush: it happened (JOURNAL_APPLY_FAILED; replayed at
    // the next open). Each aborts the journal.
    let phase: 'write' | 'flush' | 'apply' = 'write';
    try {
      const endBlock = await this.writeBlocks(encoded.blocks);
      phase = 'flush';
      await s.device.sync();
      phase = 'apply';
      s.stats.syncs += 1;
      await this.publish(tx, encoded, endBlock);
    } catch (err) {
      s.abort(err);
      // A `start` waiting for log space wakes to JOURNAL_ABORTED.
      s.wakeSpaceWaiters();
      if (phase === 'flush') {
        throw new OutcomeUnknownError(`transaction ${tx.sequence} was written to ${s.device.name} but its flush failed: it may or may not be durable`, {
          cause: err,
          details: { sequence: tx.sequence },
        });
      }
      if (phase === 'apply') throw new JournalApplyError(tx.sequence, err);
      throw err;
    }
    s.wakeSpaceWaiters();
    const applied = this.applyAfter(tx, encoded, previousApply);
    // Observed here: a failure is reported to the handles by `settleHandles`, never as an unhandled rejection.
    applied.catch(() => undefined);
    // Wrapped: an async function returning the promise itself would wait for it.
    return { applied };
  }

  /**
   * `apply`s a durable transaction's records once `previousApply` settled.
   * The transaction happened whatever fails here: the next open replays it.
   * @throws JOURNAL_APPLY_FAILED (this apply failed, or an earlier one did: the journal aborted and nothing after it is applied)
   */
  private async applyAfter(tx: Transaction, encoded: EncodedTransaction, previousApply: Promise<void>): Promise<void> {
    const s = this.state;
    await previousApply.catch(() => undefined);
    // An earlier apply failed: this one must not run out of order (the home would skip a transaction). Any other abort
    // since does not stop it: the transaction is durable, and applying it is what the next open's replay would do.
    if (this.applyFailure !== undefined) {
      // Aborted: a `start` waiting for log space must wake to see it (JOURNAL_ABORTED), or it waits until close.
      s.wakeSpaceWaiters();
      throw new JournalApplyError(tx.sequence, this.applyFailure.cause);
    }
    assert(s.lastAppliedSequence === tx.sequence - 1, `transaction ${tx.sequence} applied after ${s.lastAppliedSequence}`);
    try {
      // The home sees exactly what recovery would replay: decode the committed bytes.
      const { payload } = encoded;
      await this.apply({ sequence: tx.sequence, records: payload.length === 0 ? [] : (unpackMultiple(payload) as unknown[]) });
    } catch (err) {
      this.applyFailure ??= { cause: err };
      s.abort(err);
      s.wakeSpaceWaiters();
      throw new JournalApplyError(tx.sequence, err);
    }
    s.lastAppliedSequence = tx.sequence;
    tx.advance('committed');
    // Applied transactions can be checkpointed: a handle waiting for log space may go on.
    s.wakeSpaceWaiters();
    this.checkpoint.startIfFull();
  }

  /**
   * Ordered data first: it must be durable before the commit block can be.
   * A failure here leaves the journal untouched: the batch fails and its log
   * space is returned, the journal does not abort (a full disk under the data is not fatal).
   */
  private async syncOrderedData(tx: Transaction, encoded: EncodedTransaction): Promise<void> {
    try {
      for (const d of encoded.orderedDevices) {
        await d.sync();
        this.state.stats.orderedSyncs += 1;
      }
    } catch (err) {
      for (const h of tx.handles) this.state.releaseReserved(h.reservedBlocks);
      this.state.wakeSpaceWaiters();
      throw err;
    }
  }

  /** Writes the blocks at the head, wrapping at the end of the log; returns the block after the last one. */
  private async writeBlocks(blocks: readonly Buffer[]): Promise<number> {
    const s = this.state;
    let at = s.headBlock;
    let i = 0;
    while (i < blocks.length) {
      const run = Math.min(blocks.length - i, s.lengthBlocks - at);
      const data = run === 1 ? blocks[i] : Buffer.concat(blocks.slice(i, i + run));
      assert(data !== undefined, 'log block to write');
      await s.device.write(at * s.blockSizeBytes, data);
      s.stats.bytesWritten += data.length;
      i += run;
      at = at + run >= s.lengthBlocks ? s.firstBlock : at + run;
    }
    return at;
  }

  /** The transaction is durable: move the head, account its space, publish its images and revokes (its `apply` follows: `applyAfter`). */
  private async publish(tx: Transaction, encoded: EncodedTransaction, endBlock: number): Promise<void> {
    const s = this.state;
    s.headBlock = endBlock;
    s.nextSequence = tx.sequence + 1;
    s.committed.push(tx);
    s.usedBlocks += tx.blocks;
    for (const h of tx.handles) s.releaseReserved(h.reservedBlocks);
    // The cache now holds the newest image of each block; revokes drop older ones.
    s.images.publish(tx.sequence, encoded.images, encoded.revokes);
    // A checkpoint home write of a block revoked here lands before this commit
    // resolves, so never over the owner's own later write of it (§5.3).
    const inFlight = this.checkpoint.homeWriteSettled(encoded.revokes);
    if (inFlight) await inFlight;
    assert(!this.checkpoint.isWritingHome(encoded.revokes), `transaction ${tx.sequence}: a checkpoint still writes a block it revoked`);
    s.stats.commits += 1;
    s.stats.handles += tx.handles.length;
  }
}
