import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { assert, UnsupportedVersionError } from '@cowvol/base';
import { BackupArgumentError, BackupCorruptError } from './errors.js';
import type { RepositoryKeys } from './repository-keys.js';

/** `CVCH` (u32 big-endian): the first bytes of a sealed chunk (docs/FORMAT.md §12.3). */
export const CHUNK_MAGIC = 0x43564348;
/** The sealed-chunk version this code writes and reads. */
export const CHUNK_VERSION = 1;
/** Bytes of the header: magic (4), version (1), nonce (12). */
export const CHUNK_HEADER_BYTES = 17;
const NONCE_OFFSET = 5;
const NONCE_BYTES = 12;
/** Bytes of the AES-GCM tag at the end of a sealed chunk. */
export const CHUNK_TAG_BYTES = 16;
/** Bytes a sealed chunk adds to its plaintext. */
export const CHUNK_OVERHEAD_BYTES = CHUNK_HEADER_BYTES + CHUNK_TAG_BYTES;
/** The largest plaintext one chunk holds (the largest chunk size a `config` allows, docs/FORMAT.md §12.2). */
export const CHUNK_MAX_PLAINTEXT_BYTES = 64 * 1024 * 1024;
const CHUNK_ID = /^[0-9a-f]{64}$/;

/** A chunk ready to be stored: its id (the object key's last part) and its sealed body. */
export interface SealedChunk {
  /** 64 lowercase hex digits: HMAC-SHA-256(macKey, plaintext). */
  readonly id: string;
  readonly body: Buffer;
}

/** A chunk's id: lowercase hex of HMAC-SHA-256(macKey, plaintext) (docs/FORMAT.md §12.3). */
export function chunkId(keys: RepositoryKeys, plaintext: Buffer): string {
  return createHmac('sha256', keys.macKey).update(plaintext).digest('hex');
}

/**
 * Seals one chunk (docs/FORMAT.md §12.3): `CVCH` | version | 12-byte random
 * nonce | AES-256-GCM ciphertext | 16-byte tag, with the header (magic and
 * version) and the chunk id as associated data, so a body stored under
 * another id does not open.
 *
 * @throws INVALID_ARGUMENT for a plaintext over 64 MiB
 */
export function sealChunk(keys: RepositoryKeys, plaintext: Buffer): SealedChunk {
  if (plaintext.length > CHUNK_MAX_PLAINTEXT_BYTES) throw new BackupArgumentError(`a chunk holds at most 64 MiB, not ${String(plaintext.length)} bytes`);
  const id = chunkId(keys, plaintext);
  const header = Buffer.alloc(CHUNK_HEADER_BYTES);
  header.writeUInt32BE(CHUNK_MAGIC, 0);
  header.writeUInt8(CHUNK_VERSION, 4);
  randomBytes(NONCE_BYTES).copy(header, NONCE_OFFSET);
  const cipher = createCipheriv('aes-256-gcm', keys.encryptionKey, header.subarray(NONCE_OFFSET), { authTagLength: CHUNK_TAG_BYTES });
  cipher.setAAD(associatedData(header, id));
  const body = Buffer.concat([header, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  assert(body.length === plaintext.length + CHUNK_OVERHEAD_BYTES, 'a sealed chunk is its plaintext and 33 bytes');
  assert(body.readUInt32BE(0) === CHUNK_MAGIC, 'a sealed chunk starts with its magic');
  return { id, body };
}

/**
 * Opens a sealed chunk stored under `id`: checks the header, the GCM tag
 * (over the header, the id and the ciphertext), then that the plaintext's
 * HMAC is `id` (docs/FORMAT.md §12.3 "When a chunk is valid").
 *
 * @returns the plaintext
 * @throws INVALID_ARGUMENT for an id that is not 64 lowercase hex digits
 * @throws UNSUPPORTED_VERSION for a chunk of a newer version
 * @throws BACKUP_CORRUPT (details.chunkId) for anything else that does not check out
 */
export function openChunk(keys: RepositoryKeys, id: string, body: Buffer): Buffer {
  if (!CHUNK_ID.test(id)) throw new BackupArgumentError(`not a chunk id: ${JSON.stringify(id.slice(0, 80))}`);
  const corrupt = (why: string, cause?: unknown): BackupCorruptError =>
    new BackupCorruptError(`chunk ${id} is damaged: ${why}`, { details: { chunkId: id }, ...(cause === undefined ? {} : { cause }) });
  if (body.length < CHUNK_OVERHEAD_BYTES) throw corrupt(`${String(body.length)} bytes, shorter than a sealed chunk's 33`);
  if (body.length > CHUNK_MAX_PLAINTEXT_BYTES + CHUNK_OVERHEAD_BYTES) throw corrupt(`${String(body.length)} bytes, longer than any sealed chunk`);
  if (body.readUInt32BE(0) !== CHUNK_MAGIC) throw corrupt('bad magic');
  const version = body.readUInt8(4);
  if (version > CHUNK_VERSION)
    throw new UnsupportedVersionError(`chunk ${id} has version ${String(version)}; this cowvol reads version ${String(CHUNK_VERSION)}`, { details: { chunkId: id, version } });
  if (version !== CHUNK_VERSION) throw corrupt(`version ${String(version)}`);
  const header = body.subarray(0, CHUNK_HEADER_BYTES);
  const tagOffset = body.length - CHUNK_TAG_BYTES;
  const decipher = createDecipheriv('aes-256-gcm', keys.encryptionKey, header.subarray(NONCE_OFFSET), { authTagLength: CHUNK_TAG_BYTES });
  decipher.setAAD(associatedData(header, id));
  decipher.setAuthTag(body.subarray(tagOffset));
  let plaintext: Buffer;
  try {
    plaintext = Buffer.concat([decipher.update(body.subarray(CHUNK_HEADER_BYTES, tagOffset)), decipher.final()]);
  } catch (err) {
    throw corrupt('its authentication tag does not match (damaged, or stored under another id)', err);
  }
  assert(plaintext.length === body.length - CHUNK_OVERHEAD_BYTES, 'an opened chunk is its body less 33 bytes');
  const expected = Buffer.from(id, 'hex');
  const actual = createHmac('sha256', keys.macKey).update(plaintext).digest();
  if (!timingSafeEqual(expected, actual)) throw corrupt('its plaintext does not hash to its id');
  return plaintext;
}

/** The GCM associated data: the header's magic and version, then the id as 64 ASCII hex digits. */
function associatedData(header: Buffer, id: string): Buffer {
  return Buffer.concat([header.subarray(0, NONCE_OFFSET), Buffer.from(id, 'latin1')]);
}
