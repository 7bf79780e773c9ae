import { type BlockDevice } from '@cowvol/base';
import { firstLogBlock, revokeKey, transactionSeed, type JournalSuperblock, type Revocation } from './format.js';
import { LogReader, type LogGeometry } from './log-reader.js';
import { PayloadArena, walkTransaction } from './transaction-walk.js';

/**
 * The first recovery pass (docs/ARCHITECTURE.md §5.4), after jbd2's
 * recovery.c `PASS_SCAN` with `PASS_REVOKE` folded in: validates
 * transaction after transaction with the decision table and keeps only
 * where each committed one lies, its counts, and the revoke table. No image
 * or record is retained. The second pass is recovery-replay.ts.
 *
 * Memory: one read-ahead window ({@link LogReader}, 4 MiB by default), the
 * payload of the records block being checked, one small entry per
 * committed transaction and one per revoked block.
 */

/** One committed transaction found by the scan: where it lies and what it holds (counts; the replay pass reads the contents again). */
export interface RecoveredTransaction {
  sequence: number;
  startBlock: number;
  /** Blocks it occupies, commit block included. */
  blocks: number;
  /** Records in its records blocks. */
  records: number;
  /** Block images in its descriptors (revoked ones included). */
  images: number;
}

/** What the recovery scan found (jbd2 PASS_SCAN and PASS_REVOKE). */
export interface ScanResult {
  /** The committed transactions after the tail, oldest first. */
  transactions: RecoveredTransaction[];
  /**
   * Revoke table: for every home block revoked by a committed transaction
   * (`revokeKey`), the highest sequence that revoked it. An image of
   * that block in a transaction with a sequence ≤ that one is never replayed.
   */
  revoked: Map<string, number>;
  /** Block where the next transaction goes. */
  headBlock: number;
  /** Sequence the next transaction gets. */
  nextSequence: number;
  /** Why the scan stopped (the decision-table rule that ended it). */
  stopReason: string;
}

/** Knobs of the recovery passes. */
export interface RecoveryOptions {
  /** Read-ahead window of each pass, in bytes (default `LOG_WINDOW_BYTES`, 4 MiB). */
  windowBytes?: number | undefined;
}

/** The circular log's geometry as the superblock gives it. */
export function geometryOf(sb: JournalSuperblock): LogGeometry {
  return { blockSizeBytes: sb.blockSizeBytes, lengthBlocks: sb.lengthBlocks, firstBlock: firstLogBlock(sb.blockSizeBytes) };
}

/**
 * Scan pass (jbd2 PASS_SCAN, with PASS_REVOKE folded in): walks the circular
 * log from the superblock's tail, transaction by transaction, classifying
 * each block with the decision table. Returns where each committed
 * transaction lies, the revoke table (revokes of committed transactions
 * only), and where the log ends. Reads only; retains no image or record.
 * @throws IO_ERROR from the device
 */
export async function scanJournal(device: BlockDevice, sb: JournalSuperblock, options: RecoveryOptions = {}): Promise<ScanResult> {
  const geometry = geometryOf(sb);
  const reader = new LogReader(device, geometry, options.windowBytes);
  const dataBlocks = sb.lengthBlocks - geometry.firstBlock;
  const transactions: RecoveredTransaction[] = [];
  const revoked = new Map<string, number>();
  let cursor = sb.tailBlock;
  let sequence = sb.tailSequence;
  const payloads = new PayloadArena();
  let scannedBlocks = 0;
  for (;;) {
    const revokes: Revocation[] = [];
    const walk = { reader, sequence, seed: transactionSeed(sb.uuid, sequence), start: cursor, room: dataBlocks - scannedBlocks, decodeRecords: true, payloads };
    const end = await walkTransaction(walk, { revokes: (entries) => void revokes.push(...entries) });
    if (!end.committed) return { transactions, revoked, headBlock: cursor, nextSequence: sequence, stopReason: end.stopReason };
    // Committed: its revokes count (a torn transaction's never do).
    for (const r of revokes) revoked.set(revokeKey(r.target, r.homeBlock), sequence);
    transactions.push({ sequence, startBlock: cursor, blocks: end.blocks, records: end.records, images: end.images });
    scannedBlocks += end.blocks;
    cursor = end.nextBlock;
    sequence += 1;
  }
}
