/**
 * @cowvol/backup — off-machine backups of cowvol snapshots
 * (docs/ARCHITECTURE.md §17, docs/FORMAT.md §12): a repository of
 * encrypted, content-addressed chunks and per-snapshot manifests on an
 * S3-compatible object store.
 */
export type { ObjectStore, ObjectInfo } from './object-store.js';
export { S3ObjectStore, parseS3Url, storeErrorCode, type S3ObjectStoreOptions } from './s3-object-store.js';
