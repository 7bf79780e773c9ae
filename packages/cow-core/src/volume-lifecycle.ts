import { CowvolError, IoError, assert, fileDeviceOpener, type BlockDevice } from '@cowvol/base';
import { errnoCode, errorMessage, pathExists } from './files.js';
import { stat } from 'node:fs/promises';
import { Journal, JournalCorruptError, JournalNeedsRecoveryError, type RecoveryReport } from '@cowvol/journal';
import { CorruptMetadataError, InvalidArgumentError, NotAVolumeError, VolumeNotFoundError, VolumeSizeMismatchError } from './errors.js';
import { TARGET_STORE, TARGET_VOLUME, WRITE_BACK_MAX_BYTES, volumeLayout, type VolumeLayout } from './layout.js';
import type { MetadataDb } from './metadata-db.js';
import { SnapshotStore } from './store.js';
import { OwnerLock, fileIdentity } from './owner-lock.js';
import { volumeBehindLink } from './volume-names.js';
import { CommittedMetadata } from './committed-metadata.js';
import { checkedCatalog } from './snapshot-names.js';
import { lostLogFile, verifyLevelDb } from './leveldb-verify.js';
import { tightenSidecarFolder } from './sidecar-mode.js';
import { openSidecarFile } from './sidecar-damage.js';
import { dropLeftoverCreateIntent, intentPath } from './create-intent.js';
import { openMetadata } from './read-only.js';
import { releaseReserve, writeReserve } from './reserve.js';
import { ChangeStamps } from './outside-writes.js';
import type { WriteBackFailure } from './write-back.js';
import { openerFor, type OpenVolumeOptions } from './volume-types.js';
import type { VolumeContext, VolumeParts } from './volume-context.js';

/**
 * Volume lifecycle (docs/ARCHITECTURE.md §4.8, §4.9): open — the owner
 * lock, every part validated against the metadata, journal recovery — and
 * close. Creation is in volume-create.ts; the deferred finish of an
 * interrupted delete in snapshot-lifecycle.ts.
 */

/** Something an open made that a failed open closes again. */
interface Closable {
  close(): Promise<void>;
}

/**
 * Opens every part of the volume at `path`: takes the owner lock,
 * validates every part against the metadata and runs journal recovery
 * (replaying committed transactions that LevelDB does not have yet). On
 * failure, closes what it opened and releases the lock.
 * @throws INVALID_ARGUMENT, VOLUME_NOT_FOUND, NOT_A_VOLUME, VOLUME_BUSY, VOLUME_MODIFIED_OUTSIDE, CORRUPT_METADATA,
 *   UNSUPPORTED_VERSION, VOLUME_SIZE_MISMATCH, JOURNAL_CORRUPT, JOURNAL_NEEDS_RECOVERY (readOnly), IO_ERROR, NO_SPACE
 */
