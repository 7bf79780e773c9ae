import { type DeviceOpener } from '@cowvol/base';
import type { RecoveryReport } from '@cowvol/journal';
import type { DataMode, ImportRecord, SnapshotIdentity } from './metadata.js';

/**
 * The files a volume opens through a {@link DeviceOpener}, by role: the
 * volume file itself, the snapshot store and the journal (docs/ARCHITECTURE.md
 * §4.8). An opener per role lets the store and the journal live on another
 * device than the volume file: the opener is given the sidecar path of its
 * file and may open any file for it.
 */
export type DeviceRole = 'volume' | 'store' | 'journal';

/** One opener per role; a role left out uses `opener` (or plain files). */
export type RoleOpeners = Partial<Record<DeviceRole, DeviceOpener>>;

/** The opener of `role`: `openers[role]`, else `opener`, else `fallback` (plain files). */
export function openerFor(options: { opener?: DeviceOpener | undefined; openers?: RoleOpeners | undefined }, role: DeviceRole, fallback: DeviceOpener): DeviceOpener {
  return options.openers?.[role] ?? options.opener ?? fallback;
}

/** Options for {@link Volume.create}. */
export interface CreateVolumeOptions {
  /** Size of a new volume in bytes (a multiple of the block size). Ignored with `adopt`. */
  sizeBytes?: number;
  /** Block size in bytes: a power of two from 512 to 65536. Default 4096. */
  blockSizeBytes?: number;
  /** Take an existing raw image as the live volume; its size comes from the file. */
  adopt?: boolean;
  /** File opener of every role (fault injection in tests). Default: plain files. */
  opener?: DeviceOpener;
  /** An opener per role (volume file, store, journal), over `opener`: see {@link DeviceRole}. */
  openers?: RoleOpeners;
  /**
   * `ordered` (default): live data is written in place; metadata is
   * journaled, COW copies are made durable before their commit (ordered
   * data). `journal`: live data and COW copies go through the journal too,
   * so each write call of up to `maxAtomicWriteBytes` is atomic across a crash.
   */
  dataMode?: DataMode;
  /** Journal file size. Default 64 MiB; at least 256 blocks. */
  journalSizeBytes?: number;
  /** Write-back stage bound of the opened volume (see {@link OpenVolumeOptions.writeBackBytes}). */
  writeBackBytes?: number;
  /** An import marker written with the volume record, so the volume exists only with it (a full-stream import; import.ts). */
  importState?: ImportRecord;
  /** Size of the space reserve file in bytes (reserve.ts); 0 = none. Default `RESERVE_BYTES` (2 MiB). */
  reserveBytes?: number;
}

/** Options for {@link Volume.open}. */
export interface OpenVolumeOptions {
  /** File opener of every role (fault injection in tests). Default: plain files. */
  opener?: DeviceOpener;
  /** An opener per role (volume file, store, journal), over `opener`: see {@link DeviceRole}. */
  openers?: RoleOpeners;
  /**
   * data=ordered: bytes of overwrites that may wait in memory for the COW of
   * their blocks to commit while `write()` has already resolved (a volatile
   * write cache: errors surface at `flush()`/`close()`). Default
   * `WRITE_BACK_MAX_BYTES` (32 MiB); 0 = write-through: `write()` resolves
   * only once its overwrite reached the volume file, and reports its errors.
   */
  writeBackBytes?: number;
  /**
   * Open without writing a byte of the volume, its sidecar or its lock
   * (docs/ARCHITECTURE.md, "Read-only opens"): works on a full file system
   * and a read-only mount. Metadata is read from a private copy under
   * TMPDIR (read-only.ts); committed transactions still in the journal are
   * applied to that copy; block images to write home refuse the open with
   * `JOURNAL_NEEDS_RECOVERY`. Every change is refused with `VOLUME_READ_ONLY`.
   */
  readOnly?: boolean;
  /**
   * Release the space reserve before opening anything (a delete on a full
   * disk: reserve.ts). A writable close puts it back when there is room.
   */
  releaseReserve?: boolean;
  /**
   * A volume file changed outside cowvol since its stamp (outside-writes.ts):
   * `refuse` (default) fails the open with VOLUME_MODIFIED_OUTSIDE; `hold`
   * opens it with the change in {@link Volume.outsideChanges}, refuses
   * writes until {@link Volume.acceptOutsideChanges}, and keeps the stamp
   * unless accepted.
   */
  outsideChanges?: 'refuse' | 'hold';
  /**
   * `lazy`: do not read the snapshot catalog at open when the catalog index
   * allows it (format version 4, no delete waiting to be finished): a
   * `createSnapshot` then checks its name and the limit against the index
   * (docs/ARCHITECTURE.md §4.4, "A create that does not read the
   * catalog"), and the first other operation reads the catalog before it
   * starts. For a process that opens a volume to take one snapshot (the
   * CLI's `snapshot create`); the result is the same as `eager` (default).
   */
  catalog?: 'eager' | 'lazy';
  /**
   * Verify every checksum of the metadata's LevelDB files (leveldb-verify.ts)
   * before LevelDB opens them: a damaged table is then CORRUPT_METADATA
   * naming the files, never read — LevelDB reads without checking its
   * checksums, and some damage aborts the process inside LevelDB. What
   * `check` opens with (docs/ARCHITECTURE.md §8.4). Costs one read of the
   * metadata files.
   */
  verifyMetadata?: boolean;
}

