import { CowvolError, type CowvolErrorOptions } from '@cowvol/base';

/**
 * Errors of the journal itself (docs/ARCHITECTURE.md §10 "Errors"); the
 * errors every layer shares (`IO_ERROR`, `NO_SPACE`, `UNSUPPORTED_VERSION`,
 * `ASSERTION_FAILED`) live in @cowvol/base.
 */

/** `JOURNAL_CORRUPT`: the journal superblock or a committed region is unreadable or foreign. */
export class JournalCorruptError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('JOURNAL_CORRUPT', message, options);
  }
}

/** `JOURNAL_CREDITS_EXCEEDED`: a handle logged more records than the credits it started with. */
export class JournalCreditsExceededError extends CowvolError {
  constructor(message: string) {
    super('JOURNAL_CREDITS_EXCEEDED', message);
  }
}

/**
 * `JOURNAL_ABORTED`: an earlier commit failed; the journal refuses further
 * work until reopened (jbd2 abort). The message ends with the first
 * failure's own words (the innermost cause: "No space left on device", an
 * I/O error), so a user learns why without reading the warnings above it.
 */
export class JournalAbortedError extends CowvolError {
  constructor(message: string, options?: { cause?: unknown }) {
    const first = firstFailure(options?.cause);
    super('JOURNAL_ABORTED', first === undefined ? message : `${message} (first failure: ${first})`, options);
  }
}

/** The innermost message of an error's `cause` chain (at most 8 deep, 300 characters), or undefined. */
function firstFailure(cause: unknown): string | undefined {
  let message: string | undefined;
  for (let depth = 0; depth < 8 && cause instanceof Error; depth++) {
    // A JOURNAL_ABORTED cause already carries its first failure in its message; its own causes say it again.
    if (!(cause instanceof JournalAbortedError)) message = cause.message;
    cause = cause.cause;
  }
  return message === undefined || message === '' ? undefined : message.slice(0, 300);
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
    super('JOURNAL_APPLY_FAILED', `transaction ${sequence} is durable in the journal but could not be applied (${(cause as Error | undefined)?.message ?? String(cause)}); the next open replays it`, {
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
  constructor(message: string, options?: CowvolErrorOptions) {
    super('OUTCOME_UNKNOWN', message, options);
  }
}

/**
 * `JOURNAL_NEEDS_RECOVERY`: a read-only open found committed transactions
 * whose recovery must write (block images to write home); nothing was
 * written. Open the volume writable (free space, mount read-write) once.
 */
export class JournalNeedsRecoveryError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('JOURNAL_NEEDS_RECOVERY', message, options);
  }
}
