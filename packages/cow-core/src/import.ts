import { CowvolError, type DeviceOpener } from '@cowvol/base';
import { StreamChangedError, StreamCorruptError } from './errors.js';
import type { SnapshotIdentity } from './metadata.js';
import { snapshotDataPieces } from './export.js';
import { chainedWith, extentChainOf, readExtent, verifyStream, type StreamHeader, type StreamSource, type VerifiedStream } from './stream.js';
import { WRITE_PAST_IMPORT, type Volume } from './volume.js';
import { killPoint } from './kill-point.js';
import { openTarget, releaseTarget, withExistingTarget, type ImportTarget } from './import-target.js';

/** Applied bytes between two durable progress markers of an import. */
export const IMPORT_MARKER_INTERVAL_BYTES = 16 * 1024 * 1024;

/** Progress of an import: `verify` (pass 1 over the stream), `apply` (pass 2), `readback` (`verify` option). */
export interface ImportProgress {
  phase: 'verify' | 'apply' | 'readback';
  doneBytes: number;
  totalBytes: number;
}

/** Options for {@link importStream}. */
export interface ImportOptions {
  /** Continue an interrupted import of the same stream from its durable marker. */
  resume?: boolean;
  /** Verify the stream and the target's preconditions only; change nothing. */
  dryRun?: boolean;
  /** After applying, read the imported snapshot back and compare it with the stream (VERIFY_FAILED on a difference). */
  verify?: boolean;
  onProgress?: (progress: ImportProgress) => void;
  /** Called right before the imported snapshot is committed (from then on the import may be made; a `verify` read-back may follow): the CLI's exit code then says so if stopped. */
  onCommitting?: () => void;
  /** Opens an existing target (default `Volume.open(path)`; the CLI adds `--wait`). */
  openVolume?: (path: string) => Promise<Volume>;
  /**
   * The target, already open and kept open: `cowvol serve` imports into the
   * volume it serves (docs/ARCHITECTURE.md §14.8). Used instead of opening
   * `path` (which only names it in results and messages) and never closed;
   * a full stream gets VOLUME_EXISTS, as for any existing path.
   */
  volume?: Volume;
  /** File opener for a new target and the default `openVolume` (fault injection in tests). */
  opener?: DeviceOpener;
  /** Applied bytes between durable markers (default {@link IMPORT_MARKER_INTERVAL_BYTES}). */
  markerIntervalBytes?: number;
}

/** Result of {@link importStream}. */
export interface ImportResult {
  volume: string;
  /** Name of the snapshot the import created (the source snapshot's name). */
  snapshot: string;
  kind: 'full' | 'incremental';
  source: SnapshotIdentity;
  base: SnapshotIdentity | null;
  /** True when a full stream created the volume. */
  created: boolean;
  /** True when `resume` continued an interrupted import. */
  resumed: boolean;
  /** True when the target already held this stream's snapshot (a resume after the last step): nothing was done. */
  alreadyImported: boolean;
  dryRun: boolean;
  /** True when the read-back verification ran and passed. */
  verified: boolean;
  extentCount: number;
  /** Extents applied by this run (a resume skips those already durable). */
  appliedExtents: number;
  skippedExtents: number;
  /** Volume bytes the stream's extents cover. */
  totalBytes: number;
  dataBytes: number;
  streamBytes: number;
}

/** `VERIFY_FAILED`: `import --verify` read back content that differs from the stream. */
export class VerifyFailedError extends CowvolError {
  constructor(message: string, details: Record<string, unknown>) {
    super('VERIFY_FAILED', message, { details });
  }
}

/**
 * Imports a cowvol stream (stream.ts) into the volume at `path`.
 *
 * 1. **Verify** the whole stream first (every checksum, order, bounds,
 *    trailer, and every header field: geometry, snapshot names, labels —
 *    stream-header.ts): a corrupt, truncated or inapplicable stream is
 *    refused (STREAM_CORRUPT, naming the failed record or header field)
 *    before the target is touched — a full stream does not even create it;
 *    `dryRun` finds the same failures.
 * 2. **Check the target**: a full stream creates a new volume of the
 *    header's size and block size (VOLUME_EXISTS if the path exists). An
 *    incremental stream needs an existing volume of the same size with a
 *    snapshot of the stream's base identity whose content the live volume
 *    still holds (the blocks written since it — its diff to live — are
 *    compared: O(blocks written since)) and that is not suspect (writes
 *    made outside cowvol accepted), else BASE_MISMATCH; the source
 *    snapshot's name must be free (SNAPSHOT_EXISTS) and the catalog not
 *    full (SNAPSHOT_LIMIT).
 * 3. **Mark** the import (journaled `import` record: stream identity, next
 *    extent), then **apply** the extents through the normal write path (so
 *    an incremental import COWs the base snapshot's blocks: the base stays
 *    intact), re-checking each extent's CRC. Every
 *    {@link IMPORT_MARKER_INTERVAL_BYTES} the volume is flushed and the
 *    marker advanced: an interrupted import (crash, kill, full disk) is
 *    continued with `resume` from the last durable marker. Without
 *    `resume`, a volume with a marker refuses new imports (IMPORT_PENDING).
 * 4. **Finish**: one transaction creates the source snapshot's name on the
 *    target, with its labels and `origin` = the source identity (so the next
 *    incremental can check its base), and clears the marker.
 *
 * @throws NOT_A_STREAM, UNSUPPORTED_VERSION, STREAM_CORRUPT, STREAM_CHANGED, VOLUME_EXISTS, VOLUME_NOT_FOUND, BASE_MISMATCH, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, IMPORT_PENDING, RESUME_MISMATCH, VERIFY_FAILED, NO_SPACE, IO_ERROR, VOLUME_BUSY
 */
