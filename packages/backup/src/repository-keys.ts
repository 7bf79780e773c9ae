import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { assert } from '@cowvol/base';
import { BackupArgumentError, BadKeyError } from './errors.js';

/** Bytes of a repository id (docs/FORMAT.md §12.2). */
export const REPOSITORY_ID_BYTES = 16;
/** Bytes of each derived key and of the key check value. */
export const DERIVED_KEY_BYTES = 32;

/**
 * HKDF `info` strings, one per derived key, so no two keys are ever the same
 * (RFC 5869 §3.2; docs/FORMAT.md §12.1). Never changed: they are part of the format.
 */
const INFO_ENCRYPTION = 'cowvol backup v1 encryption key';
const INFO_MAC = 'cowvol backup v1 chunk id key';
const INFO_CONFIG_MAC = 'cowvol backup v1 config mac key';
const INFO_KEY_CHECK = 'cowvol backup v1 key check key';
const INFO_MANIFEST = 'cowvol backup v1 manifest key';
/** What the key check value is the HMAC of. */
const KEY_CHECK_MESSAGE = Buffer.from('cowvol backup key check', 'latin1');

/**
 * The keys of one repository, derived from the key file's bytes
 * (docs/ARCHITECTURE.md §17, docs/FORMAT.md §12.1).
 */
export interface RepositoryKeys {
  /** AES-256-GCM key of sealed chunks (32 bytes). */
  readonly encryptionKey: Buffer;
  /** HMAC-SHA-256 key of chunk ids (32 bytes). */
  readonly macKey: Buffer;
  /** HMAC-SHA-256 key of the `config` object's MAC (32 bytes). */
  readonly configMacKey: Buffer;
  /** HMAC-SHA-256(key check key, "cowvol backup key check"), stored in `config` (32 bytes). */
  readonly keyCheck: Buffer;
  /** AES-256-GCM key of manifests (32 bytes; docs/FORMAT.md §12.4). */
  readonly manifestKey: Buffer;
}

/**
 * Derives a repository's keys with HKDF-SHA-256 (RFC 5869): input key
 * material the key file's bytes, salt the repository id, one `info` string
 * per key. The same key file gives unrelated keys in two repositories.
 *
 * @param keyBytes the key file's bytes (at least 32)
 * @param repositoryId the repository's 16-byte id (docs/FORMAT.md §12.2)
 * @throws INVALID_ARGUMENT for a short key or an id of another length
 */
export function deriveRepositoryKeys(keyBytes: Buffer, repositoryId: Buffer): RepositoryKeys {
  if (keyBytes.length < DERIVED_KEY_BYTES) throw new BackupArgumentError(`a repository key is at least 32 bytes, not ${String(keyBytes.length)}`);
  if (repositoryId.length !== REPOSITORY_ID_BYTES) throw new BackupArgumentError(`a repository id is 16 bytes, not ${String(repositoryId.length)}`);
  const derive = (info: string): Buffer => Buffer.from(hkdfSync('sha256', keyBytes, repositoryId, info, DERIVED_KEY_BYTES));
  const keyCheck = createHmac('sha256', derive(INFO_KEY_CHECK)).update(KEY_CHECK_MESSAGE).digest();
  const keys = { encryptionKey: derive(INFO_ENCRYPTION), macKey: derive(INFO_MAC), configMacKey: derive(INFO_CONFIG_MAC), keyCheck, manifestKey: derive(INFO_MANIFEST) };
  for (const value of Object.values(keys)) assert(value.length === DERIVED_KEY_BYTES, 'derived keys are 32 bytes');
  return keys;
}

/**
 * Compares the key check value stored in a repository's `config` with the
 * one these keys give, in constant time.
 *
 * @throws BAD_KEY when they differ: the key file is not this repository's
 */
export function verifyKeyCheck(keys: RepositoryKeys, storedKeyCheck: Buffer, where: string): void {
  const same = storedKeyCheck.length === keys.keyCheck.length && timingSafeEqual(storedKeyCheck, keys.keyCheck);
  if (!same) throw new BadKeyError(`the key does not open the backup repository ${where} (its key check value differs)`, { details: { repository: where } });
}
