/**
 * Every stable error code cowvol throws, in one union (docs/ARCHITECTURE.md
 * §10 "Errors"). A code is added here first: `CowvolError` takes only a
 * member of this union, and the CLI's exit-code table
 * (packages/cli/src/exit-codes.ts) is a `Record<ErrorCode, number>`, so a
 * code without an exit code does not compile. Codes are never renamed or
 * removed between versions (scripts key on them); the README's "Exit codes"
 * table lists exactly these.
 */
export const ERROR_CODES = [
  // usage: the command line or an argument is wrong
  'USAGE',
  'INVALID_SIZE',
  'INVALID_ARGUMENT',
  'INVALID_SNAPSHOT_NAME',
  'OUT_OF_RANGE',
  'INVALID_LABEL',
  'INVALID_DURATION',
  // something named does not exist
  'VOLUME_NOT_FOUND',
  'SNAPSHOT_NOT_FOUND',
  'INPUT_NOT_FOUND',
  'OBJECT_NOT_FOUND',
  'REPOSITORY_NOT_FOUND',
  'NOT_SERVED',
  // conflicts with what exists
  'VOLUME_EXISTS',
  'SNAPSHOT_EXISTS',
  'SNAPSHOT_LIMIT',
  'SNAPSHOT_HELD',
  'SNAPSHOT_IN_USE',
  'EXPORT_IN_USE',
  'VOLUME_READ_ONLY',
  'STREAM_HEADER_TOO_LARGE',
  'SNAPSHOT_SUSPECT',
  'BASE_MISMATCH',
  'IMPORT_PENDING',
  'RESUME_MISMATCH',
  'ENDPOINT_IN_USE',
  'OBJECT_EXISTS',
  'REPOSITORY_EXISTS',
  // another process owns the volume
  'VOLUME_BUSY',
  'LOCK_LOST',
  // another process holds a conflicting lock of a backup repository
  'REPOSITORY_LOCKED',
  // not a volume, or damaged or too new
  'NOT_A_VOLUME',
  'CORRUPT_METADATA',
  'STORE_CORRUPT',
  'JOURNAL_CORRUPT',
  'UNSUPPORTED_VERSION',
  'VOLUME_SIZE_MISMATCH',
  'VOLUME_MODIFIED_OUTSIDE',
  'VERIFY_FAILED',
  'BACKUP_CORRUPT',
  'BAD_KEY',
  // the operating system failed an I/O
  'IO_ERROR',
  // the object store cannot be reached, or refuses the credentials
  'STORE_UNAVAILABLE',
  'STORE_ACCESS_DENIED',
  'NO_SPACE',
  'JOURNAL_ABORTED',
  'JOURNAL_NEEDS_RECOVERY',
  // a stream is not cowvol's or is damaged
  'NOT_A_STREAM',
  'STREAM_CORRUPT',
  'STREAM_CHANGED',
  'NBD_FRAMING',
  // the change may or may not have been made
  'OUTCOME_UNKNOWN',
  // durable in the journal, not yet applied (Volume reports it as success)
  'JOURNAL_APPLY_FAILED',
  // a bug
  'ASSERTION_FAILED',
  'JOURNAL_CREDITS_EXCEEDED',
  'VOLUME_CLOSED',
  'STREAM_EXTENT_INVALID',
  'INTERNAL',
] as const;

/** One stable error code: a member of {@link ERROR_CODES}. */
export type ErrorCode = (typeof ERROR_CODES)[number];