/** A snapshot as shown to users. */
export interface SnapshotInfo {
  id: number;
  name: string;
  /** ISO 8601, UTC. */
  createdAt: string;
  /** Store blocks in this snapshot's map. */
  ownedBlocks: number;
  ownedBytes: number;
  /** The newest snapshot: the one receiving COW copies. */
  active: boolean;
  /** User labels (empty when none). */
  labels: Record<string, string>;
  /** A held snapshot cannot be deleted. */
  held: boolean;
  /** For an imported snapshot: the identity of the source snapshot it holds. */
  origin?: SnapshotIdentity;
  /** Marked by accept-changes: it read through to the live volume when writes made outside cowvol were accepted. */
  suspect: boolean;
}

/** Options for {@link Volume.createSnapshot}. */
export interface CreateSnapshotOptions {
  /** Labels (keys and values: see `validateLabels`). */
  labels?: Record<string, string>;
  /** Identity of the source snapshot whose content this one holds (set by import). */
  origin?: SnapshotIdentity;
  /** Clear the import-in-progress marker in the same transaction (import's last step). */
  clearImport?: boolean;
}

/** Result of {@link Volume.deleteSnapshots}. */
export interface MultiDeleteResult {
  /** Oldest first. */
  deleted: DeleteResult[];
  freedBlocks: number;
  freedBytes: number;
  handedOverBlocks: number;
}

export interface VolumeInfo {
  path: string;
  formatVersion: number;
  uuid: string;
  sizeBytes: number;
  blockSizeBytes: number;
  dataMode: DataMode;
  /** Largest write that is atomic across a crash in `journal` mode (one journal handle). */
  maxAtomicWriteBytes: number;
  createdAt: string;
  snapshots: SnapshotInfo[];
  store: {
    /** Store blocks ever handed out (the store file's data area). */
    highWaterBlocks: number;
    freeBlocks: number;
    usedBlocks: number;
    usedBytes: number;
    fileBytes: number;
  };
  journal: { sizeBytes: number; lastSequence: number; uncheckpointedBytes: number; commits: number; handles: number; syncs: number; checkpoints: number };
  /** What recovery did when this volume was opened. */
  recovery: RecoveryReport;
  /** The import marker when an import is applying or was interrupted (writes are refused until it is resumed or abandoned, docs/ARCHITECTURE.md §15.6), else null. */
  pendingImport: ImportRecord | null;
}

/** Result of {@link Volume.checkConsistency}. */
export interface ConsistencyReport {
  snapshots: number;
  mappedBlocks: number;
  /** Store blocks neither mapped nor free. */
  leakedBlocks: number;
  /** Each corruption found, in words; empty when consistent. */
  problems: string[];
}

export interface DeleteResult {
  name: string;
  /** Store blocks returned to the allocator. */
  freedBlocks: number;
  /** Blocks passed to the next older snapshot (it read through to them). */
  handedOverBlocks: number;
  /**
   * True when the delete is committed but its hand-over stopped (a full
   * disk, an I/O error: see `Volume.warnings`); the next writable open
   * finishes it. The counts are what was done before it stopped.
   */
  unfinished?: boolean;
}

/** Counters kept by a Volume (stress summaries; docs/ARCHITECTURE.md §7.8). */
export interface VolumeStats {
  /** Blocks copied into a snapshot. */
  cows: number;
  /** COW batches (one journal handle each). */
  cowBatches: number;
  /** Times a task waited for another task's pending COW. */
  pendingWaits: number;
  maxPendingWaitMs: number;
  /** Live reads of a snapshot replaced by a copy published during the read. */
  readRechecks: number;
  /** Blocks whose COW failed and was cancelled. */
  cancelledCows: number;
  /** Scans of a whole snapshot map (a load, or the completion of a partial map; docs/ARCHITECTURE.md §4.15). */
  mapScans: number;
  /** Region loads of the COW path: calls of a partial map's `loadRegions` (a range scan of the regions not loaded, or a wait for one in flight). */
  mapRegionScans: number;
  /** Reads of the whole snapshot catalog by this open: 1 after an eager open; 0 after a lazy one until an operation needs it (docs/ARCHITECTURE.md §4.4). */
  catalogReads: number;
}
