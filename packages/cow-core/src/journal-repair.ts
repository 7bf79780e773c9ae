import { stat } from 'node:fs/promises';
import { fileDeviceOpener, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { JournalCorruptError, repairJournal, type DiscardedTransaction, type JournalRepairReport } from '@cowvol/journal';
import { CommittedMetadata } from './committed-metadata.js';
import { NotAVolumeError, VolumeNotFoundError, VolumeSizeMismatchError } from './errors.js';
import { DEFAULT_JOURNAL_BYTES, TARGET_STORE, TARGET_VOLUME, volumeLayout } from './layout.js';
import { type DataMode } from './metadata.js';
import { MetadataDb } from './metadata-db.js';
import { OwnerLock, fileIdentity } from './owner-lock.js';
import { metadataOpenError, openSidecarFile } from './sidecar-damage.js';
import { SnapshotStore } from './store.js';
import { errnoCode, nonFileAt } from './files.js';

/**
 * `check --repair` of a volume whose journal is damaged
 * (docs/ARCHITECTURE.md §8.5): the volume's side of the journal repair
 * (`repairJournal` in @cowvol/journal).
 */

/** One discarded transaction, with what the metadata knows of it. */
export interface DiscardedJournalTransaction extends DiscardedTransaction {
  /**
   * Its metadata changes were already applied to LevelDB before the damage
   * was found (sequence ≤ the metadata's `cp`): they stay. What it cannot
   * give back are its block images (`journal` data mode: live writes and
   * COW copies not yet checkpointed).
   */
  inMetadata: boolean;
}

/** What {@link repairVolumeJournal} found and did. */
export interface VolumeJournalRepair extends Omit<JournalRepairReport, 'discarded'> {
  /** The metadata's `cp` (last transaction applied to LevelDB) before the repair. */
  appliedSequence: number;
  /** Discarded transactions, oldest first: every one found in the log beyond the stop, and every one the metadata had applied that the log no longer verifies. */
  discarded: DiscardedJournalTransaction[];
  /** The volume's data mode. */
  dataMode: DataMode;
  /**
   * `journal` data mode and a discarded transaction the metadata had
   * applied: its block images (live writes, COW copies its mappings point
   * to) never reached their homes, so snapshot or live data may be lost
   * (ARCHITECTURE §8.5). Always false in `ordered` mode.
   */
  imagesMayBeLost: boolean;
}

/**
 * Repairs the journal of the volume at `path`, like e2fsck with a damaged
 * journal: takes the owner lock, loads the metadata, replays the journal
 * transactions that verify (in sequence order up to the first that does
 * not) exactly as open does, makes LevelDB durable, and resets the journal
 * to an empty log above every sequence seen (a missing or unreadable
 * journal is recreated with the volume's uuid). Returns what was replayed
 * and what was discarded. The volume then opens.
 * @throws VOLUME_NOT_FOUND, NOT_A_VOLUME, VOLUME_BUSY, CORRUPT_METADATA, STORE_CORRUPT, VOLUME_SIZE_MISMATCH, UNSUPPORTED_VERSION, IO_ERROR, NO_SPACE
 */
export async function repairVolumeJournal(path: string, options: { opener?: DeviceOpener } = {}): Promise<VolumeJournalRepair> {
  const opener = options.opener ?? fileDeviceOpener;
  const layout = volumeLayout(path);
  await stat(path).catch((err: unknown) => {
    throw errnoCode(err) === 'ENOENT' ? new VolumeNotFoundError(path, { cause: err }) : err;
  });
  await stat(layout.sidecarPath).catch(() => {
    throw new NotAVolumeError(`${path} is not a cowvol volume (no ${layout.sidecarPath})`);
  });
  const lock = await OwnerLock.acquire(layout.volumePath, await fileIdentity(layout.volumePath));
  const opened: Array<{ close(): Promise<void> }> = [];
  try {
    const db = await MetadataDb.open(layout.metaPath, false).catch(async (err: unknown) => {
      throw await metadataOpenError(layout.metaPath, err);
    });
    opened.push(db);
    const meta = await CommittedMetadata.load(db, path);
    const { sb } = meta;
    const uuid = Buffer.from(sb.uuid, 'hex');
    const volume = await opener.open(path, { create: false });
    opened.push(volume);
    if ((await volume.sizeBytes()) !== sb.sizeBytes) throw new VolumeSizeMismatchError(path, sb.sizeBytes, await volume.sizeBytes());
    const snapshotStore = new SnapshotStore(await openSidecarFile(opener, layout.storePath, 'store'), sb.blockSizeBytes);
    const store = snapshotStore.device;
    opened.push(store);
    await snapshotStore.verifyHeader(uuid);
    // A missing journal is created (exclusively) and formatted by the repair; anything else than a file in its place is the user's to move.
    const notFile = await nonFileAt(layout.journalPath);
    if (notFile !== undefined) {
      throw new JournalCorruptError(`the journal ${layout.journalPath} is ${notFile}; move it out of the sidecar, then run check --repair again (it makes a new journal)`, {
        details: { path: layout.journalPath },
      });
    }
    // A missing journal is created (exclusively) and formatted by the repair.
    const journal: BlockDevice = await opener.open(layout.journalPath, { create: false }).catch(() => opener.open(layout.journalPath, { create: true }));
    opened.push(journal);
    const appliedSequence = meta.appliedSequence;
    const report = await repairJournal(journal, {
      uuid,
      blockSizeBytes: sb.blockSizeBytes,
      lengthBlocks: (sb.journalBytes ?? DEFAULT_JOURNAL_BYTES) / sb.blockSizeBytes,
      targets: new Map([
        [TARGET_VOLUME, volume],
        [TARGET_STORE, store],
      ]),
      replay: (tx) => meta.apply(tx),
      beforeReset: () => db.makeDurable(),
      minNextSequence: appliedSequence + 1,
    });
    // The reset journal starts above every discarded sequence: they will never exist, so the metadata's checkpoint
    // moves past them too (else `check` reports the new journal's last sequence as committed but not applied until
    // the next commit). After the reset: a crash before this leaves that state, and the next writable open (which
    // `check --repair` is) moves it (volume-lifecycle.ts `openJournal`).
    const skippedTo = report.newTailSequence - 1;
    if (skippedTo > meta.appliedSequence) await meta.skipTo(skippedTo);
    const discarded = withMetadataView(report, appliedSequence);
    // A lost superblock hides where the log's tail was, so which applied transactions still had images to write
    // home is unknown: in journal mode any may have (an old checkpointed state cannot be told from a lost one).
    const imagesMayBeLost = sb.dataMode === 'journal' && (report.superblockDamaged || discarded.some((d) => d.inMetadata));
    return { ...report, appliedSequence, discarded, dataMode: sb.dataMode, imagesMayBeLost };
  } finally {
    for (const part of opened.reverse()) await part.close().catch(() => undefined);
    await lock.unlock().catch(() => undefined);
  }
}

/** The survey's discarded transactions plus those the metadata applied but the log lost entirely, each marked with `inMetadata`. */
function withMetadataView(report: JournalRepairReport, appliedSequence: number): DiscardedJournalTransaction[] {
  const bySequence = new Map<number, DiscardedJournalTransaction>();
  for (const d of report.discarded) bySequence.set(d.sequence, { ...d, inMetadata: d.sequence <= appliedSequence });
  for (let s = report.lastReplayedSequence + 1; s <= appliedSequence; s++) {
    if (!bySequence.has(s)) bySequence.set(s, { sequence: s, firstBlock: null, blocksFound: 0, commitFound: false, images: [], inMetadata: true });
  }
  return [...bySequence.values()].sort((a, b) => a.sequence - b.sequence);
}