export async function openVolumeParts(path: string, options: OpenVolumeOptions): Promise<VolumeParts> {
  const writeBackBytes = options.writeBackBytes ?? WRITE_BACK_MAX_BYTES;
  if (!Number.isSafeInteger(writeBackBytes) || writeBackBytes < 0) throw new InvalidArgumentError(`writeBackBytes must be a non-negative integer, got ${writeBackBytes}`);
  const layout = volumeLayout(path);
  const st = await stat(path).catch(async (err: unknown) => {
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      const interrupted = await pathExists(intentPath(layout));
      throw new VolumeNotFoundError(path, { cause: err, ...(interrupted ? { why: `a create of it was interrupted before it made the file; ${FINISH_CREATE}` } : {}) });
    }
    throw new IoError(`cannot stat ${path}: ${errorMessage(err)}`, { cause: err });
  });
  if (!st.isFile()) throw new NotAVolumeError(`${path} is not a regular file`);
  const readOnly = options.readOnly === true;
  // Locked by the file's identity, so another name of an open volume is busy (ARCHITECTURE.md §9 "The owner lock").
  const lock = await OwnerLock.acquire(path, await fileIdentity(path));
  const opened: Closable[] = [];
  try {
    await refuseNonVolume(path, layout);
    // A sidecar more open than its volume file is narrowed, never widened (docs/ARCHITECTURE.md, "Sidecar permissions").
    // Best effort, and only ever narrowing: also in a read-only open (a chmod of the folder, never of data).
    await tightenSidecarFolder(layout.sidecarPath, st.mode);
    if (options.releaseReserve && !readOnly) await releaseReserve(layout.reservePath);
    if (options.verifyMetadata === true) await refuseDamagedMetadata(layout.metaPath);
    const { db, privateMeta } = await openMetadata(layout.metaPath, readOnly).catch(async (err: unknown) => {
      throw await interruptedCreate(layout, err);
    });
    // A deleted current log may have held the last close's stamp. A writable open recorded it before LevelDB made a new
    // log (MetadataDb.open writes the marker; an earlier open may have); a read-only one opened a private copy and left
    // the sidecar's folder as it was, so the loss is looked for there — one read of CURRENT and the MANIFEST either way.
    const logLost = (await pathExists(layout.lostLogPath)) || (readOnly && (await lostLogFile(layout.metaPath)) !== undefined);
    opened.push(privateMeta ?? db);
    const meta = await CommittedMetadata.load(db, path, { lazy: options.catalog === 'lazy' && !readOnly }).catch(async (err: unknown) => {
      throw await interruptedCreate(layout, err);
    });
    // The volume record is there: the create finished. Best effort in a read-only open (nothing else is written).
    await (readOnly ? dropLeftoverCreateIntent(layout).catch(() => undefined) : dropLeftoverCreateIntent(layout));
    const sb = meta.sb;
    // Before recovery may write the file: one changed outside cowvol is refused (outside-writes.ts).
    const volumeBlocks = Math.ceil(sb.sizeBytes / sb.blockSizeBytes);
    const outside = await ChangeStamps.open(db, path, {
      hold: options.outsideChanges === 'hold',
      catalog: async () => {
        await meta.completeSnapshots();
        return [...meta.snapshots.values()];
      },
      volumeBlocks,
      stampFromCreate: sb.stampFromCreate === true,
      logLost,
      lostLogMarker: layout.lostLogPath,
      readOnly,
    });
    const uuid = Buffer.from(sb.uuid, 'hex');
    const volume = await openerFor(options, 'volume', fileDeviceOpener).open(path, { create: false, readOnly });
    opened.push(volume);
    const actual = await volume.sizeBytes();
    if (actual !== sb.sizeBytes) throw new VolumeSizeMismatchError(path, sb.sizeBytes, actual);
    // Every store write goes through the store's device, which drops the cached windows it touches.
    const store = new SnapshotStore(await openSidecarFile(openerFor(options, 'store', fileDeviceOpener), layout.storePath, 'store', readOnly), sb.blockSizeBytes);
    opened.push(store.device);
    await store.verifyHeader(uuid);
    const { journal, recovery } = await openJournal(layout, options, { meta, db, volume, store, uuid, readOnly });
    opened.push(journal);
    const catalog = meta.complete ? checkedCatalog(meta) : undefined;
    return { layout, meta, db, volume, store, journal, catalog, lock, recovery, privateMeta, outside, writeBackBytes, metadataVerified: options.verifyMetadata === true };
  } catch (err) {
    for (const part of opened.reverse()) await part.close().catch(() => undefined);
    await lock.unlock().catch(() => undefined);
    throw err;
  }
}

/** What a user does about a sidecar a killed create left (create-intent.ts: the re-run finishes it). */
const FINISH_CREATE = 'run the same `cowvol create` again to finish it';

/**
 * `err` (from opening or loading the metadata) as the interrupted create it
 * is when the sidecar still holds the create intent: NOT_A_VOLUME saying so
 * and what to do, not "not a readable metadata database" (docs/FORMAT.md §2,
 * "Create order"). Other errors, and sidecars without the intent, pass.
 */
