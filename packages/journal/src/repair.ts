import { hasCode, type BlockDevice } from '@cowvol/base';
import { JournalCorruptError } from './errors.js';
import { BlockType, SUPERBLOCK_AREA_BYTES, decodeSuperblock, decodeTags, readHeader, tailChecksumOk, transactionSeed, type JournalSuperblock } from './format.js';
import { LogReader } from './log-reader.js';
import { replayHome, type ReplayedTransaction } from './recovery-replay.js';
import { geometryOf, scanJournal, type ScanResult } from './recovery-scan.js';
import { Journal } from './journal.js';

/**
 * Repair of a damaged journal (docs/ARCHITECTURE.md §5.6), after e2fsck's
 * handling of a journal whose log no longer verifies: replay the
 * transactions that verify, in sequence order up to the first that does
 * not; list what lies beyond (the discarded transactions); make the homes
 * and the owner's state durable; then reset the journal to an empty log
 * whose first sequence is above every sequence seen, so nothing discarded
 * can ever be taken for a later transaction.
 */

/** A transaction the repair discarded, as far as its surviving blocks tell. */
export interface DiscardedTransaction {
  sequence: number;
  /** First log block found carrying this sequence with a valid block checksum, if any. */
  firstBlock: number | null;
  /** Its header blocks (descriptor, revoke, records, commit: not image or payload blocks) whose block checksum still verifies. */
  blocksFound: number;
  /** Whether its commit block was found (it had been committed). */
  commitFound: boolean;
  /** Home locations of the images named by its surviving descriptors ({target, homeBlock}). */
  images: Array<{ target: number; homeBlock: number }>;
}

/** What {@link repairJournal} found and did. */
export interface JournalRepairReport {
  /** The superblock was unreadable, foreign or missing: the whole log was discarded unread. */
  superblockDamaged: boolean;
  /** Why the superblock was refused, when it was. */
  superblockError: string | null;
  /** Transactions replayed (they verified). */
  replayedTransactions: number;
  /** Sequence of the last transaction replayed (tail − 1 when none). */
  lastReplayedSequence: number;
  /** The decision-table rule that ended the scan (docs/FORMAT.md §5.8). */
  stopReason: string;
  /** Transactions found beyond the stop, oldest first (blocks of a sequence above the last replayed one with a valid block checksum). */
  discarded: DiscardedTransaction[];
  /** First sequence of the reset journal. */
  newTailSequence: number;
}

/** What the repair needs from the journal's owner. */
export interface JournalRepairOptions {
  /** The owner's uuid: a superblock with another one is damage, and the reset journal gets this one. */
  uuid: Buffer;
  /** Geometry the reset journal gets when the superblock is unreadable. */
  blockSizeBytes: number;
  lengthBlocks: number;
  /** Home devices of block images, by target id. */
  targets: ReadonlyMap<number, BlockDevice>;
  /** Receives each replayed transaction's records, as at open (see `ReplayFn`). */
  replay: (tx: ReplayedTransaction) => Promise<void>;
  /** Makes the owner's state durable before the log that protected it is reset. */
  beforeReset: () => Promise<void>;
  /** The reset journal starts at least at this sequence (e.g. one above what the owner applied). */
  minNextSequence: number;
}

/**
 * Repairs the journal on `device` (see the module comment). Replays the
 * verified transactions exactly as `Journal.open` would (images home,
 * records to `replay`), syncs the homes, surveys the log beyond the stop
 * for discarded transactions, calls `beforeReset`, then reformats the
 * journal (sparse, every log block zero) with a tail sequence above every
 * sequence seen. Idempotent: a crash at any point leaves a journal that
 * opens, or one that the next repair handles again.
 * @throws IO_ERROR, NO_SPACE; whatever `replay` or `beforeReset` throws
 */