export async function importStream(path: string, source: StreamSource, options: ImportOptions = {}): Promise<ImportResult> {
  const v = await verifyStream(source, (done, total) => options.onProgress?.({ phase: 'verify', doneBytes: done, totalBytes: total }));
  killPoint('import:verified');
  const result = newResult(path, v, options);
  const target = await openTarget(path, v, options, result);
  if (target === undefined) {
    // Done already (a kill after the commit, before the read-back): `verify` still reads it back, as asked.
    if (result.alreadyImported && options.verify === true) {
      await withExistingTarget(path, options, (volume) => readBack(volume, source, v, options.onProgress));
      result.verified = true;
    }
    return result;
  }
  const { volume } = target;
  try {
    await applyExtents(target, source, v, options, result);
    await volume.flush();
    killPoint('import:applied');
    // One transaction: the snapshot (with origin and labels) appears and the marker goes.
    const h = v.header;
    options.onCommitting?.();
    await volume.createSnapshot(h.source.name, { labels: h.labels, origin: h.source, clearImport: true });
    killPoint('import:finished');
    if (options.verify) {
      await readBack(volume, source, v, options.onProgress);
      result.verified = true;
    }
  } finally {
    await releaseTarget(volume, options);
  }
  return result;
}

/** The result of an import that has done nothing yet. */
function newResult(path: string, v: VerifiedStream, options: ImportOptions): ImportResult {
  const h: StreamHeader = v.header;
  return {
    volume: path,
    snapshot: h.source.name,
    kind: h.kind,
    source: h.source,
    base: h.base,
    created: false,
    resumed: false,
    alreadyImported: false,
    dryRun: options.dryRun === true,
    verified: false,
    extentCount: v.extentCount,
    appliedExtents: 0,
    skippedExtents: 0,
    totalBytes: v.totalBytes,
    dataBytes: v.dataBytes,
    streamBytes: v.streamBytes,
  };
}

/**
 * Step 3 of {@link importStream}: applies the extents from
 * `target.startExtent` through the normal write path, each re-checked, and
 * advances the durable marker every `markerIntervalBytes`.
 *
 * @throws STREAM_CORRUPT (the input changed since verification), STREAM_CHANGED (an extent is gone), NO_SPACE, IO_ERROR
 */
async function applyExtents(target: ImportTarget, source: StreamSource, v: VerifiedStream, options: ImportOptions, result: ImportResult): Promise<void> {
  const { volume, startExtent } = target;
  const progress = options.onProgress;
  let marker = target.marker;
  result.skippedExtents = startExtent;
  let applied = marker.appliedBytes;
  let sinceMarker = 0;
  // The chain over the extents applied so far, kept as they are applied: one step per extent, not a walk from the first
  // extent at every marker (a stream of a large volume has hundreds of thousands of extents).
  let chain = extentChainOf(v, startExtent);
  const zeros = new Map<number, Buffer>();
  progress?.({ phase: 'apply', doneBytes: applied, totalBytes: v.totalBytes });
  for (let i = startExtent; i < v.extentCount; i++) {
    // Re-checked: the input may have changed since pass 1.
    const streamOffsetBytes = v.extentOffsets[i] ?? 0;
    const e = await readExtent(source, v.header, streamOffsetBytes, i, 0).catch((err: unknown) => {
      // Verified in pass 1, damaged now: the input changed while it was applied. The import is pending, not undone.
      if (!(err instanceof StreamCorruptError)) throw err;
      throw new StreamCorruptError(`${err.message}; the stream changed after it was verified, and the import is pending: run it again with --resume and the intact stream`, {
        details: { ...err.details, applying: true, extentIndex: i },
        cause: err,
      });
    });
    if (e === null) throw new StreamChangedError(i, streamOffsetBytes);
    // Whole and valid, but not the extent verified (another stream of the same layout copied over it): not applied.
    if (e.crc !== v.extentCrcs[i])
      throw new StreamChangedError(i, streamOffsetBytes, 'is not the extent verified (another checksum); the import is pending: run it again with --resume and the intact stream');
    let data = e.data;
    if (data === undefined) {
      data = zeros.get(e.lengthBytes);
      if (!data) zeros.set(e.lengthBytes, (data = Buffer.alloc(e.lengthBytes)));
    }
    await volume[WRITE_PAST_IMPORT](e.offsetBytes, data);
    killPoint('import:extent');
    applied += e.lengthBytes;
    sinceMarker += e.lengthBytes;
    chain = chainedWith(chain, e.crc);
    result.appliedExtents += 1;
    if (sinceMarker >= (options.markerIntervalBytes ?? IMPORT_MARKER_INTERVAL_BYTES) && i + 1 < v.extentCount) {
      await volume.flush();
      marker = { ...marker, nextExtent: i + 1, appliedBytes: applied, appliedChain: chain };
      await volume.setImportState(marker);
      killPoint('import:marker');
      sinceMarker = 0;
    }
    progress?.({ phase: 'apply', doneBytes: applied, totalBytes: v.totalBytes });
  }
}

