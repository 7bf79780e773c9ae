/**
 * Error base shared by every cowvol package.
 *
 * Every error that crosses a package boundary is a `CowvolError` with a
 * stable string `code`. Codes never change between versions: scripts and the
 * CLI's exit-code table (packages/cli/src/exit-codes.ts) key on them.
 * (Shape from abstract-level: errors carry codes, messages are for people.)
 */
export class CowvolError extends Error {
  /** Stable machine-readable code, e.g. `JOURNAL_CORRUPT`. */
  readonly code: string;
  /** Optional structured details (byte ranges, names) for `--json` output. */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: string, message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options?.details;
  }
}

/** `JOURNAL_CORRUPT`: the journal superblock or a committed region is unreadable or foreign. */
export class JournalCorruptError extends CowvolError {
  constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super('JOURNAL_CORRUPT', message, options);
  }
}

/** `JOURNAL_CREDITS_EXCEEDED`: a handle logged more records than the credits it started with. */
export class JournalCreditsExceededError extends CowvolError {
  constructor(message: string) {
    super('JOURNAL_CREDITS_EXCEEDED', message);
  }
}

/** `JOURNAL_ABORTED`: an earlier commit failed; the journal refuses further work until reopened (jbd2 abort). */
export class JournalAbortedError extends CowvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('JOURNAL_ABORTED', message, options);
  }
}

/**
 * `JOURNAL_APPLY_FAILED`: transaction `details.sequence` is durable in the
 * journal (its commit block was written and flushed) but applying it to its
 * home (the owner's `apply` callback) failed; the journal aborted. The
 * change happened: the next open replays it (docs/ARCHITECTURE.md,
 * "Outcomes of a failed command").
 */
export class JournalApplyError extends CowvolError {
  constructor(sequence: number, cause: unknown) {
    super('JOURNAL_APPLY_FAILED', `transaction ${sequence} is durable in the journal but could not be applied (${(cause as Error)?.message ?? String(cause)}); the next open replays it`, {
      cause,
      details: { sequence },
    });
  }
}

/**
 * `OUTCOME_UNKNOWN`: a commit block was written but the flush that makes it
 * durable failed: the transaction may or may not survive (the next open
 * finds out). The journal aborted.
 */
export class OutcomeUnknownError extends CowvolError {
  constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super('OUTCOME_UNKNOWN', message, options);
  }
}

/**
 * `JOURNAL_NEEDS_RECOVERY`: a read-only open found committed transactions
 * whose recovery must write (block images to write home); nothing was
 * written. Open the volume writable (free space, mount read-write) once.
 */
export class JournalNeedsRecoveryError extends CowvolError {
  constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super('JOURNAL_NEEDS_RECOVERY', message, options);
  }
}

/**
 * `UNSUPPORTED_VERSION`: the journal superblock names a format version this
 * cowvol does not read (docs/FORMAT.md, "Journal file"). `details.version`
 * is the version found.
 */
export class UnsupportedJournalVersionError extends CowvolError {
  constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super('UNSUPPORTED_VERSION', message, options);
  }
}

/** `IO_ERROR`: the block device failed a read, write or sync. `details` name the byte range. */
export class IoError extends CowvolError {
  constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super('IO_ERROR', message, options);
  }
}

/** `NO_SPACE`: the file system holding a file is full (ENOSPC/EDQUOT). */
export class NoSpaceError extends CowvolError {
  constructor(message: string, options?: { cause?: unknown; details?: Record<string, unknown> }) {
    super('NO_SPACE', message, options);
  }
}

/**
 * Internal invariant check (TigerBeetle style): a failed assertion is a bug,
 * never bad input, and stops the operation before anything further is written.
 * Code: `ASSERTION_FAILED`.
 */
export class AssertionFailedError extends CowvolError {
  constructor(message: string) {
    super('ASSERTION_FAILED', `invariant violated: ${message}`);
  }
}

/** Throws `AssertionFailedError` (`ASSERTION_FAILED`) when `condition` is false. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionFailedError(message);
}
