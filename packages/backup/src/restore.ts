import { randomBytes } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { assert, hasCode } from '@cowvol/base';
import {
  importStream,
  MAX_EXTENT_BYTES,
  StreamWriter,
  Volume,
  type ImportProgress,
  type ImportResult,
  type StreamSource,
  VerifyFailedError,
  VolumeExistsError,
  VolumeNotFoundError,
  type SnapshotIdentity,
} from '@cowvol/cow-core';
import { BackupArgumentError } from './errors.js';
import { trackTempFile } from './interrupt-cleanup.js';
import type { Manifest } from './manifest.js';
import { checkJobs, DEFAULT_JOBS, mapOrdered } from './pool.js';
import { isZero } from './push.js';
import type { Repository } from './repository.js';
import { findRestoreBase, sameIdentity } from './restore-base.js';
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
  /** The identities of the target's snapshots (the `into` base search). */
  heldIdentities(): Promise<SnapshotIdentity[]>;
  /** Imports the complete stream file at `streamPath` (absolute, regular, this process's spool) into the target. */
  importFile(streamPath: string): Promise<ImportResult>;
  /** Reads the restored snapshot back (`verify`). */
  readSnapshot(name: string, offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** Gives back what `readSnapshot` holds (called once the read-back ends). */
  close(): Promise<void>;
}

/** What a restore did. */
export interface RestoreResult {
  volume: string;
  snapshot: string;
  volumeUuid: string;
  /** The manifest whose snapshot the target held (`--into`), or null. */
  base: string | null;
  created: boolean;
  /** The target was this restore, interrupted: its import was resumed (or had finished already). */
  resumed: boolean;
  chunksDownloaded: number;
  bytesDownloaded: number;
  verified: boolean;
  import: ImportResult;
  seconds: number;
}

/**
 * Restores snapshot `snapshotName` of volume `volumeUuid` from `repo` into
 * `targetPath` (docs/ARCHITECTURE.md §17), through cow-core's import:
 *
 * 1. The manifest, then the target, before any download: a path that
 *    exists is VOLUME_EXISTS without `into` — unless it is this restore,
 *    interrupted (its import marker or a snapshot with this identity), which
 *    is resumed; a missing folder is INVALID_ARGUMENT. With `into`, the base
 *    (restore-base.ts: the newest ancestor the target holds, or any
 *    manifest of the volume it holds when the chain is broken; else
 *    BASE_MISMATCH): the chunks that differ from it are the extents, as an
 *    incremental stream.
 * 2. Every chunk needed is downloaded and authenticated (BACKUP_CORRUPT for
 *    a damaged or missing one) and spooled, as a cowvol stream
 *    (docs/FORMAT.md §9), into a private temporary file next to the target
 *    (`.<name>.cowvol-restore-<pid>-<random>`; removed on a signal, and by
 *    the next restore to that target once its process is gone) — before any
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
  const manifest = await repo.getManifest(volumeUuid, snapshotName);
  const { target } = options;
  // The target is checked before any chunk is downloaded: a typo must not cost the whole download.
  const resume = target ? false : await checkTarget(targetPath, manifest, options);
  const identities = target ? () => target.heldIdentities() : () => identitiesOf(targetPath, options.openVolume);
  // A shared lock, held until the restore ends: no prune deletes what it reads (REPOSITORY_LOCKED while one runs).
  const lock = await acquireReaderLock(repo, 'restore', options.onUnlocked ?? (() => undefined));
  try {
    return await restoreLocked(repo, manifest, targetPath, resume, { ...options, jobs }, started, identities, lock);
  } finally {
    await lock?.release();
  }
}

async function restoreLocked(
  repo: Repository,
  manifest: Manifest,
  targetPath: string,
  resume: boolean,
  options: RestoreOptions & { jobs: number },
  started: number,
  identities: () => Promise<SnapshotIdentity[]>,
  lock: RepositoryLock | undefined,
): Promise<RestoreResult> {
  const { target, jobs } = options;
  const { volumeUuid, snapshotName } = manifest;
  const base = options.into === true ? await findRestoreBase(repo, manifest, targetPath, await identities()) : undefined;
  await removeDeadSpools(targetPath);
  const spoolPath = join(dirname(targetPath), `${spoolPrefix(targetPath)}${String(process.pid)}-${randomBytes(6).toString('hex')}`);
  const handle = await fsp.open(spoolPath, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  const untrack = trackTempFile(spoolPath);
  try {
    const spooled = await spool(repo, manifest, base?.manifest, handle, jobs, options.onProgress);
    lock?.assertHeld(); // the lease held through the download (renewals did not fail): no prune overlapped it
    const source: StreamSource = { lengthBytes: spooled.streamBytes, read: (offsetBytes, lengthBytes) => readAt(handle, offsetBytes, lengthBytes) };
    const imported = target
      ? await target.importFile(spoolPath)
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
      resumed: imported.resumed || imported.alreadyImported,
      chunksDownloaded: spooled.chunks,
      bytesDownloaded: spooled.bytes,
      verified: false,
      import: imported,
      seconds: 0,
    };
    if (options.verify === true) {
      await verifyIds(repo, manifest, targetPath, target, options.onProgress);
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
 * The target as the import will find it, checked before the download
 * (docs/ARCHITECTURE.md §17, "Restore"). Returns true when the target is
 * this very restore interrupted (its import marker names this snapshot, or
 * it holds the snapshot already): the import is then resumed, not refused.
 *
 * @throws INVALID_ARGUMENT (the target's folder is missing) · VOLUME_EXISTS (a path that exists, without `into`) · VOLUME_NOT_FOUND (`into` a missing path) · what the open throws (`into`)
 */
