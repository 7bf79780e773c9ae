import { errorMessage, hasCode } from '@cowvol/base';
import type { Manifest } from './manifest.js';
import type { Repository } from './repository.js';

/** One row of `backup list` (README "Backups off the machine"). */
export interface CatalogEntry {
  volumeUuid: string;
  snapshot: string;
  labels: Record<string, string>;
  /** ISO 8601 UTC: when the snapshot was taken. */
  createdAt: string;
  /** ISO 8601 UTC: when it was pushed. */
  pushedAt: string;
  /** The volume's size. */
  sizeBytes: number;
  /** Plaintext bytes of the snapshot's non-zero chunks. */
  logicalBytes: number;
  /** Sealed bytes its push stored. */
  bytesNew: number;
  chunks: number;
  /** The parent manifest's key, or null. */
  parent: string | null;
}

/** A manifest `backup list` could not read: its key and why. */
export interface DamagedEntry {
  key: string;
  code: string;
  message: string;
}

/**
 * The snapshots in `repo` (of one volume when `volumeUuid` is given), in
 * key order: each manifest read, authenticated and dropped in turn, so
 * memory holds one manifest at a time (docs/ARCHITECTURE.md §17). A
 * damaged manifest (BACKUP_CORRUPT, UNSUPPORTED_VERSION) does not hide the
 * others: it goes to `onDamaged` and the listing goes on; one forgotten
 * while this lists (OBJECT_NOT_FOUND) is passed over.
 *
 * @throws INVALID_ARGUMENT · STORE_UNAVAILABLE · STORE_ACCESS_DENIED · BACKUP_CORRUPT and UNSUPPORTED_VERSION without `onDamaged`
 */
export async function* listBackups(repo: Repository, volumeUuid?: string, onDamaged?: (entry: DamagedEntry) => void): AsyncGenerator<CatalogEntry> {
  for await (const ref of repo.listManifests(volumeUuid)) {
    let m: Manifest;
    try {
      m = await repo.getManifest(ref.key);
    } catch (err) {
      if (hasCode(err, 'OBJECT_NOT_FOUND')) continue;
      if (onDamaged === undefined || !hasCode(err, 'BACKUP_CORRUPT', 'UNSUPPORTED_VERSION')) throw err;
      onDamaged({ key: ref.key, code: err.code, message: errorMessage(err) });
      continue;
    }
    yield {
      volumeUuid: m.volumeUuid,
      snapshot: m.snapshotName,
      labels: m.labels,
      createdAt: m.createdAt,
      pushedAt: m.pushedAt,
      sizeBytes: m.sizeBytes,
      logicalBytes: m.logicalBytes,
      bytesNew: m.bytesNew,
      chunks: m.chunks.size,
      parent: m.parent,
    };
  }
}
