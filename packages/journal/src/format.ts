import { crc32c } from './checksum.js';
import { CowvolError, JournalCorruptError } from './errors.js';

/**
 * On-disk layout of the journal file (documented byte by byte in
 * docs/FORMAT.md, "Journal file"). All integers are big-endian, as in jbd2.
 *
 * ```
 * offset 0     superblock (SUPERBLOCK_BYTES)
 * offset 4096  transaction, transaction, ...   (appended; sequence +1 each)
 * transaction = header (TX_HEADER_BYTES) | payload | commit block (COMMIT_BYTES)
 * ```
 *
 * A transaction is valid when its header magic, version, sequence and header
 * checksum match, its payload fits in the file, and its commit block has the
 * right magic, the same sequence and a CRC32C that matches header + payload +
 * commit prefix. Every checksum is seeded with `crc32c(uuid)` (jbd2 checksum
 * v3 seeds with the journal UUID), so a transaction copied from another
 * journal never validates.
 */
export const SUPERBLOCK_BYTES = 4096;
/** 'CVJL' */
export const JOURNAL_MAGIC = 0x43564a4c;
export const JOURNAL_VERSION = 1;
/** 'CVTX' */
export const TX_HEADER_MAGIC = 0x43565458;
export const TX_VERSION = 1;
export const TX_HEADER_BYTES = 32;
/** 'CVCM' */
export const COMMIT_MAGIC = 0x4356434d;
export const COMMIT_BYTES = 24;
export const UUID_BYTES = 16;
/** Upper bound on one transaction's payload; a header claiming more is corrupt. */
export const MAX_PAYLOAD_BYTES = 64 * 1024 * 1024;
/** Upper bound on records in one transaction. */
export const MAX_RECORDS = 1 << 20;

export interface JournalSuperblock {
  uuid: Buffer;
  /** Sequence of the oldest transaction that may still need replay. */
  tailSequence: number;
  /** Byte offset where that transaction starts. */
  tailOffsetBytes: number;
}

export interface TxHeader {
  sequence: number;
  payloadLengthBytes: number;
  recordCount: number;
}

/** crc32c(uuid): the seed of every checksum in one journal. */
export function checksumSeed(uuid: Uint8Array): number {
  return crc32c(uuid);
}

export function encodeSuperblock(sb: JournalSuperblock): Buffer {
  if (sb.uuid.length !== UUID_BYTES) throw new JournalCorruptError('journal uuid must be 16 bytes');
  const buf = Buffer.alloc(SUPERBLOCK_BYTES);
  buf.writeUInt32BE(JOURNAL_MAGIC, 0);
  buf.writeUInt32BE(JOURNAL_VERSION, 4);
  sb.uuid.copy(buf, 8);
  buf.writeBigUInt64BE(BigInt(sb.tailSequence), 24);
  buf.writeBigUInt64BE(BigInt(sb.tailOffsetBytes), 32);
  buf.writeUInt32BE(crc32c(buf.subarray(0, 40)), 40);
  return buf;
}

/** Decodes and validates a superblock. Throws `JOURNAL_CORRUPT` on bad magic, version or checksum. */
export function decodeSuperblock(buf: Buffer, name: string): JournalSuperblock {
  if (buf.length < SUPERBLOCK_BYTES) throw new JournalCorruptError(`${name}: journal superblock is truncated`);
  const magic = buf.readUInt32BE(0);
  if (magic !== JOURNAL_MAGIC) throw new JournalCorruptError(`${name}: not a cowvol journal (bad magic 0x${magic.toString(16)})`);
  const version = buf.readUInt32BE(4);
  if (version !== JOURNAL_VERSION) throw new CowvolError('UNSUPPORTED_VERSION', `${name}: journal version ${version}; this cowvol reads version ${JOURNAL_VERSION}`, { details: { version } });
  const stored = buf.readUInt32BE(40);
  if (stored !== crc32c(buf.subarray(0, 40))) throw new JournalCorruptError(`${name}: journal superblock checksum mismatch`);
  const tailSequence = Number(buf.readBigUInt64BE(24));
  const tailOffsetBytes = Number(buf.readBigUInt64BE(32));
  if (tailOffsetBytes < SUPERBLOCK_BYTES || !Number.isSafeInteger(tailSequence) || tailSequence < 1) {
    throw new JournalCorruptError(`${name}: journal superblock has an impossible tail (${tailSequence} @ ${tailOffsetBytes})`);
  }
  return { uuid: Buffer.from(buf.subarray(8, 24)), tailSequence, tailOffsetBytes };
}

export function encodeHeader(h: TxHeader, seed: number): Buffer {
  const buf = Buffer.alloc(TX_HEADER_BYTES);
  buf.writeUInt32BE(TX_HEADER_MAGIC, 0);
  buf.writeUInt16BE(TX_VERSION, 4);
  buf.writeUInt16BE(0, 6);
  buf.writeBigUInt64BE(BigInt(h.sequence), 8);
  buf.writeUInt32BE(h.payloadLengthBytes, 16);
  buf.writeUInt32BE(h.recordCount, 20);
  buf.writeUInt32BE(crc32c(buf.subarray(0, 24), seed), 24);
  return buf;
}

/** Returns the header, or a reason string when these bytes are not a valid header for `expectedSequence`. */
export function decodeHeader(buf: Buffer, seed: number, expectedSequence: number): TxHeader | string {
  if (buf.length < TX_HEADER_BYTES) return 'short header';
  if (buf.readUInt32BE(0) !== TX_HEADER_MAGIC) return 'bad header magic';
  if (buf.readUInt16BE(4) !== TX_VERSION) return 'bad transaction version';
  if (buf.readUInt32BE(24) !== crc32c(buf.subarray(0, 24), seed)) return 'header checksum mismatch';
  const sequence = Number(buf.readBigUInt64BE(8));
  if (sequence !== expectedSequence) return `sequence ${sequence} where ${expectedSequence} was expected`;
  const payloadLengthBytes = buf.readUInt32BE(16);
  const recordCount = buf.readUInt32BE(20);
  if (payloadLengthBytes > MAX_PAYLOAD_BYTES || recordCount > MAX_RECORDS) return 'header lengths out of bounds';
  return { sequence, payloadLengthBytes, recordCount };
}

/** Commit block; its checksum covers header + payload + commit bytes 0..15. */
export function encodeCommit(sequence: number, header: Buffer, payload: Buffer, seed: number): Buffer {
  const buf = Buffer.alloc(COMMIT_BYTES);
  buf.writeUInt32BE(COMMIT_MAGIC, 0);
  buf.writeBigUInt64BE(BigInt(sequence), 8);
  let crc = crc32c(header, seed);
  crc = crc32c(payload, crc);
  crc = crc32c(buf.subarray(0, 16), crc);
  buf.writeUInt32BE(crc, 16);
  return buf;
}

/** Returns null when the commit block is valid for this header and payload, else a reason. */
export function verifyCommit(commit: Buffer, sequence: number, header: Buffer, payload: Buffer, seed: number): string | null {
  if (commit.length < COMMIT_BYTES) return 'short commit block';
  if (commit.readUInt32BE(0) !== COMMIT_MAGIC) return 'bad commit magic';
  if (Number(commit.readBigUInt64BE(8)) !== sequence) return 'commit sequence mismatch';
  let crc = crc32c(header, seed);
  crc = crc32c(payload, crc);
  crc = crc32c(commit.subarray(0, 16), crc);
  if (commit.readUInt32BE(16) !== crc) return 'transaction checksum mismatch';
  return null;
}
