/**
 * The bounded-parallelism helpers of push and restore (docs/ARCHITECTURE.md
 * §17): never more than `jobs` calls in flight, results consumed in order,
 * the first failure thrown after the calls in flight settle.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { checkJobs, forEachBounded, mapOrdered } from '@cowvol/backup';
import { hasCode } from '@cowvol/base';

describe('bounded parallelism', () => {
  it('forEachBounded keeps at most jobs calls in flight and visits every item once', async () => {
    let inFlight = 0;
    let peak = 0;
    const seen: number[] = [];
    await forEachBounded(
      Array.from({ length: 50 }, (_, i) => i),
      4,
      async (i) => {
        peak = Math.max(peak, ++inFlight);
        await sleep(i % 3);
        seen.push(i);
        inFlight--;
      },
    );
    expect(peak).toBe(4);
    expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
  });

  it('mapOrdered consumes results in order with at most jobs fetches in flight, and stops at the first failure', async () => {
    let inFlight = 0;
    let peak = 0;
    const consumed: number[] = [];
    const items = Array.from({ length: 30 }, (_, i) => i);
    await mapOrdered(
      items,
      5,
      async (i) => {
        peak = Math.max(peak, ++inFlight);
        await sleep((30 - i) % 4);
        inFlight--;
        return i * 2;
      },
      async (r, i) => {
        await Promise.resolve();
        expect(r).toBe(i * 2);
        consumed.push(i);
      },
    );
    expect(peak).toBeLessThanOrEqual(5);
    expect(consumed).toEqual(items);
    const after: number[] = [];
    await expect(
      mapOrdered(
        items,
        3,
        async (i) => {
          await sleep(1);
          if (i === 7) throw new Error('boom');
          return i;
        },
        async (r) => {
          await Promise.resolve();
          after.push(r);
        },
      ),
    ).rejects.toThrow('boom');
    expect(after).toEqual([0, 1, 2, 3, 4, 5, 6]);
  });

  it('checkJobs refuses 0, 257 and fractions', () => {
    for (const bad of [0, 257, 1.5]) {
      try {
        checkJobs(bad);
        expect.unreachable();
      } catch (err) {
        expect(hasCode(err, 'INVALID_ARGUMENT')).toBe(true);
      }
    }
    expect(checkJobs(8)).toBe(8);
  });
});
