import { randomBytes } from 'node:crypto';
import { AsyncLocalStorage } from 'node:async_hooks';
import { mkdir, open as openFile, rm, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Mutex } from 'async-mutex';
import { CowvolError, IoError, AssertionFailedError, assert, fileDeviceOpener, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { Journal, JournalApplyError, JournalCorruptError, JournalNeedsRecoveryError, type Handle, type RecoveryReport } from '@cowvol/journal';
import {
  CorruptMetadataError,
  InvalidArgumentError,
  InvalidSnapshotNameError,
  NotAVolumeError,
  OutOfRangeError,
  SnapshotExistsError,
  SnapshotHeldError,
  SnapshotLimitError,
  SnapshotNotFoundError,
  StoreCorruptError,
  VolumeClosedError,
  VolumeExistsError,
  VolumeNotFoundError,
  VolumeReadOnlyError,
  VolumeSizeMismatchError,
} from './errors.js';
import {
  DEFAULT_BLOCK_SIZE_BYTES,
  DEFAULT_JOURNAL_BYTES,
  MIN_JOURNAL_BLOCKS,
  TARGET_STORE,
  TARGET_VOLUME,
  DELETE_BATCH_BLOCKS,
  FORMAT_VERSION,
  IO_CHUNK_BYTES,
  MAX_BLOCK_SIZE_BYTES,
  MAX_READ_BYTES,
  WRITE_BACK_MAX_BYTES,
  MAX_SNAPSHOTS,
  MAX_VOLUME_BYTES,
  MIN_BLOCK_SIZE_BYTES,
  SNAPSHOT_NAME_PATTERN,
  volumeLayout,
  type VolumeLayout,
} from './layout.js';
import { MetadataDb, SCHEMA_VERSION, keys, putOp, type DataMode, type SnapshotRecord, type VolumeRecord } from './metadata.js';
import { ExtentAllocator, type Extent } from './allocator.js';
import { SnapshotMap, type MapEntry } from './snapshot-map.js';
import { SnapshotStore } from './store.js';
import { BlockSources, SnapshotReader } from './read-through.js';
import { StoreReadCache, type StoreCacheStats } from './store-read-cache.js';
import { OwnerLock, fileIdentity } from './owner-lock.js';
import { nameExists, refuseOtherNames, volumeBehindLink } from './volume-names.js';
import { CommittedMetadata, maxMapRunBlocks, type MetaRecord } from './committed-metadata.js';
import { FreezeGate } from './freeze-gate.js';
import { checkVolume, type CheckReport } from './check.js';
import { checkStoreInto } from './check-data.js';
import { rebindStoreCrc, storeBlockCrc } from './store-crc.js';
import { unionOfMaps, type DiffResult, type NamedMap } from './diff.js';
import { freeableBlocks, planDelete, type DeletePlan, type SpaceReport } from './space.js';
import { validateLabels } from './labels.js';
import { makeSidecarFolder, narrowMode, sidecarModes, tightenSidecarFolder, type SidecarModes } from './sidecar-mode.js';
import { decodeValue as decodeMeta, type ImportRecord, type SnapshotIdentity } from './metadata.js';
import { WriteBackStage, writeBackError } from './write-back.js';
import { metadataOpenError, openSidecarFile } from './sidecar-damage.js';
import { clearCreateIntent, dropLeftoverCreateIntent, reclaimIncompleteCreate, writeCreateIntent } from './create-intent.js';
import { killPoint } from './kill-point.js';
import { PrivateMetadata, openMetadata } from './read-only.js';
import { RESERVE_BYTES, releaseReserve, writeReserve } from './reserve.js';
import { ChangeStamps, suspectSnapshots, type AcceptChangesReport, type OutsideChange } from './outside-writes.js';

/** Options for {@link Volume.create}. */
export interface CreateVolumeOptions {
  /** Size of a new volume in bytes (a multiple of the block size). Ignored with `adopt`. */
  sizeBytes?: number;
  /** Block size in bytes: a power of two from 512 to 65536. Default 4096. */
  blockSizeBytes?: number;
  /** Take an existing raw image as the live volume; its size comes from the file. */
  adopt?: boolean;
  /** File opener (fault injection in tests). Default: plain files. */
  opener?: DeviceOpener;
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
  opener?: DeviceOpener;
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

/**
 * A volume file with Next3-style snapshots (docs/ARCHITECTURE.md §2, §7.2).
 *
 * The live volume is the file itself (block i at byte i × blockSize); COW
 * copies go to the snapshot store in the sidecar; metadata lives in LevelDB
 * and every metadata change is first committed to the journal, then applied
 * to LevelDB in commit order (committed-metadata.ts).
 *
 * Ordering (docs/ARCHITECTURE.md §11, guarantee 3): on the first write of block i after the active
 * snapshot was taken, the old content is copied to a newly allocated store
 * block, the store is fsynced, then the mapping (with the copy's CRC32C) is
 * committed to the journal (fsynced), published in memory, and only then is
 * the live block overwritten. So a mapping is never published before its
 * data (guarantee 2) and the copy is durable before the overwrite can reach
 * the disk (guarantee 3).
 *
 * Concurrency (docs/ARCHITECTURE.md §7):
 * - I/O runs concurrently inside a {@link FreezeGate}; snapshot create and
 *   each delete step freeze it (drain, act alone, thaw).
 * - Pending COW: concurrent writers of one block elect one COWing task (the
 *   first to register the block in `pending`); the others await its promise
 *   and re-check. A failed COW is cancelled: its reservation is freed and
 *   waiters retry.
 * - Read-through never sees the future: a block read from the live volume is
 *   re-checked against the maps after the read; if a COW published it in
 *   the meantime, the copy is read instead (sound because a mapping is
 *   published before the overwrite is issued).
 * - Lock order: journal handle (credits) first, then block locks (pending
 *   markers). `startHandle` asserts no block lock is held.
 *
 * Errors (codes): INVALID_ARGUMENT, INVALID_SNAPSHOT_NAME, OUT_OF_RANGE,
 * SNAPSHOT_NOT_FOUND, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, VOLUME_NOT_FOUND,
 * VOLUME_EXISTS, VOLUME_BUSY, NOT_A_VOLUME, CORRUPT_METADATA,
 * STORE_CORRUPT, UNSUPPORTED_VERSION, VOLUME_SIZE_MISMATCH,
 * VOLUME_MODIFIED_OUTSIDE, VOLUME_CLOSED, IO_ERROR, NO_SPACE,
 * JOURNAL_CORRUPT, JOURNAL_ABORTED, OUTCOME_UNKNOWN (a commit whose flush
 * failed), JOURNAL_NEEDS_RECOVERY and VOLUME_READ_ONLY (read-only opens). A
 * change durable in the journal is never reported as an error (see
 * {@link warnings}).
 */
export class Volume {
  private readonly gate = new FreezeGate();
  /** Journal-mode block locks for read-modify-write of live blocks. */
  private readonly blockLocks = new Map<number, Promise<void>>();
  private readonly deleteLock = new Mutex();
  /** Loaded snapshot maps (the live view) by snapshot id. */
  private readonly maps = new Map<number, SnapshotMap>();
  private readonly mapLoads = new Map<number, Promise<SnapshotMap>>();
  /** Pending COWs into the active snapshot, by volume block. */
  private readonly pending = new Map<number, PendingCow>();
  /** data=ordered: overwrites held until the COW of their blocks commits (write-back.ts). */
  private readonly writeBack: WriteBackStage;
  /**
   * Which pending-COW markers the current async context holds, for the
   * lock-order assertion. AsyncLocalStorage costs every promise in the
   * process (async hooks), so it is on only when COWVOL_LOCK_CHECKS=1 (the
   * test suite sets it).
   */
  private readonly heldBlockLocks = process.env.COWVOL_LOCK_CHECKS === '1' ? new AsyncLocalStorage<{ blocks: number }>() : undefined;
  private closed = false;
  /** The volume file's identity and change stamps (outside-writes.ts); set by `open`. */
  private outside!: ChangeStamps;
  /** Set when a commit failed: the in-memory state may be ahead of disk; reopen to recover. */
  private failure: unknown = undefined;
  /** A read-only open's private metadata copy (read-only.ts); undefined when writable. */
  private privateMeta: PrivateMetadata | undefined = undefined;
  private readonly notices: string[] = [];
  /** Counters for stress runs and `info`. */
  readonly stats: VolumeStats = { cows: 0, cowBatches: 0, pendingWaits: 0, maxPendingWaitMs: 0, readRechecks: 0, cancelledCows: 0 };
  /** Snapshot reads (read-through.ts) over the journal-overlaid home reads. */
  private readonly snapshotReader = new SnapshotReader({
    readLiveInto: (offsetBytes, into) => this.readHomeInto(TARGET_VOLUME, this.volume, offsetBytes, into),
    readStoreInto: (storeBlock, into) => this.readHomeInto(TARGET_STORE, this.store.cache, this.store.offsetOf(storeBlock), into),
    rereadStoreInto: (storeBlock, into) =>
      this.readHomeInto(TARGET_STORE, { readInto: (offsetBytes, fresh) => this.store.cache.readFresh(offsetBytes, fresh) }, this.store.offsetOf(storeBlock), into),
  });

  private constructor(
    readonly layout: VolumeLayout,
    private readonly meta: CommittedMetadata,
    private readonly db: MetadataDb,
    private readonly volume: BlockDevice,
    private readonly store: SnapshotStore,
    private journal: Journal,
    /** Hands out store blocks to COWs in flight (in memory only). */
    private readonly allocator: ExtentAllocator,
    /** Every snapshot, oldest first (ids ascending), including one being deleted: the live view. */
    private readonly catalog: SnapshotRecord[],
    private readonly lock: OwnerLock,
    private recovery: RecoveryReport,
    writeBackBytes: number,
  ) {
    this.writeBack = new WriteBackStage(meta.sb.blockSizeBytes, writeBackBytes);
  }

  get sizeBytes(): number {
    return this.meta.sb.sizeBytes;
  }

  get blockSizeBytes(): number {
    return this.meta.sb.blockSizeBytes;
  }

  // ---------------------------------------------------------------- create

  /**
   * Creates a volume: a new sparse raw file of `sizeBytes` (refuses to
   * overwrite anything), or with `adopt` an existing raw image; then its
   * sidecar (store, journal, LevelDB). Returns it opened. With `adopt`, a
   * file reached by another name (symbolic link, several hard links, file
   * bind mount) is refused (volume-names.ts).
   * @throws VOLUME_EXISTS (also: a symbolic link to a volume), VOLUME_NOT_FOUND (adopt),
   *   VOLUME_BUSY (the file is open as a volume, under any name), INVALID_ARGUMENT, IO_ERROR, NO_SPACE
   */
  static async create(path: string, options: CreateVolumeOptions = {}): Promise<Volume> {
    const opener = options.opener ?? fileDeviceOpener;
    const blockSizeBytes = options.blockSizeBytes ?? DEFAULT_BLOCK_SIZE_BYTES;
    if (!Number.isInteger(blockSizeBytes) || blockSizeBytes < MIN_BLOCK_SIZE_BYTES || blockSizeBytes > MAX_BLOCK_SIZE_BYTES || (blockSizeBytes & (blockSizeBytes - 1)) !== 0) {
      throw new InvalidArgumentError(`block size must be a power of two from ${MIN_BLOCK_SIZE_BYTES} to ${MAX_BLOCK_SIZE_BYTES} bytes, got ${blockSizeBytes}`);
    }
    const dataMode = options.dataMode ?? 'ordered';
    if (dataMode !== 'ordered' && dataMode !== 'journal') throw new InvalidArgumentError(`data mode must be ordered or journal, got ${String(dataMode)}`);
    const journalBytes = options.journalSizeBytes ?? DEFAULT_JOURNAL_BYTES;
    if (!Number.isSafeInteger(journalBytes) || journalBytes < MIN_JOURNAL_BLOCKS * blockSizeBytes || journalBytes % blockSizeBytes !== 0 || journalBytes / blockSizeBytes >= 2 ** 32) {
      throw new InvalidArgumentError(`journal size must be a multiple of the block size and at least ${MIN_JOURNAL_BLOCKS} blocks, got ${journalBytes}`);
    }
    const reserveBytes = options.reserveBytes ?? RESERVE_BYTES;
    if (!Number.isSafeInteger(reserveBytes) || reserveBytes < 0) throw new InvalidArgumentError(`reserve size must be a non-negative number of bytes, got ${reserveBytes}`);
    const layout = volumeLayout(path);
    await reclaimIncompleteCreate(layout); // what a killed create of this path left (create-intent.ts)
    if (await exists(layout.sidecarPath)) throw new VolumeExistsError(`${path} already has a cowvol sidecar (${layout.sidecarPath})`, path);

    let sizeBytes: number;
    let createdFile = false;
    let adoptedMode: number | undefined;
    if (options.adopt) {
      const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') throw new VolumeNotFoundError(path, { cause: err });
        throw err;
      });
      if (!st.isFile()) throw new InvalidArgumentError(`${path} is not a regular file`);
      sizeBytes = st.size;
      adoptedMode = st.mode;
      if (sizeBytes === 0) throw new InvalidArgumentError(`${path} is empty: nothing to adopt`);
      if (sizeBytes % blockSizeBytes !== 0) throw new InvalidArgumentError(`${path} is ${sizeBytes} bytes, not a multiple of the block size ${blockSizeBytes}; pass a smaller --block-size`);
    } else {
      sizeBytes = options.sizeBytes ?? 0;
      if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new InvalidArgumentError(`volume size must be a positive number of bytes, got ${sizeBytes}`);
      if (sizeBytes % blockSizeBytes !== 0) throw new InvalidArgumentError(`volume size ${sizeBytes} is not a multiple of the block size ${blockSizeBytes}`);
      if (await nameExists(path)) throw new VolumeExistsError(`${path} already exists; refusing to overwrite it (use --adopt to take it as the volume)`, path);
    }
    if (sizeBytes > MAX_VOLUME_BYTES) throw new InvalidArgumentError(`volume size ${sizeBytes} exceeds the maximum ${MAX_VOLUME_BYTES}`);

    // The sidecar first, under the create lock (the lock of the sidecar
    // folder's own identity), with the create intent in it; then the file
    // (FORMAT.md §2 "Create order"): a killed create is always reclaimable.
    const createLock = await makeLockedSidecar(layout, path, adoptedMode);
    let lock: OwnerLock | undefined;
    try {
      try {
        await writeCreateIntent(layout, !options.adopt);
        killPoint('create:intent');
        if (!options.adopt) {
          const dev = await opener.open(path, { create: true });
          createdFile = true;
          await dev.truncate(sizeBytes);
          await dev.sync();
          await dev.close();
          killPoint('create:file');
        }
        // The file's lock (an open volume is busy under any name), then its other names (ARCHITECTURE.md §9 "The owner lock").
        lock = await OwnerLock.acquire(path, await fileIdentity(path));
        if (options.adopt) await refuseOtherNames(path);
        // No more accessible than the volume file (docs/ARCHITECTURE.md, "Sidecar permissions").
        const sidecar = sidecarModes((await stat(path)).mode);
        await narrowMode(layout.sidecarPath, sidecar.folderMode);
        const uuid = randomBytes(16);
        const storeDev = await opener.open(layout.storePath, { create: true });
        await storeDev.write(0, SnapshotStore.header(uuid, blockSizeBytes));
        await storeDev.sync();
        await storeDev.close();
        await narrowMode(layout.storePath, sidecar.fileMode);
        killPoint('create:store');
        const journalDev = await opener.open(layout.journalPath, { create: true });
        await Journal.format(journalDev, { uuid, blockSizeBytes, lengthBlocks: journalBytes / blockSizeBytes });
        await journalDev.close();
        await narrowMode(layout.journalPath, sidecar.fileMode);
        killPoint('create:journal');
        await writeReserve(layout.reservePath, reserveBytes);
        const db = await MetadataDb.open(layout.metaPath, true);
        const sb: VolumeRecord = {
          v: SCHEMA_VERSION,
          formatVersion: FORMAT_VERSION,
          uuid: uuid.toString('hex'),
          sizeBytes,
          blockSizeBytes,
          createdAt: new Date().toISOString(),
          nextSnapshotId: 1,
          dataMode,
          journalBytes,
          reserveBytes,
        };
        // The volume record goes last: a sidecar without it is an incomplete create.
        await db.apply([putOp(keys.allocator, { v: SCHEMA_VERSION, highWaterBlocks: 0 }), putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence: 0 })]);
        killPoint('create:meta');
        // An import's marker comes with the volume record: the volume never exists without it.
        await db.apply([putOp(keys.volume, sb), ...(options.importState ? [putOp(keys.importState, options.importState)] : [])], true);
        await db.makeDurable();
        await db.close();
        killPoint('create:recorded');
        await clearCreateIntent(layout);
        await syncDirectory(layout.sidecarPath);
        await syncDirectory(dirname(resolve(layout.sidecarPath)));
      } finally {
        await lock?.unlock();
        await createLock.unlock();
      }
    } catch (err) {
      await rm(layout.sidecarPath, { recursive: true, force: true });
      if (createdFile) await rm(path, { force: true });
      throw err;
    }
    return Volume.open(path, { opener, ...(options.writeBackBytes !== undefined ? { writeBackBytes: options.writeBackBytes } : {}) });
  }

  // ------------------------------------------------------------------ open

  /**
   * Opens a volume: takes the owner lock, validates every part against the
   * metadata, runs journal recovery (replaying committed transactions that
   * LevelDB does not have yet), finishes an interrupted snapshot delete.
   * With `readOnly`, writes nothing (see {@link OpenVolumeOptions.readOnly}).
   * Refuses a volume file changed outside cowvol since its stamp
   * (outside-writes.ts) unless `outsideChanges: 'hold'`.
   * @throws VOLUME_NOT_FOUND, NOT_A_VOLUME, VOLUME_BUSY, VOLUME_MODIFIED_OUTSIDE, CORRUPT_METADATA, UNSUPPORTED_VERSION, VOLUME_SIZE_MISMATCH, JOURNAL_CORRUPT, JOURNAL_NEEDS_RECOVERY (readOnly), IO_ERROR, NO_SPACE
   */
  static async open(path: string, options: OpenVolumeOptions = {}): Promise<Volume> {
    const writeBackBytes = options.writeBackBytes ?? WRITE_BACK_MAX_BYTES;
    if (!Number.isSafeInteger(writeBackBytes) || writeBackBytes < 0) throw new InvalidArgumentError(`writeBackBytes must be a non-negative integer, got ${writeBackBytes}`);
    const opener = options.opener ?? fileDeviceOpener;
    const layout = volumeLayout(path);
    const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') throw new VolumeNotFoundError(path, { cause: err });
      throw new IoError(`cannot stat ${path}: ${err.message}`, { cause: err });
    });
    if (!st.isFile()) throw new NotAVolumeError(`${path} is not a regular file`);
    const readOnly = options.readOnly === true;
    // Locked by the file's identity, so another name of an open volume is busy (ARCHITECTURE.md §9 "The owner lock").
    const lock = await OwnerLock.acquire(path, await fileIdentity(path));
    const opened: Array<{ close(): Promise<void> }> = [];
    try {
      if (!(await exists(layout.sidecarPath))) {
        const real = await volumeBehindLink(path);
        if (real !== undefined) throw new NotAVolumeError(`${path} is a symbolic link to the cowvol volume ${real}; open it by that name`);
        throw new NotAVolumeError(`${path} is not a cowvol volume (no ${layout.sidecarPath}); run \`cowvol create ${path} --adopt\` to make it one`);
      }
      // A sidecar more open than its volume file is narrowed, never widened (docs/ARCHITECTURE.md, "Sidecar permissions").
      // Best effort, and only ever narrowing: also in a read-only open (a chmod of the folder, never of data).
      await tightenSidecarFolder(layout.sidecarPath, st.mode);
      if (options.releaseReserve && !readOnly) await releaseReserve(layout.reservePath);
      const { db, privateMeta } = await openMetadata(layout.metaPath, readOnly);
      opened.push(privateMeta ?? db);
      const meta = await CommittedMetadata.load(db, path);
      // The volume record is there: the create finished. Best effort in a read-only open (nothing else is written).
      await (readOnly ? dropLeftoverCreateIntent(layout).catch(() => undefined) : dropLeftoverCreateIntent(layout));
      const sb = meta.sb;
      // Before recovery may write the file: one changed outside cowvol is refused (outside-writes.ts).
      const volumeBlocks = Math.ceil(sb.sizeBytes / sb.blockSizeBytes);
      const outside = await ChangeStamps.open(db, path, { hold: options.outsideChanges === 'hold', catalog: [...meta.snapshots.values()], volumeBlocks });
      const uuid = Buffer.from(sb.uuid, 'hex');

      const volume = await opener.open(path, { create: false, readOnly });
      opened.push(volume);
      const actual = await volume.sizeBytes();
      if (actual !== sb.sizeBytes) throw new VolumeSizeMismatchError(path, sb.sizeBytes, actual);

      // Every store write goes through the cache's device, which drops the cached windows it touches.
      const storeCache = new StoreReadCache(await openSidecarFile(opener, layout.storePath, 'store', readOnly), sb.blockSizeBytes);
      const storeDev = storeCache.device;
      opened.push(storeDev);
      const store = new SnapshotStore(storeDev, sb.blockSizeBytes, storeCache);
      await store.verifyHeader(uuid);

      const journalDev = await openSidecarFile(opener, layout.journalPath, 'journal', readOnly);
      const apply = (tx: { sequence: number; records: unknown[] }) => meta.apply(tx);
      const { journal, recovery } = await Journal.open(journalDev, {
        expectedUuid: uuid,
        targets: new Map([
          [TARGET_VOLUME, volume],
          [TARGET_STORE, storeDev],
        ]),
        replay: apply,
        apply,
        // Checkpoint: LevelDB must hold everything up to the new tail durably.
        beforeTailMove: () => db.makeDurable(),
        readOnly,
      }).catch(async (err: unknown) => {
        await journalDev.close();
        throw err;
      });
      opened.push(journal);
      if (journal.lastCommittedSequence < meta.appliedSequence) {
        // LevelDB holds transactions the journal no longer has: new commits would reuse their sequences.
        throw new JournalCorruptError(`${layout.journalPath} ends at transaction ${journal.lastCommittedSequence} but the metadata has applied ${meta.appliedSequence}`);
      }

      const catalog = [...meta.snapshots.values()].sort((a, b) => a.id - b.id).map((r) => ({ ...r }));
      const names = new Set<string>();
      for (const rec of catalog) {
        if (rec.state !== 'live') continue; // a snapshot being deleted may share its name with a newer one
        if (names.has(rec.name)) throw new CorruptMetadataError(`two snapshots named ${rec.name}`);
        names.add(rec.name);
        if (rec.id >= meta.sb.nextSnapshotId) throw new CorruptMetadataError(`snapshot id ${rec.id} not below nextSnapshotId ${meta.sb.nextSnapshotId}`);
      }
      if (journal.blockSizeBytes !== sb.blockSizeBytes) {
        throw new JournalCorruptError(`${layout.journalPath} has ${journal.blockSizeBytes}-byte blocks; the volume has ${sb.blockSizeBytes}`);
      }
      const vol = new Volume(layout, meta, db, volume, store, journal, meta.allocator.clone(), catalog, lock, recovery, writeBackBytes);
      vol.privateMeta = privateMeta;
      vol.outside = outside;
      if (readOnly) return vol; // replayed into the private copy; an interrupted delete is finished by the next writable open
      if (recovery.replayedTransactions > 0) await vol.checkpoint();
      // Finish a delete that a crash interrupted (each step was its own transaction).
      for (const rec of [...catalog]) if (rec.state === 'deleting') await vol.finishDelete(rec);
      return vol;
    } catch (err) {
      for (const part of opened.reverse()) await part.close().catch(() => undefined);
      await lock.unlock().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Opens for commands that only read: read-only (writes nothing) when it
   * can; when the journal holds block images that recovery must write home,
   * a writable open recovers them instead, and if that cannot write (a full
   * disk, a read-only mount) the open fails with `JOURNAL_NEEDS_RECOVERY`
   * saying why. docs/ARCHITECTURE.md, "Read-only opens".
   * @throws what {@link open} throws; JOURNAL_NEEDS_RECOVERY
   */
  static async openForReading(path: string, options: Omit<OpenVolumeOptions, 'readOnly' | 'releaseReserve'> = {}): Promise<Volume> {
    try {
      return await Volume.open(path, { ...options, readOnly: true });
    } catch (err) {
      if (!(err instanceof JournalNeedsRecoveryError)) throw err;
      try {
        return await Volume.open(path, options);
      } catch (writable) {
        if (!(writable instanceof CowvolError) || (writable.code !== 'NO_SPACE' && writable.code !== 'IO_ERROR')) throw writable;
        throw new JournalNeedsRecoveryError(`${err.message}; recovery could not write (${writable.message}): free space or mount the file system read-write, then run any cowvol command`, {
          cause: writable,
          ...(err.details ? { details: err.details } : {}),
        });
      }
    }
  }

  /** True when opened with `readOnly`. */
  get readOnly(): boolean {
    return this.privateMeta !== undefined;
  }

  /**
   * What an operation that succeeded could not finish, in words: a change
   * durable in the journal that the metadata database could not take yet, a
   * delete whose hand-over the next open finishes, a checkpoint left to the
   * next open, a space reserve that could not be put back
   * (docs/ARCHITECTURE.md, "Outcomes of a failed command").
   */
  get warnings(): readonly string[] {
    return this.notices;
  }

  // ------------------------------------------------------------ live data

  /**
   * Writes `data` at `offsetBytes` of the live volume, COWing into the active
   * snapshot first every block touched for the first time since it was
   * taken (a partial-block write still copies the whole block). Resolves
   * when every chunk has been written or — data=ordered, a chunk whose COW
   * is still committing — handed to the bounded write-back stage (reads see
   * it at once; see write-back.ts); the data is durable after {@link flush}.
   * `data` must not change until the promise settles (like `fs.write`).
   *
   * On failure the error keeps its code (IO_ERROR, NO_SPACE, …) and its
   * `details.failedRanges` lists the byte ranges not written; every other
   * range was written completely, and every snapshot stays intact. A
   * failure after a chunk was handed to the write-back stage is reported
   * by the next `flush()` (or `close()`) instead.
   * @throws OUT_OF_RANGE, INVALID_ARGUMENT, IO_ERROR, NO_SPACE, JOURNAL_ABORTED, VOLUME_MODIFIED_OUTSIDE (opened with `outsideChanges: 'hold'`, not accepted)
   */
  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new VolumeReadOnlyError(this.layout.volumePath, 'write');
    this.checkRange(offsetBytes, data.length);
    if (data.length === 0) return;
    // Like fs.write: `data` must not change until the promise settles. No
    // copy is taken on the overwrite path; the write-back stage and the
    // journal take their own copies of what they keep past this call.
    const stable = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await this.shared(async () => {
      await this.outside.beforeLiveWrite(); // the stamp says `open` before the file changes
      // Pieces of at most pieceBytes from the start of the write: in journal
      // mode each piece is one handle, so a write of up to pieceBytes is atomic
      // whatever its alignment; in both modes a piece's COW fits one handle.
      const chunks: Array<{ offsetBytes: number; data: Buffer }> = [];
      const piece = this.pieceBytes();
      for (let pos = 0; pos < stable.length; pos += piece) chunks.push({ offsetBytes: offsetBytes + pos, data: stable.subarray(pos, Math.min(stable.length, pos + piece)) });
      await this.allChunks(chunks, (c) => this.writeChunk(c.offsetBytes, c.data), 'write');
    });
  }

  /**
   * Reads live data. Reads are bounded (`MAX_READ_BYTES` per call).
   * @throws OUT_OF_RANGE, INVALID_ARGUMENT (too long), IO_ERROR
   */
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    this.checkReadLength(lengthBytes);
    return this.shared(() => this.readCurrent(offsetBytes, lengthBytes));
  }

  /**
   * Makes every write that completed before the call durable (guarantee 4:
   * acknowledged means durable): drains the write-back stage, then syncs
   * the volume file. Reports, once, any earlier acknowledged write that
   * could not reach the volume (like a disk's write-cache error at flush).
   * @throws IO_ERROR, NO_SPACE, JOURNAL_ABORTED (with `details.failedRanges` for write-back failures)
   */
  async flush(): Promise<void> {
    const leave = await this.gate.enter();
    try {
      await this.writeBack.drain();
      // Reported first, with their ranges (even when the cause also stopped
      // the volume); a second flush then syncs what did land.
      const failures = this.writeBack.takeFailures();
      if (failures.length > 0) throw writeBackError(failures);
      // After a commit that is durable but not applied, the writes before it
      // happened (their COWs are in the journal): they are synced like any.
      this.checkUsable(true);
      await this.volume.sync();
    } finally {
      leave();
    }
  }

  // ------------------------------------------------------------ snapshots

  /**
   * Takes a snapshot in O(1): freezes (new writes wait, writes in flight
   * drain, so the snapshot never holds half of one write call), syncs the
   * live volume (the snapshot's read-through content must be durable),
   * commits a catalog entry and thaws; the new snapshot is active with an
   * empty COW bitmap.
   * @throws INVALID_SNAPSHOT_NAME, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, IO_ERROR
   */
  async createSnapshot(name: string, options: CreateSnapshotOptions = {}): Promise<SnapshotInfo> {
    validateSnapshotName(name);
    if (options.labels) validateLabels(options.labels);
    return this.frozen(async () => {
      if (this.findLive(name)) throw new SnapshotExistsError(name);
      if (this.catalog.length >= MAX_SNAPSHOTS) throw new SnapshotLimitError(MAX_SNAPSHOTS);
      assert(this.pending.size === 0, 'pending COWs while frozen');
      await this.volume.sync();
      const id = this.meta.sb.nextSnapshotId;
      const rec: SnapshotRecord = { v: SCHEMA_VERSION, id, name, createdAt: new Date().toISOString(), state: 'live', ownedBlocks: 0, ...snapshotExtras(options) };
      await this.commitRecords([
        { o: 'snap', id, name, createdAt: rec.createdAt, state: 'live' },
        { o: 'sb', v: { ...this.meta.sb, nextSnapshotId: id + 1 } },
        ...snapshotExtraRecords(id, options),
      ]);
      this.catalog.push(rec);
      this.maps.set(id, new SnapshotMap(id));
      return this.describe(rec);
    });
  }

  /** Snapshots, oldest first. */
  async listSnapshots(): Promise<SnapshotInfo[]> {
    return this.settled(async () => this.liveSnapshots().map((r) => this.describe(r)));
  }

  /**
   * Reads `lengthBytes` at `offsetBytes` of snapshot `name` through the
   * read-through chain: the snapshot's own map, then each newer snapshot's
   * map, then the live volume. Every store block read is checked against
   * the CRC32C recorded when it was copied.
   * @throws SNAPSHOT_NOT_FOUND, OUT_OF_RANGE, INVALID_ARGUMENT, STORE_CORRUPT, IO_ERROR
   */
  async readSnapshot(name: string, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    this.checkReadLength(lengthBytes);
    return this.shared(async () => {
      const rec = this.findLive(name);
      if (!rec) throw new SnapshotNotFoundError(name);
      return this.readThrough(rec, offsetBytes, lengthBytes);
    });
  }

  /**
   * Deletes snapshot `name`: each block it owns is handed over to the next
   * older snapshot when that one has no copy of its own, else freed.
   * Metadata only, in bounded transactions, each under a short freeze; a
   * crash in the middle is finished at the next open. Deleting the active
   * snapshot makes the next older one active again.
   * @throws SNAPSHOT_NOT_FOUND, IO_ERROR
   */
  async deleteSnapshot(name: string): Promise<DeleteResult> {
    // One delete at a time: hand-over needs a live older neighbour.
    return this.deleteLock.runExclusive(() => this.deleteOne(name));
  }

  private async deleteOne(name: string): Promise<DeleteResult> {
    const rec = await this.frozen(async () => {
      const found = this.findLive(name);
      if (!found) throw new SnapshotNotFoundError(name);
      if (found.held) throw new SnapshotHeldError([name]);
      await this.commitRecords([{ o: 'snap', id: found.id, name: found.name, createdAt: found.createdAt, state: 'deleting' }]);
      found.state = 'deleting';
      return found;
    });
    return (await this.finishMarked([rec]))[0]!;
  }

  /** Size, snapshots, store usage, format version, recovery report. */
  async info(): Promise<VolumeInfo> {
    return this.settled(async () => {
      const usedBlocks = this.meta.allocator.highWaterBlocks - this.meta.allocator.freeBlocks;
      const sb = this.meta.sb;
      return {
        path: this.layout.volumePath,
        formatVersion: sb.formatVersion,
        uuid: sb.uuid,
        sizeBytes: sb.sizeBytes,
        blockSizeBytes: sb.blockSizeBytes,
        dataMode: sb.dataMode,
        maxAtomicWriteBytes: sb.dataMode === 'journal' ? this.pieceBytes() : 0,
        createdAt: sb.createdAt,
        snapshots: this.liveSnapshots().map((r) => this.describe(r)),
        store: {
          highWaterBlocks: this.meta.allocator.highWaterBlocks,
          freeBlocks: this.meta.allocator.freeBlocks,
          usedBlocks,
          usedBytes: usedBlocks * sb.blockSizeBytes,
          fileBytes: await this.store.device.sizeBytes(),
        },
        journal: {
          sizeBytes: this.journal.lengthBlocks * this.journal.blockSizeBytes,
          lastSequence: this.journal.lastCommittedSequence,
          uncheckpointedBytes: this.journal.uncheckpointedBytes,
          commits: this.journal.stats.commits,
          handles: this.journal.stats.handles,
          syncs: this.journal.stats.syncs,
          checkpoints: this.journal.stats.checkpoints,
        },
        recovery: this.recovery,
      };
    });
  }

  /**
   * Checks the persisted metadata (LevelDB, not the in-memory view) the way
   * `qemu-img check` checks an image: rebuilds from every snapshot map which
   * store blocks are in use and compares with the allocator and the catalog.
   * Leaks (allocated, unmapped: harmless) are told apart from corruption
   * (mapped twice, mapped but free, map beyond the store or the store file,
   * map of an unknown snapshot, owned-block count wrong, impossible
   * catalog). With `repair`, leaks are freed in one journal transaction.
   * With `readData`, every mapped store block is also read and checked
   * against its bound CRC32C, and the snapshots reading a damaged one are
   * named (check-data.ts; progress phase `data`). Runs frozen;
   * O(mapped blocks + free extents), plus one read of the used store with
   * `readData`.
   * @throws IO_ERROR (a store read of `readData` fails)
   */
  async check(options: { repair?: boolean; readData?: boolean; onProgress?: (doneBlocks: number, totalBlocks: number, phase?: 'data') => void } = {}): Promise<CheckReport> {
    return this.frozen(async () => {
      await this.checkpoint(); // everything home: the store file must hold every mapped block
      const report = await checkVolume(this.db, this.meta, {
        storeFileBytes: await this.store.device.sizeBytes(),
        blockSizeBytes: this.blockSizeBytes,
        sizeBytes: this.sizeBytes,
        journal: { lastSequence: this.journal.lastCommittedSequence, appliedSequence: this.meta.appliedSequence },
        metadataPath: this.layout.metaPath,
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      });
      if (options.readData) await checkStoreInto(report, this.db, this.meta, this.store, options.onProgress);
      if (options.repair && report.leaks.length > 0 && report.corruptions.length === 0) {
        await this.commitRecords(report.leaks.map((e) => ({ o: 'free' as const, p: e.startBlock, n: e.lengthBlocks })));
        // The live allocator learns the freed space too.
        for (const e of report.leaks) this.allocator.free(e);
        report.repairedBlocks = report.leakedBlocks;
        report.status = 'clean';
      }
      return report;
    });
  }

  /**
   * Cross-checks the in-memory view against itself (guarantee 6): no store
   * block mapped twice, none mapped while free or beyond the high-water
   * mark, owned-block counts equal to map sizes. Loads every map.
   */
  async checkConsistency(): Promise<ConsistencyReport> {
    return this.frozen(async () => {
      const problems: string[] = [];
      const owner = new Map<number, string>();
      let mappedBlocks = 0;
      const committed = this.meta.allocator;
      for (const rec of this.catalog) {
        const map = await this.mapOf(rec.id);
        if (map.size !== rec.ownedBlocks) problems.push(`snapshot ${rec.name} counts ${rec.ownedBlocks} owned blocks but maps ${map.size}`);
        if (this.meta.snapshots.get(rec.id)?.ownedBlocks !== rec.ownedBlocks) problems.push(`snapshot ${rec.name}: live and committed owned counts differ`);
        for (const [block, storeBlock] of map.entries()) {
          mappedBlocks += 1;
          const where = `${rec.name}:${block}`;
          if (block * this.blockSizeBytes >= this.sizeBytes) problems.push(`${where} maps a block beyond the volume`);
          if (storeBlock >= committed.highWaterBlocks) problems.push(`${where} maps store block ${storeBlock} beyond the store (${committed.highWaterBlocks})`);
          else if (committed.isFree(storeBlock)) problems.push(`${where} maps store block ${storeBlock}, which is free`);
          const prev = owner.get(storeBlock);
          if (prev !== undefined) problems.push(`store block ${storeBlock} mapped twice: ${prev} and ${where}`);
          owner.set(storeBlock, where);
        }
      }
      const leakedBlocks = committed.highWaterBlocks - committed.freeBlocks - owner.size;
      return { snapshots: this.catalog.length, mappedBlocks, leakedBlocks: Math.max(0, leakedBlocks), problems };
    });
  }


  // ------------------------------------------------------ backup workflows
  // (docs/ARCHITECTURE.md, "Backup workflows"; logic in diff.ts, space.ts,
  // stream.ts, export.ts, import.ts, restore.ts)

  /**
   * The blocks written between snapshot `from` and snapshot `to`, or the
   * live volume when `to` is undefined: the union of the maps of the
   * snapshots from the older one up to, not including, the newer one (to
   * the newest for live), as sorted block-aligned extents, each naming the
   * map it came from. The order of `from` and `to` does not matter. A block
   * rewritten with identical bytes counts as written: the result covers
   * every differing byte and may hold more. Cost O(blocks in those maps); no
   * data is read.
   * @throws SNAPSHOT_NOT_FOUND
   */
  async diff(from: string, to?: string): Promise<DiffResult> {
    return this.settled(async () => {
      const a = this.findLive(from);
      if (!a) throw new SnapshotNotFoundError(from);
      const b = to === undefined ? undefined : this.findLive(to);
      if (to !== undefined && !b) throw new SnapshotNotFoundError(to);
      const [older, newer] = b !== undefined && b.id < a.id ? [b, a] : [a, b];
      const range = this.catalog.filter((r) => r.id >= older.id && (newer === undefined || r.id < newer.id));
      const chain = await this.namedMaps(range);
      const extents = unionOfMaps(chain, this.blockSizeBytes);
      const bytes = extents.reduce((n, e) => n + e.lengthBytes, 0);
      return { from, to: to ?? null, blockSizeBytes: this.blockSizeBytes, extents, bytes, blocks: bytes / this.blockSizeBytes };
    });
  }

  /**
   * Makes the volume file hold every live block written so far: in
   * `journal` data mode, checkpoints the journal (images still only in the
   * journal go home); in `ordered` mode, nothing to do (writes acknowledged
   * land in place; a snapshot drains the write-back stage). A full export
   * calls it before looking for the file's holes (docs/ARCHITECTURE.md §9.5).
   * @throws IO_ERROR, NO_SPACE, JOURNAL_ABORTED
   */
  async checkpointLive(): Promise<void> {
    if (this.meta.sb.dataMode !== 'journal') return;
    await this.frozen(() => this.checkpoint());
  }

  /**
   * Space accounting: for each snapshot the store blocks it owns and the
   * blocks deleting it alone would free (all of them without an older
   * neighbour, else only those the older neighbour also maps: the others
   * are handed over), and the store totals. Loads every snapshot map once
   * per Volume (O(mapped blocks)), then O(Σ min(|S|, |older(S)|)) per call;
   * reads no data.
   */
  async spaceUsage(): Promise<SpaceReport> {
    return this.settled(async () => {
      const fileBytes = await this.store.device.sizeBytes();
      let all = new Map<number, NamedMap>();
      // Load until every snapshot of the catalog is loaded (a create or delete may run meanwhile).
      while (!this.catalog.every((r) => all.has(r.id))) all = new Map((await this.namedMaps([...this.catalog])).map((m) => [m.id, m]));
      // From here on synchronous: one consistent view.
      const bs = this.blockSizeBytes;
      const snapshots: SpaceReport['snapshots'] = [];
      let ownedBlocks = 0;
      this.catalog.forEach((rec, i) => {
        const named = all.get(rec.id)!;
        ownedBlocks += named.map.size;
        if (rec.state !== 'live') return;
        const freeable = freeableBlocks(named, i > 0 ? all.get(this.catalog[i - 1]!.id) : undefined);
        snapshots.push({ id: rec.id, name: rec.name, ownedBlocks: named.map.size, ownedBytes: named.map.size * bs, freeableBlocks: freeable, freeableBytes: freeable * bs });
      });
      const alloc = this.meta.allocator;
      const usedBlocks = alloc.highWaterBlocks - alloc.freeBlocks;
      return {
        blockSizeBytes: bs,
        snapshots,
        store: {
          highWaterBlocks: alloc.highWaterBlocks,
          usedBlocks,
          usedBytes: usedBlocks * bs,
          freeBlocks: alloc.freeBlocks,
          freeBytes: alloc.freeBlocks * bs,
          fileBytes,
          ownedBlocks,
          ownedBytes: ownedBlocks * bs,
        },
      };
    });
  }

  /**
   * What {@link deleteSnapshots} of `names` would free, computed exactly as
   * the delete proceeds (oldest first, hand-over to the nearest older
   * survivor); changes nothing. O(blocks owned by them).
   * @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_HELD (as the delete would)
   */
  async planDelete(names: string[]): Promise<DeletePlan> {
    return this.settled(async () => {
      const victims = this.findVictims(names);
      const all = await this.namedMaps(this.catalog);
      return planDelete(all, new Set(victims.map((r) => r.id)), this.blockSizeBytes);
    });
  }

  /**
   * Deletes several snapshots in one atomic step: all are checked first
   * (SNAPSHOT_NOT_FOUND, SNAPSHOT_HELD: then nothing is deleted), then all
   * are marked `deleting` in one journal transaction under one freeze — from
   * that commit on, the delete of every one of them completes, across a
   * crash too (open finishes it) — then each hands over or frees its blocks,
   * oldest first. `onProgress` counts blocks processed.
   * @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_HELD, IO_ERROR
   */
  async deleteSnapshots(names: string[], options: { onProgress?: (doneBlocks: number, totalBlocks: number) => void } = {}): Promise<MultiDeleteResult> {
    return this.deleteLock.runExclusive(async () => {
      const victims = await this.frozen(async () => {
        const found = this.findVictims(names);
        if (found.length === 0) return [];
        await this.commitRecords(found.map((r) => ({ o: 'snap' as const, id: r.id, name: r.name, createdAt: r.createdAt, state: 'deleting' as const })));
        for (const r of found) r.state = 'deleting';
        return found;
      });
      const totalBlocks = victims.reduce((n, r) => n + r.ownedBlocks, 0);
      let doneBlocks = 0;
      const deleted = await this.finishMarked(victims, (n) => {
        doneBlocks += n;
        options.onProgress?.(doneBlocks, totalBlocks);
      });
      const freedBlocks = deleted.reduce((n, d) => n + d.freedBlocks, 0);
      return { deleted, freedBlocks, freedBytes: freedBlocks * this.blockSizeBytes, handedOverBlocks: deleted.reduce((n, d) => n + d.handedOverBlocks, 0) };
    });
  }

  /**
   * Renames a snapshot (its identity — id, creation time — is unchanged).
   * @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_EXISTS, INVALID_SNAPSHOT_NAME
   */
  async renameSnapshot(name: string, newName: string): Promise<SnapshotInfo> {
    validateSnapshotName(newName);
    return this.frozen(async () => {
      const rec = this.findLive(name);
      if (!rec) throw new SnapshotNotFoundError(name);
      if (newName === name) return this.describe(rec);
      // Any record, even one being deleted, keeps its name until dropped.
      if (this.catalog.some((r) => r.name === newName)) throw new SnapshotExistsError(newName);
      await this.commitRecords([{ o: 'rename', id: rec.id, name: newName }]);
      rec.name = newName;
      return this.describe(rec);
    });
  }

  /**
   * Replaces a snapshot's labels (an empty map removes them all).
   * @throws SNAPSHOT_NOT_FOUND, INVALID_LABEL
   */
  async setSnapshotLabels(name: string, labels: Record<string, string>): Promise<SnapshotInfo> {
    validateLabels(labels);
    return this.frozen(async () => {
      const rec = this.findLive(name);
      if (!rec) throw new SnapshotNotFoundError(name);
      await this.commitRecords([{ o: 'labels', id: rec.id, labels }]);
      if (Object.keys(labels).length > 0) rec.labels = { ...labels };
      else delete rec.labels;
      return this.describe(rec);
    });
  }

  /**
   * Holds (`held` true) or releases a snapshot. A held snapshot cannot be
   * deleted (SNAPSHOT_HELD) until released. Idempotent.
   * @throws SNAPSHOT_NOT_FOUND
   */
  async holdSnapshot(name: string, held = true): Promise<SnapshotInfo> {
    return this.frozen(async () => {
      const rec = this.findLive(name);
      if (!rec) throw new SnapshotNotFoundError(name);
      if ((rec.held === true) !== held) {
        await this.commitRecords([{ o: 'hold', id: rec.id, held }]);
        if (held) rec.held = true;
        else delete rec.held;
      }
      return this.describe(rec);
    });
  }

  /**
   * The identity of a snapshot's content: for an imported snapshot, the
   * source snapshot it holds (its `origin`); otherwise this volume's uuid,
   * the snapshot's id and creation time.
   * @throws SNAPSHOT_NOT_FOUND
   */
  async snapshotIdentity(name: string): Promise<SnapshotIdentity> {
    return this.shared(async () => {
      const rec = this.findLive(name);
      if (!rec) throw new SnapshotNotFoundError(name);
      return rec.origin ? { ...rec.origin } : { volumeUuid: this.meta.sb.uuid, snapshotId: rec.id, createdAt: rec.createdAt, name: rec.name };
    });
  }

  /** The marker of an interrupted import (import.ts), or undefined. */
  async importState(): Promise<ImportRecord | undefined> {
    return this.shared(async () => {
      const bytes = await this.db.get(keys.importState);
      return bytes ? decodeMeta.importState(keys.importState, bytes) : undefined;
    });
  }

  /** Sets (journaled) or, with null, clears the import marker. */
  async setImportState(state: ImportRecord | null): Promise<void> {
    await this.shared(() => this.commitRecords([{ o: 'import', state }]));
  }

  /** The change to the volume file found at open and not accepted yet (open with `outsideChanges: 'hold'`), else undefined. */
  get outsideChanges(): OutsideChange | undefined {
    return this.outside.pending;
  }

  /**
   * Takes the volume file as it is now, after writes made outside cowvol
   * (docs/ARCHITECTURE.md, "Writes made outside cowvol"): marks suspect, in
   * one journal transaction, every live snapshot that reads through to the
   * live volume, then stamps the file anew. Does nothing (`accepted` false)
   * when no change is pending; only a volume opened with `outsideChanges:
   * 'hold'` can have one. O(mapped blocks) when the snapshots' maps could
   * cover the volume, else O(snapshots).
   * @throws IO_ERROR, NO_SPACE, JOURNAL_ABORTED
   */
  async acceptOutsideChanges(): Promise<AcceptChangesReport> {
    return this.frozen(async () => {
      const held = this.outside.pending;
      if (!held) return { accepted: false, changes: [], suspectSnapshots: [] };
      const names = await suspectSnapshots(this.catalog, Math.ceil(this.sizeBytes / this.blockSizeBytes), (id) => this.mapOf(id));
      const marked = this.liveSnapshots().filter((r) => names.includes(r.name) && r.suspect !== true);
      await this.commitRecords(marked.map((r) => ({ o: 'suspect' as const, id: r.id })));
      for (const r of marked) r.suspect = true;
      await this.outside.accept();
      return { accepted: true, changes: held.changes, suspectSnapshots: names };
    });
  }

  /** The live snapshots named, oldest first; none held. @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_HELD */
  private findVictims(names: string[]): SnapshotRecord[] {
    const found: SnapshotRecord[] = [];
    for (const name of new Set(names)) {
      const rec = this.findLive(name);
      if (!rec) throw new SnapshotNotFoundError(name);
      found.push(rec);
    }
    const held = found.filter((r) => r.held);
    if (held.length > 0) throw new SnapshotHeldError(held.map((r) => r.name));
    return found.sort((a, b) => a.id - b.id);
  }

  /** The maps of `records`, loaded, in the same order. */
  private async namedMaps(records: SnapshotRecord[]): Promise<NamedMap[]> {
    const out: NamedMap[] = [];
    for (const r of records) out.push({ id: r.id, name: r.name, map: await this.mapOf(r.id) });
    return out;
  }

  /**
   * Drains I/O, syncs the volume, checkpoints the journal, closes every file,
   * puts the space reserve back if it was released and there is room, and
   * releases the owner lock. Idempotent. A checkpoint that fails loses
   * nothing (the journal holds every committed transaction; the next open
   * replays it): it is a warning ({@link warnings}), not an error. A
   * read-only volume writes nothing and removes its private metadata copy.
   * @throws IO_ERROR, NO_SPACE (the volume sync; acknowledged writes that never reached the volume, with `details.failedRanges`)
   */
  async close(): Promise<void> {
    if (this.closed) return;
    const thaw = await this.gate.freeze();
    let failures: ReturnType<WriteBackStage['takeFailures']> = [];
    try {
      if (this.closed) return;
      this.closed = true;
      try {
        await this.writeBack.drain();
        failures = this.writeBack.takeFailures();
        if (!this.readOnly && (this.failure === undefined || this.failure instanceof JournalApplyError)) await this.volume.sync();
        if (this.failure === undefined && !this.readOnly) {
          const checkpointed = await this.checkpoint().then(
            () => true,
            (err: unknown) => {
              this.notices.push(`the journal was not checkpointed (${(err as Error).message}); the next open replays it`);
              return false;
            },
          );
          // After cowvol's last write to the file. Failing leaves the `open` stamp (the safe direction): a warning, not an error.
          if (checkpointed) {
            await this.outside.atCleanClose().catch((err: unknown) => this.notices.push(`the volume file's change stamp was not updated (${(err as Error).message}); the next open compares its identity and size only`));
          }
        }
      } finally {
        await this.journal.close().catch(() => undefined);
        await this.store.device.close().catch(() => undefined);
        await this.volume.close().catch(() => undefined);
        await (this.privateMeta ?? this.db).close().catch(() => undefined);
        if (!this.readOnly) await this.restoreReserve();
        await this.lock.unlock().catch(() => undefined);
      }
    } finally {
      thaw();
    }
    // Closed either way; an acknowledged write that never reached the volume is not silently lost.
    if (failures.length > 0) throw writeBackError(failures);
  }

  // ------------------------------------------------------------- private

  /** Puts the space reserve back when it is missing (reserve.ts); a full disk leaves it released, with a warning. */
  private async restoreReserve(): Promise<void> {
    const bytes = this.meta.sb.reserveBytes ?? 0;
    if (bytes === 0) return;
    const restored = await writeReserve(this.layout.reservePath, bytes, true).catch(() => false);
    if (!restored) this.notices.push(`the ${bytes}-byte space reserve ${this.layout.reservePath} is released and there is no room to put it back; a later close with room restores it`);
  }

  /** Runs `fn` inside the freeze gate (shared with other I/O). */
  private async shared<T>(fn: () => Promise<T>): Promise<T> {
    const leave = await this.gate.enter();
    try {
      this.checkUsable();
      return await fn();
    } finally {
      leave();
    }
  }

  /**
   * Runs `fn` inside the freeze gate once the write-back stage is empty:
   * metadata views (sizes, maps, diffs) count every COW of the writes
   * acknowledged before the call.
   */
  private async settled<T>(fn: () => Promise<T>): Promise<T> {
    return this.shared(async () => {
      await this.writeBack.drain();
      return fn();
    });
  }

  /** Runs `fn` alone: new operations wait, operations in flight drain first. */
  private async frozen<T>(fn: () => Promise<T>): Promise<T> {
    const thaw = await this.gate.freeze();
    try {
      // Overwrites still in the write-back stage belong to writes that
      // already returned: they land before the freezer runs (a snapshot
      // holds every write acknowledged before it).
      await this.writeBack.drain();
      this.checkUsable();
      return await fn();
    } finally {
      thaw();
    }
  }

  /** Throws VOLUME_CLOSED, LOCK_LOST, or JOURNAL_ABORTED after a failed commit (`appliedLater`: not for one durable in the journal, JOURNAL_APPLY_FAILED). */
  private checkUsable(appliedLater = false): void {
    if (this.closed) throw new VolumeClosedError();
    if (this.failure !== undefined && !(appliedLater && this.failure instanceof JournalApplyError)) {
      throw new CowvolError('JOURNAL_ABORTED', 'an earlier metadata commit failed; close and reopen the volume to recover', { cause: this.failure });
    }
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) throw new InvalidArgumentError(`offset must be a non-negative integer, got ${offsetBytes}`);
    if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0) throw new InvalidArgumentError(`length must be a non-negative integer, got ${lengthBytes}`);
    if (offsetBytes + lengthBytes > this.sizeBytes || (lengthBytes === 0 && offsetBytes > this.sizeBytes)) {
      throw new OutOfRangeError(offsetBytes, lengthBytes, this.sizeBytes);
    }
  }

  private checkReadLength(lengthBytes: number): void {
    if (lengthBytes > MAX_READ_BYTES) throw new InvalidArgumentError(`one read returns at most ${MAX_READ_BYTES} bytes; read in pieces`);
  }

  /**
   * Runs `fn` on every chunk with bounded parallelism and waits for all of
   * them, even after a failure (per-block completion, docs/ARCHITECTURE.md §7.5). Throws the
   * first failure's code with every failed byte range in `details`.
   */
  private async allChunks<C extends { offsetBytes: number; data?: Buffer; lengthBytes?: number }>(chunks: C[], fn: (c: C) => Promise<void>, what: string): Promise<void> {
    const failures: Array<{ chunk: C; error: unknown }> = [];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < chunks.length) {
        const chunk = chunks[next++]!;
        try {
          await fn(chunk);
        } catch (error) {
          failures.push({ chunk, error });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(CHUNKS_IN_FLIGHT, chunks.length) }, worker));
    if (failures.length === 0) return;
    failures.sort((a, b) => a.chunk.offsetBytes - b.chunk.offsetBytes);
    const first = failures[0]!.error;
    const failedRanges = failures.map((f) => ({ offsetBytes: f.chunk.offsetBytes, lengthBytes: f.chunk.data?.length ?? f.chunk.lengthBytes ?? 0 }));
    if (!(first instanceof CowvolError)) throw first;
    const ranges = failedRanges.map((r) => `${r.offsetBytes}+${r.lengthBytes}`).join(', ');
    throw new CowvolError(first.code, `${what} failed for byte ranges ${ranges} (the other ranges completed): ${first.message}`, {
      cause: first,
      details: { ...first.details, failedRanges },
    });
  }

  private liveSnapshots(): SnapshotRecord[] {
    return this.catalog.filter((r) => r.state === 'live');
  }

  private findLive(name: string): SnapshotRecord | undefined {
    return this.catalog.find((r) => r.state === 'live' && r.name === name);
  }

  /** The active snapshot: the newest live one, which receives COW copies. */
  private active(): SnapshotRecord | undefined {
    return this.cowChain()?.[0];
  }

  private describe(rec: SnapshotRecord): SnapshotInfo {
    return {
      id: rec.id,
      name: rec.name,
      createdAt: rec.createdAt,
      ownedBlocks: rec.ownedBlocks,
      ownedBytes: rec.ownedBlocks * this.blockSizeBytes,
      active: rec === this.active(),
      labels: { ...rec.labels },
      held: rec.held === true,
      suspect: rec.suspect === true,
      ...(rec.origin ? { origin: { ...rec.origin } } : {}),
    };
  }

  /** The live view of a snapshot's map, loaded once (concurrent callers share the load). */
  private async mapOf(id: number): Promise<SnapshotMap> {
    const map = this.maps.get(id);
    if (map) return map;
    let load = this.mapLoads.get(id);
    if (!load) {
      // Settled either way, the load is forgotten: a failed load (an I/O
      // error) is retried by the next caller instead of failing it forever.
      load = SnapshotMap.load(this.db, id).then(
        (m) => {
          this.maps.set(id, m);
          this.mapLoads.delete(id);
          return m;
        },
        (err: unknown) => {
          this.mapLoads.delete(id);
          throw err;
        },
      );
      this.mapLoads.set(id, load);
    }
    return load;
  }

  /** The maps of `chain`, in its order; no promise on the hot path once every map is loaded. */
  private async chainMaps(chain: SnapshotRecord[]): Promise<SnapshotMap[]> {
    const out: SnapshotMap[] = [];
    for (const r of chain) out.push(this.maps.get(r.id) ?? (await this.mapOf(r.id)));
    return out;
  }

  /**
   * Starts a journal handle. Lock order (docs/ARCHITECTURE.md §7.3): a handle is started
   * before any block lock is taken, never while one is held — the
   * assertion catches a violation.
   */
  private startHandle(credits: number): Promise<Handle> {
    if (this.readOnly) return Promise.reject(new VolumeReadOnlyError(this.layout.volumePath, 'change its metadata'));
    const held = this.heldBlockLocks?.getStore();
    assert(held === undefined || held.blocks === 0, `lock order: journal handle started while holding ${held?.blocks} block locks`);
    return this.journal.start(credits);
  }

  /** Commits records as one handle; resolves once durable and applied to LevelDB. Fail-stop on error. */
  private async commitRecords(records: MetaRecord[], handle?: Handle): Promise<void> {
    if (records.length === 0) {
      handle?.abandon();
      return;
    }
    const h = handle ?? (await this.startHandle(records.length));
    for (const r of records) h.log(r);
    await this.commitHandle(h);
  }

  /**
   * Commits a handle; fail-stop when the journal aborted. A transaction
   * durable in the journal whose apply to LevelDB failed has happened (the
   * next open replays it): that resolves, with a warning, and the volume
   * stops taking work (docs/ARCHITECTURE.md, "Outcomes of a failed command").
   */
  private async commitHandle(h: Handle): Promise<void> {
    try {
      await h.commit();
    } catch (err) {
      if (err instanceof JournalApplyError) {
        this.failure = err;
        this.notices.push(`${err.message}`);
        return;
      }
      // If the journal aborted, the commit may or may not be durable: the
      // in-memory view can no longer be trusted. Refuse further work until a
      // reopen recovers from the journal (like jbd2's abort). A commit that
      // failed before touching the log (its ordered data could not be
      // synced) changed nothing: the caller cancels and the volume goes on.
      if (this.journal.aborted) this.failure = err;
      throw err;
    }
  }

  /** Checkpoints the journal: images home, LevelDB durable (beforeTailMove), tail moved. Fail-stop on error. */
  private async checkpoint(): Promise<void> {
    if (this.readOnly) return; // everything committed is in the private copy; nothing to write home
    try {
      await this.journal.checkpoint();
    } catch (err) {
      this.failure = err;
      throw err;
    }
  }

  /** Live data: the newest journaled image of a block if not yet checkpointed (journal mode), else the volume file. */
  private readLive(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.readHome(TARGET_VOLUME, this.volume, offsetBytes, lengthBytes);
  }

  /**
   * What a reader of the live volume sees: the volume file overlaid with the
   * write-back stage (acknowledged overwrites still held back). The entries
   * are picked before the file is read; an entry landing in between holds
   * the same bytes the file then has.
   */
  private async readCurrent(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    if (lengthBytes === 0) return Buffer.alloc(0);
    const bs = this.blockSizeBytes;
    const entries = this.writeBack.overlapping(Math.floor(offsetBytes / bs), Math.floor((offsetBytes + lengthBytes - 1) / bs));
    const data = await this.readLive(offsetBytes, lengthBytes);
    WriteBackStage.overlay(entries, offsetBytes, data);
    return data;
  }

  /**
   * Bytes of a journal target's home file, overlaid in journal mode with the
   * journal's image cache (see `readHomeInto`).
   */
  private async readHome(target: number, device: BlockDevice, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    if (this.meta.sb.dataMode !== 'journal' || lengthBytes === 0) return device.read(offsetBytes, lengthBytes);
    const data = Buffer.allocUnsafe(lengthBytes);
    await this.readHomeInto(target, device, offsetBytes, data);
    return data;
  }

  /**
   * `into.length` bytes of a journal target's home file at `offsetBytes`,
   * overlaid in journal mode with the journal's image cache. The cache is
   * looked at first, then home is read: an image checkpointed in between is
   * home already, so neither order of events reads stale data.
   */
  private readHomeInto(target: number, device: Pick<BlockDevice, 'readInto'>, offsetBytes: number, into: Buffer): Promise<void> {
    const lengthBytes = into.length;
    if (this.meta.sb.dataMode !== 'journal' || lengthBytes === 0) return device.readInto(offsetBytes, into);
    const bs = this.blockSizeBytes;
    const first = Math.floor(offsetBytes / bs);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / bs);
    const images: Array<[number, Buffer]> = [];
    for (let b = first; b <= last; b++) {
      const img = this.journal.readImage(target, b);
      if (img) images.push([b, img]);
    }
    return device.readInto(offsetBytes, into).then(() => {
      for (const [b, img] of images) {
        const from = Math.max(offsetBytes, b * bs);
        const to = Math.min(offsetBytes + lengthBytes, (b + 1) * bs);
        img.copy(into, from - offsetBytes, from - b * bs, to - b * bs);
      }
    });
  }

  /**
   * Largest piece one write is cut into: IO_CHUNK_BYTES, or less when the
   * journal is small — a piece spans at most pieceBytes/blockSize + 1 blocks,
   * and its COW needs two credits per block in journal mode (copy image +
   * map record). In journal mode, a write of up to this many bytes is atomic.
   */
  private pieceBytes(): number {
    const bs = this.blockSizeBytes;
    const blocks = Math.min(Math.floor(IO_CHUNK_BYTES / bs), Math.floor(this.journal.maxHandleCredits / 2) - 1);
    assert(blocks >= 1, 'journal too small for one block per handle');
    return blocks * bs;
  }

  /** Blocks handed over or freed per delete transaction: bounded by DELETE_BATCH_BLOCKS and by what one handle may carry. */
  private deleteBatchBlocks(): number {
    return Math.max(1, Math.min(DELETE_BATCH_BLOCKS, Math.floor(this.journal.maxHandleCredits / 2)));
  }

  /** Locks blocks [first, last] in ascending order (journal-mode read-modify-write); resolves with the unlock. */
  private async lockBlocks(first: number, last: number): Promise<() => void> {
    const mine: Array<() => void> = [];
    for (let b = first; b <= last; b++) {
      for (let held = this.blockLocks.get(b); held; held = this.blockLocks.get(b)) await held;
      let release!: () => void;
      this.blockLocks.set(b, new Promise<void>((r) => (release = r)));
      mine.push(() => {
        this.blockLocks.delete(b);
        release();
      });
    }
    return () => {
      for (const unlock of mine) unlock();
    };
  }

  private async writeChunk(offsetBytes: number, data: Buffer): Promise<void> {
    const bs = this.blockSizeBytes;
    const first = Math.floor(offsetBytes / bs);
    const last = Math.floor((offsetBytes + data.length - 1) / bs);
    if (this.meta.sb.dataMode === 'journal') {
      const tickets = await this.cowRange(first, last);
      await this.awaitCows(tickets);
      await this.writeJournaled(offsetBytes, data, first, last);
      return;
    }
    const tickets = await this.cowRange(first, last);
    if (tickets.length > 0 && this.writeBack.maxBytes === 0) {
      // Write-through: the overwrite waits for the commit, errors come back
      // here. The stage is never used, so there is nothing to be admitted past.
      await this.awaitCows(tickets);
      await this.volume.write(offsetBytes, data);
      return;
    }
    if (tickets.length === 0) {
      // No COW needed: straight to the volume file (the file system does the
      // read-modify-write of partial blocks; a COW copies whole blocks) —
      // once an earlier acknowledged overwrite of these blocks still in the
      // stage has landed, so overwrites reach the volume in call order.
      // Admission starts the write in the same step as its overlap check.
      await this.writeBack.admit(first, last, 0, () => this.volume.write(offsetBytes, data));
      return;
    }
    // data=ordered with a COW in flight: the overwrite may reach the volume
    // only once the mapping is committed (guarantee 3). Hold it in the
    // write-back stage and return; the commit overlaps the next writes.
    // Admission is atomic with the overlap check: two writes in flight that
    // share a block never both hold an entry for it (ARCHITECTURE
    // "Write-back", admission).
    let added = false;
    try {
      const committed = Promise.all(tickets.map((t) => t.published)).then(() => undefined);
      await this.writeBack.admit(first, last, data.length, () => {
        this.writeBack.add(
          offsetBytes,
          Buffer.from(data), // the stage keeps the bytes past this call
          committed,
          (entry) => this.volume.write(entry.offsetBytes, entry.data),
          () => {
            // The pending markers end only after the overwrite landed: a writer
            // or snapshot reader waiting on them then sees the copy published
            // and the live block final.
            for (const t of tickets) t.end();
          },
        );
        added = true;
      });
    } finally {
      // Not admitted (a violated invariant): the markers still end, once
      // their commits settle, so no waiter and no freeze hangs on them.
      if (!added) for (const t of tickets) void t.published.catch(() => undefined).finally(() => t.end());
    }
  }

  /** Waits for COW tickets to commit and publish, then ends their pending markers (journal mode: no write-back). */
  private async awaitCows(tickets: CowTicket[]): Promise<void> {
    try {
      await Promise.all(tickets.map((t) => t.published));
    } finally {
      for (const t of tickets) t.end();
    }
  }

  /**
   * Journal mode: the chunk's blocks become full images (partial edges
   * read-modify-write, under block locks so two writers of one block cannot
   * lose each other's bytes) logged in one handle — atomic across a crash —
   * and committed before returning. The image reaches the volume file at
   * checkpoint; reads see it through the journal's image cache meanwhile.
   */
  private async writeJournaled(offsetBytes: number, data: Buffer, first: number, last: number): Promise<void> {
    const bs = this.blockSizeBytes;
    const count = last - first + 1;
    const handle = await this.startHandle(count); // lock order: handle (log space) before block locks
    const unlock = await this.lockBlocks(first, last);
    try {
      await this.withBlockLocks(count, async () => {
        const start = first * bs;
        const full = Buffer.alloc(count * bs);
        if (offsetBytes % bs !== 0) (await this.readLive(start, bs)).copy(full, 0);
        if ((offsetBytes + data.length) % bs !== 0 && (last !== first || offsetBytes % bs === 0)) (await this.readLive(last * bs, bs)).copy(full, (count - 1) * bs);
        data.copy(full, offsetBytes - start);
        for (let i = 0; i < count; i++) handle.logImage(TARGET_VOLUME, first + i, full.subarray(i * bs, (i + 1) * bs));
        await this.commitHandle(handle);
      });
    } catch (err) {
      handle.abandon();
      throw err;
    } finally {
      unlock();
    }
  }

  /** Runs `fn` marked as holding `blocks` block locks (for the lock-order assertion). */
  private withBlockLocks<T>(blocks: number, fn: () => Promise<T>): Promise<T> {
    return this.heldBlockLocks ? this.heldBlockLocks.run({ blocks }, fn) : fn();
  }

  /**
   * Makes sure every block in [first, last] is copied, or being copied by
   * this task, into the active snapshot (pending-COW protocol). Blocks
   * nobody is copying are claimed by this task (it is their COWing task:
   * copied to the store, mapping handed to the journal); blocks another task
   * is copying are waited for; then everything is re-checked, because a
   * cancelled COW leaves its blocks uncopied and someone must retry.
   *
   * Resolves with one ticket per COW batch this task started: each ticket's
   * `published` settles when the mapping is committed and published, and
   * its `end()` must be called afterwards (it ends the pending markers).
   * On failure, tickets already started end by themselves once settled.
   */
  private async cowRange(first: number, last: number): Promise<CowTicket[]> {
    const tickets: CowTicket[] = [];
    const claimed = new Set<number>();
    try {
      for (;;) {
        const chain = this.cowChain();
        if (!chain) return tickets;
        const active = chain[0]!;
        const maps = await this.chainMaps(chain);
        const map = maps[0]!;
        const isCopied = (b: number): boolean => {
          for (const m of maps) if (m.has(b)) return true;
          return false;
        };
        const mine: number[] = [];
        const waits: Array<Promise<void>> = [];
        for (let b = first; b <= last; b++) {
          if (isCopied(b) || claimed.has(b)) continue;
          const p = this.pending.get(b);
          if (p) waits.push(p.done);
          else mine.push(b);
        }
        if (mine.length === 0 && waits.length === 0) return tickets;
        if (mine.length > 0) {
          const ticket = await this.cowBlocks(active, map, mine, isCopied);
          if (ticket) {
            tickets.push(ticket);
            for (const b of ticket.blocks) claimed.add(b);
          }
        }
        if (waits.length > 0) {
          // Waiting while holding claims cannot deadlock: a claim ends when
          // its commit settles and its overwrite lands, never on a waiter.
          const started = performance.now();
          this.stats.pendingWaits += waits.length;
          await Promise.all(waits);
          this.stats.maxPendingWaitMs = Math.max(this.stats.maxPendingWaitMs, performance.now() - started);
        }
      }
    } catch (err) {
      for (const t of tickets) void t.published.catch(() => undefined).finally(() => t.end());
      throw err;
    }
  }

  /**
   * The COW chain: the active snapshot (the newest *live* one, which
   * receives copies) followed by any newer snapshot being deleted. A block
   * one of those deleting snapshots holds needs no copy: its copy is the
   * active snapshot's view of the block and is handed over to it. So a
   * delete of the newest snapshot terminates under write traffic (nothing
   * new is copied into it) and stays correct.
   */
  private cowChain(): SnapshotRecord[] | undefined {
    let i = this.catalog.length - 1;
    while (i >= 0 && this.catalog[i]!.state !== 'live') i--;
    return i < 0 ? undefined : this.catalog.slice(i);
  }

  /**
   * This task is the COWing task for `blocks`: claims them (pending
   * markers), reserves store blocks, copies the old content to the store
   * and logs the mappings in one handle, whose commit is requested — or
   * cancels on failure. Returns undefined when another task got there
   * first. The returned ticket's `published` settles once the commit is
   * durable (the journal syncs the store first: ordered data) and the
   * mappings are published in memory (guarantee 2); a failed commit cancels
   * the reservation. The caller calls `end()` once its overwrite landed.
   */
  private async cowBlocks(active: SnapshotRecord, map: SnapshotMap, candidates: number[], isCopied: (b: number) => boolean): Promise<CowTicket | undefined> {
    const journaled = this.meta.sb.dataMode === 'journal';
    // Lock order: the handle (log space, may wait for a checkpoint) before any block lock.
    const handle = await this.startHandle(journaled ? 2 * candidates.length : candidates.length);
    // Re-check after the wait: another task may have claimed or copied some blocks meanwhile.
    const blocks = candidates.filter((b) => !isCopied(b) && !this.pending.has(b));
    if (blocks.length === 0) {
      handle.abandon();
      return undefined;
    }
    const markers: PendingCow[] = [];
    for (const b of blocks) {
      const marker = pendingCow();
      this.pending.set(b, marker);
      markers.push(marker);
    }
    let ended = false;
    const end = (): void => {
      assert(!ended, 'COW ticket ended twice');
      ended = true;
      for (let k = 0; k < blocks.length; k++) {
        this.pending.delete(blocks[k]!);
        markers[k]!.end();
      }
    };
    let extents: Extent[] = [];
    const cancel = (): void => {
      // The reservation was never committed; give it back. Waiters retry.
      for (const e of extents) this.allocator.free(e);
      extents = [];
      this.stats.cancelledCows += blocks.length;
    };
    const storeBlocks: number[] = [];
    const crcs: number[] = new Array(blocks.length);
    try {
      await this.withBlockLocks(blocks.length, async () => {
        const bs = this.blockSizeBytes;
        extents = this.allocator.allocate(blocks.length);
        for (const e of extents) for (let i = 0; i < e.lengthBlocks; i++) storeBlocks.push(e.startBlock + i);
        assert(storeBlocks.length === blocks.length, 'allocator returned the wrong number of blocks');
        // One pass over the runs consecutive both in the volume and in the
        // store: each run is copied with one read and one write, and mapped
        // by one `mapx` record (a lone block: one `map`). A run is bounded so
        // its record fits one journal block (a sequential first write: about
        // one run per piece).
        const maxRun = maxMapRunBlocks(bs);
        for (let i = 0; i < blocks.length; ) {
          let j = i + 1;
          while (j < blocks.length && j - i < maxRun && blocks[j] === blocks[j - 1]! + 1 && storeBlocks[j] === storeBlocks[j - 1]! + 1) j++;
          const data = await this.readLive(blocks[i]! * bs, (j - i) * bs);
          assert(data.length === (j - i) * bs, 'COW copy length');
          for (let k = i; k < j; k++) crcs[k] = storeBlockCrc({ snapshotId: active.id, volumeBlock: blocks[k]!, storeBlock: storeBlocks[k]! }, data.subarray((k - i) * bs, (k - i + 1) * bs));
          if (journaled) {
            // The copy travels in the same transaction as its mapping: atomic, no separate store sync.
            for (let k = i; k < j; k++) handle.logImage(TARGET_STORE, storeBlocks[k]! + 1, data.subarray((k - i) * bs, (k - i + 1) * bs));
          } else {
            await this.store.write(storeBlocks[i]!, data);
          }
          if (j - i === 1) handle.log({ o: 'map', id: active.id, b: blocks[i]!, p: storeBlocks[i]!, crc: crcs[i]! } satisfies MetaRecord);
          else {
            const run = Buffer.allocUnsafe(4 * (j - i));
            for (let k = i; k < j; k++) run.writeUInt32LE(crcs[k]!, 4 * (k - i));
            handle.log({ o: 'mapx', id: active.id, b: blocks[i]!, p: storeBlocks[i]!, crcs: run } satisfies MetaRecord);
          }
          i = j;
        }
        // Ordered data: the journal syncs the store before it writes the commit
        // block (one sync for every COW in the same group commit).
        if (!journaled) handle.orderedData(this.store.device);
      });
    } catch (err) {
      handle.abandon();
      cancel();
      end();
      throw err;
    }
    const published = this.commitHandle(handle).then(
      () => {
        // Published only now, after the data is durable and the mapping committed (guarantee 2).
        for (let k = 0; k < blocks.length; k++) map.set(blocks[k]!, storeBlocks[k]!, crcs[k]!);
        active.ownedBlocks += blocks.length;
        this.stats.cows += blocks.length;
        this.stats.cowBatches += 1;
      },
      (err: unknown) => {
        cancel();
        throw err;
      },
    );
    // Nobody may be left with an unobserved rejection; callers await `published` themselves.
    published.catch(() => undefined);
    return { blocks, published, end };
  }

  /**
   * Read-through with the race closed: resolve each block's source in the
   * chain (read-through.ts: each map walked once over the range), wait for a
   * pending COW of any block that would come from live and resolve again,
   * read (one live read per span, store runs concurrently, straight into the
   * result; every store block CRC-checked), then re-check the blocks that
   * came from the live volume — if a COW published one meanwhile, the live
   * read may show a newer write, so the copy is read instead. The re-check
   * is skipped when no map of the chain changed during the read.
   */
  private async readThrough(rec: SnapshotRecord, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    if (lengthBytes === 0) return Buffer.alloc(0);
    const bs = this.blockSizeBytes;
    const first = Math.floor(offsetBytes / bs);
    const count = Math.floor((offsetBytes + lengthBytes - 1) / bs) - first + 1;
    const found = this.chainOf(rec);
    const chain = Array.isArray(found) ? found : await found;
    const chainVersion = (): number => chain.reduce((n, m) => n + m.version, 0);
    let version = chainVersion();
    let sources = BlockSources.resolve(chain, first, count, bs);
    // A snapshot reader that meets a pending copy waits for it, then reads the copy (docs/ARCHITECTURE.md §7.4).
    if (this.pending.size > 0 && sources.liveBlocks > 0) {
      const waits: Array<Promise<void>> = [];
      for (let i = 0; i < count; i++) {
        const p = sources.isLive(i) ? this.pending.get(first + i) : undefined;
        if (p) waits.push(p.done);
      }
      if (waits.length > 0) {
        this.stats.pendingWaits += waits.length;
        await Promise.all(waits);
        version = chainVersion();
        sources = BlockSources.resolve(chain, first, count, bs);
      }
    }
    const out = Buffer.allocUnsafe(count * bs); // the read plan covers every byte (asserted there)
    await this.snapshotReader.read(rec.name, sources, out);
    // Re-check: blocks read from live that a COW published in the meantime.
    if (sources.liveBlocks > 0 && chainVersion() !== version) {
      const now = BlockSources.resolve(chain, first, count, bs);
      for (let i = 0; i < count; i++) {
        if (!sources.isLive(i)) {
          assert(now.storeBlocks[i] === sources.storeBlocks[i], `block ${first + i} of snapshot ${rec.name} changed its copy during a read`);
          continue;
        }
        if (now.isLive(i)) continue;
        this.stats.readRechecks += 1;
        await this.snapshotReader.read(rec.name, BlockSources.ofStoreBlock(now, i), out.subarray(i * bs, (i + 1) * bs));
      }
    }
    const start = offsetBytes - first * bs;
    return out.subarray(start, start + lengthBytes);
  }

  /** Counters of the snapshot reads' store cache (a copy). */
  get storeCacheStats(): StoreCacheStats {
    return { ...this.store.cache.stats };
  }

  /**
   * The read-through chain of `rec`: its map, then every newer snapshot's
   * (deleting ones too), oldest first. Synchronous when every map is loaded
   * (the common case); else loads the missing ones, `MAP_LOADS_IN_FLIGHT` at
   * a time. Loaded maps stay loaded while the gate is shared (only a frozen
   * delete drops one).
   */
  private chainOf(rec: SnapshotRecord): SnapshotMap[] | Promise<SnapshotMap[]> {
    const chain: SnapshotMap[] = [];
    const missing: number[] = [];
    for (const r of this.catalog) {
      if (r.id < rec.id) continue;
      const map = this.maps.get(r.id);
      if (map) chain.push(map);
      else missing.push(r.id);
    }
    if (missing.length === 0) return chain;
    let next = 0;
    const loader = async (): Promise<void> => {
      while (next < missing.length) await this.mapOf(missing[next++]!);
    };
    return Promise.all(Array.from({ length: Math.min(MAP_LOADS_IN_FLIGHT, missing.length) }, loader)).then(() => this.chainOf(rec));
  }

  /**
   * Finishes the deletes of `victims`, marked `deleting` by a durable
   * commit: the delete happened at that commit (it completes at the next
   * open if not now). So a failure after it (a full disk, an I/O error) is
   * no failure of the delete: the rest is left to the next writable open,
   * the result says `unfinished` and counts what was done, and a warning
   * says so (docs/ARCHITECTURE.md, "Outcomes of a failed command").
   */
  private async finishMarked(victims: SnapshotRecord[], onBatch?: (blocks: number) => void): Promise<DeleteResult[]> {
    const results: DeleteResult[] = victims.map((r) => ({ name: r.name, freedBlocks: 0, handedOverBlocks: 0 }));
    for (const [i, rec] of victims.entries()) {
      try {
        await this.finishDelete(rec, onBatch, results[i]);
      } catch (err) {
        if (err instanceof AssertionFailedError) throw err;
        for (const r of results.slice(i)) r.unfinished = true;
        this.notices.push(
          `the delete of ${results.slice(i).map((r) => r.name).join(', ')} is committed but its hand-over stopped (${(err as Error).message}); the next writable open of the volume finishes it`,
        );
        break;
      }
    }
    return results;
  }

  /** Hands over or frees every block of a snapshot in `deleting` state, batch by batch, each under a freeze; then drops it. Counts into `result` as it goes. */
  private async finishDelete(rec: SnapshotRecord, onBatch?: (blocks: number) => void, result: DeleteResult = { name: rec.name, freedBlocks: 0, handedOverBlocks: 0 }): Promise<DeleteResult> {
    assert(rec.state === 'deleting', `finishDelete of snapshot ${rec.name} in state ${rec.state}`);
    for (;;) {
      const done = await this.frozen(async () => {
        const index = this.catalog.indexOf(rec);
        assert(index >= 0, 'snapshot being deleted is not in the catalog');
        const older = index > 0 ? this.catalog[index - 1] : undefined;
        assert(older === undefined || older.state === 'live', 'two deletes at once');
        const map = await this.mapOf(rec.id);
        if (map.size === 0) {
          assert(rec.ownedBlocks === 0, `snapshot ${rec.name} still counts ${rec.ownedBlocks} owned blocks after hand-over`);
          await this.commitRecords([{ o: 'drop', id: rec.id }]);
          this.catalog.splice(index, 1);
          this.maps.delete(rec.id);
          return true;
        }
        const olderMap = older ? await this.mapOf(older.id) : undefined;
        const batch = map.take(this.deleteBatchBlocks());
        const records: MetaRecord[] = [];
        const moved: MapEntry[] = [];
        const freed: number[] = [];
        for (const [block, storeBlock, crc] of batch) {
          if (older && olderMap && !olderMap.has(block)) {
            // The older snapshot read through to this copy: it becomes its own, its CRC rebound without reading it (docs/FORMAT.md §4.2).
            const handed = rebindStoreCrc(crc, { snapshotId: rec.id, volumeBlock: block, storeBlock }, { snapshotId: older.id, volumeBlock: block, storeBlock }, this.blockSizeBytes);
            records.push({ o: 'move', from: rec.id, to: older.id, b: block, p: storeBlock, crc: handed });
            moved.push([block, storeBlock, handed]);
          } else {
            records.push({ o: 'unmap', id: rec.id, b: block, p: storeBlock });
            freed.push(storeBlock);
          }
        }
        if (this.meta.sb.dataMode === 'journal' && freed.length > 0) {
          // A freed store block's journaled copy must never be replayed over a later reuse (jbd2 revoke).
          const handle = await this.startHandle(records.length + freed.length);
          for (const p of freed) handle.revoke(TARGET_STORE, p + 1);
          await this.commitRecords(records, handle);
        } else {
          await this.commitRecords(records);
        }
        for (const [block] of batch) map.delete(block);
        for (const [block, storeBlock, crc] of moved) olderMap!.set(block, storeBlock, crc);
        for (const extent of coalesce(freed)) this.allocator.free(extent);
        rec.ownedBlocks -= batch.length;
        if (older) older.ownedBlocks += moved.length;
        result.freedBlocks += freed.length;
        result.handedOverBlocks += moved.length;
        onBatch?.(batch.length);
        return false;
      });
      if (done) break;
    }
    return result;
  }
}