async function checkTarget(targetPath: string, manifest: Manifest, options: RestoreOptions): Promise<boolean> {
  const found = await fsp.lstat(targetPath).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  });
  if (found === undefined) {
    if (options.into === true) throw new VolumeNotFoundError(targetPath);
    const folder = await fsp.stat(dirname(targetPath)).catch(() => undefined);
    if (!folder?.isDirectory()) throw new BackupArgumentError(`the folder of ${targetPath} does not exist (or is not a folder)`, { details: { path: targetPath } });
    return false;
  }
  const exists = (): VolumeExistsError => new VolumeExistsError(`${targetPath} already exists; restore into a new path (a new volume), or add the snapshot to that volume with --into`, targetPath);
  let volume: Volume;
  try {
    volume = options.openVolume ? await options.openVolume(targetPath) : await Volume.openForReading(targetPath);
  } catch (err) {
    if (options.into !== true && hasCode(err, 'NOT_A_VOLUME', 'VOLUME_NOT_FOUND')) throw exists();
    throw err;
  }
  try {
    const pending = await volume.importState();
    if (pending && sameIdentity(pending.source, manifest.identity)) return true;
    for (const s of await volume.listSnapshots()) if (sameIdentity(await volume.snapshotIdentity(s.name), manifest.identity)) return true;
  } finally {
    await volume.close();
  }
  if (options.into !== true) throw exists();
  return false;
}

/** The name of a restore's spool next to `targetPath`, up to its process id and random part. */
function spoolPrefix(targetPath: string): string {
  return `.${basename(targetPath)}.cowvol-restore-`;
}

/**
 * Removes the spools of earlier restores to the same target whose process
 * is gone (killed: a signal's own cleanup removes it otherwise). A spool
 * whose process id is alive — or was reused — is left alone.
 */
async function removeDeadSpools(targetPath: string): Promise<void> {
  const prefix = spoolPrefix(targetPath);
  const names = await fsp.readdir(dirname(targetPath)).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(name.slice(prefix.length).split('-')[0]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || processAlive(pid)) continue;
    await fsp.unlink(join(dirname(targetPath), name)).catch(() => undefined);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The identities of the snapshots of the volume at `targetPath`, opened here. @throws VOLUME_NOT_FOUND, what the open throws */
async function identitiesOf(targetPath: string, open?: (path: string) => Promise<Volume>): Promise<SnapshotIdentity[]> {
  const volume = open ? await open(targetPath) : await Volume.openForReading(targetPath);
  const held: SnapshotIdentity[] = [];
  try {
    for (const s of await volume.listSnapshots()) held.push(await volume.snapshotIdentity(s.name));
  } finally {
    await volume.close();
  }
  return held;
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

/** Reads the restored snapshot back chunk by chunk and compares each chunk's id with the manifest's (absent: all zeros). @throws VERIFY_FAILED */
async function verifyIds(repo: Repository, manifest: Manifest, targetPath: string, target: RestoreTarget | undefined, progress: RestoreOptions['onProgress']): Promise<void> {
  const volume = target ?? (await Volume.openForReading(targetPath));
  try {
    const { sizeBytes, chunkSizeBytes } = manifest;
    for (let offsetBytes = 0; offsetBytes < sizeBytes; offsetBytes += chunkSizeBytes) {
      const data = await volume.readSnapshot(manifest.snapshotName, offsetBytes, Math.min(chunkSizeBytes, sizeBytes - offsetBytes));
      const want = manifest.chunks.get(offsetBytes / chunkSizeBytes);
      const same = want === undefined ? isZero(data) : repo.chunkIdOf(data) === want;
      if (!same) {
        throw new VerifyFailedError(`snapshot ${manifest.snapshotName} of ${targetPath} differs from the backup in the chunk at byte ${String(offsetBytes)}`, {
          offsetBytes,
          chunkId: want ?? null,
        });
      }
      progress?.('verify-ids', offsetBytes + data.length, sizeBytes);
    }
  } finally {
    await volume.close();
  }
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
