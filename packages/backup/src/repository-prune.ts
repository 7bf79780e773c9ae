import { assert, CowvolError, hasCode } from '@cowvol/base';
import { forEachBounded } from './pool.js';
import { BackupArgumentError, BackupCorruptError } from './errors.js';
import { chunkObjectKey, CHUNKS_PREFIX, isChunkId, isVolumeUuid } from './object-keys.js';
import type { Repository } from './repository.js';
import { acquireLock, LOCK_CLOCK_SKEW_MS, LOCK_LEASE_MS, listLocks, type LockInfo, type LockOptions } from './repository-lock.js';
import { forEachManifest, type DamagedManifest } from './repository-verify.js';
import { applyRetention, validatePolicy, type RetentionPolicy } from './retention.js';

/** One snapshot in a forget report. */
export interface ForgetEntry {
  volumeUuid: string;
  snapshotName: string;
  createdAt: string;
  /** The rules that keep it (`last`, `daily 2026-12-03`, `weekly 2026-W49`); empty for a forgotten one. */
  reasons: string[];
}

/** What `forgetSnapshots` did (or, with dryRun, would do). */
export interface ForgetReport {
  dryRun: boolean;
  policy: RetentionPolicy;
  kept: ForgetEntry[];
  forgotten: ForgetEntry[];
  /** Manifests that do not open and stay: never forgotten by a rule (their time is unknown); `verify` names them. */
  damaged: DamagedManifest[];
  /** With `damaged`: the manifests deleted (or, with dryRun, to delete) because they fail their checks (BACKUP_CORRUPT). */
  damagedForgotten: DamagedManifest[];
}

export interface ForgetOptions {
  policy: RetentionPolicy;
  /** Only this volume's snapshots (32 lowercase hex digits). */
  volumeUuid?: string;
  dryRun?: boolean;
  /**
   * Also delete the manifests that fail their checks (BACKUP_CORRUPT, read
   * twice: at the listing and again under the lock). A manifest of a newer
   * format (UNSUPPORTED_VERSION) is kept. With no rule in `policy`, only
   * these are forgotten.
   */
  damaged?: boolean;
  jobs?: number;
  lock?: LockOptions;
}

/**
 * Applies a retention policy to each volume's snapshots separately and
 * deletes the manifests of the snapshots no rule keeps (docs/ARCHITECTURE.md
 * §17 "forget"; the rules: retention.ts, restic's). Only manifests are
 * deleted; their chunks stay until `prune`. With `damaged`, so are the
 * manifests that fail their checks (BACKUP_CORRUPT, read twice), which
 * otherwise stop every prune. Takes a shared lock (none with
 * dryRun), so it never runs during a prune.
 *
 * @throws INVALID_ARGUMENT for a policy with no rule (unless `damaged`) or a bad count or uuid · REPOSITORY_LOCKED · STORE_UNAVAILABLE · STORE_ACCESS_DENIED
 */
export async function forgetSnapshots(repo: Repository, options: ForgetOptions): Promise<ForgetReport> {
  // A rule keeps something only with a count of 1 or more (validatePolicy: all zero is no rule); --damaged alone applies none.
  const byRules = !(options.damaged === true && Object.values(options.policy).every((n) => n === undefined || n === 0));
  if (byRules) validatePolicy(options.policy);
  if (options.volumeUuid !== undefined && !isVolumeUuid(options.volumeUuid)) throw new BackupArgumentError(`not a volume uuid: ${JSON.stringify(options.volumeUuid.slice(0, 80))}`);
  const dryRun = options.dryRun === true;
  const lock = dryRun ? undefined : await acquireLock(repo, 'shared', { command: 'forget', ...options.lock });
  try {
    const damaged: DamagedManifest[] = [];
    const byVolume = new Map<string, Array<{ key: string; createdAt: string; volumeUuid: string; snapshotName: string }>>();
    await forEachBoundedManifests(repo, options, damaged, byVolume);
    const kept: ForgetEntry[] = [];
    const forgotten: ForgetEntry[] = [];
    for (const volumeUuid of [...byVolume.keys()].sort()) {
      const items = byVolume.get(volumeUuid) ?? [];
      const decisions = byRules ? applyRetention(items, options.policy) : items.map((item) => ({ item, keep: true, reasons: ['no rule given'] }));
      for (const d of decisions) {
        const entry = { volumeUuid, snapshotName: d.item.snapshotName, createdAt: d.item.createdAt, reasons: d.reasons };
        if (d.keep) kept.push(entry);
        else forgotten.push(entry);
      }
    }
    // With --volume, only that volume's damaged manifests (forEachManifest reports every volume's).
    const inScope = damaged.filter((d) => options.volumeUuid === undefined || d.volumeUuid === options.volumeUuid);
    const damagedForgotten = options.damaged === true ? await forgetDamaged(repo, inScope, options.jobs ?? 8, lock) : [];
    if (lock !== undefined) {
      const keys = forgotten.map((f) => byVolume.get(f.volumeUuid)?.find((m) => m.snapshotName === f.snapshotName)?.key ?? '');
      await forEachBounded(keys, options.jobs ?? 8, async (key) => {
        assert(key !== '', 'a forgotten snapshot has a manifest key');
        lock.assertHeld();
        await repo.store.delete(key);
      });
    }
    return { dryRun, policy: options.policy, kept, forgotten, damaged: inScope.filter((d) => !damagedForgotten.includes(d)), damagedForgotten };
  } finally {
    await lock?.release();
  }
}

