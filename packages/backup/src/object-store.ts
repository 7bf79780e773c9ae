/**
 * The object store a backup repository lives in (docs/ARCHITECTURE.md §17):
 * flat keys of at most 1,024 bytes of UTF-8 under one bucket and prefix,
 * whole-object puts and gets, a conditional put (S3's `If-None-Match: *`)
 * and listing by prefix. Implemented over S3 with the AWS SDK v3.
 *
 * Errors are CowvolErrors with stable codes; an implementation never lets
 * a transport error through uncoded.
 */
export interface ObjectStore {
  /** Where the repository is, for messages (`s3://bucket/prefix`). */
  readonly url: string;
  /**
   * True when no write of a process can reach the store after that process
   * is gone: a local file system, whose writes are system calls that end
   * before their process can (`FileObjectStore`). Not over a network: a
   * request sent before a process died may still be held by a proxy or a
   * slow gateway and land later (S3). Only then is the lock of a holder
   * found gone treated as released (repository-lock.ts).
   */
  readonly writesEndWithProcess?: boolean;
  /**
   * Stores `body` under `key`. With `ifNoneMatch`, the put is conditional:
   * it fails with OBJECT_EXISTS when `key` already exists, and never
   * replaces it.
   */
  put(key: string, body: Buffer, options?: { ifNoneMatch?: boolean }): Promise<void>;
  /** The whole object. @throws OBJECT_NOT_FOUND when `key` does not exist */
  get(key: string): Promise<Buffer>;
  /** Size and time of `key`, or undefined when it does not exist. */
  head(key: string): Promise<ObjectInfo | undefined>;
  /** Every key starting with `prefix`, in ascending byte order of keys. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Removes `key`; removing a missing key is not an error. */
  delete(key: string): Promise<void>;
  /**
   * Optional: removes the store's own temporary objects (a put in flight
   * writes one first: FileObjectStore's `.cowvol-tmp-*` files) last written
   * at or before `cutoffMs` (the store's clock) — those a killed writer left,
   * which no listing shows. Called by prune under the exclusive lock.
   * @returns how many were removed, and their bytes
   */
  removeStaleTemporary?(cutoffMs: number): Promise<{ removed: number; bytes: number }>;
  /**
   * Optional: creates what holds the objects when it is missing (an S3
   * bucket); a store whose container comes with its first put (a
   * directory) leaves it out. Used by `Repository.init` only.
   * @returns true when it was created, false when it was there already
   */
  createContainer?(): Promise<boolean>;
}

/** One listed or headed object. */
export interface ObjectInfo {
  key: string;
  sizeBytes: number;
  lastModified: Date;
}