/** Counters kept by a Volume (stress summaries). */
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
}

/** A COW batch started by one task (see `cowRange`). */
interface CowTicket {
  /** The volume blocks it claimed. */
  blocks: number[];
  /** Settles once the mappings are committed and published; rejects when the COW was cancelled. */
  published: Promise<void>;
  /** Ends the pending markers (call once, after `published` settled and the overwrite landed). */
  end: () => void;
}

/** A pending COW: its waiters await `done`, which settles (never rejects) when the COW commits or is cancelled. */
interface PendingCow {
  done: Promise<void>;
  end: () => void;
}

function pendingCow(): PendingCow {
  let end!: () => void;
  const done = new Promise<void>((resolve) => {
    end = resolve;
  });
  return { done, end };
}

/** The optional SnapshotRecord fields a new snapshot starts with. */
function snapshotExtras(options: CreateSnapshotOptions): Partial<SnapshotRecord> {
  return {
    ...(options.labels && Object.keys(options.labels).length > 0 ? { labels: { ...options.labels } } : {}),
    ...(options.origin ? { origin: { ...options.origin } } : {}),
  };
}

/** The journal records that give a new snapshot those fields (same transaction as its creation). */
function snapshotExtraRecords(id: number, options: CreateSnapshotOptions): MetaRecord[] {
  const records: MetaRecord[] = [];
  if (options.labels && Object.keys(options.labels).length > 0) records.push({ o: 'labels', id, labels: { ...options.labels } });
  if (options.origin) records.push({ o: 'origin', id, origin: { ...options.origin } });
  if (options.clearImport) records.push({ o: 'import', state: null });
  return records;
}