/**
 * The damaged manifests `forget --damaged` deletes: those that failed their
 * checks (BACKUP_CORRUPT, not a newer version) and fail them again when read
 * once more (a damage that a second read does not show was no damage of the
 * object). Deleted under `lock`; none without it (dry run).
 */
async function forgetDamaged(repo: Repository, damaged: readonly DamagedManifest[], jobs: number, lock: { assertHeld(): void } | undefined): Promise<DamagedManifest[]> {
  const out: DamagedManifest[] = [];
  await forEachBounded(
    damaged.filter((d) => d.code === 'BACKUP_CORRUPT'),
    jobs,
    async (d) => {
      try {
        await repo.getManifest(d.key);
        return; // it opens now
      } catch (err) {
        if (hasCode(err, 'OBJECT_NOT_FOUND')) return;
        if (!hasCode(err, 'BACKUP_CORRUPT')) throw err;
      }
      if (lock !== undefined) {
        lock.assertHeld();
        await repo.store.delete(d.key);
      }
      out.push(d);
    },
  );
  return out;
}

async function forEachBoundedManifests(
  repo: Repository,
  options: ForgetOptions,
  damaged: DamagedManifest[],
  byVolume: Map<string, Array<{ key: string; createdAt: string; volumeUuid: string; snapshotName: string }>>,
): Promise<void> {
  await forEachManifest(repo, options.jobs ?? 8, damaged, (ref, m) => {
    if (options.volumeUuid !== undefined && ref.volumeUuid !== options.volumeUuid) return;
    const list = byVolume.get(ref.volumeUuid) ?? [];
    list.push({ key: ref.key, createdAt: m.createdAt, volumeUuid: ref.volumeUuid, snapshotName: ref.snapshotName });
    byVolume.set(ref.volumeUuid, list);
  });
}

/** What `pruneRepository` did (or, with dryRun, would do). */
export interface PruneReport {
  dryRun: boolean;
  manifests: number;
  /** Chunk objects listed under `chunks/`. */
  chunks: number;
  chunksReferenced: number;
  /** Unreferenced chunks deleted (or, with dryRun, to delete). */
  chunksDeleted: number;
  bytesDeleted: number;
  /** Unreferenced chunks kept because they were stored after the cutoff (a push may be about to name them). */
  chunksKeptRecent: number;
  /** Store time (ISO 8601): only chunks stored at or before it are deleted. */
  cutoff: string;
  /** Stale locks found, which the exclusive lock removed. */
  staleLocks: number;
  /**
   * Objects under `chunks/` at a key no chunk has (moved or copied there by
   * hand, a tool's folder marker): no restore can reach them. Deleted (or,
   * with dryRun, to delete) by the same cutoff rule as unreferenced chunks.
   */
  strayObjects: number;
  strayObjectsDeleted: number;
  /** The store's own temporary objects a killed writer left (ObjectStore.removeStaleTemporary), removed by the same cutoff (not with dryRun). */
  temporaryObjectsDeleted: number;
}

export interface PruneOptions {
  dryRun?: boolean;
  /** Keep unreferenced chunks stored less than this long before prune's lock was taken; default 0. */
  graceMs?: number;
  jobs?: number;
  lock?: LockOptions;
}

/**
 * Deletes the chunks no remaining manifest names (docs/ARCHITECTURE.md §17
 * "prune"), under the exclusive lock: refused (REPOSITORY_LOCKED) while a
 * live lock of anything else exists, so no push runs meanwhile. The rule: a
 * chunk is deleted only when (1) no manifest listed after the lock was taken
 * names it, and (2) it was stored (its LastModified, the store's clock) no
 * later than the cutoff: the store time of prune's own lock object less
 * `graceMs`, and earlier than the start of every stale lock found (less the
 * clock-skew margin) — a push whose lease lapsed may still be running, and
 * the chunks it uploaded are kept for the next prune. An object under
 * `chunks/` at a key no chunk has (a stray) is deleted by the same cutoff. A manifest that does
 * not open stops prune before anything is deleted (BACKUP_CORRUPT): what it
 * names is unknown. Chunks are deleted at most `jobs` at a time, each after
 * checking that the lock is still held.
 *
 * @throws REPOSITORY_LOCKED · BACKUP_CORRUPT (a damaged manifest) · LOCK_LOST · STORE_UNAVAILABLE · STORE_ACCESS_DENIED
 */
