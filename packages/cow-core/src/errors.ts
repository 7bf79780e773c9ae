import { CowvolError, type CowvolErrorOptions } from '@cowvol/base';

type Options = CowvolErrorOptions;

/**
 * Errors thrown by cow-core. Each has a stable `code` (never renamed between
 * versions); the CLI maps codes to exit codes in one table
 * (packages/cli/src/exit-codes.ts, README "Exit codes").
 */

/** `INVALID_ARGUMENT`: a parameter is malformed (negative length, bad block size, …). Nothing was changed. */
export class InvalidArgumentError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('INVALID_ARGUMENT', message, options);
  }
}

/** `INVALID_SNAPSHOT_NAME`: names are 1–128 characters of `[A-Za-z0-9._:-]`. */
export class InvalidSnapshotNameError extends CowvolError {
  constructor(name: string) {
    super('INVALID_SNAPSHOT_NAME', `invalid snapshot name ${JSON.stringify(name)}: use 1-128 characters of A-Z a-z 0-9 . _ : -`, { details: { name } });
  }
}

/** `OUT_OF_RANGE`: a byte range runs past the end of the volume. */
export class OutOfRangeError extends CowvolError {
  constructor(offsetBytes: number, lengthBytes: number, sizeBytes: number) {
    super('OUT_OF_RANGE', `range ${offsetBytes}+${lengthBytes} runs past the end of the volume (${sizeBytes} bytes)`, {
      details: { offsetBytes, lengthBytes, sizeBytes },
    });
  }
}

/** `SNAPSHOT_NOT_FOUND`. */
export class SnapshotNotFoundError extends CowvolError {
  constructor(name: string) {
    super('SNAPSHOT_NOT_FOUND', `no snapshot named ${JSON.stringify(name)}`, { details: { name } });
  }
}

/** `SNAPSHOT_EXISTS`: names are unique per volume. */
export class SnapshotExistsError extends CowvolError {
  /** `advice`: what to do instead, appended to the message. */
  constructor(name: string, advice?: string) {
    super('SNAPSHOT_EXISTS', `a snapshot named ${JSON.stringify(name)} already exists${advice === undefined ? '' : `; ${advice}`}`, { details: { name } });
  }
}

/** `SNAPSHOT_LIMIT`: the volume already holds the maximum number of snapshots. */
export class SnapshotLimitError extends CowvolError {
  constructor(limit: number) {
    super('SNAPSHOT_LIMIT', `the volume already has ${limit} snapshots, the most it can hold; delete some first`, { details: { limit } });
  }
}

/** `VOLUME_NOT_FOUND`: the volume file does not exist. */
export class VolumeNotFoundError extends CowvolError {
  /** `why`, when given, follows the fixed text (e.g. that a create of it was interrupted). */
  constructor(path: string, options?: Options & { why?: string }) {
    super('VOLUME_NOT_FOUND', `volume ${path} does not exist${options?.why ? `: ${options.why}` : ''}`, { ...options, details: { path } });
  }
}

/** `VOLUME_EXISTS`: `create` refuses to overwrite a file or an existing sidecar. */
export class VolumeExistsError extends CowvolError {
  constructor(message: string, path: string) {
    super('VOLUME_EXISTS', message, { details: { path } });
  }
}

/** `VOLUME_BUSY`: another process owns the volume. `details.pid` names it when known. */
export class VolumeBusyError extends CowvolError {
  constructor(path: string, pid: number | undefined) {
    super('VOLUME_BUSY', `volume ${path} is busy: in use by ${pid === undefined ? 'another process' : `process ${pid}`}`, { details: { path, pid } });
  }
}

/** `NOT_A_VOLUME`: the file has no cowvol sidecar, or the sidecar is incomplete or foreign. */
export class NotAVolumeError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('NOT_A_VOLUME', message, options);
  }
}

/** `CORRUPT_METADATA`: a metadata value or the store header fails validation. */
export class CorruptMetadataError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('CORRUPT_METADATA', message, options);
  }
}

/** `STORE_CORRUPT`: a store block read back does not match the CRC32C recorded when it was copied. `details` name the range. */
export class StoreCorruptError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('STORE_CORRUPT', message, options);
  }
}

/** `VOLUME_SIZE_MISMATCH`: the volume file's size differs from the recorded size (truncated or replaced). */
export class VolumeSizeMismatchError extends CowvolError {
  constructor(path: string, expectedBytes: number, actualBytes: number) {
    super('VOLUME_SIZE_MISMATCH', `volume ${path} is ${actualBytes} bytes but its metadata says ${expectedBytes}: truncated or replaced?`, {
      details: { path, expectedBytes, actualBytes },
    });
  }
}

/** `VOLUME_CLOSED`: the Volume object was closed. */
export class VolumeClosedError extends CowvolError {
  constructor() {
    super('VOLUME_CLOSED', 'volume is closed');
  }
}

/** `SNAPSHOT_HELD`: the snapshot is held (`snapshot hold`) and cannot be deleted until released. */
export class SnapshotHeldError extends CowvolError {
  constructor(names: string[]) {
    super(
      'SNAPSHOT_HELD',
      `snapshot${names.length > 1 ? 's' : ''} ${names.map((n) => JSON.stringify(n)).join(', ')} ${names.length > 1 ? 'are' : 'is'} held; release ${names.length > 1 ? 'them' : 'it'} first (cowvol snapshot release)`,
      {
        details: { names },
      },
    );
  }
}