export async function repairJournal(device: BlockDevice, options: JournalRepairOptions): Promise<JournalRepairReport> {
  const report: JournalRepairReport = {
    superblockDamaged: false,
    superblockError: null,
    replayedTransactions: 0,
    lastReplayedSequence: options.minNextSequence - 1,
    stopReason: 'superblock unreadable',
    discarded: [],
    newTailSequence: options.minNextSequence,
  };
  let sb: JournalSuperblock | undefined;
  try {
    if ((await device.sizeBytes()) < SUPERBLOCK_AREA_BYTES) throw new JournalCorruptError(`${device.name}: journal superblock is truncated`);
    sb = decodeSuperblock(await device.read(0, SUPERBLOCK_AREA_BYTES), device.name);
    if (!options.uuid.equals(sb.uuid)) throw new JournalCorruptError(`${device.name}: journal belongs to another volume (uuid mismatch)`);
  } catch (err) {
    if (!(err instanceof JournalCorruptError) && !hasCode(err, 'UNSUPPORTED_VERSION')) throw err;
    report.superblockDamaged = true;
    report.superblockError = err.message;
    sb = undefined;
  }
  let lengthBlocks = options.lengthBlocks;
  let blockSizeBytes = options.blockSizeBytes;
  let nextSequence = options.minNextSequence;
  if (sb) {
    ({ lengthBlocks, blockSizeBytes } = sb);
    if ((await device.sizeBytes()) < sb.lengthBlocks * sb.blockSizeBytes) await device.truncate(sb.lengthBlocks * sb.blockSizeBytes);
    const scan = await scanJournal(device, sb);
    // The replay pass of `Journal.open`, over the transactions the scan verified.
    await replayHome(device, sb, scan, { targets: options.targets, replay: options.replay });
    report.replayedTransactions = scan.transactions.length;
    report.lastReplayedSequence = scan.nextSequence - 1;
    report.stopReason = scan.stopReason;
    report.discarded = await surveyBeyond(device, sb, scan);
    const highest = Math.max(scan.nextSequence - 1, ...report.discarded.map((d) => d.sequence));
    nextSequence = Math.max(nextSequence, highest + 1);
  }
  await options.beforeReset();
  await Journal.format(device, { uuid: options.uuid, blockSizeBytes, lengthBlocks, tailSequence: nextSequence });
  report.newTailSequence = nextSequence;
  return report;
}

/**
 * Reads every log block from where the scan stopped to the tail (the
 * rest of the circular log) and collects, per sequence above the last
 * replayed one, the blocks whose block checksum verifies for that
 * sequence: these are what the repair discards. Reads the log once,
 * through one read-ahead window.
 */
async function surveyBeyond(device: BlockDevice, sb: JournalSuperblock, scan: ScanResult): Promise<DiscardedTransaction[]> {
  const geometry = geometryOf(sb);
  const reader = new LogReader(device, geometry);
  const used = scan.transactions.reduce((n, tx) => n + tx.blocks, 0);
  const found = new Map<number, DiscardedTransaction>();
  let at = scan.headBlock;
  for (let i = 0; i < sb.lengthBlocks - geometry.firstBlock - used; i++, at = reader.next(at)) {
    const block = await reader.block(at);
    const h = readHeader(block);
    if (!h || h.sequence < scan.nextSequence || !Number.isSafeInteger(h.sequence)) continue;
    if (!tailChecksumOk(block, transactionSeed(sb.uuid, h.sequence))) continue;
    let d = found.get(h.sequence);
    if (!d) found.set(h.sequence, (d = { sequence: h.sequence, firstBlock: at, blocksFound: 0, commitFound: false, images: [] }));
    d.blocksFound += 1;
    if (h.type === BlockType.commit) d.commitFound = true;
    if (h.type === BlockType.descriptor) for (const t of decodeTags(block) ?? []) d.images.push({ target: t.target, homeBlock: t.homeBlock });
  }
  return [...found.values()].sort((a, b) => a.sequence - b.sequence);
}