export async function pruneRepository(repo: Repository, options: PruneOptions = {}): Promise<PruneReport> {
  const dryRun = options.dryRun === true;
  const jobs = options.jobs ?? 8;
  const graceMs = options.graceMs ?? 0;
  assert(Number.isFinite(graceMs) && graceMs >= 0, 'a grace period is 0 or more milliseconds');
  const lock = dryRun ? undefined : await acquireLock(repo, 'exclusive', { command: 'prune', ...options.lock });
  // The stale locks the exclusive taker judged (by the store's clock) and deleted; a dry run only looks.
  const stale = lock !== undefined ? [...lock.removedStale] : (await listLocks(repo, options.lock)).filter((l) => l.stale);
  try {
    const cutoffMs = Math.min((await lockTime(repo, lock?.key)) - graceMs, ...stale.map(staleStartMs));
    const { referenced, manifests } = await referencedChunks(repo, jobs);
    const report: PruneReport = {
      dryRun,
      manifests,
      chunks: 0,
      chunksReferenced: 0,
      chunksDeleted: 0,
      bytesDeleted: 0,
      chunksKeptRecent: 0,
      cutoff: new Date(cutoffMs).toISOString(),
      staleLocks: stale.length,
      strayObjects: 0,
      strayObjectsDeleted: 0,
      temporaryObjectsDeleted: 0,
    };
    const remove = async (key: string, sizeBytes: number): Promise<void> => {
      if (lock !== undefined) {
        lock.assertHeld();
        await repo.store.delete(key);
      }
      report.bytesDeleted += sizeBytes;
    };
    await forEachBounded(repo.store.list(CHUNKS_PREFIX), jobs, async (info) => {
      const id = info.key.slice(info.key.lastIndexOf('/') + 1);
      const recent = info.lastModified.getTime() > cutoffMs;
      if (!isChunkId(id) || chunkObjectKey(id) !== info.key) {
        // Unreachable by any restore (it reads a chunk only at its own key); a chunk layout of another version comes with another config version, which this cowvol refuses to open.
        report.strayObjects++;
        if (recent) return;
        await remove(info.key, info.sizeBytes);
        report.strayObjectsDeleted++;
        return;
      }
      report.chunks++;
      if (referenced.has(id)) report.chunksReferenced++;
      else if (recent) report.chunksKeptRecent++;
      else {
        await remove(info.key, info.sizeBytes);
        report.chunksDeleted++;
      }
    });
    if (lock !== undefined && repo.store.removeStaleTemporary !== undefined) {
      lock.assertHeld();
      const swept = await repo.store.removeStaleTemporary(cutoffMs);
      report.temporaryObjectsDeleted = swept.removed;
      report.bytesDeleted += swept.bytes;
    }
    return report;
  } finally {
    await lock?.release();
  }
}

/**
 * The chunk ids every manifest names, read after prune's lock was taken.
 * @throws BACKUP_CORRUPT when a manifest does not open: what it names is unknown, so nothing may be deleted
 */
async function referencedChunks(repo: Repository, jobs: number): Promise<{ referenced: Set<string>; manifests: number }> {
  const referenced = new Set<string>();
  const damaged: DamagedManifest[] = [];
  let manifests = 0;
  await forEachManifest(repo, jobs, damaged, (_ref, m) => {
    manifests++;
    for (const id of m.chunks.values()) referenced.add(id);
  });
  if (damaged.length > 0) {
    throw new BackupCorruptError(
      `prune stopped before deleting anything: ${String(damaged.length)} manifest(s) do not open (${damaged.map((d) => `${d.key}: ${d.code}`).join(', ')}); run cowvol backup verify, then ` +
        (damaged.some((d) => d.code === 'BACKUP_CORRUPT') ? 'cowvol backup forget --damaged for the damaged ones' : '') +
        (damaged.some((d) => d.code !== 'BACKUP_CORRUPT')
          ? `${damaged.some((d) => d.code === 'BACKUP_CORRUPT') ? '; ' : ''}a newer cowvol for those of a newer format (or remove them by hand if they are damage)`
          : ''),
      { details: { objects: damaged.map((d) => d.key) } },
    );
  }
  return { referenced, manifests };
}

/**
 * The store's time of the lock object `key` (its LastModified, from a listing:
 * a head's Last-Modified has whole seconds), or this machine's time with no
 * lock (dry run).
 */
async function lockTime(repo: Repository, key: string | undefined): Promise<number> {
  if (key === undefined) return Date.now();
  for await (const info of repo.store.list(key)) if (info.key === key) return info.lastModified.getTime();
  throw new CowvolError('LOCK_LOST', `prune's own lock ${key} vanished from ${repo.store.url}`, { details: { lock: key } });
}

/**
 * When a stale lock's holder may have started uploading, by the store's
 * clock, less the skew margin: its lease's start (the holder's clock)
 * moved by the holder's offset from the store — at its last write the
 * holder's time was `expiresAt − lease`, the store's `lastModified` — so a
 * holder whose clock ran ahead or behind neither hides what it uploaded nor
 * holds every chunk back; a lock that does not open: its last write.
 */
function staleStartMs(l: LockInfo): number {
  if (l.lease === undefined) return l.lastModified.getTime() - LOCK_CLOCK_SKEW_MS;
  const holderOffsetMs = l.lastModified.getTime() - (Date.parse(l.lease.expiresAt) - LOCK_LEASE_MS);
  return Date.parse(l.lease.createdAt) + holderOffsetMs - LOCK_CLOCK_SKEW_MS;
}
