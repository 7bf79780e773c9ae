import { stat } from 'node:fs/promises';
import { CowvolError, type DeviceOpener } from '@cowvol/base';
import {
  BaseMismatchError,
  ImportPendingError,
  ResumeMismatchError,
  SnapshotExistsError,
  SnapshotLimitError,
  VolumeExistsError,
  VolumeNotFoundError,
} from './errors.js';
import { SCHEMA_VERSION, type ImportRecord, type SnapshotIdentity } from './metadata.js';
import { mergeExtents } from './diff.js';
import { snapshotDataPieces } from './export.js';
import { MAX_SNAPSHOTS } from './layout.js';
import { readExtent, verifyStream, type StreamHeader, type StreamSource, type VerifiedStream } from './stream.js';
import { Volume } from './volume.js';
import { isIncompleteCreate } from './create-intent.js';
import { killPoint } from './kill-point.js';
import { volumeLayout } from './layout.js';

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
  /** Opens an existing target (default `Volume.open(path)`; the CLI adds `--wait`). */
  openVolume?: (path: string) => Promise<Volume>;
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

function sameIdentity(a: SnapshotIdentity | null | undefined, b: SnapshotIdentity | null | undefined): boolean {
  if (!a || !b) return a === b;
  return a.volumeUuid === b.volumeUuid && a.snapshotId === b.snapshotId && a.createdAt === b.createdAt;
}

