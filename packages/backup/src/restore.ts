import { constants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { assert } from '@cowvol/base';
import {
  importStream,
  MAX_EXTENT_BYTES,
  StreamWriter,
  snapshotDataPieces,
  Volume,
  type ImportProgress,
  type ImportRecord,
  type ImportResult,
  type StreamSource,
  VerifyFailedError,
  type SnapshotIdentity,
} from '@cowvol/cow-core';
import { trackTempFile } from './interrupt-cleanup.js';
import type { Manifest } from './manifest.js';
import { checkJobs, DEFAULT_JOBS, mapOrdered } from './pool.js';
import { isZero } from './push.js';
import type { Repository } from './repository.js';
import { findRestoreBase } from './restore-base.js';
import { alreadyImported, checkResumable, planTarget, removeDeadSpools, spoolPathFor, type TargetState } from './restore-target.js';
import { acquireReaderLock, type RepositoryLock } from './repository-lock.js';

/** Options of {@link restoreFromRepository}. */
export interface RestoreOptions {
  /** Add the snapshot to the existing volume at the target path (its base by identity, as `import` of an incremental stream). */
  into?: boolean;
  /** After the import, read the snapshot back and compare each chunk's id with the manifest. */
  verify?: boolean;
  /** Chunk downloads in flight at most: 1..256, default 8. */
  jobs?: number;
  onProgress?: (phase: 'download' | ImportProgress['phase'] | 'verify-ids', doneBytes: number, totalBytes: number) => void;
  /** Opens the target for `--into` and the import (the CLI's `--wait`); default Volume.open. */
  openVolume?: (path: string) => Promise<Volume>;
  /** A target this process does not open (a served volume, `--into`): replaces `openVolume` and every open of the target. */
  target?: RestoreTarget;
  /** Called when the repository cannot be written, so the restore runs without its shared lock (acquireReaderLock). */
  onUnlocked?: (why: string) => void;
}

/**
 * A restore target reached without opening it here — a volume `cowvol
 * serve` holds, through its control channel and NBD export (the CLI's
 * served-reports.ts, docs/ARCHITECTURE.md §14.10).
 */
export interface RestoreTarget {
  /** Its import marker, the origins of its imported snapshots and the identities of all (the plan, and the `into` base search). */
  state(): Promise<TargetState>;
  /** Imports the complete stream file at `streamPath` (absolute, regular, this process's spool) into the target; `resume` continues an interrupted import of it. */
  importFile(streamPath: string, resume: boolean): Promise<ImportResult>;
  /** Reads the restored snapshot back (`verify`). */
  readSnapshot(name: string, offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** Gives back what `readSnapshot` holds (called once the read-back ends). */
  close(): Promise<void>;
  /** Refuses, before any chunk is downloaded, a target that will refuse the import (a server serving `live` read-only: VOLUME_READ_ONLY). */
  beforeDownload?(): Promise<void>;
}

/** What a restore did. */
export interface RestoreResult {
  volume: string;
  snapshot: string;
  volumeUuid: string;
  /** The manifest whose snapshot the target held (`--into`), or null. */
  base: string | null;
  created: boolean;
  /** The target was this restore, interrupted: its import was resumed. */
  resumed: boolean;
  /** The target held this snapshot already (as `snapshot`, its name there): nothing was downloaded or written. */
  alreadyThere: boolean;
  chunksDownloaded: number;
  bytesDownloaded: number;
  verified: boolean;
  /** Bytes of the restored snapshot read back by `verify` (0 without): its chunks that hold data, not its zeros. */
  verifyReadBytes: number;
  import: ImportResult;
  seconds: number;
}

/**
 * Restores snapshot `snapshotName` of volume `volumeUuid` from `repo` into
 * `targetPath` (docs/ARCHITECTURE.md §17), through cow-core's import:
 *
 * 1. The repository's shared lock, the manifest, then the target, before
 *    any download (restore-target.ts `planTarget`): a path that exists is
 *    VOLUME_EXISTS without `into` — unless it is this restore, interrupted
 *    (its import marker names this snapshot: the import is resumed), or
 *    holds the snapshot already as an import (nothing is downloaded); a
 *    missing folder is INVALID_ARGUMENT. With `into`, the base
 *    (restore-base.ts: the newest ancestor the target holds, or any
 *    manifest of the volume it holds when the chain is broken; else
 *    BASE_MISMATCH): the chunks that differ from it are the extents, as an
 *    incremental stream.
 * 2. Every chunk needed is downloaded and authenticated (BACKUP_CORRUPT for
 *    a damaged or missing one) and spooled, as a cowvol stream
 *    (docs/FORMAT.md §9), into a private temporary file next to the target
 *    (`spoolPathFor`; removed on a signal, and by the next restore to that
 *    target once its process is gone: `removeDeadSpools`) — before any
 *    byte of the target is written, so a damaged repository leaves nothing
 *    behind. Memory: at most `jobs` chunks waiting in order.
 * 3. `importStream` of that file: a new volume (or a new snapshot of the
 *    target, with import's base checks); then the file is removed.
 * 4. With `verify`, the new snapshot is read back chunk by chunk and each
 *    chunk's id is compared with the manifest's (VERIFY_FAILED).
 *
 * Holds a shared repository lock (acquireReaderLock: none where the
 * repository cannot be written, `onUnlocked` says so).
 *
 * @throws OBJECT_NOT_FOUND (no such manifest) · REPOSITORY_LOCKED (a prune runs) · LOCK_LOST · BACKUP_CORRUPT · BASE_MISMATCH · VOLUME_EXISTS · VOLUME_NOT_FOUND · INVALID_ARGUMENT · what importStream throws · STORE_UNAVAILABLE · IO_ERROR · NO_SPACE
 */
export async function restoreFromRepository(repo: Repository, volumeUuid: string, snapshotName: string, targetPath: string, options: RestoreOptions = {}): Promise<RestoreResult> {
  const started = Date.now();
  const jobs = checkJobs(options.jobs ?? DEFAULT_JOBS);
  await removeDeadSpools(targetPath);
  // A shared lock first, held until the restore ends: no prune deletes what it reads, the manifest included (REPOSITORY_LOCKED while one runs).
  const lock = await acquireReaderLock(repo, 'restore', options.onUnlocked ?? (() => undefined));
  try {
    const manifest = await repo.getManifest(volumeUuid, snapshotName);
    const { target } = options;
    // The target is checked before any chunk is downloaded: a typo must not cost the whole download.
    const plan = await planTarget(targetPath, manifest, { into: options.into, openVolume: options.openVolume, state: target ? () => target.state() : undefined });
    if (plan.kind === 'done') return await alreadyThere(repo, manifest, targetPath, plan.heldAs, options, started);
    await target?.beforeDownload?.();
    return await restoreLocked(repo, manifest, targetPath, plan.kind === 'resume' ? plan.pending : undefined, { ...options, jobs }, started, plan.identities, lock);
  } finally {
    await lock?.release();
  }
}

/** Plan `done`: the target holds the snapshot already, as `heldAs`; nothing is downloaded (with `verify`, `heldAs` is read back). */
async function alreadyThere(repo: Repository, manifest: Manifest, targetPath: string, heldAs: string, options: RestoreOptions, started: number): Promise<RestoreResult> {
  const result: RestoreResult = {
    volume: targetPath,
    snapshot: heldAs,
    volumeUuid: manifest.volumeUuid,
    base: null,
    created: false,
    resumed: false,
    alreadyThere: true,
    chunksDownloaded: 0,
    bytesDownloaded: 0,
    verified: false,
    verifyReadBytes: 0,
    import: alreadyImported(targetPath, manifest, heldAs),
    seconds: 0,
  };
  if (options.verify === true) {
    result.verifyReadBytes = await verifyIds(repo, { ...manifest, snapshotName: heldAs }, targetPath, options.target, options.onProgress);
    result.verified = true;
  }
  result.seconds = (Date.now() - started) / 1000;
  return result;
}

async function restoreLocked(
  repo: Repository,
  manifest: Manifest,
  targetPath: string,
  pending: ImportRecord | undefined,
  options: RestoreOptions & { jobs: number },
  started: number,
  identities: SnapshotIdentity[],
  lock: RepositoryLock | undefined,
): Promise<RestoreResult> {
  const { target, jobs } = options;
  const { volumeUuid, snapshotName } = manifest;
  const base = options.into === true ? await findRestoreBase(repo, manifest, targetPath, identities) : undefined;
  if (pending) checkResumable(targetPath, pending, base ? { ...base.manifest.identity, name: base.manifest.snapshotName } : null);
  const resume = pending !== undefined;
  const spoolPath = spoolPathFor(targetPath);
  const handle = await fsp.open(spoolPath, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  const untrack = trackTempFile(spoolPath);
  try {
    const spooled = await spool(repo, manifest, base?.manifest, handle, jobs, options.onProgress);
    lock?.assertHeld(); // the lease held through the download (renewals did not fail): no prune overlapped it
    const source: StreamSource = { lengthBytes: spooled.streamBytes, read: (offsetBytes, lengthBytes) => readAt(handle, offsetBytes, lengthBytes) };
    const imported = target
      ? await target.importFile(spoolPath, resume)
      : await importStream(targetPath, source, {
          verify: false,
          resume,
          ...(options.openVolume ? { openVolume: options.openVolume } : {}),
          onProgress: (p) => options.onProgress?.(p.phase, p.doneBytes, p.totalBytes),
        });
    const result: RestoreResult = {
      volume: targetPath,
      snapshot: snapshotName,
      volumeUuid,
      base: base?.key ?? null,
      created: imported.created,
      resumed: imported.resumed,
      alreadyThere: imported.alreadyImported,
      chunksDownloaded: spooled.chunks,
      bytesDownloaded: spooled.bytes,
      verified: false,
      verifyReadBytes: 0,
      import: imported,
      seconds: 0,
    };
    if (options.verify === true) {
      result.verifyReadBytes = await verifyIds(repo, manifest, targetPath, target, options.onProgress);
      result.verified = true;
    }
    result.seconds = (Date.now() - started) / 1000;
    return result;
  } finally {
    await handle.close();
    await fsp.unlink(spoolPath).catch(() => undefined);
    untrack();
  }
}

/**
 * Writes the stream of `manifest` (full, or incremental from `base`) to
 * `handle`, downloading and authenticating every chunk. Returns the stream's
 * length and the chunks and plaintext bytes downloaded.
 */
async function spool(
  repo: Repository,
  manifest: Manifest,
  base: Manifest | undefined,
  handle: FileHandle,
  jobs: number,
  progress: RestoreOptions['onProgress'],
): Promise<{ streamBytes: number; chunks: number; bytes: number }> {
  const { sizeBytes, chunkSizeBytes } = manifest;
  const lengthOf = (i: number): number => Math.min(chunkSizeBytes, sizeBytes - i * chunkSizeBytes);
  const indexes = base ? [...new Set([...manifest.chunks.keys(), ...base.chunks.keys()])].filter((i) => manifest.chunks.get(i) !== base.chunks.get(i)) : [...manifest.chunks.keys()];
  indexes.sort((a, b) => a - b);
  const total = indexes.reduce((n, i) => n + (manifest.chunks.has(i) ? lengthOf(i) : 0), 0);
  let position = 0;
  const writer = new StreamWriter(
    {
      kind: base ? 'incremental' : 'full',
      sizeBytes,
      blockSizeBytes: manifest.blockSizeBytes,
      source: { ...manifest.identity, name: manifest.snapshotName },
      base: base ? { ...base.identity, name: base.snapshotName } : null,
      labels: manifest.labels,
      // The backup's time, not now: the same restore spools the same stream, so an interrupted one resumes (its marker names the header's CRC).
      createdAt: manifest.pushedAt,
      producer: 'cowvol backup restore',
    },
    async (bytes) => {
      let written = 0;
      while (written < bytes.length) written += (await handle.write(bytes, written, bytes.length - written, position + written)).bytesWritten;
      position += bytes.length;
    },
  );
  await writer.start();
  let chunks = 0;
  let bytes = 0;
  progress?.('download', 0, total);
  await mapOrdered(
    indexes,
    jobs,
    async (i) => {
      const id = manifest.chunks.get(i);
      return id === undefined ? undefined : repo.getChunk(id, lengthOf(i));
    },
    async (data, i) => {
      const offsetBytes = i * chunkSizeBytes;
      for (let at = 0; at < lengthOf(i); at += MAX_EXTENT_BYTES) {
        const length = Math.min(MAX_EXTENT_BYTES, lengthOf(i) - at);
        if (data === undefined) await writer.zero(offsetBytes + at, length);
        else await writer.data(offsetBytes + at, data.subarray(at, at + length));
      }
      if (data !== undefined) {
        chunks++;
        bytes += data.length;
      }
      progress?.('download', bytes, total);
    },
  );
  const totals = await writer.finish();
  await handle.sync();
  assert(totals.streamBytes === position, 'the spooled stream is as long as what was written');
  return { streamBytes: position, chunks, bytes };
}

/**
 * Reads the restored snapshot back chunk by chunk and compares each chunk's
 * id with the manifest's (absent: all zeros). On a volume opened here, a
 * chunk the manifest has as zeros is read only when it meets one of the
 * snapshot's data pieces (`snapshotDataPieces`: its read-through maps and
 * the volume file's data regions; every byte outside them reads as zero),
 * so the cost follows the data, not the volume size; a served target is
 * read whole. Returns the bytes read back.
 * @throws VERIFY_FAILED
 */
async function verifyIds(repo: Repository, manifest: Manifest, targetPath: string, target: RestoreTarget | undefined, progress: RestoreOptions['onProgress']): Promise<number> {
  const opened = target === undefined ? await Volume.openForReading(targetPath) : undefined;
  const volume = target ?? opened;
  assert(volume !== undefined, 'a target to read back');
  let readBytes = 0;
  try {
    const { sizeBytes, chunkSizeBytes } = manifest;
    const pieces = opened === undefined ? undefined : (await snapshotDataPieces(opened, manifest.snapshotName))[Symbol.asyncIterator]();
    let piece = await pieces?.next();
    for (let offsetBytes = 0; offsetBytes < sizeBytes; offsetBytes += chunkSizeBytes) {
      const lengthBytes = Math.min(chunkSizeBytes, sizeBytes - offsetBytes);
      const want = manifest.chunks.get(offsetBytes / chunkSizeBytes);
      if (want === undefined && pieces !== undefined && piece !== undefined) {
        while (piece.done !== true && piece.value.offsetBytes + piece.value.lengthBytes <= offsetBytes) piece = await pieces.next();
        const meetsData = piece.done !== true && piece.value.offsetBytes < offsetBytes + lengthBytes;
        if (!meetsData) {
          progress?.('verify-ids', offsetBytes + lengthBytes, sizeBytes);
          continue; // reads as zeros, as the manifest has it
        }
      }
      const data = await volume.readSnapshot(manifest.snapshotName, offsetBytes, lengthBytes);
      readBytes += data.length;
      const same = data.length === lengthBytes && (want === undefined ? isZero(data) : repo.chunkIdOf(data) === want);
      if (!same) {
        throw new VerifyFailedError(`snapshot ${manifest.snapshotName} of ${targetPath} differs from the backup in the chunk at byte ${String(offsetBytes)}`, {
          offsetBytes,
          chunkId: want ?? null,
        });
      }
      progress?.('verify-ids', offsetBytes + lengthBytes, sizeBytes);
    }
  } finally {
    await volume.close();
  }
  return readBytes;
}

async function readAt(handle: FileHandle, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const buf = Buffer.alloc(lengthBytes);
  let got = 0;
  while (got < lengthBytes) {
    const { bytesRead } = await handle.read(buf, got, lengthBytes - got, offsetBytes + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}
