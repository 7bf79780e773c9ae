/**
 * @cowvol/backup — off-machine backups of cowvol snapshots
 * (docs/ARCHITECTURE.md §17, docs/FORMAT.md §12): a repository of
 * encrypted, content-addressed chunks and per-snapshot manifests on an
 * S3-compatible object store.
 */
export type { ObjectStore, ObjectInfo } from './object-store.js';
export { BadKeyError, BackupCorruptError, ObjectExistsError, ObjectNotFoundError, BackupArgumentError, RepositoryExistsError, RepositoryNotFoundError } from './errors.js';
export { loadKeyFile, generateKeyFile, KEY_FILE_KEY_BYTES } from './key-file.js';
export { deriveRepositoryKeys, verifyKeyCheck, REPOSITORY_ID_BYTES, type RepositoryKeys } from './repository-keys.js';
export { sealChunk, openChunk, chunkId, CHUNK_OVERHEAD_BYTES, CHUNK_MAX_PLAINTEXT_BYTES, type SealedChunk } from './chunk-seal.js';
export {
  newRepositoryConfig,
  encodeRepositoryConfig,
  decodeRepositoryConfig,
  isValidChunkSize,
  CONFIG_BYTES,
  CONFIG_FORMAT_VERSION,
  DEFAULT_CHUNK_SIZE_BYTES,
  type RepositoryConfig,
} from './repository-config.js';
export { FileObjectStore, validateObjectKey, OBJECT_KEY_MAX_BYTES } from './file-object-store.js';
export { S3ObjectStore, parseS3Url, storeErrorCode, type S3ObjectStoreOptions } from './s3-object-store.js';
export { encodeManifest, decodeManifest, manifestProblem, chunkCount, MANIFEST_MAGIC, MANIFEST_VERSION, MAX_MANIFEST_CHUNKS, MAX_MANIFEST_BYTES, type Manifest } from './manifest.js';
export { chunkObjectKey, manifestObjectKey, parseManifestObjectKey, isChunkId, isVolumeUuid, CONFIG_KEY, CHUNKS_PREFIX, MANIFESTS_PREFIX, LOCKS_PREFIX } from './object-keys.js';
export { Repository, type PutChunkResult, type ManifestRef } from './repository.js';
export { pushSnapshot, isZero, type PushOptions, type PushProgress, type PushResult, type PushSource } from './push.js';
export { restoreFromRepository, type RestoreOptions, type RestoreResult, type RestoreTarget } from './restore.js';
export { findRestoreBase, MAX_PARENT_HOPS, type RestoreBase } from './restore-base.js';
export { quiesceAndReleaseLocks, removeTempFilesSync, trackTempFile } from './interrupt-cleanup.js';
export { holderGone, processAlive, processSpace, PROCESS_SPACE_HEX } from '@cowvol/base';
export { listBackups, type CatalogEntry, type DamagedEntry } from './catalog.js';
export { forEachBounded, mapOrdered, checkJobs, DEFAULT_JOBS, MAX_JOBS } from './pool.js';
export {
  acquireLock,
  acquireReaderLock,
  listLocks,
  describeLock,
  RepositoryLock,
  RepositoryLockedError,
  LOCK_LEASE_MS,
  LOCK_CLOCK_SKEW_MS,
  type LockInfo,
  type LockOptions,
  type LockableRepository,
} from './repository-lock.js';
export { encodeLock, decodeLock, type LockKind, type LockLease, type LockSealing } from './lock-object.js';
export { applyRetention, validatePolicy, isoWeek, type RetentionPolicy, type RetentionItem, type RetentionDecision } from './retention.js';
export { verifyRepository, forEachManifest, type VerifyReport, type VerifyOptions, type DamagedChunk, type DamagedManifest, type SnapshotRef } from './repository-verify.js';
export { forgetSnapshots, pruneRepository, type ForgetReport, type ForgetOptions, type ForgetEntry, type PruneReport, type PruneOptions } from './repository-prune.js';
