import { assert } from '@cowvol/base';
import { JournalAbortedError, JournalApplyError } from '@cowvol/journal';
import { VolumeClosedError } from './errors.js';

/**
 * The state of an opened volume (docs/ARCHITECTURE.md §7.10):
 *
 *     open ──fail──▶ failed
 *       │              │
 *       └──close──┬────┘
 *                 ▼
 *              closing ──▶ closed
 *
 * `failed` is SQLite's pager ERROR state: a metadata commit failed (the
 * journal aborted, or a transaction durable in the journal could not be
 * applied to LevelDB), so the in-memory view may be ahead of the disk;
 * every later call is refused with the same error until the volume is
 * closed and reopened (the open recovers from the journal).
 */
export type VolumeState = 'open' | 'failed' | 'closing' | 'closed';

/** A listener of the failure event: hears the error that failed the volume, once. */
export type FailureListener = (error: JournalAbortedError) => void;

/**
 * The state machine of one volume, and its failure event. Illegal
 * transitions are assertion failures (ASSERTION_FAILED).
 */
export class VolumeStatus {
  private current: VolumeState = 'open';
  /** What failed the volume (set with the move to `failed`). */
  private cause: unknown = undefined;
  /** The error every call of a failed volume gets (JOURNAL_ABORTED, the cause attached). */
  private refusal: JournalAbortedError | undefined = undefined;
  private readonly listeners = new Set<FailureListener>();

  get state(): VolumeState {
    return this.current;
  }

  /** The error that failed the volume, or undefined. */
  get failure(): unknown {
    return this.cause;
  }

  /**
   * `open → failed`: records `cause` and tells every failure listener
   * once. A second failure keeps the first (its error is the one reported);
   * a failure while closing or closed changes nothing (close reports it as
   * a warning).
   */
  fail(cause: unknown): void {
    if (this.current !== 'open') return;
    this.current = 'failed';
    this.cause = cause;
    const refusal = new JournalAbortedError('an earlier metadata commit failed; close and reopen the volume to recover', { cause });
    this.refusal = refusal;
    for (const listener of [...this.listeners]) {
      try {
        listener(refusal);
      } catch (err) {
        // A listener's bug must not break the volume's own bookkeeping; it surfaces like an EventEmitter listener's.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  /** `open | failed → closing`. Returns false when a close already began (close is idempotent). */
  beginClose(): boolean {
    if (this.current === 'closing' || this.current === 'closed') return false;
    this.current = 'closing';
    return true;
  }

  /** `closing → closed`. */
  finishClose(): void {
    assert(this.current === 'closing', `volume state ${this.current} cannot become closed`);
    this.current = 'closed';
    this.listeners.clear();
  }

  /**
   * Subscribes to the failure event (`open → failed`). Returns the
   * unsubscribe function. A listener added to a failed volume is not called
   * (read {@link failure} or {@link state} first).
   */
  onFailure(listener: FailureListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** True when the failure is a commit durable in the journal whose apply to LevelDB failed (JOURNAL_APPLY_FAILED): the change happened. */
  get failedAfterCommit(): boolean {
    return this.cause instanceof JournalApplyError;
  }

  /**
   * Throws unless calls are allowed: VOLUME_CLOSED when closing or closed;
   * when failed, the same JOURNAL_ABORTED error every time — except, with
   * `appliedLater`, after a commit durable in the journal (JOURNAL_APPLY_FAILED):
   * a flush still syncs the writes made before it.
   * @throws VOLUME_CLOSED, JOURNAL_ABORTED
   */
  checkUsable(appliedLater = false): void {
    if (this.current === 'closing' || this.current === 'closed') throw new VolumeClosedError();
    if (this.current === 'failed' && !(appliedLater && this.failedAfterCommit)) {
      assert(this.refusal !== undefined, 'failed volume without its error');
      throw this.refusal;
    }
  }
}
