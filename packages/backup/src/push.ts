import { assert, hasCode } from '@cowvol/base';
import {
  killPoint,
  sameIdentity,
  snapshotDataPieces,
  SnapshotNotFoundError,
  SnapshotSuspectError,
  type ExportSource,
  type SnapshotIdentity,
  type SnapshotInfo,
  type VolumeInfo,
} from '@cowvol/cow-core';
import { BackupArgumentError, ObjectExistsError } from './errors.js';
import { chunkCount, MAX_MANIFEST_CHUNKS, type Manifest } from './manifest.js';
import { manifestObjectKey } from './object-keys.js';
import { checkJobs, DEFAULT_JOBS, forEachBounded } from './pool.js';
import type { Repository } from './repository.js';
import { acquireLock, type RepositoryLock } from './repository-lock.js';

/** Options of {@link pushSnapshot}. */
export interface PushOptions {
  /** Chunks in flight (read, sealed, uploading) at most: 1..256, default 8. */
  jobs?: number;
  /**
   * No parent: read every chunk that can hold data and store each one
   * missing, as a first push does, and read back each one already stored,
   * replacing it when it fails authentication. What repairs a repository
   * whose chunk a parent names is lost or damaged, or whose parent manifest
   * is damaged (`verify` finds all three): an incremental push takes the
   * parent's ids as they are.
   */
  full?: boolean;
  onProgress?: (progress: PushProgress) => void;
}

/** Progress of a push: chunks of the plan done, and bytes so far. */
export interface PushProgress {
  doneChunks: number;
  plannedChunks: number;
  /** Bytes of the planned chunks (what `readBytes` grows to). */
  plannedBytes: number;
  readBytes: number;
  uploadedBytes: number;
  deduplicatedBytes: number;
}

/** What a push did (README "Backups off the machine", JSON shapes). */
export interface PushResult {
  snapshot: string;
  volumeUuid: string;
  /** The manifest's key. */
  manifest: string;
  /** The parent manifest's key (changed-block base), or null for a full push. */
  parent: string | null;
  /** True when the repository held this snapshot already: nothing was read or written. */
  alreadyPushed: boolean;
  /** Chunks of the volume: ceil(size / chunk size). */
  chunksTotal: number;
  /** Chunks read from the volume (changed since the parent, or that can hold data). */
  chunksRead: number;
  /** Chunks stored by this push. */
  chunksUploaded: number;
  /** Non-zero chunks read that the repository held already. */
  chunksDeduplicated: number;
  /** Of the chunks uploaded, those that replaced a damaged copy (only with `full`: {@link Repository.putChunk} `checkPresent`). */
  chunksReplaced: number;
  /** Chunks of the snapshot's map (non-zero). */
  chunksMapped: number;
  bytesRead: number;
  /** Sealed bytes stored. */
  bytesUploaded: number;
  seconds: number;
}

/**
 * What a push reads of a volume: a `Volume` opened read-only, or a served
 * volume through its control channel and NBD export (the CLI's
 * served-reports.ts, docs/ARCHITECTURE.md §14.10) — the same shape as an
 * export's source, with the volume's identity and catalog from `info()`.
 */
export type PushSource = Omit<ExportSource, 'info'> & {
  info(): Promise<Pick<VolumeInfo, 'path' | 'uuid' | 'sizeBytes' | 'blockSizeBytes' | 'snapshots'>>;
};

/**
 * Pushes snapshot `name` of `volume` to `repo` (docs/ARCHITECTURE.md §17):
 *
 * 1. A manifest of this snapshot present with the same identity: nothing to
 *    do (`alreadyPushed`). Present with another identity: OBJECT_EXISTS.
 * 2. The parent: the newest snapshot older than `name` on the volume, not
 *    suspect, whose manifest (found by volume uuid and name) has the same
 *    identity, size and chunk size. With one, only the chunks touched by
 *    `Volume.diff(parent, name)` are read (§15.2); the others take the
 *    parent's ids (trusted: a lost chunk the parent names stays lost in
 *    this manifest too; `verify` finds it, `full` repairs it). Without one,
 *    or with `full`, the chunks that can hold data (`snapshotDataPieces`)
 *    are read; with `full`, a chunk already stored is read back too and
 *    replaced when damaged (`Repository.putChunk` `checkPresent`).
 * 3. Each chunk read: all zeros → absent from the map; else `putChunk`
 *    (head, then conditional put). At most `jobs` chunks in flight, so
 *    memory holds at most 2 × jobs × chunk size of data (plaintext and
 *    sealed body).
 * 4. The manifest last, with a conditional put: a manifest present means
 *    every chunk it names is stored. A killed push leaves chunks and no
 *    manifest; running it again heads each chunk and uploads only those
 *    missing.
 *
 * Holds a shared repository lock throughout (docs/ARCHITECTURE.md §17 "The
 * repository lock"), so no prune runs meanwhile, and checks it is still held
 * right before the manifest is written.
 *
 * @throws SNAPSHOT_NOT_FOUND · SNAPSHOT_SUSPECT (the snapshot is suspect and not pushed yet) · INVALID_ARGUMENT (too many chunks, bad jobs) · OBJECT_EXISTS · BACKUP_CORRUPT (a damaged parent manifest) · REPOSITORY_LOCKED · LOCK_LOST · STORE_UNAVAILABLE · STORE_ACCESS_DENIED · IO_ERROR
 */