/** Chunks of one request processed in parallel. */
const CHUNKS_IN_FLIGHT = 4;
/** Snapshot maps one snapshot read loads concurrently (each is one LevelDB range scan). */
const MAP_LOADS_IN_FLIGHT = 4;

/** Validates a snapshot name. @throws INVALID_SNAPSHOT_NAME */
export function validateSnapshotName(name: string): void {
  if (typeof name !== 'string' || !SNAPSHOT_NAME_PATTERN.test(name)) throw new InvalidSnapshotNameError(String(name));
}

/** Sorted, merged extents from a list of block numbers. */
function coalesce(blocks: number[]): Extent[] {
  const sorted = [...blocks].sort((a, b) => a - b);
  const out: Extent[] = [];
  for (const b of sorted) {
    const lastExtent = out.at(-1);
    if (lastExtent && lastExtent.startBlock + lastExtent.lengthBlocks === b) lastExtent.lengthBlocks += 1;
    else out.push({ startBlock: b, lengthBlocks: 1 });
  }
  return out;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** fsync a directory so the names created in it are durable. */
async function syncDirectory(path: string): Promise<void> {
  const handle = await openFile(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Makes the sidecar folder of a new volume and takes the create lock: the
 * owner lock of the folder's own device and inode, held for the whole
 * create, so a concurrent create or reclaim of this path never touches a
 * create in progress (create-intent.ts). An adopted file's sidecar gets the
 * file's modes at once; a new file's is narrowed once the file exists.
 * @throws VOLUME_EXISTS when the folder appeared meanwhile; VOLUME_BUSY, IO_ERROR
 */
async function makeLockedSidecar(layout: VolumeLayout, path: string, adoptedMode: number | undefined): Promise<OwnerLock> {
  try {
    // Never group- or other-writable, even for a moment; narrowed to the new file's modes once it exists.
    if (adoptedMode === undefined) await mkdir(layout.sidecarPath, { mode: 0o755 });
    else await makeSidecarFolder(layout.sidecarPath, sidecarModes(adoptedMode));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new VolumeExistsError(`${layout.sidecarPath} appeared while creating`, path);
    throw err;
  }
  try {
    return await OwnerLock.acquire(layout.sidecarPath, await fileIdentity(layout.sidecarPath));
  } catch (err) {
    await rm(layout.sidecarPath, { recursive: true, force: true });
    throw err;
  }
}
