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

/**
 * The snapshots in `repo` (of one volume when `volumeUuid` is given), in
 * key order: each manifest read, authenticated and dropped in turn, so
 * memory holds one manifest at a time (docs/ARCHITECTURE.md §17).
 *
 * @throws BACKUP_CORRUPT (a damaged manifest) · UNSUPPORTED_VERSION · INVALID_ARGUMENT · STORE_UNAVAILABLE · STORE_ACCESS_DENIED
 */
export async function* listBackups(repo: Repository, volumeUuid?: string): AsyncGenerator<CatalogEntry> {
  for await (const ref of repo.listManifests(volumeUuid)) {
    const m = await repo.getManifest(ref.key);
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
