import type { ErrorCode } from './error-codes.js';

/** Options every `CowvolError` takes: the error it wraps and details for `--json` output. */
export interface CowvolErrorOptions {
  cause?: unknown;
  details?: Record<string, unknown>;
}

/**
 * Error base shared by every cowvol package (docs/ARCHITECTURE.md §10
 * "Errors").
 *
 * Every error that crosses a package boundary is a `CowvolError` with a
 * stable `code`, a member of the {@link ErrorCode} union. Codes never change
 * between versions: scripts and the CLI's exit-code table
 * (packages/cli/src/exit-codes.ts) key on them. Compare codes with
 * {@link hasCode}, never as raw strings. (Shape from abstract-level: errors
 * carry codes, messages are for people.)
 */
export class CowvolError extends Error {
  /** Stable machine-readable code, e.g. `JOURNAL_CORRUPT`. */
  readonly code: ErrorCode;
  /** Optional structured details (byte ranges, names) for `--json` output. */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: CowvolErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options?.details;
  }
}

/** True when `err` is a `CowvolError` (of any code). */
export function isCowvolError(err: unknown): err is CowvolError {
  return err instanceof CowvolError;
}

/**
 * True when `err` is a `CowvolError` whose code is one of `codes`. The codes
 * are typed on {@link ErrorCode}, so a misspelt code does not compile.
 */
export function hasCode(err: unknown, ...codes: readonly ErrorCode[]): err is CowvolError {
  return err instanceof CowvolError && codes.includes(err.code);
}

/** `IO_ERROR`: the block device or the file system failed a read, write or sync. `details` name the byte range. */
export class IoError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('IO_ERROR', message, options);
  }
}

/** `NO_SPACE`: the file system holding a file is full (ENOSPC/EDQUOT). */
export class NoSpaceError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('NO_SPACE', message, options);
  }
}

/**
 * `UNSUPPORTED_VERSION`: written by a newer cowvol (a format, schema,
 * journal or stream version unknown here). `details.version` names it when
 * known.
 */
export class UnsupportedVersionError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('UNSUPPORTED_VERSION', message, options);
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