export async function pushSnapshot(repo: Repository, volume: PushSource, name: string, options: PushOptions = {}): Promise<PushResult> {
  const lock = await acquireLock(repo, 'shared', { command: 'push' });
  try {
    return await pushLocked(repo, volume, name, options, lock);
  } finally {
    await lock.release();
  }
}

async function pushLocked(repo: Repository, volume: PushSource, name: string, options: PushOptions, lock: RepositoryLock): Promise<PushResult> {
  const started = Date.now();
  const jobs = checkJobs(options.jobs ?? DEFAULT_JOBS);
  const info = await volume.info();
  const index = info.snapshots.findIndex((s) => s.name === name);
  const snapshot = info.snapshots[index];
  if (snapshot === undefined) throw new SnapshotNotFoundError(name);
  const chunkSizeBytes = repo.chunkSizeBytes;
  const chunksTotal = chunkCount(info.sizeBytes, chunkSizeBytes);
  if (chunksTotal > MAX_MANIFEST_CHUNKS) {
    throw new BackupArgumentError(
      `${info.path} has ${String(chunksTotal)} chunks of ${String(chunkSizeBytes)} bytes, more than a manifest holds (${String(MAX_MANIFEST_CHUNKS)}): use a repository with larger chunks`,
    );
  }
  const identity = await volume.snapshotIdentity(name);
  const key = manifestObjectKey(info.uuid, name);
  const result: PushResult = {
    snapshot: name,
    volumeUuid: info.uuid,
    manifest: key,
    parent: null,
    alreadyPushed: false,
    chunksTotal,
    chunksRead: 0,
    chunksUploaded: 0,
    chunksDeduplicated: 0,
    chunksReplaced: 0,
    chunksMapped: 0,
    bytesRead: 0,
    bytesUploaded: 0,
    seconds: 0,
  };
  if (await repo.hasManifest(info.uuid, name)) return finishExisting(repo, key, identity, result, started);
  if (snapshot.suspect) throw suspectError(name);
  const parent = options.full === true ? undefined : await findParent(repo, volume, info.uuid, info.snapshots.slice(0, index), { sizeBytes: info.sizeBytes, chunkSizeBytes });
  const chunks = new Map<number, string>(parent?.manifest.chunks ?? []);
  const plan = parent ? await changedChunks(volume, parent.name, name, chunkSizeBytes) : await dataChunks(volume, name, chunkSizeBytes);
  result.parent = parent?.key ?? null;
  await readAndStore(repo, volume, name, { plan, jobs, sizeBytes: info.sizeBytes, chunks, result, checkPresent: options.full === true }, options.onProgress);
  const manifest: Manifest = {
    volumeUuid: info.uuid,
    sizeBytes: info.sizeBytes,
    blockSizeBytes: info.blockSizeBytes,
    chunkSizeBytes,
    snapshotName: name,
    identity,
    labels: { ...snapshot.labels },
    createdAt: snapshot.createdAt,
    pushedAt: new Date().toISOString(),
    parent: result.parent,
    chunks,
    bytesNew: result.bytesUploaded,
    logicalBytes: [...chunks.keys()].reduce((n, i) => n + Math.min(chunkSizeBytes, info.sizeBytes - i * chunkSizeBytes), 0),
  };
  result.chunksMapped = chunks.size;
  killPoint('push:chunks');
  await lock.confirmHeld();
  try {
    await repo.putManifest(manifest);
  } catch (err) {
    // Another push of this snapshot finished first: the same outcome when its identity is the same.
    if (hasCode(err, 'OBJECT_EXISTS')) return finishExisting(repo, key, identity, result, started);
    throw err;
  }
  result.seconds = (Date.now() - started) / 1000;
  return result;
}

/**
 * Why a suspect snapshot is not pushed: its content may no longer be what
 * its identity stood for when taken (and maybe pushed, then forgotten), and
 * a restore that finds that identity on a target (an `--into` base, "already
 * there") would take the target's copy for this one (README "Backups off the machine").
 */
function suspectError(name: string): SnapshotSuspectError {
  return new SnapshotSuspectError(
    name,
    `snapshot ${name} is suspect (writes made outside cowvol were accepted while it read live blocks), so its content may differ from what it held when taken, and a backup under its identity could be mistaken for a copy of it held elsewhere; take a new snapshot and push that`,
  );
}

/**
 * Step 3 of {@link pushSnapshot}: reads each planned chunk, drops the
 * all-zero ones from the map and stores the others (`putChunk`), at most
 * `jobs` in flight.
 */
