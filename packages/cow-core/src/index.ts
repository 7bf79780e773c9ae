/**
 * @cowvol/cow-core — a volume file with Next3-style copy-on-write snapshots
 * (docs/ARCHITECTURE.md §2), metadata in LevelDB, every metadata change through
 * @cowvol/journal. Entry point: {@link Volume}.
 */
export {
  Volume,
  validateSnapshotName,
  type CreateVolumeOptions,
  type OpenVolumeOptions,
  type SnapshotInfo,
  type VolumeInfo,
  type DeleteResult,
  type ConsistencyReport,
  type VolumeStats,
} from './volume.js';
export * from './errors.js';
export {
  FORMAT_VERSION,
  MAX_SNAPSHOTS,
  SNAPSHOT_NAME_PATTERN,
  DEFAULT_BLOCK_SIZE_BYTES,
  MIN_BLOCK_SIZE_BYTES,
  MAX_BLOCK_SIZE_BYTES,
  MAX_VOLUME_BYTES,
  MAX_READ_BYTES,
  volumeLayout,
  type VolumeLayout,
} from './layout.js';
export { ExtentAllocator, type Extent } from './allocator.js';
export { STORE_MAGIC, STORE_VERSION } from './store.js';
export { StoreReadCache, STORE_CACHE_BYTES, STORE_WINDOW_BYTES, type StoreCacheStats } from './store-read-cache.js';
export { BlockSources } from './read-through.js';
export { SnapshotReader, READS_IN_FLIGHT, LIVE_GAP_BLOCKS, SYNC_BACKOFF_RUNS, type ReadThroughIo, type SnapshotReaderStats } from './snapshot-reader.js';
export { SyncIoPolicy, SYNC_IO_LIMITS, SYNC_MAX_BYTES, SYNC_SLICE_MS, type SyncIoClock, type SyncIoLimits, type SyncIoStats } from './sync-io-policy.js';
export { JournalCorruptError, JournalAbortedError, JournalApplyError, JournalNeedsRecoveryError, OutcomeUnknownError, type RecoveryReport } from '@cowvol/journal';
export { checkVolume, metadataDamageReport, MAX_FINDINGS, type CheckReport, type CheckFinding } from './check.js';
export { checkStoreData, DATA_CHECK_BATCH_BLOCKS, type DamagedStoreBlock, type DataCheckResult } from './check-data.js';
export { rebindStoreCrc, storeBlockCrc, storeCrcPrefix, STORE_CRC_PREFIX_BYTES, type StoreBlockIdentity } from './store-crc.js';
export { repairVolumeJournal, type VolumeJournalRepair, type DiscardedJournalTransaction } from './journal-repair.js';
export { FreezeGate } from './freeze-gate.js';
export { RESERVE_BYTES } from './reserve.js';
export { META_RECORD_KINDS, type MetaRecord } from './meta-record.js';
export { type CreateSnapshotOptions, type MultiDeleteResult } from './volume.js';
export { type DeviceRole, type RoleOpeners, type VolumeState, type FailureListener } from './volume.js';
export { unionOfMaps, mergeExtents, type DiffExtent, type DiffResult } from './diff.js';
export { freeableBlocks, planDelete, type SnapshotSpace, type StoreSpace, type SpaceReport, type DeletePlan } from './space.js';
export { type SnapshotPage } from './volume-reports.js';
export { validateLabels, parseLabel, parseLabels, escapeLabelText, LABEL_KEY_PATTERN, LABEL_VALUE_FORBIDDEN, MAX_LABELS, MAX_LABEL_VALUE_CHARS } from './labels.js';
export { escapeTerminalText, TERMINAL_UNSAFE } from './terminal-text.js';
export { sameIdentity, type SnapshotIdentity, type ImportRecord } from './metadata.js';
export {
  STREAM_MAGIC,
  STREAM_VERSION,
  EXTENT_MAGIC,
  TRAILER_MAGIC,
  EXTENT_HEADER_BYTES,
  TRAILER_BYTES,
  MAX_EXTENT_BYTES,
  EXTENT_FLAG_ZERO,
  StreamWriter,
  encodeHeader,
  encodeExtent,
  encodeTrailer,
  readHeader,
  readExtent,
  checkStreamStart,
  STREAM_START_BYTES,
  verifyStream,
  type StreamHeader,
  type StreamExtent,
  type StreamSource,
  type VerifiedStream,
} from './stream.js';
export { exportSnapshot, snapshotDataPieces, type ExportOptions, type ExportResult, type ExportSource } from './export.js';
export { killPoint } from './kill-point.js';
export { setTemporaryPathTracker, type TemporaryPathTracker } from './temp-paths.js';
export { fileDataRanges, type ByteRange, type HoleDetection } from './live-data.js';
export { importStream, VerifyFailedError, IMPORT_MARKER_INTERVAL_BYTES, type ImportOptions, type ImportResult, type ImportProgress } from './import.js';
export { isoNs, type AcceptChangesReport, type OutsideChange } from './outside-writes.js';
export { STAMP_SETTLE_MS, statStamp, type StampChange, type StampRecord } from './change-stamp.js';
export {
  selectSnapshots,
  changedLabels,
  validateDeleteSelection,
  type DeleteSelection,
  type LabelChange,
  type SelectableSnapshot,
  type SelectedSnapshots,
  type SelectedDeleteOptions,
  type SelectedDeletePlan,
  type SelectedDeleteResult,
} from './snapshot-policy.js';
export { restoreSnapshot, type RestoreOptions, type RestoreResult } from './restore.js';
export { isIncompleteCreate } from './create-intent.js';
export { ZERO_PIECE_BYTES, ZERO_SPAN_BYTES } from './write-path.js';
