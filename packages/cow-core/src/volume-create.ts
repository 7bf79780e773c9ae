import { countOp } from './catalog-index.js';
import { fileDeviceOpener, syncDirectory } from '@cowvol/base';
import { randomBytes } from 'node:crypto';
import { mkdir, readlink, rm, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { Journal } from '@cowvol/journal';
import { InvalidArgumentError, VolumeExistsError, VolumeNotFoundError } from './errors.js';
import {
  DEFAULT_BLOCK_SIZE_BYTES,
  DEFAULT_JOURNAL_BYTES,
  FORMAT_VERSION,
  MAX_BLOCK_SIZE_BYTES,
  isBlockSize,
  MAX_VOLUME_BYTES,
  MIN_BLOCK_SIZE_BYTES,
  MIN_JOURNAL_BLOCKS,
  volumeLayout,
  type VolumeLayout,
} from './layout.js';
import { SCHEMA_VERSION, keys, putOp, type DataMode, type VolumeRecord } from './metadata.js';
import { MetadataDb } from './metadata-db.js';
import { SnapshotStore } from './store.js';
import { OwnerLock, fileIdentity } from './owner-lock.js';
import { nameExists, refuseOtherNames } from './volume-names.js';
import { makeSidecarFolder, narrowMode, sidecarModes } from './sidecar-mode.js';
import { clearCreateIntent, reclaimIncompleteCreate, recordCreatedFile, writeCreateIntent } from './create-intent.js';
import { killPoint } from './kill-point.js';
import { RESERVE_BYTES, writeReserve } from './reserve.js';
import { openerFor, type CreateVolumeOptions } from './volume-types.js';
import { errnoCode, pathExists } from './files.js';
import { settleTimes, statStamp } from './change-stamp.js';

/**
 * Volume creation (docs/ARCHITECTURE.md §4.8, docs/FORMAT.md §2 "Create
 * order"): the sidecar first, under the create lock, with the create intent
 * in it; then the volume file, the store, the journal, the reserve and the
 * metadata, the volume record last — a killed create is always reclaimable.
 */

/** The validated parameters of one create. */
interface CreatePlan {
  readonly path: string;
  readonly layout: VolumeLayout;
  readonly options: CreateVolumeOptions;
  readonly blockSizeBytes: number;
  readonly dataMode: DataMode;
  readonly journalBytes: number;
  readonly reserveBytes: number;
  readonly sizeBytes: number;
  /** An adopted file's mode, for its sidecar's; undefined for a new file. */
  readonly adoptedMode: number | undefined;
}

/**
 * Creates the files of a volume (not opened): a new sparse raw file of
 * `sizeBytes` (refuses to overwrite anything), or with `adopt` an existing
 * raw image; then its sidecar (store, journal, LevelDB). With `adopt`, a
 * file reached by another name is refused (volume-names.ts). Undoes what it
 * made on failure.
 * @throws VOLUME_EXISTS (also: a symbolic link to a volume), VOLUME_NOT_FOUND (adopt),
 *   VOLUME_BUSY (the file is open as a volume, under any name), INVALID_ARGUMENT, IO_ERROR, NO_SPACE
 */
export async function createVolumeFiles(path: string, options: CreateVolumeOptions): Promise<void> {
  const params = checkCreateOptions(options);
  const layout = volumeLayout(path);
  // What a killed create of this path left (create-intent.ts); a file it may or may not have made is the user's to judge.
  await reclaimIncompleteCreate(layout, { adopt: options.adopt === true });
  if (await pathExists(layout.sidecarPath)) throw new VolumeExistsError(`${path} already has a cowvol sidecar (${layout.sidecarPath})`, path);
  const { sizeBytes, adoptedMode } = options.adopt
    ? await adoptedFile(path, params.blockSizeBytes)
    : await newFile(path, options.sizeBytes ?? 0, params.blockSizeBytes, options.importState !== undefined);
  if (sizeBytes > MAX_VOLUME_BYTES) throw new InvalidArgumentError(`volume size ${sizeBytes} exceeds the maximum ${MAX_VOLUME_BYTES}`);
  const plan: CreatePlan = { path, layout, options, ...params, sizeBytes, adoptedMode };
  const createLock = await makeLockedSidecar(layout, path, adoptedMode);
  const made = { file: false };
  try {
    let lock: OwnerLock | undefined;
    try {
      await writeCreateIntent(layout, options.adopt !== true);
      killPoint('create:intent');
      if (!options.adopt) await makeVolumeFile(plan, made);
      // The file's lock (an open volume is busy under any name), then its other names (ARCHITECTURE.md §9 "The owner lock").
      lock = await OwnerLock.acquire(path, await fileIdentity(path));
      if (options.adopt) await refuseOtherNames(path);
      await writeSidecar(plan);
    } finally {
      await lock?.unlock();
      await createLock.unlock();
    }
  } catch (err) {
    await rm(layout.sidecarPath, { recursive: true, force: true });
    if (made.file) await rm(path, { force: true });
    throw err;
  }
}

/** @throws INVALID_ARGUMENT */
function checkCreateOptions(options: CreateVolumeOptions): Pick<CreatePlan, 'blockSizeBytes' | 'dataMode' | 'journalBytes' | 'reserveBytes'> {
  // Checked as unknown: a JavaScript caller (or a parsed flag) can pass anything.
  const blockSizeBytes: unknown = options.blockSizeBytes ?? DEFAULT_BLOCK_SIZE_BYTES;
  if (!isBlockSize(blockSizeBytes)) {
    throw new InvalidArgumentError(`block size must be a power of two from ${MIN_BLOCK_SIZE_BYTES} to ${MAX_BLOCK_SIZE_BYTES} bytes, got ${String(blockSizeBytes)}`);
  }
  const dataMode: unknown = options.dataMode ?? 'ordered';
  if (dataMode !== 'ordered' && dataMode !== 'journal') throw new InvalidArgumentError(`data mode must be ordered or journal, got ${String(dataMode)}`);
  const journalBytes = options.journalSizeBytes ?? DEFAULT_JOURNAL_BYTES;
  if (!Number.isSafeInteger(journalBytes) || journalBytes < MIN_JOURNAL_BLOCKS * blockSizeBytes || journalBytes % blockSizeBytes !== 0 || journalBytes / blockSizeBytes >= 2 ** 32) {
    throw new InvalidArgumentError(`journal size must be a multiple of the block size and at least ${MIN_JOURNAL_BLOCKS} blocks, got ${journalBytes}`);
  }
  const reserveBytes = options.reserveBytes ?? RESERVE_BYTES;
  if (!Number.isSafeInteger(reserveBytes) || reserveBytes < 0) throw new InvalidArgumentError(`reserve size must be a non-negative number of bytes, got ${reserveBytes}`);
  return { blockSizeBytes, dataMode, journalBytes, reserveBytes };
}

/** @throws VOLUME_NOT_FOUND, INVALID_ARGUMENT */
async function adoptedFile(path: string, blockSizeBytes: number): Promise<{ sizeBytes: number; adoptedMode: number }> {
  const st = await stat(path).catch((err: unknown) => {
    if (errnoCode(err) === 'ENOENT') throw new VolumeNotFoundError(path, { cause: err });
    throw err;
  });
  if (!st.isFile()) throw new InvalidArgumentError(`${path} is not a regular file`);
  if (st.size === 0) throw new InvalidArgumentError(`${path} is empty: nothing to adopt`);
  if (st.size % blockSizeBytes !== 0) throw new InvalidArgumentError(`${path} is ${st.size} bytes, not a multiple of the block size ${blockSizeBytes}; pass a smaller --block-size`);
  return { sizeBytes: st.size, adoptedMode: st.mode };
}

/** @throws INVALID_ARGUMENT, VOLUME_EXISTS */
async function newFile(path: string, sizeBytes: number, blockSizeBytes: number, forImport: boolean): Promise<{ sizeBytes: number; adoptedMode: undefined }> {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) throw new InvalidArgumentError(`volume size must be a positive number of bytes, got ${sizeBytes}`);
  if (sizeBytes % blockSizeBytes !== 0) throw new InvalidArgumentError(`volume size ${sizeBytes} is not a multiple of the block size ${blockSizeBytes}`);
  if (await nameExists(path)) {
    // A symbolic link to nothing exists too: say so, and never create the volume through it.
    const target = await readlink(path).catch(() => undefined);
    const what =
      target !== undefined && !(await pathExists(path))
        ? `${path} is a symbolic link to ${target}, which does not exist; refusing to create the volume through it`
        : `${path} already exists; refusing to overwrite it`;
    throw new VolumeExistsError(`${what} (${forImport ? 'a full stream creates a new volume: import it under a new path' : 'use --adopt to take an existing file as the volume'})`, path);
  }
  return { sizeBytes, adoptedMode: undefined };
}

