import { hasCode, isCowvolError } from '@cowvol/base';
import { forEachBounded } from './pool.js';
import { CHUNK_OVERHEAD_BYTES } from './chunk-seal.js';
import type { Manifest } from './manifest.js';
import { CHUNKS_PREFIX, chunkObjectKey, isChunkId } from './object-keys.js';
import type { ManifestRef, Repository } from './repository.js';
import { acquireReaderLock, type LockOptions } from './repository-lock.js';

/** A snapshot of the repository, by volume and name. */
export interface SnapshotRef {
  volumeUuid: string;
  snapshotName: string;
}

/** A chunk some manifest names that is missing, of the wrong size, or does not open. */
export interface DamagedChunk {
  chunkId: string;
  problem: 'missing' | 'wrong-size' | 'corrupt';
  message: string;
  /** Every snapshot whose manifest names it: each of them cannot be restored. */
  snapshots: SnapshotRef[];
}

/** A manifest that does not open or check out (BACKUP_CORRUPT, UNSUPPORTED_VERSION). */
export interface DamagedManifest extends SnapshotRef {
  key: string;
  code: string;
  message: string;
}

/** What `verifyRepository` found (README "backup verify"). */
export interface VerifyReport {
  status: 'clean' | 'damaged';
  /** True with `readData`: every referenced chunk was downloaded and authenticated. */
  dataChecked: boolean;
  manifests: number;
  /** Distinct chunks the manifests name. */
  chunksReferenced: number;
  /** Chunks downloaded and opened (readData). */
  chunksRead: number;
  /** Sealed bytes downloaded (readData). */
  bytesRead: number;
  damagedManifests: DamagedManifest[];
  damagedChunks: DamagedChunk[];
  /** Every snapshot that cannot be restored as stored: damaged manifests and the snapshots of damaged chunks, sorted. */
  affectedSnapshots: SnapshotRef[];
}

export interface VerifyOptions {
  /** Download and authenticate every referenced chunk, not only look for it. */
  readData?: boolean;
  /** Requests in flight at most (1..256); default 8. */
  jobs?: number;
  /** Options of the shared lock verify holds (tests). */
  lock?: LockOptions;
  /** Called when the repository cannot be written, so verify runs without its lock (acquireReaderLock). */
  onUnlocked?: (why: string) => void;
  /** Called as work is done: phase `manifests`, `chunks` or `data`. */
  onProgress?: (done: number, total: number | undefined, phase: string) => void;
}

/**
 * Checks a repository (docs/ARCHITECTURE.md §17 "verify"): every manifest is
 * read, authenticated and checked (decodeManifest); every chunk a manifest
 * names must be listed under `chunks/` with the size its plaintext length
 * gives (plaintext + 33 bytes) — one listing of `chunks/` rather than one
 * head per chunk; with `readData`, every such chunk is downloaded and opened
 * (GCM tag, HMAC of the plaintext against its id, expected length), at most
 * `jobs` at a time. A damaged chunk is reported with every snapshot whose
 * manifest names it (a second pass over the manifests, only when something
 * is damaged).
 *
 * Holds a shared lock throughout, so no prune runs meanwhile (REPOSITORY_LOCKED while one does) —
 * unless the repository cannot be written (acquireReaderLock: `onUnlocked` says so).
 *
 * Memory: one entry per distinct referenced chunk (its id and length, about
 * 150 bytes), so about 40 MiB per TiB of distinct data at 4 MiB chunks.
 *
 * @throws REPOSITORY_LOCKED · STORE_UNAVAILABLE, STORE_ACCESS_DENIED when the store fails (the check could not be made)
 */
export async function verifyRepository(repo: Repository, options: VerifyOptions = {}): Promise<VerifyReport> {
  const lock = await acquireReaderLock(repo, 'verify', options.onUnlocked ?? (() => undefined), options.lock);
  try {
    return await verifyLocked(repo, options);
  } finally {
    await lock?.release();
  }
}

