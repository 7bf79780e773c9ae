/**
 * @cowvol/journal — a jbd2-style write-ahead journal on a file.
 * Knows nothing of snapshots. See docs/FORMAT.md ("Journal file").
 */
export { Journal, Handle, MAX_HANDLES_PER_COMMIT, type ReplayFn, type ApplyFn, type RecoveryReport, type JournalStats } from './journal.js';
export { scanJournal, type RecoveredTransaction, type ScanResult } from './recovery.js';
export { FileBlockDevice, fileDeviceOpener, type BlockDevice, type DeviceOpener } from './block-device.js';
export { crc32c } from './checksum.js';
export {
  CowvolError,
  JournalCorruptError,
  JournalCreditsExceededError,
  JournalAbortedError,
  IoError,
  NoSpaceError,
  AssertionFailedError,
  assert,
} from './errors.js';
export {
  SUPERBLOCK_BYTES,
  JOURNAL_MAGIC,
  JOURNAL_VERSION,
  TX_HEADER_MAGIC,
  TX_HEADER_BYTES,
  COMMIT_MAGIC,
  COMMIT_BYTES,
  MAX_PAYLOAD_BYTES,
} from './format.js';