/** The new sparse volume file, synced. */
async function makeVolumeFile(plan: CreatePlan, made: { file: boolean }): Promise<void> {
  const dev = await openerFor(plan.options, 'volume', fileDeviceOpener).open(plan.path, { create: true });
  made.file = true;
  await dev.truncate(plan.sizeBytes);
  await dev.sync();
  await dev.close();
  await recordCreatedFile(plan.layout, plan.path); // which file a reclaim may remove (create-intent.ts)
  killPoint('create:file');
}

/** Store, journal, reserve and metadata; the volume record last (a sidecar without it is an incomplete create). */
async function writeSidecar(plan: CreatePlan): Promise<void> {
  const { layout, options, blockSizeBytes } = plan;
  // No more accessible than the volume file (docs/ARCHITECTURE.md, "Sidecar permissions").
  const sidecar = sidecarModes((await stat(plan.path)).mode);
  await narrowMode(layout.sidecarPath, sidecar.folderMode);
  const uuid = randomBytes(16);
  const storeDev = await openerFor(options, 'store', fileDeviceOpener).open(layout.storePath, { create: true });
  await storeDev.write(0, SnapshotStore.header(uuid, blockSizeBytes));
  await storeDev.sync();
  await storeDev.close();
  await narrowSidecarFile(layout.storePath, sidecar.fileMode);
  killPoint('create:store');
  const journalDev = await openerFor(options, 'journal', fileDeviceOpener).open(layout.journalPath, { create: true });
  await Journal.format(journalDev, { uuid, blockSizeBytes, lengthBlocks: plan.journalBytes / blockSizeBytes });
  await journalDev.close();
  await narrowSidecarFile(layout.journalPath, sidecar.fileMode);
  killPoint('create:journal');
  await writeReserve(layout.reservePath, plan.reserveBytes);
  const db = await MetadataDb.open(layout.metaPath, true);
  const sb: VolumeRecord = {
    v: SCHEMA_VERSION,
    formatVersion: FORMAT_VERSION,
    uuid: uuid.toString('hex'),
    sizeBytes: plan.sizeBytes,
    blockSizeBytes,
    createdAt: new Date().toISOString(),
    nextSnapshotId: 1,
    dataMode: plan.dataMode,
    journalBytes: plan.journalBytes,
    reserveBytes: plan.reserveBytes,
    stampFromCreate: true,
  };
  await db.apply([putOp(keys.allocator, { v: SCHEMA_VERSION, highWaterBlocks: 0 }), putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence: 0 })]);
  killPoint('create:meta');
  // The file's change stamp comes with the volume record too: from now on, a volume without one lost it (outside-writes.ts).
  const stamp = await statStamp(plan.path, 'closed');
  // An import's marker comes with the volume record: the volume never exists without it.
  // The catalog index of an empty catalog comes with it too (catalog-index.ts): no name keys, counts zero.
  const ops = [putOp(keys.volume, sb), putOp(keys.stamp, stamp), countOp({ snapshots: 0, deleting: 0 })];
  await db.apply([...ops, ...(options.importState ? [putOp(keys.importState, options.importState)] : [])], true);
  await db.makeDurable();
  await db.close();
  killPoint('create:recorded');
  // A write right after the create gets a newer modification time than the stamp (as after a clean close).
  await settleTimes(stamp);
  await clearCreateIntent(layout);
  await syncDirectory(layout.sidecarPath);
  await syncDirectory(dirname(resolve(layout.sidecarPath)));
}

/** Narrows a sidecar file's mode; a store or journal its role's opener keeps elsewhere has no file here to narrow. */
async function narrowSidecarFile(path: string, allowed: number): Promise<void> {
  try {
    await narrowMode(path, allowed);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
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