async function interruptedCreate(layout: VolumeLayout, err: unknown): Promise<unknown> {
  if (!(err instanceof NotAVolumeError) || !(await pathExists(intentPath(layout)))) return err;
  return new NotAVolumeError(`${layout.volumePath} is not a volume yet: a create of it was interrupted (${intentPath(layout)} is there); ${FINISH_CREATE}`, {
    cause: err,
    details: { path: layout.volumePath, interruptedCreate: true },
  });
}

/** CORRUPT_METADATA when a LevelDB file of `metaPath` fails its checksums (read before LevelDB opens them; under the owner lock). */
async function refuseDamagedMetadata(metaPath: string): Promise<void> {
  const problems = await verifyLevelDb(metaPath);
  if (problems.length === 0) return;
  throw new CorruptMetadataError(`metadata database ${metaPath} is damaged: ${problems.slice(0, 3).join('; ')}${problems.length > 3 ? `; and ${problems.length - 3} more` : ''}`, {
    details: { path: metaPath, problems },
  });
}

/** @throws NOT_A_VOLUME (no sidecar; a symbolic link to a volume is named) */
async function refuseNonVolume(path: string, layout: VolumeLayout): Promise<void> {
  if (await pathExists(layout.sidecarPath)) return;
  const real = await volumeBehindLink(path);
  if (real !== undefined) throw new NotAVolumeError(`${path} is a symbolic link to the cowvol volume ${real}; open it by that name`);
  throw new NotAVolumeError(`${path} is not a cowvol volume (no ${layout.sidecarPath}); run \`cowvol create ${path} --adopt\` to make it one`);
}

/**
 * Opens the journal and recovers it: committed transactions are applied to
 * the committed metadata (`CommittedMetadata.apply`, the journal's apply
 * and replay callback), block images are written home.
 * @throws JOURNAL_CORRUPT (also: it ends before what LevelDB applied, or has another block size), JOURNAL_NEEDS_RECOVERY (readOnly), IO_ERROR
 */
