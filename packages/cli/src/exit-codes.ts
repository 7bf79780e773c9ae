import type { ErrorCode } from '@cowvol/base';

/**
 * The one table from error code to process exit code (README, "Exit codes").
 * Codes and exit codes are stable: scripts rely on them. Typed
 * `Record<ErrorCode, number>`: a code added to the union in @cowvol/base
 * without an exit code here does not compile (docs/ARCHITECTURE.md §10).
 */
export const EXIT_CODES: Readonly<Record<ErrorCode, number>> = Object.freeze({
  // 2: the command line itself is wrong (usage)
  USAGE: 2,
  INVALID_SIZE: 2,
  INVALID_ARGUMENT: 2,
  INVALID_SNAPSHOT_NAME: 2,
  OUT_OF_RANGE: 2,
  INVALID_LABEL: 2,
  INVALID_DURATION: 2,
  // 3: something named does not exist
  VOLUME_NOT_FOUND: 3,
  SNAPSHOT_NOT_FOUND: 3,
  INPUT_NOT_FOUND: 3,
  OBJECT_NOT_FOUND: 3,
  REPOSITORY_NOT_FOUND: 3,
  NOT_SERVED: 3,
  // 4: conflicts with what exists
  VOLUME_EXISTS: 4,
  SNAPSHOT_EXISTS: 4,
  SNAPSHOT_LIMIT: 4,
  SNAPSHOT_HELD: 4,
  SNAPSHOT_IN_USE: 4,
  EXPORT_IN_USE: 4,
  VOLUME_READ_ONLY: 4,
  SNAPSHOT_SUSPECT: 4,
  BASE_MISMATCH: 4,
  IMPORT_PENDING: 4,
  RESUME_MISMATCH: 4,
  STREAM_HEADER_TOO_LARGE: 4,
  ENDPOINT_IN_USE: 4,
  OBJECT_EXISTS: 4,
  REPOSITORY_EXISTS: 4,
  // 5: another process owns the volume
  VOLUME_BUSY: 5,
  LOCK_LOST: 5, // a volume's owner lock is never taken over; a backup repository lock whose lease ran out (docs/ARCHITECTURE.md §17)
  REPOSITORY_LOCKED: 5,
  // 6: not a volume, or its metadata is damaged or too new
  NOT_A_VOLUME: 6,
  CORRUPT_METADATA: 6,
  STORE_CORRUPT: 6,
  JOURNAL_CORRUPT: 6,
  UNSUPPORTED_VERSION: 6,
  VOLUME_SIZE_MISMATCH: 6,
  VOLUME_MODIFIED_OUTSIDE: 6,
  VERIFY_FAILED: 6,
  BACKUP_CORRUPT: 6,
  BAD_KEY: 6,
  // 7: the operating system failed an I/O
  IO_ERROR: 7,
  STORE_UNAVAILABLE: 7,
  STORE_ACCESS_DENIED: 7,
  NO_SPACE: 7,
  JOURNAL_ABORTED: 7,
  JOURNAL_NEEDS_RECOVERY: 7,
  // 8: the input stream is not a cowvol stream or is damaged (nothing was applied from it)
  NOT_A_STREAM: 8,
  STREAM_CORRUPT: 8,
  STREAM_CHANGED: 8,
  // 9: the change may or may not have been made (its commit was written, its flush failed): look before retrying
  OUTCOME_UNKNOWN: 9,
  // (never an exit: `serve` closes the one client connection that broke the NBD framing, and logs it)
  NBD_FRAMING: 8,
  // 1: a bug (assertion) or anything unexpected
  ASSERTION_FAILED: 1,
  JOURNAL_CREDITS_EXCEEDED: 1,
  JOURNAL_APPLY_FAILED: 1, // never an exit: Volume reports a change durable in the journal as done (docs/ARCHITECTURE.md, "Outcomes of a failed command")
  VOLUME_CLOSED: 1,
  STREAM_EXTENT_INVALID: 1,
  INTERNAL: 1,
});

/** The process exit code for `code` (README, "Exit codes"). */
export function exitCodeFor(code: ErrorCode): number {
  return EXIT_CODES[code];
}
