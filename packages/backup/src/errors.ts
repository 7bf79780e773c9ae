import { CowvolError, type CowvolErrorOptions } from '@cowvol/base';

/**
 * `BAD_KEY`: the key file is refused (missing, a symlink, not private, not
 * 64 hex digits), or its key is not the repository's — detected through the
 * key check value of the `config` object before anything is written
 * (docs/FORMAT.md §12.1, §12.2). `details.path` names the key file when known.
 */
export class BadKeyError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('BAD_KEY', message, options);
  }
}

/**
 * `BACKUP_CORRUPT`: an object of the backup repository failed its checks —
 * a bad magic, length, CRC, MAC or authentication tag, or a chunk whose
 * plaintext does not hash to its id (docs/FORMAT.md §12). `details.chunkId`
 * or `details.object` names it.
 */
export class BackupCorruptError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('BACKUP_CORRUPT', message, options);
  }
}

/** `OBJECT_EXISTS`: a conditional put found its key taken; nothing was replaced. `details.key` names it. */
export class ObjectExistsError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('OBJECT_EXISTS', message, options);
  }
}

/** `OBJECT_NOT_FOUND`: no object under the key. `details.key` names it. */
export class ObjectNotFoundError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('OBJECT_NOT_FOUND', message, options);
  }
}

/** `INVALID_ARGUMENT`: a key, URL, size or id given to the backup package is malformed. */
export class BackupArgumentError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('INVALID_ARGUMENT', message, options);
  }
}

/** `REPOSITORY_EXISTS`: `backup init` found a `config` object at the URL; nothing was written. `details.repository` names it. */
export class RepositoryExistsError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('REPOSITORY_EXISTS', message, options);
  }
}

/** `REPOSITORY_NOT_FOUND`: no `config` object at the URL: not a backup repository (run `cowvol backup init`). */
export class RepositoryNotFoundError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('REPOSITORY_NOT_FOUND', message, options);
  }
}
