import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { assert, crc32c, UnsupportedVersionError } from '@cowvol/base';
import { BackupArgumentError, BackupCorruptError } from './errors.js';
import { DERIVED_KEY_BYTES, deriveRepositoryKeys, REPOSITORY_ID_BYTES, verifyKeyCheck, type RepositoryKeys } from './repository-keys.js';

/** `CVBC` (u32 big-endian): the first bytes of the `config` object (docs/FORMAT.md §12.2). */
export const CONFIG_MAGIC = 0x43564243;
/** The repository format version this code writes and reads. */
export const CONFIG_FORMAT_VERSION = 1;
/** Bytes of an encoded version-1 `config` object. */
export const CONFIG_BYTES = 96;
/** The chunk size a new repository gets unless told otherwise: 4 MiB. */
export const DEFAULT_CHUNK_SIZE_BYTES = 4 * 1024 * 1024;
/** Bounds of the chunk size: a power of two from 64 KiB to 64 MiB. */
export const MIN_CHUNK_SIZE_BYTES = 64 * 1024;
export const MAX_CHUNK_SIZE_BYTES = 64 * 1024 * 1024;

// Offsets of the version-1 layout (docs/FORMAT.md §12.2).
const VERSION_OFFSET = 4;
const CHUNK_SIZE_OFFSET = 8;
const ID_OFFSET = 12;
const KEY_CHECK_OFFSET = 28;
const MAC_OFFSET = 60;
const CRC_OFFSET = 92;
/** Magic, version and the trailer CRC: the shortest object whose trailer is checked. */
const TRAILER_MIN_BYTES = 12;

/** The decoded `config` object of a repository. */
export interface RepositoryConfig {
  readonly formatVersion: number;
  /** 16 random bytes chosen at init; the HKDF salt of every key (docs/FORMAT.md §12.1). */
  readonly repositoryId: Buffer;
  /** Bytes of plaintext per chunk (the last chunk of a snapshot may be shorter). */
  readonly chunkSizeBytes: number;
  /** The key check value: a wrong key is told apart from a damaged object. */
  readonly keyCheck: Buffer;
}

/**
 * A new repository's `config` (random id, `chunkSizeBytes` or 4 MiB) and
 * its keys, derived from `keyBytes`.
 *
 * @throws INVALID_ARGUMENT for a chunk size that is not a power of two in 64 KiB..64 MiB
 */
export function newRepositoryConfig(keyBytes: Buffer, chunkSizeBytes = DEFAULT_CHUNK_SIZE_BYTES): { config: RepositoryConfig; keys: RepositoryKeys } {
  if (!isValidChunkSize(chunkSizeBytes)) throw new BackupArgumentError(`a chunk size is a power of two from 64 KiB to 64 MiB, not ${String(chunkSizeBytes)}`);
  const repositoryId = randomBytes(REPOSITORY_ID_BYTES);
  const keys = deriveRepositoryKeys(keyBytes, repositoryId);
  return { config: { formatVersion: CONFIG_FORMAT_VERSION, repositoryId, chunkSizeBytes, keyCheck: keys.keyCheck }, keys };
}

/**
 * Encodes `config` (docs/FORMAT.md §12.2): 96 bytes, its MAC made with
 * `keys.configMacKey`, then a CRC32C over everything before it.
 */
export function encodeRepositoryConfig(config: RepositoryConfig, keys: RepositoryKeys): Buffer {
  assert(config.formatVersion === CONFIG_FORMAT_VERSION, 'this code writes config version 1');
  assert(isValidChunkSize(config.chunkSizeBytes), 'a config chunk size is a power of two in 64 KiB..64 MiB');
  assert(config.repositoryId.length === REPOSITORY_ID_BYTES && config.keyCheck.length === DERIVED_KEY_BYTES, 'config id and key check lengths');
  assert(config.keyCheck.equals(keys.keyCheck), 'a config is encoded with its own keys');
  const out = Buffer.alloc(CONFIG_BYTES);
  out.writeUInt32BE(CONFIG_MAGIC, 0);
  out.writeUInt32LE(config.formatVersion, VERSION_OFFSET);
  out.writeUInt32LE(config.chunkSizeBytes, CHUNK_SIZE_OFFSET);
  config.repositoryId.copy(out, ID_OFFSET);
  config.keyCheck.copy(out, KEY_CHECK_OFFSET);
  configMac(keys, out).copy(out, MAC_OFFSET);
  out.writeUInt32LE(crc32c(out.subarray(0, CRC_OFFSET)), CRC_OFFSET);
  return out;
}

