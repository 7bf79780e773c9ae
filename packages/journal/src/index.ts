/**
 * @cowvol/journal — a jbd2-style write-ahead journal on a file: handles
 * with credits, group commit, block images with home locations and logical
 * records, frozen copies, ordered data, revoke, CRC32C checksums,
 * checkpoint, recovery. Knows nothing of snapshots. See docs/FORMAT.md
 * ("Journal file").
 */
export { Journal, MAX_HANDLES_PER_COMMIT, DEFAULT_JOURNAL_BYTES, type ReplayFn, type ApplyFn, type RecoveryReport, type JournalStats, type JournalOpenOptions } from './journal.js';
export { Handle, Transaction, type TransactionState } from './transaction.js';
export { scanJournal, type RecoveredTransaction, type RecoveryOptions, type ScanResult } from './recovery-scan.js';
export { replayJournal, type ReplayedTransaction, type ReplaySink, type ReplayCounts } from './recovery-replay.js';
export { classify, DECISION_TABLE, type BlockPattern, type ScanAction } from './decision-table.js';
export { LogReader, LOG_WINDOW_BYTES, type LogGeometry } from './log-reader.js';
export { repairJournal, type JournalRepairReport, type JournalRepairOptions, type DiscardedTransaction } from './repair.js';
export { JournalCorruptError, JournalCreditsExceededError, JournalAbortedError, JournalApplyError, JournalNeedsRecoveryError, OutcomeUnknownError } from './errors.js';
export {
  JOURNAL_MAGIC,
  JOURNAL_VERSION,
  BLOCK_MAGIC,
  BlockType,
  HEADER_BYTES,
  TAG_BYTES,
  TAG_ESCAPED,
  MIN_JOURNAL_BLOCKS,
  encodeSuperblock,
  decodeSuperblock,
  SUPERBLOCK_AREA_BYTES,
  encodeDescriptor,
  encodeRevoke,
  encodeRecords,
  encodeCommit,
  chainCrc,
  revokeKey,
  transactionSeed,
  tagsPerDescriptor,
  type BlockImage,
  type Revocation,
  type JournalSuperblock,
} from './format.js';
