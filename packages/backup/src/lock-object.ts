import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { assert, isProcessSpace } from '@cowvol/base';
import type { RepositoryConfig } from './repository-config.js';
import type { RepositoryKeys } from './repository-keys.js';

/** `CVLK` (u32 big-endian): the first bytes of a lock object. */
export const LOCK_MAGIC = 0x43564c4b;
export const LOCK_VERSION = 1;
const HEADER_BYTES = 17;
const NONCE_OFFSET = 5;
const TAG_BYTES = 16;
/** The longest lock object read: its payload is a few hundred bytes of JSON. */
const LOCK_MAX_BYTES = 4096;
const INFO_LOCK = 'cowvol backup v1 lock key';

export type LockKind = 'shared' | 'exclusive';

/** The decoded lease of a lock object (docs/FORMAT.md §12.5). */
export interface LockLease {
  kind: LockKind;
  /** When the lock was taken (ISO 8601 UTC, the holder's clock); never changes on renewal. */
  createdAt: string;
  /** When it lapses unless renewed (ISO 8601 UTC, the holder's clock). */
  expiresAt: string;
  host: string;
  pid: number;
  /** What took it: `push`, `forget`, `prune`, `verify`. */
  command: string;
  /** The holder's process space (process-space.ts): where `pid` names it. Absent in locks of older versions and where it is unknown. */
  space?: string;
}

/** What sealing a lock object needs of a repository: its config (the id salts the key) and keys. */
export interface LockSealing {
  readonly config: RepositoryConfig;
  readonly keys: RepositoryKeys;
}

/**
 * A lock object (docs/FORMAT.md §12.5): `CVLK` | version | random nonce |
 * AES-256-GCM (lock key) of the JSON lease | tag; associated data the
 * header's magic and version and the object key.
 */
export function encodeLock(repo: LockSealing, key: string, lease: LockLease): Buffer {
  const header = Buffer.alloc(HEADER_BYTES);
  header.writeUInt32BE(LOCK_MAGIC, 0);
  header.writeUInt8(LOCK_VERSION, 4);
  randomBytes(12).copy(header, NONCE_OFFSET);
  const cipher = createCipheriv('aes-256-gcm', lockKey(repo), header.subarray(NONCE_OFFSET), { authTagLength: TAG_BYTES });
  cipher.setAAD(Buffer.concat([header.subarray(0, NONCE_OFFSET), Buffer.from(key, 'utf8')]));
  const body = Buffer.concat([header, cipher.update(JSON.stringify({ v: LOCK_VERSION, ...lease }), 'utf8'), cipher.final(), cipher.getAuthTag()]);
  assert(body.length <= LOCK_MAX_BYTES, 'a lock object is at most 4 KiB');
  return body;
}

/** The lease of a lock object, or undefined when it does not open or does not parse. */
export function decodeLock(repo: LockSealing, key: string, body: Buffer): LockLease | undefined {
  if (body.length < HEADER_BYTES + TAG_BYTES || body.length > LOCK_MAX_BYTES || body.readUInt32BE(0) !== LOCK_MAGIC || body.readUInt8(4) !== LOCK_VERSION) return undefined;
  try {
    const decipher = createDecipheriv('aes-256-gcm', lockKey(repo), body.subarray(NONCE_OFFSET, HEADER_BYTES), { authTagLength: TAG_BYTES });
    decipher.setAAD(Buffer.concat([body.subarray(0, NONCE_OFFSET), Buffer.from(key, 'utf8')]));
    decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
    const text = Buffer.concat([decipher.update(body.subarray(HEADER_BYTES, body.length - TAG_BYTES)), decipher.final()]).toString('utf8');
    const p = JSON.parse(text) as Record<string, unknown>;
    const ok =
      p.v === LOCK_VERSION &&
      (p.kind === 'shared' || p.kind === 'exclusive') &&
      typeof p.createdAt === 'string' &&
      typeof p.expiresAt === 'string' &&
      Number.isFinite(Date.parse(p.createdAt)) &&
      Number.isFinite(Date.parse(p.expiresAt)) &&
      typeof p.host === 'string' &&
      typeof p.pid === 'number' &&
      typeof p.command === 'string' &&
      (p.space === undefined || isProcessSpace(p.space));
    if (!ok) return undefined;
    const lease: LockLease = {
      kind: p.kind as LockKind,
      createdAt: p.createdAt as string,
      expiresAt: p.expiresAt as string,
      host: p.host as string,
      pid: p.pid as number,
      command: p.command as string,
    };
    if (p.space !== undefined) lease.space = p.space as string;
    return lease;
  } catch {
    return undefined;
  }
}

/** HKDF-SHA-256 of the encryption key, salted with the repository id: the lock key (docs/FORMAT.md §12.1). */
function lockKey(repo: LockSealing): Buffer {
  return Buffer.from(hkdfSync('sha256', repo.keys.encryptionKey, repo.config.repositoryId, INFO_LOCK, 32));
}
