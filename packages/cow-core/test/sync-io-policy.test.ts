import { describe, expect, it } from 'vitest';
import { IoError } from '@cowvol/base';
import { SYNC_IO_LIMITS, SyncIoPolicy, type SyncIoClock } from '../src/index.js';

/**
 * The adaptive synchronous I/O policy (sync-io-policy.ts, docs/ARCHITECTURE.md
 * §4.14) on an injected clock: every call takes exactly the time the test
 * gives it and event-loop turns end when the test says, so no assertion
 * depends on the machine's speed.
 */

/** A clock the test moves by hand; `endTurn()` runs what waited for the next event-loop turn. */
class HandClock implements SyncIoClock {
  nowMs = 0;
  private readonly waiting: Array<() => void> = [];

  now(): number {
    return this.nowMs;
  }

  onNextTurn(fn: () => void): void {
    this.waiting.push(fn);
  }

  endTurn(): void {
    for (const fn of this.waiting.splice(0)) fn();
  }
}

const { decisionCalls, slowCallMs, backoffCalls, sliceMs } = SYNC_IO_LIMITS;
const FAST_MS = slowCallMs / 10;
const SLOW_MS = slowCallMs * 4;

/** A policy on a hand clock, and one synchronous call of `ms` through it (each in a turn of its own, so slices never end). */
function handPolicy() {
  const clock = new HandClock();
  const policy = new SyncIoPolicy(SYNC_IO_LIMITS, clock);
  const call = (ms: number): void => {
    expect(policy.trySync(), `call ${policy.stats.syncCalls + 1}: synchronous calls allowed`).toBe(true);
    policy.run(() => {
      clock.nowMs += ms;
    });
    clock.endTurn();
  };
  return { clock, policy, call };
}

describe('SyncIoPolicy', () => {
  it('fast calls never back off', () => {
    const { policy, call } = handPolicy();
    for (let i = 0; i < 10 * decisionCalls; i++) call(FAST_MS);
    expect(policy.stats).toEqual({ syncCalls: 10 * decisionCalls, asyncCalls: 0, backoffs: 0, yields: 0 });
    expect(policy.backingOff).toBe(false);
  });

  it('a window of fast calls, then one with more than a quarter slow: back off when that window closes, not before', () => {
    const { policy, call } = handPolicy();
    for (let i = 0; i < decisionCalls; i++) call(FAST_MS);
    const slowCalls = Math.floor(SYNC_IO_LIMITS.slowShare * decisionCalls) + 1;
    for (let i = 0; i < decisionCalls - 1; i++) call(i < slowCalls ? SLOW_MS : FAST_MS);
    expect(policy.backingOff, 'the window is still open').toBe(false);
    call(FAST_MS); // closes the window
    expect(policy.backingOff).toBe(true);
    expect(policy.trySync(), 'backing off: the thread pool').toBe(false);
    expect(policy.stats.backoffs).toBe(1);
  });

  it('exactly a quarter slow in every window is not enough: a loaded machine preempts some calls', () => {
    const { policy, call } = handPolicy();
    const slowCalls = Math.floor(SYNC_IO_LIMITS.slowShare * decisionCalls);
    for (let w = 0; w < 5; w++) for (let i = 0; i < decisionCalls; i++) call(i % 4 === 0 && i / 4 < slowCalls ? SLOW_MS : FAST_MS);
    expect(policy.stats.backoffs).toBe(0);
  });

  it('the back-off ends after backoffCalls calls through the thread pool, and a fresh window starts', () => {
    const { policy, call } = handPolicy();
    for (let i = 0; i < decisionCalls; i++) call(SLOW_MS);
    expect(policy.backingOff).toBe(true);
    for (let i = 0; i < backoffCalls - 1; i++) policy.noteAsync();
    expect(policy.trySync(), 'one call of the back-off left').toBe(false);
    policy.noteAsync();
    expect(policy.trySync(), 'back-off over').toBe(true);
    expect(policy.stats.asyncCalls).toBe(backoffCalls);
    // The window restarted at the back-off: a fast window now keeps synchronous calls on.
    for (let i = 0; i < decisionCalls; i++) call(FAST_MS);
    expect(policy.backingOff).toBe(false);
    // Async calls outside a back-off are only counted.
    policy.noteAsync();
    expect(policy.trySync()).toBe(true);
  });

  it('the synchronous calls of one turn take at most sliceMs together (other work of the turn does not count); the next turn starts a new slice; nextTurn waits for it', async () => {
    const clock = new HandClock();
    const policy = new SyncIoPolicy(SYNC_IO_LIMITS, clock);
    let calls = 0;
    while (policy.trySync()) {
      policy.run(() => {
        clock.nowMs += sliceMs / 8;
      });
      clock.nowMs += 10 * sliceMs; // the turn's other work between the calls
      calls += 1;
      expect(calls, 'the slice ends').toBeLessThanOrEqual(8);
    }
    expect(calls).toBe(8);
    expect(policy.backingOff, 'a spent slice is not a back-off').toBe(false);
    let resumed = false;
    const next = policy.nextTurn().then(() => (resumed = true));
    await Promise.resolve();
    expect(resumed, 'nextTurn waits for the turn to end').toBe(false);
    expect(policy.trySync(), 'still the same turn').toBe(false);
    clock.endTurn();
    await next;
    expect(resumed).toBe(true);
    expect(policy.trySync(), 'a new turn, a new slice').toBe(true);
    expect(policy.stats.yields).toBe(1);
  });

  it('a slice spans turns until it is spent, then ends with that turn', () => {
    const clock = new HandClock();
    const policy = new SyncIoPolicy(SYNC_IO_LIMITS, clock);
    for (let turn = 0; turn < 3; turn++) {
      policy.run(() => (clock.nowMs += sliceMs / 4));
      clock.endTurn();
      expect(policy.trySync(), `turn ${turn}: three quarters of the slice or less spent`).toBe(true);
    }
    policy.run(() => (clock.nowMs += sliceMs / 4));
    expect(policy.trySync(), 'spent in this turn').toBe(false);
    clock.endTurn();
    expect(policy.trySync(), 'a new slice in the next turn').toBe(true);
  });

  it('a throwing call surfaces its own error, is timed like any other and is not counted as done', () => {
    const { clock, policy } = handPolicy();
    const failure = new IoError('injected read failure', { details: { offsetBytes: 4096, lengthBytes: 4096 } });
    for (let i = 0; i < decisionCalls; i++) {
      expect(policy.trySync()).toBe(true);
      let thrown: unknown;
      try {
        policy.run(() => {
          clock.nowMs += SLOW_MS;
          throw failure;
        });
      } catch (err) {
        thrown = err;
      }
      expect(thrown, 'the very error the call threw').toBe(failure);
      clock.endTurn();
    }
    expect(policy.stats.syncCalls).toBe(0);
    expect(policy.backingOff, 'slow failing calls count in the window').toBe(true);
  });

  it('run returns what the call returns', () => {
    const { policy } = handPolicy();
    expect(policy.run(() => 42)).toBe(42);
    expect(policy.stats.syncCalls).toBe(1);
  });
});