function describeIdentity(i: SnapshotIdentity): string {
  return `${i.name} (volume ${i.volumeUuid}, snapshot id ${i.snapshotId}, taken ${i.createdAt})`;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Whether an import marker belongs to this exact stream. */
function markerMatches(marker: ImportRecord, v: VerifiedStream): boolean {
  return marker.headerCrc === v.headerCrc && marker.kind === v.header.kind && marker.extentCount === v.extentCount && sameIdentity(marker.source, v.header.source) && sameIdentity(marker.base, v.header.base);
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
 * @throws NOT_A_STREAM, UNSUPPORTED_VERSION, STREAM_CORRUPT, VOLUME_EXISTS, VOLUME_NOT_FOUND, BASE_MISMATCH, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, IMPORT_PENDING, RESUME_MISMATCH, VERIFY_FAILED, NO_SPACE, IO_ERROR, VOLUME_BUSY
 */
export async function importStream(path: string, source: StreamSource, options: ImportOptions = {}): Promise<ImportResult> {
  const progress = options.onProgress;
  const v = await verifyStream(source, (done, total) => progress?.({ phase: 'verify', doneBytes: done, totalBytes: total }));
  killPoint('import:verified');
  const h: StreamHeader = v.header;
  const result: ImportResult = {
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
  const openVolume = options.openVolume ?? ((p: string) => Volume.open(p, options.opener ? { opener: options.opener } : {}));

  let volume: Volume;
  let startExtent = 0;
  let marker: ImportRecord;
  // A target whose create was killed half-way is started over (Volume.create reclaims it).
  if (!(await exists(path)) || (await isIncompleteCreate(volumeLayout(path)))) {
    if (h.kind === 'incremental') throw new VolumeNotFoundError(path);
    if (options.resume) {
      throw new ResumeMismatchError(
        (await exists(path)) ? `--resume: ${path} was never created completely, so there is no interrupted import to resume; run the import without --resume` : `--resume: ${path} does not exist, so there is no interrupted import to resume`,
      );
    }
    if (options.dryRun) return result;
    marker = newMarker(v);
    // The marker is written with the volume record: the target never exists without it, so --resume always finds it.
    volume = await Volume.create(path, { sizeBytes: h.sizeBytes, blockSizeBytes: h.blockSizeBytes, importState: marker, ...(options.opener ? { opener: options.opener } : {}) });
    result.created = true;
    killPoint('import:created');
  } else {
    volume = await openVolume(path);
    try {
      const prepared = await prepareExisting(volume, path, v, options);
      if (prepared === 'already-imported') {
        result.alreadyImported = true;
        result.resumed = true;
        result.skippedExtents = v.extentCount;
        await volume.close();
        return result;
      }
      if (prepared === 'dry-run') {
        await volume.close();
        return result;
      }
      marker = prepared;
      startExtent = marker.nextExtent;
      result.resumed = options.resume === true;
      if (!options.resume) await volume.setImportState(marker);
    } catch (err) {
      await volume.close().catch(() => undefined);
      throw err;
    }
  }

  try {
    result.skippedExtents = startExtent;
    let applied = marker.appliedBytes;
    let sinceMarker = 0;
    const zeros = new Map<number, Buffer>();
    progress?.({ phase: 'apply', doneBytes: applied, totalBytes: v.totalBytes });
    for (let i = startExtent; i < v.extentCount; i++) {
      // Re-checked: the input may have changed since pass 1.
      const e = await readExtent(source, h, v.extentOffsets[i]!, i, 0);
      if (e === null) throw new Error('unreachable: extent vanished after verification');
      let data = e.data;
      if (data === undefined) {
        data = zeros.get(e.lengthBytes);
        if (!data) zeros.set(e.lengthBytes, (data = Buffer.alloc(e.lengthBytes)));
      }
      await volume.write(e.offsetBytes, data);
      killPoint('import:extent');
      applied += e.lengthBytes;
      sinceMarker += e.lengthBytes;
      result.appliedExtents += 1;
      if (sinceMarker >= (options.markerIntervalBytes ?? IMPORT_MARKER_INTERVAL_BYTES) && i + 1 < v.extentCount) {
        await volume.flush();
        marker = { ...marker, nextExtent: i + 1, appliedBytes: applied };
        await volume.setImportState(marker);
        killPoint('import:marker');
        sinceMarker = 0;
      }
      progress?.({ phase: 'apply', doneBytes: applied, totalBytes: v.totalBytes });
    }
    await volume.flush();
    killPoint('import:applied');
    // One transaction: the snapshot (with origin and labels) appears and the marker goes.
    await volume.createSnapshot(h.source.name, { labels: h.labels, origin: h.source, clearImport: true });
    killPoint('import:finished');
    if (options.verify) {
      await readBack(volume, source, v, progress);
      result.verified = true;
    }
  } finally {
    await volume.close();
  }
  return result;
}

const ZEROS = Buffer.alloc(4 * 1024 * 1024);

function isZero(buf: Buffer): boolean {
  for (let pos = 0; pos < buf.length; pos += ZEROS.length) {
    const piece = buf.subarray(pos, pos + ZEROS.length);
    if (!piece.equals(ZEROS.subarray(0, piece.length))) return false;
  }
  return true;
}

function newMarker(v: VerifiedStream): ImportRecord {
  return {
    v: SCHEMA_VERSION,
    kind: v.header.kind,
    source: v.header.source,
    base: v.header.base,
    headerCrc: v.headerCrc,
    extentCount: v.extentCount,
    nextExtent: 0,
    appliedBytes: 0,
    startedAt: new Date().toISOString(),
  };
}

/** Checks an existing target; returns the marker to continue from (a new one when not resuming). */
async function prepareExisting(volume: Volume, path: string, v: VerifiedStream, options: ImportOptions): Promise<ImportRecord | 'already-imported' | 'dry-run'> {
  const h = v.header;
  const pending = await volume.importState();
  const snapshots = await volume.listSnapshots();
  if (options.resume) {
    if (pending && markerMatches(pending, v)) return options.dryRun ? 'dry-run' : pending;
    // The last step (snapshot + marker clear) is one transaction: if it is done, so is the import.
    for (const s of snapshots) if (s.origin && sameIdentity(s.origin, h.source)) return 'already-imported';
    throw new ResumeMismatchError(
      pending
        ? `--resume: the interrupted import into ${path} is of another stream (${describeIdentity(pending.source)}), not ${describeIdentity(h.source)}`
        : `--resume: ${path} has no interrupted import to resume`,
      { details: { path } },
    );
  }
  if (pending) {
    throw new ImportPendingError(
      `an import of ${describeIdentity(pending.source)} into ${path} was interrupted after ${pending.nextExtent} of ${pending.extentCount} extents; ` +
        'run the same import again with --resume, or abandon it by restoring a snapshot (cowvol snapshot restore)',
      { details: { path, source: pending.source, nextExtent: pending.nextExtent, extentCount: pending.extentCount } },
    );
  }
  if (h.kind === 'full') {
    throw new VolumeExistsError(`${path} already exists; a full stream creates a new volume (import it under a new path)`, path);
  }
  if (volume.sizeBytes !== h.sizeBytes || volume.blockSizeBytes !== h.blockSizeBytes) {
    throw new BaseMismatchError(
      `${path} is ${volume.sizeBytes} bytes with ${volume.blockSizeBytes}-byte blocks; the stream is for ${h.sizeBytes} bytes with ${h.blockSizeBytes}-byte blocks`,
      { details: { path, sizeBytes: volume.sizeBytes, streamSizeBytes: h.sizeBytes } },
    );
  }
  // Applied already (this exact source snapshot is here): say so rather than "base mismatch".
  for (const s of snapshots) if (s.origin && sameIdentity(s.origin, h.source)) throw new SnapshotExistsError(s.name);
  const base = h.base!;
  // The base by identity (the newest holder if several), then: is the live content still that snapshot?
  let holder: string | undefined;
  for (const s of snapshots) if (sameIdentity(await volume.snapshotIdentity(s.name), base)) holder = s.name;
  if (holder === undefined) {
    const newest = snapshots.at(-1);
    throw new BaseMismatchError(
      `the stream's base is ${describeIdentity(base)}, and ${path} has no snapshot of it` +
        (newest ? ` (its newest is ${describeIdentity(await volume.snapshotIdentity(newest.name))})` : ' (it has no snapshot: import the full stream first)'),
      { details: { path, base } },
    );
  }
  if (snapshots.find((s) => s.name === holder)?.suspect) {
    // Its content took writes made outside cowvol (docs/ARCHITECTURE.md §13): it may not be the stream's base any more.
    throw new BaseMismatchError(
      `${path}'s snapshot ${holder} holds the stream's base but is suspect (writes made outside cowvol were accepted while it read live blocks), so its content may not be the stream's base; import a full stream instead`,
      { details: { path, base, snapshot: holder, suspect: true } },
    );
  }
  const differing = await liveDiffers(volume, holder);
  if (differing !== undefined) {
    throw new BaseMismatchError(
      `${path} was written since its snapshot ${holder} (first difference at byte ${differing}), so its content is not the stream's base; ` +
        `run \`cowvol snapshot restore ${path} ${holder}\` first`,
      { details: { path, base, snapshot: holder, offsetBytes: differing } },
    );
  }
  if (snapshots.some((s) => s.name === h.source.name)) throw new SnapshotExistsError(h.source.name);
  // The last step creates a snapshot: a full catalog must refuse now, not after the extents are applied.
  if (snapshots.length >= MAX_SNAPSHOTS) throw new SnapshotLimitError(MAX_SNAPSHOTS);
  return options.dryRun ? 'dry-run' : newMarker(v);
}

/**
 * Whether the live volume differs from snapshot `name`: only the blocks
 * written since it can (its diff to live); they are compared, so a volume
 * written and then restored to the snapshot counts as holding it. Returns
 * the first differing byte offset, or undefined. O(blocks written since).
 */
async function liveDiffers(volume: Volume, name: string): Promise<number | undefined> {
  const changed = await volume.diff(name);
  for (const p of mergeExtents(changed.extents, 4 * 1024 * 1024)) {
    const want = await volume.readSnapshot(name, p.offsetBytes, p.lengthBytes);
    const have = await volume.read(p.offsetBytes, p.lengthBytes);
    if (!want.equals(have)) {
      let i = 0;
      while (want[i] === have[i]) i++;
      return p.offsetBytes + i;
    }
  }
  return undefined;
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
    const e = (await readExtent(source, h, v.extentOffsets[i]!, i, 0))!;
    if (h.kind === 'full' && e.offsetBytes > cursor) await checkZero(cursor, e.offsetBytes - cursor);
    const got = await volume.readSnapshot(name, e.offsetBytes, e.lengthBytes);
    const same = e.data ? got.equals(e.data) : isZero(got);
    if (!same) throw new VerifyFailedError(`snapshot ${name} differs from extent ${i} of the stream (volume bytes ${e.offsetBytes}+${e.lengthBytes})`, { extentIndex: i, offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes });
    cursor = e.offsetBytes + e.lengthBytes;
    done += e.lengthBytes;
    progress?.({ phase: 'readback', doneBytes: done, totalBytes: total });
  }
  if (h.kind === 'full' && cursor < h.sizeBytes) await checkZero(cursor, h.sizeBytes - cursor);
}
