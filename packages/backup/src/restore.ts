import { randomBytes } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { assert } from '@cowvol/base';
import {
  BaseMismatchError,
  importStream,
  MAX_EXTENT_BYTES,
  StreamWriter,
  Volume,
  type ImportProgress,
  type ImportResult,
  type SnapshotIdentity,
  type StreamSource,
  VerifyFailedError,
} from '@cowvol/cow-core';
import type { Manifest } from './manifest.js';
import { manifestObjectKey } from './object-keys.js';
import { checkJobs, DEFAULT_JOBS, mapOrdered } from './pool.js';
import { isZero } from './push.js';
import type { Repository } from './repository.js';

/** Ancestors of a manifest `restore --into` looks through for a base the target holds, at most. */
export const MAX_PARENT_HOPS = 4096;

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
 * 1. The manifest; with `into`, its ancestors (`parent` keys) until one
 *    whose identity a snapshot of the target has (else BASE_MISMATCH): the
 *    chunks that differ from it are the extents, as an incremental stream.
 * 2. Every chunk needed is downloaded and authenticated (BACKUP_CORRUPT for
 *    a damaged or missing one) and spooled, as a cowvol stream
 *    (docs/FORMAT.md §9), into a private temporary file next to the target
 *    — before any byte of the target is written, so a damaged repository
 *    leaves nothing behind. Memory: at most `jobs` chunks waiting in order.
 * 3. `importStream` of that file: a new volume (or a new snapshot of the
 *    target, with import's base checks); then the file is removed.
 * 4. With `verify`, the new snapshot is read back chunk by chunk and each
 *    chunk's id is compared with the manifest's (VERIFY_FAILED).
 *
 * @throws OBJECT_NOT_FOUND (no such manifest) · BACKUP_CORRUPT · BASE_MISMATCH · VOLUME_EXISTS · what importStream throws · STORE_UNAVAILABLE · IO_ERROR · NO_SPACE
 */
export async function restoreFromRepository(repo: Repository, volumeUuid: string, snapshotName: string, targetPath: string, options: RestoreOptions = {}): Promise<RestoreResult> {
  const started = Date.now();
  const jobs = checkJobs(options.jobs ?? DEFAULT_JOBS);
  const manifest = await repo.getManifest(volumeUuid, snapshotName);
  const { target } = options;
  const identities = target ? () => target.heldIdentities() : () => identitiesOf(targetPath, options.openVolume);
  const base = options.into === true ? await findBase(repo, manifest, targetPath, identities) : undefined;
  const spoolPath = join(dirname(targetPath), `.${basename(targetPath)}.cowvol-restore-${randomBytes(6).toString('hex')}`);
  const handle = await fsp.open(spoolPath, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    const spooled = await spool(repo, manifest, base?.manifest, handle, jobs, options.onProgress);
    const source: StreamSource = { lengthBytes: spooled.streamBytes, read: (offsetBytes, lengthBytes) => readAt(handle, offsetBytes, lengthBytes) };
    const imported = target
      ? await target.importFile(spoolPath)
      : await importStream(targetPath, source, {
          verify: false,
          ...(options.openVolume ? { openVolume: options.openVolume } : {}),
          onProgress: (p) => options.onProgress?.(p.phase, p.doneBytes, p.totalBytes),
        });
    const result: RestoreResult = {
      volume: targetPath,
      snapshot: snapshotName,
      volumeUuid,
      base: base?.key ?? null,
      created: imported.created,
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

/** The newest ancestor of `manifest` whose identity a snapshot of the target has. @throws BASE_MISMATCH · VOLUME_NOT_FOUND */
async function findBase(repo: Repository, manifest: Manifest, targetPath: string, identities: () => Promise<SnapshotIdentity[]>): Promise<{ key: string; manifest: Manifest }> {
  const held = await identities();
  let key = manifest.parent;
  for (let hops = 0; key !== null && hops < MAX_PARENT_HOPS; hops++) {
    const ancestor = await repo.getManifest(key);
    if (held.some((h) => sameIdentity(h, ancestor.identity))) return { key, manifest: ancestor };
    key = ancestor.parent;
  }
  throw new BaseMismatchError(`${targetPath} holds no snapshot that ${manifestObjectKey(manifest.volumeUuid, manifest.snapshotName)} was pushed on top of; restore it into a new volume instead`, {
    details: { path: targetPath },
  });
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
      createdAt: new Date().toISOString(),
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

function sameIdentity(a: SnapshotIdentity, b: SnapshotIdentity): boolean {
  return a.volumeUuid === b.volumeUuid && a.snapshotId === b.snapshotId && a.createdAt === b.createdAt;
}
