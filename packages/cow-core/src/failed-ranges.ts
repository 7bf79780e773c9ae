import { CowvolError } from '@cowvol/base';
/**
 * The one error of an operation cut into byte ranges of which some failed
 * (docs/ARCHITECTURE.md §7.5): the first failure's code and details, and
 * every failed range in `details.failedRanges`.
 */

/** A byte range that failed. */
export interface FailedRange {
  offsetBytes: number;
  lengthBytes: number;
}

/**
 * Builds the error: `code` is `first`'s when it is a CowvolError, else
 * `IO_ERROR`; the message is `lead(ranges)` (`ranges` as `offset+length, …`)
 * then `first`'s message; `cause` is `first`.
 */
export function failedRangesError(first: unknown, failedRanges: readonly FailedRange[], lead: (ranges: string) => string): CowvolError {
  const ranges = failedRanges.map((r) => `${r.offsetBytes}+${r.lengthBytes}`).join(', ');
  const code = first instanceof CowvolError ? first.code : 'IO_ERROR';
  const message = first instanceof Error ? first.message : String(first);
  return new CowvolError(code, `${lead(ranges)}: ${message}`, {
    cause: first,
    details: { ...(first instanceof CowvolError ? first.details : {}), failedRanges: [...failedRanges] },
  });
}
