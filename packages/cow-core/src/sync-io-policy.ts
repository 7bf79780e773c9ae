import { assert } from '@cowvol/base';
import { performance } from 'node:perf_hooks';

/**
 * Adaptive synchronous I/O (docs/ARCHITECTURE.md §4.3 step 5, §4.14): a
 * small read or write served by the page cache costs a few µs when the
 * main thread issues it itself (`readSync`, `writeSync`), against a
 * thread-pool round trip (submission, a worker's wake-up, the completion
 * callback) that costs several times that in main-thread CPU. A call the
 * page cache does not serve (a cold cache, a stalled disk, dirty-page
 * throttling of writes) blocks the event loop for as long as the disk
 * takes, so a {@link SyncIoPolicy} times every synchronous call and sends
 * its caller back to the thread pool when too many are slow, and bounds
 * how much of one turn of the event loop synchronous calls may take.
 */

/** Largest read or write done synchronously; longer ones go through the thread pool (their per-call cost is small against their bytes). */
export const SYNC_MAX_BYTES = 64 * 1024;
/** Synchronous calls take at most this long of one event-loop turn (plus one call) before the rest waits for the next turn. */
export const SYNC_SLICE_MS = 1;
/** A synchronous call slower than this probably did not come from the page cache (a 4 KiB hit takes a few µs; a disk read, 50 µs and more). */
export const SYNC_SLOW_CALL_MS = 0.05;
/**
 * When more than this share of the last `SYNC_DECISION_CALLS` synchronous
 * calls were slow, the policy backs off to the thread pool: on a cold cache
 * most calls are slow; on a loaded machine a preemption makes one call in
 * many look slow, not a quarter of them.
 */
export const SYNC_SLOW_SHARE = 0.25;
/** Synchronous calls per decision. */
export const SYNC_DECISION_CALLS = 32;
/** After synchronous calls turned out slow, this many calls go through the thread pool before synchronous ones are tried again. */
export const SYNC_BACKOFF_CALLS = 4096;

/** The bounds of one {@link SyncIoPolicy} (defaults: the `SYNC_*` constants above). */
export interface SyncIoLimits {
  /** Longest time synchronous calls take of one event-loop turn, in ms (plus one call). */
  readonly sliceMs: number;
  /** A synchronous call longer than this, in ms, counts as slow. */
  readonly slowCallMs: number;
  /** Share (0..1) of slow calls in a decision window above which the policy backs off. */
  readonly slowShare: number;
  /** Synchronous calls per decision window. */
  readonly decisionCalls: number;
  /** Calls left to the thread pool after a back-off. */
  readonly backoffCalls: number;
}

export const SYNC_IO_LIMITS: SyncIoLimits = {
  sliceMs: SYNC_SLICE_MS,
  slowCallMs: SYNC_SLOW_CALL_MS,
  slowShare: SYNC_SLOW_SHARE,
  decisionCalls: SYNC_DECISION_CALLS,
  backoffCalls: SYNC_BACKOFF_CALLS,
};

/** Counters of one {@link SyncIoPolicy}. */
export interface SyncIoStats {
  /** Synchronous calls that returned. */
  syncCalls: number;
  /** Calls made through the thread pool instead (backing off, slice spent, or the caller's own choice). */
  asyncCalls: number;
  /** Times synchronous calls turned out slow and the policy went back to the thread pool. */
  backoffs: number;
  /** Times a caller waited for the next event-loop turn before more synchronous calls ({@link SyncIoPolicy.nextTurn}). */
  yields: number;
}

/** What a policy needs from its environment; tests inject a clock and turns they end by hand. */
export interface SyncIoClock {
  /** Milliseconds, monotonic (`performance.now`). */
  now(): number;
  /** Runs `fn` at the start of the next event-loop turn (`setImmediate`). */
  onNextTurn(fn: () => void): void;
}

const REAL_CLOCK: SyncIoClock = {
  now: () => performance.now(),
  onNextTurn: (fn) => setImmediate(fn),
};

