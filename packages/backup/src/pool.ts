import { BackupArgumentError } from './errors.js';

/** The default and the bounds of `--jobs`: requests (and chunks) in flight (docs/ARCHITECTURE.md §17). */
export const DEFAULT_JOBS = 8;
export const MAX_JOBS = 256;

/** @throws INVALID_ARGUMENT unless `jobs` is an integer in 1..256 */
export function checkJobs(jobs: number): number {
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > MAX_JOBS) throw new BackupArgumentError(`--jobs must be 1..${String(MAX_JOBS)}, not ${String(jobs)}`);
  return jobs;
}

/**
 * Runs `work` on every item with at most `jobs` calls in flight, pulling
 * items one at a time (so an iterable of any length costs no memory). The
 * first failure stops new work; the calls in flight are awaited, then the
 * failure is thrown.
 */
export async function forEachBounded<T>(items: Iterable<T> | AsyncIterable<T>, jobs: number, work: (item: T) => Promise<void>): Promise<void> {
  const iterator = Symbol.asyncIterator in items ? items[Symbol.asyncIterator]() : toAsync(items[Symbol.iterator]());
  let failure: { err: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined) {
      const next = await iterator.next();
      if (next.done === true) return;
      try {
        await work(next.value);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  if (failure !== undefined) throw failure.err;
}

/**
 * Maps `items` through `fetch` with at most `jobs` calls in flight and hands
 * the results to `consume` in the items' order (a sliding window: at most
 * `jobs` results wait). The first failure stops new work and is thrown once
 * the calls in flight have settled.
 */
export async function mapOrdered<T, R>(items: readonly T[], jobs: number, fetch: (item: T) => Promise<R>, consume: (result: R, item: T) => Promise<void>): Promise<void> {
  const window: Array<Promise<R>> = [];
  let next = 0;
  const fill = (): void => {
    while (window.length < jobs && next < items.length) {
      const item = items[next++]!;
      const p = fetch(item);
      p.catch(() => undefined); // observed below, in order; never an unhandled rejection meanwhile
      window.push(p);
    }
  };
  try {
    for (const item of items) {
      fill();
      const result = await window.shift();
      await consume(result as R, item);
    }
  } finally {
    await Promise.allSettled(window);
  }
}

async function* toAsync<T>(iterator: Iterator<T>): AsyncGenerator<T> {
  for (let next = iterator.next(); next.done !== true; next = iterator.next()) yield next.value;
}
