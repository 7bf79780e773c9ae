import { randomBytes } from 'node:crypto';
import { mkdir, open as openFile, rm, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Mutex } from 'async-mutex';
import {
  CowvolError,
  Journal,
  assert,
  crc32c,
  fileDeviceOpener,
  type BlockDevice,
  type DeviceOpener,
  type RecoveryReport,
} from '@cowvol/journal';
import {
  CorruptMetadataError,
  InvalidArgumentError,
  InvalidSnapshotNameError,
  NotAVolumeError,
  OutOfRangeError,
  SnapshotExistsError,
  SnapshotLimitError,
  SnapshotNotFoundError,
  StoreCorruptError,
  UnsupportedVersionError,
  VolumeClosedError,
  VolumeExistsError,
  VolumeNotFoundError,
  VolumeSizeMismatchError,
} from './errors.js';
import {
  CHECKPOINT_THRESHOLD_BYTES,
  DEFAULT_BLOCK_SIZE_BYTES,
  DELETE_BATCH_BLOCKS,
  FORMAT_VERSION,
  IO_CHUNK_BYTES,
  MAX_BLOCK_SIZE_BYTES,
  MAX_READ_BYTES,
  MAX_SNAPSHOTS,
  MAX_VOLUME_BYTES,
  MIN_BLOCK_SIZE_BYTES,
  SNAPSHOT_NAME_PATTERN,
  volumeLayout,
  type VolumeLayout,
} from './layout.js';
import {
  MetadataDb,
  SCHEMA_VERSION,
  asMetaOp,
  decodeValue,
  delOp,
  keys,
  parseHexSuffix,
  putOp,
  type MetaOp,
  type SnapshotRecord,
  type VolumeRecord,
} from './metadata.js';
import { ExtentAllocator, type Extent } from './allocator.js';
import { SnapshotMap, type MapEntry } from './snapshot-map.js';
import { SnapshotStore } from './store.js';
import { OwnerLock } from './owner-lock.js';

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
}

/** Options for {@link Volume.open}. */
export interface OpenVolumeOptions {
  opener?: DeviceOpener;
  /** Owner lock is stale after this long without refresh (default 10 s). */
  lockStaleMs?: number;
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
}

export interface VolumeInfo {
  path: string;
  formatVersion: number;
  uuid: string;
  sizeBytes: number;
  blockSizeBytes: number;
  dataMode: 'ordered';
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
  journal: { lastSequence: number; uncheckpointedBytes: number };
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
}

/** One block's source when reading a snapshot: a store block (with its CRC32C) or the live volume. */
type BlockSource = { storeBlock: number; crc: number } | null;

/**
 * A volume file with Next3-style snapshots (BRIEF §3, seed 004).
 *
 * The live volume is the file itself (block i at byte i × blockSize); COW
 * copies go to the snapshot store in the sidecar; metadata lives in LevelDB
 * and every metadata change is first committed to the journal.
 *
 * Ordering (BRIEF §4): on the first write of block i after the active
 * snapshot was taken, the old content is copied to a newly allocated store
 * block, the store is fsynced, then the mapping (with the copy's CRC32C) is
 * committed to the journal (fsynced), and only then is the live block
 * overwritten. So a mapping is never published before its data (guarantee 2)
 * and the copy is durable before the overwrite can reach the disk
 * (guarantee 3).
 *
 * Concurrency (first version): one async mutex serializes every operation of
 * one Volume object; one process owns the volume (VOLUME_BUSY otherwise).
 *
 * Errors (codes): INVALID_ARGUMENT, INVALID_SNAPSHOT_NAME, OUT_OF_RANGE,
 * SNAPSHOT_NOT_FOUND, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, VOLUME_NOT_FOUND,
 * VOLUME_EXISTS, VOLUME_BUSY, NOT_A_VOLUME, CORRUPT_METADATA, STORE_CORRUPT,
 * UNSUPPORTED_VERSION, VOLUME_SIZE_MISMATCH, VOLUME_CLOSED, IO_ERROR,
 * NO_SPACE, JOURNAL_CORRUPT, JOURNAL_ABORTED.
 */
