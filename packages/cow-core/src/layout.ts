import { join } from 'node:path';

/**
 * Where a volume's parts live (docs/FORMAT.md, "Sidecar"): for `vol.img`,
 * the sidecar folder `vol.img.cowvol/` holds
 *   store     the snapshot store file (COW copies)
 *   journal   the write-ahead journal
 *   meta/     the LevelDB metadata database
 * The owner lock is no file: an abstract unix socket (owner-lock.ts).
 *   reserve   the space reserve (reserve.ts)
 */
export interface VolumeLayout {
  volumePath: string;
  sidecarPath: string;
  storePath: string;
  journalPath: string;
  metaPath: string;
  reservePath: string;
  /** `meta-log-lost`: written when LevelDB's current log was found deleted (leveldb-verify.ts `markLostLog`). */
  lostLogPath: string;
}

/** The lost-log marker beside the metadata folder `metaPath` (`<sidecar>/meta-log-lost`). */
export function lostLogMarkerOf(metaPath: string): string {
  return `${metaPath}-log-lost`;
}

export function volumeLayout(volumePath: string): VolumeLayout {
  const sidecarPath = `${volumePath}.cowvol`;
  return {
    volumePath,
    sidecarPath,
    storePath: join(sidecarPath, 'store'),
    journalPath: join(sidecarPath, 'journal'),
    metaPath: join(sidecarPath, 'meta'),
    reservePath: join(sidecarPath, 'reserve'),
    lostLogPath: lostLogMarkerOf(join(sidecarPath, 'meta')),
  };
}

/**
 * Format version of the volume as a whole (sidecar layout, metadata keys, what store checksums cover); 2 binds each store block checksum to its mapping (docs/FORMAT.md §4.2);
 * 3 keeps each snapshot's shared-block count and the `shared` journal record (docs/FORMAT.md §1, space-accounting.ts);
 * 4 keeps the catalog index, `name:` and `snapcount` keys (docs/FORMAT.md §6.13, catalog-index.ts).
 */
export const FORMAT_VERSION = 4;
/** The first format version that keeps shared-block counts: a version-2 volume is recounted once (space-accounting.ts). */
export const SHARED_COUNTS_FORMAT_VERSION = 3;
/** The older format versions an open upgrades in place, oldest first (docs/FORMAT.md §1, "Format versions"). */
export const UPGRADABLE_FORMAT_VERSIONS: readonly number[] = [2, 3];
/** Most snapshots one volume holds (bounds catalog scans and read-through chains). */
export const MAX_SNAPSHOTS = 65536;
/** Snapshot names: 1–128 characters of this class. */
export const SNAPSHOT_NAME_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;
/** Block sizes accepted: powers of two in this range. */
export const MIN_BLOCK_SIZE_BYTES = 512;
export const MAX_BLOCK_SIZE_BYTES = 65536;
export const DEFAULT_BLOCK_SIZE_BYTES = 4096;

/** Whether `n` is a volume block size cowvol accepts: a power of two from {@link MIN_BLOCK_SIZE_BYTES} to {@link MAX_BLOCK_SIZE_BYTES} (docs/FORMAT.md §6.3). */
export function isBlockSize(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= MIN_BLOCK_SIZE_BYTES && n <= MAX_BLOCK_SIZE_BYTES && (n & (n - 1)) === 0;
}
/** Largest volume: 2^48 blocks keep block numbers in 12 hex digits of a key, 2^53 bytes keeps offsets exact. */
export const MAX_VOLUME_BYTES = 2 ** 52;
/** A single write or read is processed in chunks of at most this many bytes (bounds memory and transaction size). */
export const IO_CHUNK_BYTES = 4 * 1024 * 1024;
/**
 * Bound on the data=ordered write-back stage: overwrites held in memory
 * while the COW of their blocks commits. 32 MiB lets several group commits
 * overlap the next writes and keeps peak memory far below the 256 MiB budget.
 */
export const WRITE_BACK_MAX_BYTES = 32 * 1024 * 1024;
/** Largest single `read()` result. Callers stream larger ranges in pieces. */
export const MAX_READ_BYTES = 256 * 1024 * 1024;
/** Blocks handed over or freed per transaction while deleting a snapshot. */
export const DELETE_BATCH_BLOCKS = 8192;
/** Journal file size of a new volume. */
export const DEFAULT_JOURNAL_BYTES = 64 * 1024 * 1024;
/** Smallest journal accepted (in journal blocks = volume blocks). */
export const MIN_JOURNAL_BLOCKS = 256;
/** Journal target ids of block images (docs/FORMAT.md): the volume file and the store file. */
export const TARGET_VOLUME = 0;
export const TARGET_STORE = 1;