async function openJournal(
  layout: VolumeLayout,
  options: OpenVolumeOptions,
  parts: { meta: CommittedMetadata; db: MetadataDb; volume: BlockDevice; store: SnapshotStore; uuid: Buffer; readOnly: boolean },
): Promise<{ journal: Journal; recovery: RecoveryReport }> {
  const { meta, db, readOnly } = parts;
  const journalDev = await openSidecarFile(openerFor(options, 'journal', fileDeviceOpener), layout.journalPath, 'journal', readOnly);
  const apply = (tx: { sequence: number; records: unknown[] }): Promise<void> => meta.apply(tx);
  const opened = await Journal.open(journalDev, {
    expectedUuid: parts.uuid,
    // Before the replay, not after: images of another block size would be written home at wrong offsets.
    expectedBlockSizeBytes: meta.sb.blockSizeBytes,
    targets: new Map([
      [TARGET_VOLUME, parts.volume],
      [TARGET_STORE, parts.store.device],
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
  const { journal } = opened;
  try {
    if (journal.lastCommittedSequence < meta.appliedSequence) {
      // LevelDB holds transactions the journal no longer has: new commits would reuse their sequences.
      throw new JournalCorruptError(`${layout.journalPath} ends at transaction ${journal.lastCommittedSequence} but the metadata has applied ${meta.appliedSequence}`);
    }
    assert(journal.blockSizeBytes === meta.sb.blockSizeBytes, 'Journal.open checked the block size');
    // Every transaction the log held is applied now. Sequences above them that the journal counts as used were skipped
    // by a reset (check --repair, docs/ARCHITECTURE.md §8.5): none will ever exist, so the checkpoint record moves past.
    if (!readOnly && journal.lastCommittedSequence > meta.appliedSequence) await meta.skipTo(journal.lastCommittedSequence);
  } catch (err) {
    await journal.close().catch(() => undefined);
    throw err;
  }
  return opened;
}

/**
 * Closes the volume, frozen, in state `closing` (volume-state.ts): drains
 * the write-back stage, syncs the volume (unless the volume failed before
 * a commit reached the journal), checkpoints the journal and stamps the
 * file (unless failed), closes every file, puts the space reserve back,
 * releases the owner lock. A failed checkpoint or stamp is a warning.
 * Returns the write-back failures not reported yet.
 * @throws IO_ERROR, NO_SPACE (the volume sync)
 */
export async function closeVolume(ctx: VolumeContext): Promise<WriteBackFailure[]> {
  const { parts, status } = ctx;
  let failures: WriteBackFailure[];
  try {
    await ctx.writeBack.drain();
    failures = ctx.writeBack.takeFailures();
    const failure = status.failure;
    if (!ctx.readOnly && (failure === undefined || status.failedAfterCommit)) await parts.volume.sync();
    if (failure === undefined && !ctx.readOnly) {
      const checkpointed = await ctx.checkpoint().then(
        () => true,
        (err: unknown) => {
          ctx.notices.push(`the journal was not checkpointed (${(err as Error).message}); the next open replays it`);
          return false;
        },
      );
      // After cowvol's last write to the file. Failing leaves the `open` stamp (the safe direction): a warning, not an error.
      if (checkpointed) {
        await parts.outside
          .atCleanClose()
          .catch((err: unknown) => ctx.notices.push(`the volume file's change stamp was not updated (${(err as Error).message}); the next open compares its identity and size only`));
      }
    }
  } finally {
    await parts.journal.close().catch(() => undefined);
    await parts.store.device.close().catch(() => undefined);
    await parts.volume.close().catch(() => undefined);
    await (parts.privateMeta ?? parts.db).close().catch(() => undefined);
    if (!ctx.readOnly) await restoreReserve(ctx);
    await parts.lock.unlock().catch(() => undefined);
  }
  return failures;
}

/** Closes the parts of an open that failed after them (no sync, no checkpoint: like a crash) and releases the owner lock. */
export async function abandonParts(parts: VolumeParts): Promise<void> {
  for (const part of [parts.journal, parts.store.device, parts.volume, parts.privateMeta ?? parts.db]) await part.close().catch(() => undefined);
  await parts.lock.unlock().catch(() => undefined);
}

/**
 * Opens for commands that only read: read-only when it can; when the
 * journal holds block images that recovery must write home, a writable
 * open (`open` without readOnly) recovers them instead, and if that cannot
 * write the open fails with `JOURNAL_NEEDS_RECOVERY` saying why
 * (docs/ARCHITECTURE.md §4.10).
 * @throws what `open` throws; JOURNAL_NEEDS_RECOVERY
 */
export async function openForReading<V>(path: string, options: OpenVolumeOptions, open: (path: string, options: OpenVolumeOptions) => Promise<V>): Promise<V> {
  try {
    return await open(path, { ...options, readOnly: true });
  } catch (err) {
    if (!(err instanceof JournalNeedsRecoveryError)) throw err;
    try {
      return await open(path, options);
    } catch (writable) {
      if (!(writable instanceof CowvolError) || (writable.code !== 'NO_SPACE' && writable.code !== 'IO_ERROR')) throw writable;
      throw new JournalNeedsRecoveryError(`${err.message}; recovery could not write (${writable.message}): free space or mount the file system read-write, then run any cowvol command`, {
        cause: writable,
        ...(err.details ? { details: err.details } : {}),
      });
    }
  }
}

/** Puts the space reserve back when it is missing (reserve.ts); a full disk leaves it released, with a warning. */
async function restoreReserve(ctx: VolumeContext): Promise<void> {
  const bytes = ctx.parts.meta.sb.reserveBytes ?? 0;
  if (bytes === 0) return;
  const { reservePath } = ctx.parts.layout;
  const restored = await writeReserve(reservePath, bytes, true).catch(() => false);
  if (!restored) ctx.notices.push(`the ${bytes}-byte space reserve ${reservePath} is released and there is no room to put it back; a later close with room restores it`);
}