/**
 * Decodes and checks a `config` object, in this order
 * (docs/FORMAT.md §12.2, "When a config is valid"): magic, the trailer CRC32C (the
 * last 4 bytes, over all before them, in every version), version, length, chunk
 * size; then derives the keys from `keyBytes` and the stored repository id,
 * compares the key check value, and checks the MAC. A wrong key is thus
 * BAD_KEY, a damaged object BACKUP_CORRUPT, and nothing has been written.
 *
 * @param where the repository's URL, for messages
 * @throws UNSUPPORTED_VERSION for a config of a newer version
 * @throws BACKUP_CORRUPT for a bad magic, length, CRC, chunk size or MAC
 * @throws BAD_KEY when `keyBytes` is not this repository's key
 */
export function decodeRepositoryConfig(bytes: Buffer, keyBytes: Buffer, where: string): { config: RepositoryConfig; keys: RepositoryKeys } {
  const corrupt = (why: string): BackupCorruptError => new BackupCorruptError(`the config of backup repository ${where} is damaged: ${why}`, { details: { object: 'config', repository: where } });
  if (bytes.length < VERSION_OFFSET + 4 || bytes.readUInt32BE(0) !== CONFIG_MAGIC) throw corrupt('not a cowvol backup config (bad magic)');
  // The trailer CRC comes before the version (docs/FORMAT.md §12.2): every version ends with it, so a flipped byte in the version is damage, not a newer format.
  if (bytes.length < TRAILER_MIN_BYTES || crc32c(bytes.subarray(0, bytes.length - 4)) !== bytes.readUInt32LE(bytes.length - 4)) throw corrupt('its CRC32C does not match');
  const formatVersion = bytes.readUInt32LE(VERSION_OFFSET);
  if (formatVersion > CONFIG_FORMAT_VERSION) {
    throw new UnsupportedVersionError(`backup repository ${where} has format version ${String(formatVersion)}; this cowvol reads version ${String(CONFIG_FORMAT_VERSION)}`, {
      details: { version: formatVersion, repository: where },
    });
  }
  if (formatVersion !== CONFIG_FORMAT_VERSION) throw corrupt(`format version ${String(formatVersion)}`);
  if (bytes.length !== CONFIG_BYTES) throw corrupt(`${String(bytes.length)} bytes, not ${String(CONFIG_BYTES)}`);
  assert(CRC_OFFSET === CONFIG_BYTES - 4, 'the CRC is the trailer of a version-1 config, checked above');
  const chunkSizeBytes = bytes.readUInt32LE(CHUNK_SIZE_OFFSET);
  if (!isValidChunkSize(chunkSizeBytes)) throw corrupt(`chunk size ${String(chunkSizeBytes)}`);
  const repositoryId = Buffer.from(bytes.subarray(ID_OFFSET, ID_OFFSET + REPOSITORY_ID_BYTES));
  const keyCheck = Buffer.from(bytes.subarray(KEY_CHECK_OFFSET, KEY_CHECK_OFFSET + DERIVED_KEY_BYTES));
  const keys = deriveRepositoryKeys(keyBytes, repositoryId);
  verifyKeyCheck(keys, keyCheck, where);
  const mac = bytes.subarray(MAC_OFFSET, MAC_OFFSET + DERIVED_KEY_BYTES);
  if (!timingSafeEqual(mac, configMac(keys, bytes))) throw corrupt('its MAC does not match');
  return { config: { formatVersion, repositoryId, chunkSizeBytes, keyCheck }, keys };
}

/** True for a power of two in 64 KiB..64 MiB. */
export function isValidChunkSize(chunkSizeBytes: number): boolean {
  return Number.isInteger(chunkSizeBytes) && chunkSizeBytes >= MIN_CHUNK_SIZE_BYTES && chunkSizeBytes <= MAX_CHUNK_SIZE_BYTES && (chunkSizeBytes & (chunkSizeBytes - 1)) === 0;
}

/** HMAC-SHA-256(configMacKey, bytes 0..59). */
function configMac(keys: RepositoryKeys, encoded: Buffer): Buffer {
  return createHmac('sha256', keys.configMacKey).update(encoded.subarray(0, MAC_OFFSET)).digest();
}
