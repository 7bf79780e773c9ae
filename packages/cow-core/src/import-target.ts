/**
 * The target of an import (docs/ARCHITECTURE.md §15.6, step 2 "check"):
 * created for a full stream, checked for an incremental one (its base
 * snapshot, its live content, a free name, room in the catalog), and the
 * durable import marker it carries.
 */

import type { SnapshotInfo } from './volume-types.js';
import { assert, CowvolError } from '@cowvol/base';
import { MAX_SNAPSHOTS, volumeLayout } from './layout.js';
import { BaseMismatchError, ImportPendingError, ResumeMismatchError, SnapshotExistsError, SnapshotLimitError, VolumeExistsError, VolumeNotFoundError } from './errors.js';
import { SCHEMA_VERSION, sameIdentity, type ImportRecord, type SnapshotIdentity } from './metadata.js';
import { mergeExtents } from './diff.js';
import { Volume } from './volume.js';
import { extentChainOf, type VerifiedStream } from './stream.js';
import { isIncompleteCreate } from './create-intent.js';
import { killPoint } from './kill-point.js';
import { pathExists } from './files.js';
import type { ImportOptions, ImportResult } from './import.js';

function describeIdentity(i: SnapshotIdentity): string {
  return `${i.name} (volume ${i.volumeUuid}, snapshot id ${i.snapshotId}, taken ${i.createdAt})`;
}

/** Whether an import marker belongs to this exact stream. */
function markerMatches(marker: ImportRecord, v: VerifiedStream): boolean {
  return (
    marker.headerCrc === v.headerCrc &&
    marker.kind === v.header.kind &&
    marker.extentCount === v.extentCount &&
    // The extents applied are this stream's (another stream with the same header, e.g. of a suspect snapshot exported
    // again, would otherwise mix with them).
    (marker.appliedChain === undefined || marker.appliedChain === extentChainOf(v, marker.nextExtent)) &&
    sameIdentity(marker.source, v.header.source) &&
    sameIdentity(marker.base, v.header.base)
  );
}

/** The target an import applies to, with its marker and the first extent to apply. */
export interface ImportTarget {
  volume: Volume;
  marker: ImportRecord;
  startExtent: number;
}

/**
 * Step 2 of {@link importStream}: creates (full stream) or checks (existing
 * target) the target and marks the import. Returns undefined when there is
 * nothing to apply (`dryRun`, or the import was already finished); `result`
 * says which.
 */
export async function openTarget(path: string, v: VerifiedStream, options: ImportOptions, result: ImportResult): Promise<ImportTarget | undefined> {
  const h = v.header;
  // A target whose create was killed half-way is started over (Volume.create reclaims it).
  if (options.volume === undefined && (!(await pathExists(path)) || (await isIncompleteCreate(volumeLayout(path))))) {
    if (h.kind === 'incremental') throw new VolumeNotFoundError(path);
    if (options.resume) {
      throw new ResumeMismatchError(
        (await pathExists(path))
          ? `--resume: ${path} was never created completely, so there is no interrupted import to resume; run the import without --resume`
          : `--resume: ${path} does not exist, so there is no interrupted import to resume`,
      );
    }
    if (options.dryRun) return undefined;
    const marker = newMarker(v);
    // The marker is written with the volume record: the target never exists without it, so --resume always finds it.
    const volume = await Volume.create(path, { sizeBytes: h.sizeBytes, blockSizeBytes: h.blockSizeBytes, importState: marker, ...(options.opener ? { opener: options.opener } : {}) });
    result.created = true;
    killPoint('import:created');
    return { volume, marker, startExtent: 0 };
  }
  const volume =
    options.volume ??
    (await openerOf(options)(path).catch((err: unknown) => {
      // A full stream makes a new volume: a path taken by something that is not a volume is VOLUME_EXISTS, as for a volume.
      if (h.kind === 'full' && !options.resume && err instanceof CowvolError && err.code === 'NOT_A_VOLUME') {
        throw new VolumeExistsError(`${path} already exists and is not a volume; a full stream creates a new volume (import it under a new path)`, path);
      }
      throw err;
    }));
  try {
    const prepared = await prepareExisting(volume, path, v, options);
    if (prepared === 'already-imported') {
      result.alreadyImported = true;
      result.resumed = true;
      result.skippedExtents = v.extentCount;
    }
    if (prepared === 'dry-run' && options.resume === true) {
      // What the resume would do: continue after the extents its marker says are durable.
      result.resumed = true;
      result.skippedExtents = (await volume.importState())?.nextExtent ?? 0;
    }
    if (prepared === 'already-imported' || prepared === 'dry-run') {
      await releaseTarget(volume, options);
      return undefined;
    }
    result.resumed = options.resume === true;
    if (!options.resume) await volume.setImportState(prepared);
    return { volume, marker: prepared, startExtent: prepared.nextExtent };
  } catch (err) {
    await releaseTarget(volume, options).catch(() => undefined);
    throw err;
  }
}

/** How an import opens an existing target: `options.openVolume`, else `Volume.open` (with `options.opener`). */
function openerOf(options: ImportOptions): (path: string) => Promise<Volume> {
  return options.openVolume ?? ((p: string) => Volume.open(p, options.opener ? { opener: options.opener } : {}));
}

/**
 * Runs `fn` on the existing target `path` (the one given, or opened as an
 * import opens it), then releases it: the read-back of an import found
 * already done (`--resume --verify` after a kill between its commit and its
 * read-back).
 */
