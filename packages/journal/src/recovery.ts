import { unpackMultiple } from 'msgpackr';
import type { BlockDevice } from './block-device.js';
import { COMMIT_BYTES, TX_HEADER_BYTES, decodeHeader, verifyCommit, type JournalSuperblock } from './format.js';
import { JournalCorruptError } from './errors.js';

/** One committed transaction found by the recovery scan. */
export interface RecoveredTransaction {
  sequence: number;
  /** Records in the order they were logged. */
  records: unknown[];
  startOffsetBytes: number;
  endOffsetBytes: number;
}

/** What the recovery scan found (jbd2 PASS_SCAN). */
export interface ScanResult {
  transactions: RecoveredTransaction[];
  /** Offset just past the last valid transaction: where the next one goes. */
  endOffsetBytes: number;
  /** Sequence the next transaction gets. */
  nextSequence: number;
  /** Bytes after `endOffsetBytes` that were discarded (torn or corrupt tail). */
  discardedBytes: number;
  /** Why the scan stopped: `end of journal`, or the defect of the first invalid transaction. */
  stopReason: string;
}

/**
 * Scans the journal from the superblock's tail, transaction by transaction,
 * and stops at the first one that is not valid (bad magic, wrong sequence,
 * bad checksum, or running past the end of the file). Everything before that
 * point is committed and is returned in order for replay; everything from it
 * on is a torn or corrupt tail and must be discarded, never replayed
 * (BRIEF §4 guarantee 5; jbd2 do_one_pass). Reads only; never writes.
 */
export async function scanJournal(device: BlockDevice, sb: JournalSuperblock, seed: number): Promise<ScanResult> {
  const fileBytes = await device.sizeBytes();
  const transactions: RecoveredTransaction[] = [];
  let offset = sb.tailOffsetBytes;
  let sequence = sb.tailSequence;
  let stopReason = 'end of journal';
  while (offset < fileBytes) {
    if (offset + TX_HEADER_BYTES > fileBytes) {
      stopReason = 'torn header at end of file';
      break;
    }
    const header = await device.read(offset, TX_HEADER_BYTES);
    const decoded = decodeHeader(header, seed, sequence);
    if (typeof decoded === 'string') {
      stopReason = decoded;
      break;
    }
    const end = offset + TX_HEADER_BYTES + decoded.payloadLengthBytes + COMMIT_BYTES;
    if (end > fileBytes) {
      stopReason = 'transaction runs past end of file (torn write)';
      break;
    }
    const payload = await device.read(offset + TX_HEADER_BYTES, decoded.payloadLengthBytes);
    const commit = await device.read(offset + TX_HEADER_BYTES + decoded.payloadLengthBytes, COMMIT_BYTES);
    const bad = verifyCommit(commit, sequence, header, payload, seed);
    if (bad !== null) {
      stopReason = bad;
      break;
    }
    let records: unknown[];
    try {
      records = decoded.payloadLengthBytes === 0 ? [] : (unpackMultiple(payload) as unknown[]);
    } catch {
      // The checksum matched, so these are the bytes that were committed: an
      // undecodable payload means a bug in the writer, not a torn write.
      stopReason = 'payload does not decode';
      break;
    }
    if (records.length !== decoded.recordCount) {
      // Checksum-valid but inconsistent: written wrong, not torn. Refuse to guess.
      throw new JournalCorruptError(`${device.name}: transaction ${sequence} holds ${records.length} records but its header says ${decoded.recordCount}`);
    }
    transactions.push({ sequence, records, startOffsetBytes: offset, endOffsetBytes: end });
    offset = end;
    sequence += 1;
  }
  return {
    transactions,
    endOffsetBytes: offset,
    nextSequence: sequence,
    discardedBytes: Math.max(0, fileBytes - offset),
    stopReason: offset >= fileBytes && stopReason === 'end of journal' ? 'end of journal' : stopReason,
  };
}