const ZEROS = Buffer.alloc(4 * 1024 * 1024);

function isZero(buf: Buffer): boolean {
  for (let pos = 0; pos < buf.length; pos += ZEROS.length) {
    const piece = buf.subarray(pos, pos + ZEROS.length);
    if (!piece.equals(ZEROS.subarray(0, piece.length))) return false;
  }
  return true;
}

/**
 * Reads the imported snapshot back and compares it with the stream (a full
 * stream: also that every gap reads as zeros — read only where the snapshot
 * can hold data, so the cost follows the data, not the volume size).
 */
async function readBack(volume: Volume, source: StreamSource, v: VerifiedStream, progress: ImportOptions['onProgress']): Promise<void> {
  const h = v.header;
  const name = h.source.name;
  let done = 0;
  const total = h.kind === 'full' ? h.sizeBytes : v.totalBytes;
  // Gaps of a full stream are checked only where the snapshot can hold data (export.ts, snapshotDataPieces): cost follows the data.
  const candidates = h.kind === 'full' ? (await snapshotDataPieces(volume, name))[Symbol.asyncIterator]() : undefined;
  let next = await candidates?.next();
  const checkZero = async (offsetBytes: number, lengthBytes: number): Promise<void> => {
    const end = offsetBytes + lengthBytes;
    while (candidates && next && !next.done && next.value.offsetBytes < end) {
      const piece = next.value;
      const from = Math.max(piece.offsetBytes, offsetBytes);
      const to = Math.min(piece.offsetBytes + piece.lengthBytes, end);
      if (to > from && !isZero(await volume.readSnapshot(name, from, to - from))) {
        throw new VerifyFailedError(`snapshot ${name} reads non-zero bytes at ${from}+${to - from}, where the stream has none`, { offsetBytes: from, lengthBytes: to - from });
      }
      if (piece.offsetBytes + piece.lengthBytes > end) break; // the piece goes on into the next extent or gap
      next = await candidates.next();
    }
    done += lengthBytes;
    progress?.({ phase: 'readback', doneBytes: done, totalBytes: total });
  };
  let cursor = 0;
  for (let i = 0; i < v.extentCount; i++) {
    const streamOffsetBytes = v.extentOffsets[i] ?? 0;
    const e = await readExtent(source, h, streamOffsetBytes, i, 0);
    if (e === null) throw new StreamChangedError(i, streamOffsetBytes);
    if (e.crc !== v.extentCrcs[i]) throw new StreamChangedError(i, streamOffsetBytes, 'is not the extent verified (another checksum)');
    if (h.kind === 'full' && e.offsetBytes > cursor) await checkZero(cursor, e.offsetBytes - cursor);
    const got = await volume.readSnapshot(name, e.offsetBytes, e.lengthBytes);
    const same = e.data ? got.equals(e.data) : isZero(got);
    if (!same)
      throw new VerifyFailedError(`snapshot ${name} differs from extent ${i} of the stream (volume bytes ${e.offsetBytes}+${e.lengthBytes})`, {
        extentIndex: i,
        offsetBytes: e.offsetBytes,
        lengthBytes: e.lengthBytes,
      });
    cursor = e.offsetBytes + e.lengthBytes;
    done += e.lengthBytes;
    progress?.({ phase: 'readback', doneBytes: done, totalBytes: total });
  }
  if (h.kind === 'full' && cursor < h.sizeBytes) await checkZero(cursor, h.sizeBytes - cursor);
}