/** `INVALID_LABEL`: a label is not `key=value` with a key of 1-64 characters of `[A-Za-z0-9._:-]` and a value of at most 256 printable characters. */
export class InvalidLabelError extends CowvolError {
  constructor(message: string, label: string) {
    super('INVALID_LABEL', message, { details: { label } });
  }
}

/** `NOT_A_STREAM`: the input does not start with a cowvol stream header (wrong magic). */
export class NotAStreamError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('NOT_A_STREAM', message, options);
  }
}

/**
 * `STREAM_CORRUPT`: a stream fails its checksums or its structure (truncated,
 * a bit flipped, records out of order, trailing bytes). `details` name the
 * record that failed (`record`: header | extent | trailer, `extentIndex`,
 * `streamOffsetBytes`, and for an extent its volume range). Nothing was
 * applied from it.
 */
export class StreamCorruptError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('STREAM_CORRUPT', message, options);
  }
}

/**
 * `STREAM_CHANGED`: during an import's apply pass the stream no longer holds
 * an extent its verification pass found (the input was rewritten between the
 * two passes). `details`: `extentIndex`, `streamOffsetBytes`. What was applied
 * up to the last durable marker stays; the same import `--resume`d continues.
 */
export class StreamChangedError extends CowvolError {
  /** `what`: how extent `extentIndex` changed (default: it is gone). */
  constructor(extentIndex: number, streamOffsetBytes: number, what = 'is gone') {
    super('STREAM_CHANGED', `the stream changed after it was verified: extent ${extentIndex} (stream byte ${streamOffsetBytes}) ${what}`, { details: { extentIndex, streamOffsetBytes } });
  }
}

/**
 * `STREAM_HEADER_TOO_LARGE`: a stream header's JSON (geometry, identities,
 * labels) would be more than `limitBytes`, the most a reader accepts
 * (docs/FORMAT.md, "Stream header"). Nothing was written.
 */
export class StreamHeaderTooLargeError extends CowvolError {
  constructor(jsonBytes: number, limitBytes: number) {
    super('STREAM_HEADER_TOO_LARGE', `stream header JSON is ${jsonBytes} bytes, more than ${limitBytes}`, { details: { jsonBytes, limitBytes } });
  }
}

/**
 * `STREAM_EXTENT_INVALID`: a `StreamWriter` caller broke its contract: an
 * extent of length outside 1..`MAX_EXTENT_BYTES`, or not after the previous
 * one. A bug of the caller; nothing of that extent was written.
 */
export class StreamExtentInvalidError extends CowvolError {
  constructor(message: string, details: Record<string, unknown>) {
    super('STREAM_EXTENT_INVALID', message, { details });
  }
}

/**
 * `BASE_MISMATCH`: an incremental stream applies only onto a volume whose
 * current content is the stream's base snapshot (same identity, nothing
 * written since) and of the same size; this one is not.
 */
export class BaseMismatchError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('BASE_MISMATCH', message, options);
  }
}

/** `IMPORT_PENDING`: an earlier import into this volume was interrupted; resume it (`--resume`) or abandon it (restore a snapshot). */
export class ImportPendingError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('IMPORT_PENDING', message, options);
  }
}

/** `RESUME_MISMATCH`: `--resume` was asked, but the volume has no interrupted import of this stream. */
export class ResumeMismatchError extends CowvolError {
  constructor(message: string, options?: Options) {
    super('RESUME_MISMATCH', message, options);
  }
}

/**
 * `VOLUME_READ_ONLY`: a change (write, snapshot create, delete, rename, …)
 * was asked of a volume opened with `readOnly` (docs/ARCHITECTURE.md,
 * "Read-only opens"). Nothing was changed.
 */
export class VolumeReadOnlyError extends CowvolError {
  constructor(path: string, what: string) {
    super('VOLUME_READ_ONLY', `${path} is open read-only: cannot ${what}`, { details: { path } });
  }
}

/**
 * `VOLUME_MODIFIED_OUTSIDE`: the volume file is not as cowvol left it — it
 * was written, replaced, resized or had its times or status changed by
 * another program (docs/ARCHITECTURE.md, "Writes made outside cowvol").
 * `details`: `path`; `changes` (each `{ field, recorded, found }`, `field`
 * one of dev, ino, size, mtime, ctime); `cleanClose` (false: the volume was
 * not closed cleanly, only identity and size were compared);
 * `suspectSnapshots` (names of the live snapshots that read through to the
 * live volume and so may read changed bytes). Nothing was changed; `cowvol
 * accept-changes` takes the file as it is.
 */
export class VolumeModifiedOutsideError extends CowvolError {
  constructor(message: string, details: { path: string; changes: Array<{ field: string; recorded: string; found: string }>; cleanClose: boolean; suspectSnapshots: string[] }) {
    super('VOLUME_MODIFIED_OUTSIDE', message, { details });
  }
}

/**
 * `SNAPSHOT_SUSPECT`: the operation needs a snapshot's content to be what it
 * was when taken, and the snapshot is suspect (`accept-changes` took writes
 * made outside cowvol while it read live blocks). `details.name` names it.
 */
export class SnapshotSuspectError extends CowvolError {
  constructor(name: string, message: string) {
    super('SNAPSHOT_SUSPECT', message, { details: { name } });
  }
}