async function verifyLocked(repo: Repository, options: VerifyOptions): Promise<VerifyReport> {
  const jobs = options.jobs ?? 8;
  const progress = options.onProgress ?? (() => undefined);
  const damagedManifests: DamagedManifest[] = [];
  const expected = new Map<string, number>();
  const inconsistent = new Set<string>();
  let manifests = 0;
  await forEachManifest(repo, jobs, damagedManifests, (_ref, m) => {
    manifests++;
    for (const [index, id] of m.chunks) {
      const bytes = Math.min(m.chunkSizeBytes, m.sizeBytes - index * m.chunkSizeBytes);
      const known = expected.get(id);
      if (known !== undefined && known !== bytes) inconsistent.add(id);
      else expected.set(id, bytes);
    }
    progress(manifests, undefined, 'manifests');
  });
  const damaged = new Map<string, Omit<DamagedChunk, 'snapshots'>>();
  for (const id of inconsistent) damaged.set(id, { chunkId: id, problem: 'corrupt', message: `chunk ${id} is named by manifests with different lengths` });
  await checkPresence(repo, expected, damaged, progress);
  let chunksRead = 0;
  let bytesRead = 0;
  if (options.readData === true) {
    const toRead = [...expected.keys()].filter((id) => !damaged.has(id));
    await forEachBounded(toRead, jobs, async (id) => {
      try {
        const plaintext = await repo.getChunk(id, expected.get(id));
        bytesRead += plaintext.length + CHUNK_OVERHEAD_BYTES;
      } catch (err) {
        if (!hasCode(err, 'BACKUP_CORRUPT') && !hasCode(err, 'UNSUPPORTED_VERSION')) throw err;
        const missing = isCowvolError(err) && err.details?.missing === true;
        damaged.set(id, { chunkId: id, problem: missing ? 'missing' : 'corrupt', message: isCowvolError(err) ? err.message : String(err) });
      }
      progress(++chunksRead, toRead.length, 'data');
    });
  }
  const damagedChunks = damaged.size === 0 ? [] : await whoNeeds(repo, jobs, damaged);
  const affected = new Map<string, SnapshotRef>();
  for (const s of [...damagedManifests, ...damagedChunks.flatMap((c) => c.snapshots)]) affected.set(`${s.volumeUuid}/${s.snapshotName}`, { volumeUuid: s.volumeUuid, snapshotName: s.snapshotName });
  return {
    status: damagedManifests.length + damagedChunks.length === 0 ? 'clean' : 'damaged',
    dataChecked: options.readData === true,
    manifests: manifests + damagedManifests.length,
    chunksReferenced: expected.size,
    chunksRead,
    bytesRead,
    damagedManifests,
    damagedChunks,
    affectedSnapshots: [...affected.keys()].sort().map((k) => affected.get(k) ?? { volumeUuid: '', snapshotName: '' }),
  };
}

/**
 * Reads every manifest (at most `jobs` at a time) and calls `fn` with each
 * that checks out; a damaged one (BACKUP_CORRUPT, UNSUPPORTED_VERSION) goes
 * to `damaged`, one deleted meanwhile (forget) is skipped, and any other
 * failure is thrown.
 */
export async function forEachManifest(repo: Repository, jobs: number, damaged: DamagedManifest[], fn: (ref: ManifestRef, m: Manifest) => void): Promise<void> {
  await forEachBounded(repo.listManifests(), jobs, async (ref) => {
    let m: Manifest;
    try {
      m = await repo.getManifest(ref.key);
    } catch (err) {
      if (hasCode(err, 'OBJECT_NOT_FOUND')) return;
      if (!hasCode(err, 'BACKUP_CORRUPT') && !hasCode(err, 'UNSUPPORTED_VERSION')) throw err;
      const e = err as { code: string; message: string };
      damaged.push({ key: ref.key, volumeUuid: ref.volumeUuid, snapshotName: ref.snapshotName, code: e.code, message: e.message });
      return;
    }
    fn(ref, m);
  });
}

/** One listing of `chunks/`: each referenced chunk must be there, its size its plaintext's + 33. */
async function checkPresence(
  repo: Repository,
  expected: ReadonlyMap<string, number>,
  damaged: Map<string, Omit<DamagedChunk, 'snapshots'>>,
  progress: (done: number, total: number | undefined, phase: string) => void,
): Promise<void> {
  const unseen = new Set(expected.keys());
  let listed = 0;
  for await (const info of repo.store.list(CHUNKS_PREFIX)) {
    const id = info.key.slice(info.key.lastIndexOf('/') + 1);
    progress(++listed, undefined, 'chunks');
    // Only under its own key: a chunk moved elsewhere under chunks/ is one a restore cannot get (OBJECT_NOT_FOUND there), so it stays unseen: missing.
    if (!isChunkId(id) || info.key !== chunkObjectKey(id) || !unseen.delete(id)) continue;
    const bytes = expected.get(id) ?? 0;
    if (info.sizeBytes !== bytes + CHUNK_OVERHEAD_BYTES && !damaged.has(id)) {
      damaged.set(id, {
        chunkId: id,
        problem: 'wrong-size',
        message: `chunk ${id} is ${String(info.sizeBytes)} bytes, not the ${String(bytes + CHUNK_OVERHEAD_BYTES)} of a sealed ${String(bytes)}-byte chunk`,
      });
    }
  }
  for (const id of unseen) if (!damaged.has(id)) damaged.set(id, { chunkId: id, problem: 'missing', message: `chunk ${id} is missing from ${repo.store.url}` });
}

/** The damaged chunks, each with every snapshot whose manifest names it (a second pass over the manifests). */
async function whoNeeds(repo: Repository, jobs: number, damaged: ReadonlyMap<string, Omit<DamagedChunk, 'snapshots'>>): Promise<DamagedChunk[]> {
  const out = new Map<string, DamagedChunk>([...damaged].map(([id, d]) => [id, { ...d, snapshots: [] }]));
  await forEachManifest(repo, jobs, [], (ref, m) => {
    const named = new Set<string>();
    for (const id of m.chunks.values()) if (out.has(id)) named.add(id);
    for (const id of named) out.get(id)?.snapshots.push({ volumeUuid: ref.volumeUuid, snapshotName: ref.snapshotName });
  });
  const sorted = [...out.values()].sort((a, b) => (a.chunkId < b.chunkId ? -1 : 1));
  for (const c of sorted) c.snapshots.sort((a, b) => `${a.volumeUuid}/${a.snapshotName}`.localeCompare(`${b.volumeUuid}/${b.snapshotName}`));
  return sorted;
}