async function readAndStore(
  repo: Repository,
  volume: PushSource,
  name: string,
  work: { plan: number[]; jobs: number; sizeBytes: number; chunks: Map<number, string>; result: PushResult; checkPresent: boolean },
  onProgress: PushOptions['onProgress'],
): Promise<void> {
  const { plan, chunks, result } = work;
  const chunkSizeBytes = repo.chunkSizeBytes;
  let done = 0;
  let deduplicatedBytes = 0;
  const plannedBytes = plan.reduce((n, i) => n + Math.min(chunkSizeBytes, work.sizeBytes - i * chunkSizeBytes), 0);
  const report = (): void => onProgress?.({ doneChunks: done, plannedChunks: plan.length, plannedBytes, readBytes: result.bytesRead, uploadedBytes: result.bytesUploaded, deduplicatedBytes });
  report();
  await forEachBounded(plan, work.jobs, async (i) => {
    const offsetBytes = i * chunkSizeBytes;
    const lengthBytes = Math.min(chunkSizeBytes, work.sizeBytes - offsetBytes);
    const data = await volume.readSnapshot(name, offsetBytes, lengthBytes);
    assert(data.length === lengthBytes, 'a chunk read is the chunk length');
    result.chunksRead++;
    result.bytesRead += lengthBytes;
    if (isZero(data)) {
      chunks.delete(i);
    } else {
      const put = await repo.putChunk(data, { checkPresent: work.checkPresent });
      chunks.set(i, put.id);
      if (put.uploaded) {
        result.chunksUploaded++;
        if (put.replaced === true) result.chunksReplaced++;
        result.bytesUploaded += put.sealedBytes;
        killPoint('push:chunk');
      } else {
        result.chunksDeduplicated++;
        deduplicatedBytes += lengthBytes;
      }
    }
    done++;
    report();
  });
}

/** The result of a push whose manifest is there already, after checking it is this snapshot. @throws OBJECT_EXISTS */
async function finishExisting(repo: Repository, key: string, identity: SnapshotIdentity, result: PushResult, started: number): Promise<PushResult> {
  const existing = await repo.getManifest(key);
  if (!sameIdentity(existing.identity, identity)) {
    throw new ObjectExistsError(`${repo.store.url} holds a manifest ${key} of another snapshot of that name (created ${existing.identity.createdAt}); rename the snapshot to push it`, {
      details: { key },
    });
  }
  return { ...result, alreadyPushed: true, parent: existing.parent, chunksMapped: existing.chunks.size, seconds: (Date.now() - started) / 1000 };
}

/**
 * The parent of a push: of `older` (the volume's snapshots older than the
 * pushed one, oldest first), the newest that is not suspect and whose
 * manifest has its identity, the volume's size and the chunk size.
 */
async function findParent(
  repo: Repository,
  volume: PushSource,
  volumeUuid: string,
  older: SnapshotInfo[],
  geometry: { sizeBytes: number; chunkSizeBytes: number },
): Promise<{ name: string; key: string; manifest: Manifest } | undefined> {
  for (const s of [...older].reverse()) {
    if (s.suspect || !(await repo.hasManifest(volumeUuid, s.name))) continue;
    const key = manifestObjectKey(volumeUuid, s.name);
    const manifest = await repo.getManifest(key);
    const same = sameIdentity(manifest.identity, await volume.snapshotIdentity(s.name));
    if (same && manifest.sizeBytes === geometry.sizeBytes && manifest.chunkSizeBytes === geometry.chunkSizeBytes) return { name: s.name, key, manifest };
  }
  return undefined;
}

/** Indexes of the chunks touched by the blocks written between `from` and `to` (§15.2), ascending. */
async function changedChunks(volume: PushSource, from: string, to: string, chunkSizeBytes: number): Promise<number[]> {
  const indexes = new Set<number>();
  for (const e of (await volume.diff(from, to)).extents) {
    const last = Math.floor((e.offsetBytes + e.lengthBytes - 1) / chunkSizeBytes);
    for (let i = Math.floor(e.offsetBytes / chunkSizeBytes); i <= last; i++) indexes.add(i);
  }
  return [...indexes].sort((a, b) => a - b);
}

/** Indexes of the chunks that can hold non-zero data of snapshot `name` (cow-core's snapshotDataPieces), ascending. */
async function dataChunks(volume: PushSource, name: string, chunkSizeBytes: number): Promise<number[]> {
  const indexes: number[] = [];
  for await (const piece of await snapshotDataPieces(volume, name)) {
    const last = Math.floor((piece.offsetBytes + piece.lengthBytes - 1) / chunkSizeBytes);
    for (let i = Math.floor(piece.offsetBytes / chunkSizeBytes); i <= last; i++) if (indexes.at(-1) !== i) indexes.push(i);
  }
  return indexes;
}

const ZEROS = Buffer.alloc(1024 * 1024);

/** True when every byte of `data` is zero. */
export function isZero(data: Buffer): boolean {
  for (let pos = 0; pos < data.length; pos += ZEROS.length) {
    const piece = data.subarray(pos, pos + ZEROS.length);
    if (!piece.equals(ZEROS.subarray(0, piece.length))) return false;
  }
  return true;
}