export async function withExistingTarget<T>(path: string, options: ImportOptions, fn: (volume: Volume) => Promise<T>): Promise<T> {
  const volume = options.volume ?? (await openerOf(options)(path));
  try {
    return await fn(volume);
  } finally {
    await releaseTarget(volume, options);
  }
}

/** Closes a target the import opened; one it was given (`options.volume`, a served volume) stays open. */
export async function releaseTarget(volume: Volume, options: ImportOptions): Promise<void> {
  if (options.volume !== volume) await volume.close();
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

/**
 * `--resume` of an existing target: the pending marker of this very stream
 * (room checked for its last step), or 'already-imported' when that step is
 * done. @throws RESUME_MISMATCH, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT
 */
function prepareResume(
  path: string,
  v: VerifiedStream,
  options: ImportOptions,
  found: { pending: ImportRecord | undefined; snapshots: SnapshotInfo[]; abandon: string },
): ImportRecord | 'already-imported' | 'dry-run' {
  const { pending, snapshots, abandon } = found;
  const h = v.header;
  if (pending && markerMatches(pending, v)) {
    // The last step creates the snapshot: a name taken since the interruption (or a full catalog) refuses now, before the rest of the extents reach live.
    checkRoomFor(h.source.name, snapshots);
    return options.dryRun ? 'dry-run' : pending;
  }
  // The last step (snapshot + marker clear) is one transaction: if it is done, so is the import.
  for (const s of snapshots) if (s.origin && sameIdentity(s.origin, h.source)) return 'already-imported';
  throw new ResumeMismatchError(
    pending
      ? sameIdentity(pending.source, h.source)
        ? `--resume: the interrupted import into ${path} is of another stream of the same snapshot ${describeIdentity(h.source)} (another export or restore of it, or another base): ` +
          `finish it with that stream, or ${abandon}`
        : `--resume: the interrupted import into ${path} is of another stream (${describeIdentity(pending.source)}), not ${describeIdentity(h.source)}`
      : `--resume: ${path} has no interrupted import to resume`,
    { details: { path } },
  );
}

/** Checks an existing target; returns the marker to continue from (a new one when not resuming). */
async function prepareExisting(volume: Volume, path: string, v: VerifiedStream, options: ImportOptions): Promise<ImportRecord | 'already-imported' | 'dry-run'> {
  const h = v.header;
  const pending = await volume.importState();
  const snapshots = await volume.listSnapshots();
  // How to abandon a pending import: a restore needs a snapshot; a volume a full import was creating has none.
  const abandon =
    snapshots.length > 0
      ? 'abandon it by restoring a snapshot (cowvol snapshot restore)'
      : `abandon it by removing the partly created volume (${path} and its sidecar ${path}.cowvol) and importing again`;
  if (options.resume) return prepareResume(path, v, options, { pending, snapshots, abandon });
  if (pending) {
    throw new ImportPendingError(
      `an import of ${describeIdentity(pending.source)} into ${path} was interrupted after ${pending.nextExtent} of ${pending.extentCount} extents; ` +
        `run the same import again with --resume, or ${abandon}`,
      { details: { path, source: pending.source, nextExtent: pending.nextExtent, extentCount: pending.extentCount } },
    );
  }
  if (h.kind === 'full') {
    throw new VolumeExistsError(`${path} already exists; a full stream creates a new volume (import it under a new path)`, path);
  }
  if (volume.sizeBytes !== h.sizeBytes || volume.blockSizeBytes !== h.blockSizeBytes) {
    throw new BaseMismatchError(`${path} is ${volume.sizeBytes} bytes with ${volume.blockSizeBytes}-byte blocks; the stream is for ${h.sizeBytes} bytes with ${h.blockSizeBytes}-byte blocks`, {
      details: { path, sizeBytes: volume.sizeBytes, streamSizeBytes: h.sizeBytes },
    });
  }
  // Applied already (this exact source snapshot is here, imported or taken on
  // this very volume): say so rather than "base mismatch".
  // Each identity is looked up once: it answers both this and the base search below.
  const identities = new Map<string, SnapshotIdentity>();
  for (const s of snapshots) {
    const identity = await volume.snapshotIdentity(s.name);
    if ((s.origin && sameIdentity(s.origin, h.source)) || sameIdentity(identity, h.source)) throw new SnapshotExistsError(s.name);
    identities.set(s.name, identity);
  }
  const base = h.base;
  assert(base !== null, 'an incremental stream names its base (stream-header.ts checks it when the header is read)');
  // The base by identity (the newest holder if several), then: is the live content still that snapshot?
  let holder: string | undefined;
  for (const s of snapshots) if (sameIdentity(identities.get(s.name), base)) holder = s.name;
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
      `${path} was written since its snapshot ${holder} (first difference at byte ${differing}), so its content is not the stream's base; ` + `run \`cowvol snapshot restore ${path} ${holder}\` first`,
      { details: { path, base, snapshot: holder, offsetBytes: differing } },
    );
  }
  checkRoomFor(h.source.name, snapshots);
  return options.dryRun ? 'dry-run' : newMarker(v);
}

/**
 * The last step of an import creates snapshot `name`: a name taken or a
 * full catalog must refuse before any extent is applied, not after.
 * @throws SNAPSHOT_EXISTS · SNAPSHOT_LIMIT
 */
function checkRoomFor(name: string, snapshots: ReadonlyArray<{ name: string }>): void {
  if (snapshots.some((s) => s.name === name)) throw new SnapshotExistsError(name);
  if (snapshots.length >= MAX_SNAPSHOTS) throw new SnapshotLimitError(MAX_SNAPSHOTS);
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
