import { assert } from '@cowvol/base';

/** The most jobs any backup command runs at once (the S3 store's own bound, docs/ARCHITECTURE.md §17). */
export const MAX_JOBS = 256;

/**
 * Runs `fn` on every item of `items` with at most `jobs` calls in flight
 * (docs/ARCHITECTURE.md §16: everything bounded). Items are pulled from the
 * iterator only as a slot frees, so an async source (a store listing) is
 * never read ahead by more than `jobs` items. The first failure stops the
 * pulling; the calls in flight finish, then it is thrown.
 */
export async function forEachBounded<T>(items: AsyncIterable<T> | Iterable<T>, jobs: number, fn: (item: T) => Promise<void>): Promise<void> {
  assert(Number.isInteger(jobs) && jobs >= 1 && jobs <= MAX_JOBS, 'jobs is 1..256');
  const iterator = Symbol.asyncIterator in items ? items[Symbol.asyncIterator]() : toAsync(items[Symbol.iterator]());
  let failure: { err: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined) {
      try {
        const next = await iterator.next();
        if (next.done === true) return;
        await fn(next.value);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  if (failure !== undefined) throw failure.err;
}

function toAsync<T>(it: Iterator<T>): AsyncIterator<T> {
  return { next: () => Promise.resolve(it.next()) };
}