export class Volume {
  private readonly mutex = new Mutex();
  /** Loaded snapshot maps by snapshot id (loaded on first use). */
  private readonly maps = new Map<number, SnapshotMap>();
  private closed = false;
  /** Set when a commit failed: the in-memory state may be ahead of disk; reopen to recover. */
  private failure: unknown = undefined;

  private constructor(
    readonly layout: VolumeLayout,
    private sb: VolumeRecord,
    private readonly db: MetadataDb,
    private readonly volume: BlockDevice,
    private readonly store: SnapshotStore,
    private readonly journal: Journal,
    private readonly allocator: ExtentAllocator,
    /** Every snapshot, oldest first (ids ascending), including one being deleted. */
    private readonly catalog: SnapshotRecord[],
    private readonly lock: OwnerLock,
    private readonly recovery: RecoveryReport,
  ) {}

  get sizeBytes(): number {
    return this.sb.sizeBytes;
  }

  get blockSizeBytes(): number {
    return this.sb.blockSizeBytes;
  }

  // ---------------------------------------------------------------- create

  /**
   * Creates a volume: a new sparse raw file of `sizeBytes` (refuses to
   * overwrite anything), or with `adopt` an existing raw image; then its
   * sidecar (store, journal, LevelDB). Returns it opened.
   * @throws VOLUME_EXISTS, VOLUME_NOT_FOUND (adopt), INVALID_ARGUMENT, IO_ERROR, NO_SPACE
   */
  static async create(path: string, options: CreateVolumeOptions = {}): Promise<Volume> {
    const opener = options.opener ?? fileDeviceOpener;
    const blockSizeBytes = options.blockSizeBytes ?? DEFAULT_BLOCK_SIZE_BYTES;
    if (!Number.isInteger(blockSizeBytes) || blockSizeBytes < MIN_BLOCK_SIZE_BYTES || blockSizeBytes > MAX_BLOCK_SIZE_BYTES || (blockSizeBytes & (blockSizeBytes - 1)) !== 0) {
      throw new InvalidArgumentError(`block size must be a power of two from ${MIN_BLOCK_SIZE_BYTES} to ${MAX_BLOCK_SIZE_BYTES} bytes, got ${blockSizeBytes}`);
    }
    const layout = volumeLayout(path);
    if (await exists(layout.sidecarPath)) throw new VolumeExistsError(`${path} already has a cowvol sidecar (${layout.sidecarPath})`, path);

    let sizeBytes: number;
    let createdFile = false;
    if (options.adopt) {
      const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') throw new VolumeNotFoundError(path, { cause: err });
        throw err;
      });
      if (!st.isFile()) throw new InvalidArgumentError(`${path} is not a regular file`);
      sizeBytes = st.size;
      if (sizeBytes === 0) throw new InvalidArgumentError(`${path} is empty: nothing to adopt`);
      if (sizeBytes % blockSizeBytes !== 0) throw new InvalidArgumentError(`${path} is ${sizeBytes} bytes, not a multiple of the block size ${blockSizeBytes}; pass a smaller --block-size`);
    } else {
      sizeBytes = options.sizeBytes ?? 0;
      if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new InvalidArgumentError(`volume size must be a positive number of bytes, got ${sizeBytes}`);
      if (sizeBytes % blockSizeBytes !== 0) throw new InvalidArgumentError(`volume size ${sizeBytes} is not a multiple of the block size ${blockSizeBytes}`);
      if (await exists(path)) throw new VolumeExistsError(`${path} already exists; refusing to overwrite it (use --adopt to take it as the volume)`, path);
    }
    if (sizeBytes > MAX_VOLUME_BYTES) throw new InvalidArgumentError(`volume size ${sizeBytes} exceeds the maximum ${MAX_VOLUME_BYTES}`);

    try {
      if (!options.adopt) {
        const dev = await opener.open(path, { create: true });
        createdFile = true;
        await dev.truncate(sizeBytes);
        await dev.sync();
        await dev.close();
      }
      try {
        await mkdir(layout.sidecarPath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new VolumeExistsError(`${layout.sidecarPath} appeared while creating`, path);
        throw err;
      }
    } catch (err) {
      if (createdFile) await rm(path, { force: true });
      throw err;
    }

    try {
      const lock = await OwnerLock.acquire(layout);
      try {
        const uuid = randomBytes(16);
        const storeDev = await opener.open(layout.storePath, { create: true });
        await storeDev.write(0, SnapshotStore.header(uuid, blockSizeBytes));
        await storeDev.sync();
        await storeDev.close();
        const journalDev = await opener.open(layout.journalPath, { create: true });
        await Journal.format(journalDev, uuid);
        await journalDev.close();
        const db = await MetadataDb.open(layout.metaPath, true);
        const sb: VolumeRecord = {
          v: SCHEMA_VERSION,
          formatVersion: FORMAT_VERSION,
          uuid: uuid.toString('hex'),
          sizeBytes,
          blockSizeBytes,
          createdAt: new Date().toISOString(),
          nextSnapshotId: 1,
          dataMode: 'ordered',
        };
        // The volume record goes last: a sidecar without it is an incomplete create.
        await db.apply([putOp(keys.allocator, { v: SCHEMA_VERSION, highWaterBlocks: 0 }), putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence: 0 })]);
        await db.apply([putOp(keys.volume, sb)], true);
        await db.makeDurable();
        await db.close();
        await syncDirectory(layout.sidecarPath);
        await syncDirectory(dirname(resolve(layout.sidecarPath)));
      } finally {
        await lock.unlock();
      }
    } catch (err) {
      await rm(layout.sidecarPath, { recursive: true, force: true });
      if (createdFile) await rm(path, { force: true });
      throw err;
    }
    return Volume.open(path, { opener });
  }

  // ------------------------------------------------------------------ open

  /**
   * Opens a volume: takes the owner lock, validates every part against the
   * metadata, runs journal recovery (replaying committed metadata changes
   * into LevelDB), finishes an interrupted snapshot delete.
   * @throws VOLUME_NOT_FOUND, NOT_A_VOLUME, VOLUME_BUSY, CORRUPT_METADATA, UNSUPPORTED_VERSION, VOLUME_SIZE_MISMATCH, JOURNAL_CORRUPT, IO_ERROR
   */
  static async open(path: string, options: OpenVolumeOptions = {}): Promise<Volume> {
    const opener = options.opener ?? fileDeviceOpener;
    const layout = volumeLayout(path);
    const st = await stat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') throw new VolumeNotFoundError(path, { cause: err });
      throw err;
    });
    if (!st.isFile()) throw new NotAVolumeError(`${path} is not a regular file`);
    if (!(await exists(layout.sidecarPath))) {
      throw new NotAVolumeError(`${path} is not a cowvol volume (no ${layout.sidecarPath}); run \`cowvol create ${path} --adopt\` to make it one`);
    }
    const lock = await OwnerLock.acquire(layout, options.lockStaleMs === undefined ? {} : { staleMs: options.lockStaleMs });
    const opened: Array<{ close(): Promise<void> }> = [];
    try {
      let db: MetadataDb;
      try {
        db = await MetadataDb.open(layout.metaPath, false);
      } catch (err) {
        throw new NotAVolumeError(`${layout.metaPath} is not a readable cowvol metadata database`, { cause: err });
      }
      opened.push(db);
      const sbBytes = await db.get(keys.volume);
      if (!sbBytes) throw new NotAVolumeError(`${path}: sidecar is incomplete (no volume record); it was never fully created`);
      const sb = decodeValue.volume(keys.volume, sbBytes);
      if (sb.formatVersion > FORMAT_VERSION) throw new UnsupportedVersionError(`${path} has format version ${sb.formatVersion}; this cowvol reads up to ${FORMAT_VERSION}`);
      const uuid = Buffer.from(sb.uuid, 'hex');

      const volume = await opener.open(path, { create: false });
      opened.push(volume);
      const actual = await volume.sizeBytes();
      if (actual !== sb.sizeBytes) throw new VolumeSizeMismatchError(path, sb.sizeBytes, actual);

      const storeDev = await opener.open(layout.storePath, { create: false });
      opened.push(storeDev);
      const store = new SnapshotStore(storeDev, sb.blockSizeBytes);
      await store.verifyHeader(uuid);

      const journalDev = await opener.open(layout.journalPath, { create: false });
      const { journal, recovery } = await Journal.open(journalDev, {
        expectedUuid: uuid,
        replay: async (tx) => db.apply(tx.records.map(asMetaOp)),
      }).catch(async (err: unknown) => {
        await journalDev.close();
        throw err;
      });
      opened.push(journal);
      if (recovery.replayedTransactions > 0) {
        await db.apply([putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence: recovery.lastSequence })]);
        await db.makeDurable();
        await journal.checkpoint(recovery.lastSequence);
      }

      // Re-read the volume record: replay may have changed it.
      const sbNow = decodeValue.volume(keys.volume, (await db.get(keys.volume))!);
      const catalog: SnapshotRecord[] = [];
      for await (const [key, value] of db.scan(keys.snapshotPrefix, MAX_SNAPSHOTS + 1)) {
        const rec = decodeValue.snapshot(key, value);
        if (rec.id !== parseHexSuffix(key, keys.snapshotPrefix)) throw new CorruptMetadataError(`snapshot record ${key} has id ${rec.id}`);
        catalog.push(rec);
      }
      if (catalog.length > MAX_SNAPSHOTS) throw new CorruptMetadataError(`more than ${MAX_SNAPSHOTS} snapshot records`);
      const names = new Set<string>();
      for (const rec of catalog) {
        if (rec.state === 'live' && names.has(rec.name)) throw new CorruptMetadataError(`two snapshots named ${rec.name}`);
        names.add(rec.name);
        if (rec.id >= sbNow.nextSnapshotId) throw new CorruptMetadataError(`snapshot id ${rec.id} not below nextSnapshotId ${sbNow.nextSnapshotId}`);
      }
      const allocBytes = await db.get(keys.allocator);
      if (!allocBytes) throw new CorruptMetadataError('allocator record missing');
      const alloc = decodeValue.allocator(keys.allocator, allocBytes);
      const free: Extent[] = [];
      for await (const [key, value] of db.scan(keys.freePrefix)) {
        free.push({ startBlock: parseHexSuffix(key, keys.freePrefix), lengthBlocks: decodeValue.free(key, value).lengthBlocks });
      }
      let allocator: ExtentAllocator;
      try {
        allocator = new ExtentAllocator(alloc.highWaterBlocks, free);
      } catch (err) {
        throw new CorruptMetadataError(`allocator state is inconsistent: ${(err as Error).message}`, { cause: err });
      }

      const vol = new Volume(layout, sbNow, db, volume, store, journal, allocator, catalog, lock, recovery);
      // Finish a delete that a crash interrupted (each step was its own transaction).
      for (const rec of [...catalog]) if (rec.state === 'deleting') await vol.finishDelete(rec);
      return vol;
    } catch (err) {
      for (const part of opened.reverse()) await part.close().catch(() => undefined);
      await lock.unlock().catch(() => undefined);
      throw err;
    }
  }

  // ------------------------------------------------------------ live data

  /**
   * Writes `data` at `offsetBytes` of the live volume, COWing into the active
   * snapshot first every block touched for the first time since it was
   * taken (a partial-block write still copies the whole block). Returns when
   * the data is in the volume file; durable after {@link flush}.
   * @throws OUT_OF_RANGE, IO_ERROR, NO_SPACE (the write did not happen for the failed chunk; snapshots stay readable)
   */
  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.checkRange(offsetBytes, data.length);
    if (data.length === 0) return;
    await this.exclusive(async () => {
      let pos = 0;
      while (pos < data.length) {
        const abs = offsetBytes + pos;
        const chunkEnd = Math.min(offsetBytes + data.length, (Math.floor(abs / IO_CHUNK_BYTES) + 1) * IO_CHUNK_BYTES);
        const chunk = data.subarray(pos, chunkEnd - offsetBytes);
        await this.writeChunk(abs, chunk);
        pos = chunkEnd - offsetBytes;
      }
    });
  }

  /**
   * Reads live data. Reads are bounded (`MAX_READ_BYTES` per call).
   * @throws OUT_OF_RANGE, INVALID_ARGUMENT (too long), IO_ERROR
   */
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    this.checkReadLength(lengthBytes);
    return this.exclusive(() => this.volume.read(offsetBytes, lengthBytes));
  }

  /** Makes every write so far durable (guarantee 4: acknowledged means durable). */
  async flush(): Promise<void> {
    await this.exclusive(() => this.volume.sync());
  }

  // ------------------------------------------------------------ snapshots

  /**
   * Takes a snapshot in O(1): syncs the live volume (so the snapshot's
   * read-through content is durable), commits a catalog entry; the new
   * snapshot becomes active with an empty COW bitmap.
   * @throws INVALID_SNAPSHOT_NAME, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, IO_ERROR
   */
  async createSnapshot(name: string): Promise<SnapshotInfo> {
    validateSnapshotName(name);
    return this.exclusive(async () => {
      if (this.findLive(name)) throw new SnapshotExistsError(name);
      if (this.catalog.length >= MAX_SNAPSHOTS) throw new SnapshotLimitError(MAX_SNAPSHOTS);
      await this.volume.sync();
      const id = this.sb.nextSnapshotId;
      const rec: SnapshotRecord = { v: SCHEMA_VERSION, id, name, createdAt: new Date().toISOString(), state: 'live', ownedBlocks: 0 };
      const sb = { ...this.sb, nextSnapshotId: id + 1 };
      await this.commitOps([putOp(keys.snapshot(id), rec), putOp(keys.volume, sb)]);
      this.sb = sb;
      this.catalog.push(rec);
      this.maps.set(id, new SnapshotMap(id));
      return this.describe(rec);
    });
  }

  /** Snapshots, oldest first. */
  async listSnapshots(): Promise<SnapshotInfo[]> {
    return this.exclusive(async () => this.liveSnapshots().map((r) => this.describe(r)));
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
    return this.exclusive(async () => {
      const rec = this.findLive(name);
      if (!rec) throw new SnapshotNotFoundError(name);
      return this.readThrough(rec, offsetBytes, lengthBytes);
    });
  }

  /**
   * Deletes snapshot `name`: each block it owns is handed over to the next
   * older snapshot when that one has no copy of its own, else freed.
   * Metadata only, in bounded transactions; a crash in the middle is
   * finished at the next open. Deleting the active snapshot makes the next
   * older one active again.
   * @throws SNAPSHOT_NOT_FOUND, IO_ERROR
   */
  async deleteSnapshot(name: string): Promise<DeleteResult> {
    return this.exclusive(async () => {
      const rec = this.findLive(name);
      if (!rec) throw new SnapshotNotFoundError(name);
      const deleting: SnapshotRecord = { ...rec, state: 'deleting' };
      await this.commitOps([putOp(keys.snapshot(rec.id), deleting)]);
      rec.state = 'deleting';
      return this.finishDelete(rec);
    });
  }

  /** Size, snapshots, store usage, format version, recovery report. */
  async info(): Promise<VolumeInfo> {
    return this.exclusive(async () => {
      const usedBlocks = this.allocator.highWaterBlocks - this.allocator.freeBlocks;
      return {
        path: this.layout.volumePath,
        formatVersion: this.sb.formatVersion,
        uuid: this.sb.uuid,
        sizeBytes: this.sb.sizeBytes,
        blockSizeBytes: this.sb.blockSizeBytes,
        dataMode: this.sb.dataMode,
        createdAt: this.sb.createdAt,
        snapshots: this.liveSnapshots().map((r) => this.describe(r)),
        store: {
          highWaterBlocks: this.allocator.highWaterBlocks,
          freeBlocks: this.allocator.freeBlocks,
          usedBlocks,
          usedBytes: usedBlocks * this.sb.blockSizeBytes,
          fileBytes: await this.store.device.sizeBytes(),
        },
        journal: { lastSequence: this.journal.lastCommittedSequence, uncheckpointedBytes: this.journal.uncheckpointedBytes },
        recovery: this.recovery,
      };
    });
  }

  /**
   * Cross-checks the snapshot maps against the allocator (guarantee 6): no
   * store block mapped twice, none mapped while free or beyond the store's
   * high-water mark, owned-block counts equal to map sizes. Blocks neither
   * mapped nor free are leaks. Loads every snapshot map (O(mapped blocks)).
   */
  async checkConsistency(): Promise<ConsistencyReport> {
    return this.exclusive(async () => {
      const problems: string[] = [];
      const owner = new Map<number, string>();
      let mappedBlocks = 0;
      for (const rec of this.catalog) {
        const map = await this.mapOf(rec.id);
        if (map.size !== rec.ownedBlocks) problems.push(`snapshot ${rec.name} counts ${rec.ownedBlocks} owned blocks but maps ${map.size}`);
        for (const [block, storeBlock] of map.entries()) {
          mappedBlocks += 1;
          const where = `${rec.name}:${block}`;
          if (block * this.sb.blockSizeBytes >= this.sb.sizeBytes) problems.push(`${where} maps a block beyond the volume`);
          if (storeBlock >= this.allocator.highWaterBlocks) problems.push(`${where} maps store block ${storeBlock} beyond the store (${this.allocator.highWaterBlocks})`);
          else if (this.allocator.isFree(storeBlock)) problems.push(`${where} maps store block ${storeBlock}, which is free`);
          const prev = owner.get(storeBlock);
          if (prev !== undefined) problems.push(`store block ${storeBlock} mapped twice: ${prev} and ${where}`);
          owner.set(storeBlock, where);
        }
      }
      const leakedBlocks = this.allocator.highWaterBlocks - this.allocator.freeBlocks - owner.size;
      return { snapshots: this.catalog.length, mappedBlocks, leakedBlocks: Math.max(0, leakedBlocks), problems };
    });
  }

  /**
   * Syncs the volume, checkpoints the journal, closes every file and
   * releases the owner lock. Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.mutex.runExclusive(async () => {
      if (this.closed) return;
      this.closed = true;
      try {
        if (this.failure === undefined) {
          await this.volume.sync();
          await this.checkpoint();
        }
      } finally {
        await this.journal.close().catch(() => undefined);
        await this.store.device.close().catch(() => undefined);
        await this.volume.close().catch(() => undefined);
        await this.db.close().catch(() => undefined);
        await this.lock.unlock().catch(() => undefined);
      }
    });
  }

  // ------------------------------------------------------------- private

  private async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.mutex.runExclusive(async () => {
      if (this.closed) throw new VolumeClosedError();
      this.lock.throwIfLost();
      if (this.failure !== undefined) {
        throw new CowvolError('JOURNAL_ABORTED', 'an earlier metadata commit failed; close and reopen the volume to recover', { cause: this.failure });
      }
      return fn();
    });
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) throw new InvalidArgumentError(`offset must be a non-negative integer, got ${offsetBytes}`);
    if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0) throw new InvalidArgumentError(`length must be a non-negative integer, got ${lengthBytes}`);
    if (offsetBytes + lengthBytes > this.sb.sizeBytes || (lengthBytes === 0 && offsetBytes > this.sb.sizeBytes)) {
      throw new OutOfRangeError(offsetBytes, lengthBytes, this.sb.sizeBytes);
    }
  }

  private checkReadLength(lengthBytes: number): void {
    if (lengthBytes > MAX_READ_BYTES) throw new InvalidArgumentError(`one read returns at most ${MAX_READ_BYTES} bytes; read in pieces`);
  }

  private liveSnapshots(): SnapshotRecord[] {
    return this.catalog.filter((r) => r.state === 'live');
  }

  private findLive(name: string): SnapshotRecord | undefined {
    return this.catalog.find((r) => r.state === 'live' && r.name === name);
  }

  /** The active snapshot: the newest one, which receives COW copies. */
  private active(): SnapshotRecord | undefined {
    return this.catalog.at(-1);
  }

  private describe(rec: SnapshotRecord): SnapshotInfo {
    return {
      id: rec.id,
      name: rec.name,
      createdAt: rec.createdAt,
      ownedBlocks: rec.ownedBlocks,
      ownedBytes: rec.ownedBlocks * this.sb.blockSizeBytes,
      active: rec === this.active(),
    };
  }

  private async mapOf(id: number): Promise<SnapshotMap> {
    let map = this.maps.get(id);
    if (!map) {
      map = await SnapshotMap.load(this.db, id);
      this.maps.set(id, map);
    }
    return map;
  }

  /** Logs `ops` as one journal transaction (fsynced), then applies them to LevelDB. */
  private async commitOps(ops: MetaOp[]): Promise<void> {
    if (ops.length === 0) return;
    try {
      const handle = this.journal.start(ops.length);
      for (const op of ops) handle.log(op);
      await handle.commit();
      await this.db.apply(ops);
      if (this.journal.uncheckpointedBytes > CHECKPOINT_THRESHOLD_BYTES) await this.checkpoint();
    } catch (err) {
      // The commit may or may not be durable, or LevelDB may lag it: the
      // in-memory state can no longer be trusted. Refuse further work until a
      // reopen recovers from the journal (like jbd2's abort).
      this.failure = err;
      throw err;
    }
  }

  /** Makes LevelDB durable up to the last commit, then moves the journal tail past it. */
  private async checkpoint(): Promise<void> {
    if (this.journal.uncheckpointedBytes === 0) return;
    const sequence = this.journal.lastCommittedSequence;
    await this.db.apply([putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence })]);
    await this.db.makeDurable();
    await this.journal.checkpoint(sequence);
  }

  private async writeChunk(offsetBytes: number, data: Uint8Array): Promise<void> {
    const bs = this.sb.blockSizeBytes;
    const first = Math.floor(offsetBytes / bs);
    const last = Math.floor((offsetBytes + data.length - 1) / bs);
    await this.cowRange(first, last);
    // The file system does the read-modify-write of partial blocks; the
    // whole block was COWed above, so the snapshot keeps all of it.
    await this.volume.write(offsetBytes, data);
  }

  /**
   * COW: copies every block in [first, last] that the active snapshot has
   * not copied yet into new store blocks, syncs the store, then commits the
   * mappings. Returns once it is safe to overwrite those live blocks.
   */
  private async cowRange(first: number, last: number): Promise<void> {
    const active = this.active();
    if (!active) return;
    const map = await this.mapOf(active.id);
    const blocks: number[] = [];
    for (let b = first; b <= last; b++) if (!map.has(b)) blocks.push(b);
    if (blocks.length === 0) return;
    const bs = this.sb.blockSizeBytes;
    const extents = this.allocator.allocate(blocks.length);
    const storeBlocks: number[] = [];
    for (const e of extents) for (let i = 0; i < e.lengthBlocks; i++) storeBlocks.push(e.startBlock + i);
    assert(storeBlocks.length === blocks.length, 'allocator returned the wrong number of blocks');
    const blockCrcs: number[] = new Array(blocks.length);
    try {
      // Copy runs that are consecutive both in the volume and in the store with one read and one write.
      let i = 0;
      while (i < blocks.length) {
        let j = i + 1;
        while (j < blocks.length && blocks[j] === blocks[j - 1]! + 1 && storeBlocks[j] === storeBlocks[j - 1]! + 1) j++;
        const data = await this.volume.read(blocks[i]! * bs, (j - i) * bs);
        for (let k = i; k < j; k++) blockCrcs[k] = crc32c(data.subarray((k - i) * bs, (k - i + 1) * bs));
        assert(data.length === (j - i) * bs, 'COW copy length');
        await this.store.write(storeBlocks[i]!, data);
        i = j;
      }
      await this.store.sync();
    } catch (err) {
      this.allocator.rollback();
      throw err;
    }
    const ops: MetaOp[] = this.allocator.takeOps();
    for (let k = 0; k < blocks.length; k++) {
      ops.push(putOp(keys.map(active.id, blocks[k]!), { v: SCHEMA_VERSION, storeBlock: storeBlocks[k]!, crc: blockCrcs[k]! }));
    }
    const updated: SnapshotRecord = { ...active, ownedBlocks: active.ownedBlocks + blocks.length };
    ops.push(putOp(keys.snapshot(active.id), updated));
    await this.commitOps(ops);
    // Published only now, after the data is durable and the mapping committed (guarantee 2).
    for (let k = 0; k < blocks.length; k++) map.set(blocks[k]!, storeBlocks[k]!, blockCrcs[k]!);
    active.ownedBlocks = updated.ownedBlocks;
  }

  private async readThrough(rec: SnapshotRecord, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    if (lengthBytes === 0) return Buffer.alloc(0);
    const bs = this.sb.blockSizeBytes;
    const first = Math.floor(offsetBytes / bs);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / bs);
    const chain: SnapshotMap[] = [];
    for (const r of this.catalog) if (r.id >= rec.id) chain.push(await this.mapOf(r.id));
    const sources: BlockSource[] = [];
    for (let b = first; b <= last; b++) {
      let src: BlockSource = null;
      for (const map of chain) {
        const p = map.storeBlockOf(b);
        if (p !== undefined) {
          src = { storeBlock: p, crc: map.crcOf(b) };
          break;
        }
      }
      sources.push(src);
    }
    const out = Buffer.alloc((last - first + 1) * bs);
    let i = 0;
    while (i < sources.length) {
      const s = sources[i]!;
      let j = i + 1;
      if (s === null) {
        while (j < sources.length && sources[j] === null) j++;
        const data = await this.volume.read((first + i) * bs, (j - i) * bs);
        data.copy(out, i * bs);
      } else {
        while (j < sources.length && sources[j] !== null && sources[j]!.storeBlock === sources[j - 1]!.storeBlock + 1) j++;
        const data = await this.store.read(s.storeBlock, j - i);
        for (let k = i; k < j; k++) {
          const block = data.subarray((k - i) * bs, (k - i + 1) * bs);
          const expected = sources[k]!.crc;
          if (crc32c(block) !== expected) {
            throw new StoreCorruptError(`store block ${sources[k]!.storeBlock} (volume block ${first + k} of snapshot ${rec.name}) fails its checksum`, {
              details: { snapshot: rec.name, storeBlock: sources[k]!.storeBlock, offsetBytes: (first + k) * bs, lengthBytes: bs },
            });
          }
        }
        data.copy(out, i * bs);
      }
      i = j;
    }
    const start = offsetBytes - first * bs;
    return out.subarray(start, start + lengthBytes);
  }

  /** Hands over or frees every block of a snapshot in `deleting` state, then drops its record. */
  private async finishDelete(rec: SnapshotRecord): Promise<DeleteResult> {
    assert(rec.state === 'deleting', `finishDelete of snapshot ${rec.name} in state ${rec.state}`);
    const index = this.catalog.indexOf(rec);
    assert(index >= 0, 'snapshot being deleted is not in the catalog');
    const older = index > 0 ? this.catalog[index - 1] : undefined;
    assert(older === undefined || older.state === 'live', 'two deletes at once');
    const map = await this.mapOf(rec.id);
    const olderMap = older ? await this.mapOf(older.id) : undefined;
    let freedBlocks = 0;
    let handedOverBlocks = 0;
    while (map.size > 0) {
      const batch = map.take(DELETE_BATCH_BLOCKS);
      const ops: MetaOp[] = [];
      const moved: MapEntry[] = [];
      const toFree: number[] = [];
      for (const [block, storeBlock, crc] of batch) {
        ops.push(delOp(keys.map(rec.id, block)));
        if (older && olderMap && !olderMap.has(block)) {
          // The older snapshot read through to this copy: it becomes its own.
          ops.push(putOp(keys.map(older.id, block), { v: SCHEMA_VERSION, storeBlock, crc }));
          moved.push([block, storeBlock, crc]);
        } else {
          toFree.push(storeBlock);
        }
      }
      for (const extent of coalesce(toFree)) this.allocator.free(extent);
      ops.push(...this.allocator.takeOps());
      const recNow: SnapshotRecord = { ...rec, ownedBlocks: rec.ownedBlocks - batch.length };
      ops.push(putOp(keys.snapshot(rec.id), recNow));
      let olderNow: SnapshotRecord | undefined;
      if (older && moved.length > 0) {
        olderNow = { ...older, ownedBlocks: older.ownedBlocks + moved.length };
        ops.push(putOp(keys.snapshot(older.id), olderNow));
      }
      await this.commitOps(ops);
      for (const [block] of batch) map.delete(block);
      for (const [block, storeBlock, crc] of moved) olderMap!.set(block, storeBlock, crc);
      rec.ownedBlocks = recNow.ownedBlocks;
      if (older && olderNow) older.ownedBlocks = olderNow.ownedBlocks;
      freedBlocks += toFree.length;
      handedOverBlocks += moved.length;
    }
    assert(rec.ownedBlocks === 0, `snapshot ${rec.name} still counts ${rec.ownedBlocks} owned blocks after hand-over`);
    await this.commitOps([delOp(keys.snapshot(rec.id))]);
    this.catalog.splice(this.catalog.indexOf(rec), 1);
    this.maps.delete(rec.id);
    return { name: rec.name, freedBlocks, handedOverBlocks };
  }
}

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