/**
 * When to do small I/O synchronously on the main thread, and when to hand
 * it to the thread pool. One policy per stream of calls that share a cause
 * of slowness (the store reads of snapshot reads, the live volume file's
 * reads, its writes).
 *
 * Rules (docs/ARCHITECTURE.md §4.14):
 * - **Decision window**: every synchronous call is timed; after
 *   `decisionCalls` of them, when more than `slowShare` took longer than
 *   `slowCallMs`, the policy backs off: the next `backoffCalls` calls go
 *   through the thread pool (each counted with {@link noteAsync}), where a
 *   disk gets its requests concurrently; then synchronous calls are tried
 *   again.
 * - **Slice**: the synchronous calls of one event-loop turn take at most
 *   `sliceMs` together (plus the call that crosses it: only their own
 *   time counts, not the other work of the turn); past that
 *   {@link trySync} says no until the next turn. A slice is the calls
 *   since the last one was spent: it may span turns (no timer per turn),
 *   and ends with the turn in which it is spent. A caller
 *   with more to do either awaits {@link nextTurn} (the snapshot reader's
 *   slices) or takes the thread pool for that call (single requests).
 * - A synchronous call that throws is timed and counted in the window like
 *   any other; its error goes to the caller unchanged.
 */
export class SyncIoPolicy {
  readonly stats: SyncIoStats = { syncCalls: 0, asyncCalls: 0, backoffs: 0, yields: 0 };
  /** Calls left to the thread pool before synchronous calls are tried again. */
  private backoffLeft = 0;
  /** Synchronous calls since the last decision, and how many of them were slow. */
  private decisionCalls = 0;
  private decisionSlowCalls = 0;
  /** Time the synchronous calls of the current slice took so far, in ms. */
  private sliceSyncMs = 0;
  /** The slice is spent and ends with this event-loop turn (its reset is scheduled). */
  private sliceEnding = false;

  constructor(
    readonly limits: SyncIoLimits = SYNC_IO_LIMITS,
    private readonly clock: SyncIoClock = REAL_CLOCK,
  ) {
    assert(limits.decisionCalls >= 1 && limits.slowShare >= 0 && limits.slowShare < 1 && limits.sliceMs > 0, 'sync I/O limits out of range');
  }

  /** True while calls are left to the thread pool after slow synchronous ones. */
  get backingOff(): boolean {
    return this.backoffLeft > 0;
  }

  /** Whether the next call may be synchronous: not backing off, and this turn's slice not spent. */
  trySync(): boolean {
    if (this.backoffLeft > 0) return false;
    return this.sliceSyncMs < this.limits.sliceMs;
  }

  /**
   * Runs one synchronous call `fn`, timed and counted in the decision
   * window; returns its result or rethrows its error as it is. Call it only
   * after {@link trySync} said yes.
   */
  run<T>(fn: () => T): T {
    const startMs = this.clock.now();
    try {
      const result = fn();
      this.stats.syncCalls += 1;
      return result;
    } finally {
      const elapsedMs = this.clock.now() - startMs;
      this.sliceSyncMs += elapsedMs;
      if (this.sliceSyncMs >= this.limits.sliceMs && !this.sliceEnding) {
        // Spent: the slice ends with this turn. (Not scheduled per turn: a
        // slice may span turns until it is spent — its calls within any one
        // turn take no longer than the whole slice.)
        this.sliceEnding = true;
        this.clock.onNextTurn(() => {
          this.sliceSyncMs = 0;
          this.sliceEnding = false;
        });
      }
      this.record(elapsedMs);
    }
  }

  /** Counts one call made through the thread pool instead; shortens a back-off. */
  noteAsync(): void {
    this.stats.asyncCalls += 1;
    if (this.backoffLeft > 0) this.backoffLeft -= 1;
  }

  /** Waits for the next event-loop turn (`setImmediate`), where a new slice starts; counted in `yields`. */
  async nextTurn(): Promise<void> {
    this.stats.yields += 1;
    await new Promise<void>((resolve) => {
      this.clock.onNextTurn(resolve);
    });
  }

  /** Counts one synchronous call of `elapsedMs`; when that closes a decision window with too many slow calls, backs off. */
  private record(elapsedMs: number): void {
    this.decisionCalls += 1;
    if (elapsedMs > this.limits.slowCallMs) this.decisionSlowCalls += 1;
    if (this.decisionCalls < this.limits.decisionCalls) return;
    const slow = this.decisionSlowCalls > this.limits.slowShare * this.decisionCalls;
    this.decisionCalls = 0;
    this.decisionSlowCalls = 0;
    if (!slow) return;
    this.stats.backoffs += 1;
    this.backoffLeft = this.limits.backoffCalls;
  }
}
