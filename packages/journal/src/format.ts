import { crc32c, hasCode, UnsupportedVersionError } from '@cowvol/base';
import { JournalCorruptError } from './errors.js';

/**
 * On-disk layout of the journal file, version 2 (docs/FORMAT.md, "Journal
 * file"): a circular log of fixed-size blocks in the style of jbd2. All
 * integers are big-endian.
 *
 * ```
 * bytes 0..1023           superblock area: slot A at byte 0, slot B at byte 512
 * blocks F .. length-1    the log, used circularly (block length-1 is followed by block F),
 *                         F = firstLogBlock(blockSize) = ceil(1024 / blockSize)
 * transaction = [descriptor + its images]* [revoke]* [records header + payload blocks]* commit
 * ```
 *
 * Every log block starts with a 16-byte header: magic 'CVJB', block type,
 * sequence (u64). Descriptor, revoke, records and commit blocks end with a
 * CRC32C of the rest of the block ("tail checksum"). Images are verified by
 * the checksum in their tag, record payloads by the checksum in their
 * records block, and the commit block carries the block count of the
 * transaction and a CRC32C chained over every one of its blocks — so one
 * write and one flush per commit suffice (jbd2 async commit): a torn
 * transaction never validates. Every checksum except the superblock's is
 * seeded with the journal's UUID and the transaction's sequence (jbd2
 * checksum v3), so a block from another journal or another transaction
 * never validates.
 */
export const JOURNAL_MAGIC = 0x43564a4c; // 'CVJL' superblock
export const JOURNAL_VERSION = 2;
export const BLOCK_MAGIC = 0x43564a42; // 'CVJB' log block header
export const UUID_BYTES = 16;
export const HEADER_BYTES = 16;
export const TAIL_CHECKSUM_BYTES = 4;

export const BlockType = { descriptor: 1, commit: 2, revoke: 5, records: 9 } as const;
/** Tag flag: the image's first 4 bytes equalled BLOCK_MAGIC and are stored as zero. */
export const TAG_ESCAPED = 1;
export const TAG_BYTES = 16;
export const REVOKE_ENTRY_BYTES = 12;
/** Offset of the first tag in a descriptor / entry in a revoke block. */
export const BODY_OFFSET = 24;
/** Every payload block starts with 4 zero bytes, so it can never look like a log block header. */
export const PAYLOAD_MARKER_BYTES = 4;

/** Smallest and largest journal block size (equal to the volume block size). */
export const MIN_JOURNAL_BLOCK_BYTES = 512;
export const MAX_JOURNAL_BLOCK_BYTES = 65536;

/** Whether `n` is a journal block size: a power of two from {@link MIN_JOURNAL_BLOCK_BYTES} to {@link MAX_JOURNAL_BLOCK_BYTES} (docs/FORMAT.md §5.1). */
export function isJournalBlockSize(n: number): boolean {
  return Number.isSafeInteger(n) && n >= MIN_JOURNAL_BLOCK_BYTES && n <= MAX_JOURNAL_BLOCK_BYTES && (n & (n - 1)) === 0;
}
/** A log shorter than this cannot hold a useful transaction. */
export const MIN_JOURNAL_BLOCKS = 64;

/**
 * Two superblock slots, one sector each: checkpoints write them alternately
 * with a rising generation, and open takes the valid slot with the highest
 * generation. A write torn or garbled during a power loss can damage only
 * the slot being written; the other still holds the previous tail.
 */
export const SUPERBLOCK_SLOT_BYTES = 512;
export const SUPERBLOCK_AREA_BYTES = 2 * SUPERBLOCK_SLOT_BYTES;

/** First log block for a block size (the superblock area comes first). */
export function firstLogBlock(blockBytes: number): number {
  return Math.ceil(SUPERBLOCK_AREA_BYTES / blockBytes);
}

export interface JournalSuperblock {
  /** Bumped by every superblock write; selects the slot (generation % 2) and the newer slot at open. */
  generation: number;
  uuid: Buffer;
  blockSizeBytes: number;
  /** Total blocks in the file, superblock included. */
  lengthBlocks: number;
  /** Sequence of the oldest transaction that may still need replay (the next one when clean). */
  tailSequence: number;
  /** Block where that transaction starts. */
  tailBlock: number;
}

/** A block image with its home location. */
export interface BlockImage {
  /** Home file id (the owner's numbering, e.g. 0 = volume, 1 = snapshot store). */
  target: number;
  /** Home block number in units of the journal block size. */
  homeBlock: number;
  data: Buffer;
}

export interface Revocation {
  target: number;
  homeBlock: number;
}

/** Seed of every checksum of one transaction: crc32c(u64be(sequence), crc32c(uuid)). */
export function transactionSeed(uuid: Uint8Array, sequence: number): number {
  const seq = Buffer.alloc(8);
  seq.writeBigUInt64BE(BigInt(sequence));
  return crc32c(seq, crc32c(uuid));
}

export function tagsPerDescriptor(blockBytes: number): number {
  return Math.floor((blockBytes - BODY_OFFSET - TAIL_CHECKSUM_BYTES) / TAG_BYTES);
}

export function entriesPerRevoke(blockBytes: number): number {
  return Math.floor((blockBytes - BODY_OFFSET - TAIL_CHECKSUM_BYTES) / REVOKE_ENTRY_BYTES);
}

export function payloadPerBlock(blockBytes: number): number {
  return blockBytes - PAYLOAD_MARKER_BYTES;
}

// ------------------------------------------------------------ superblock

/** One superblock slot (SUPERBLOCK_SLOT_BYTES); write it at `slotOffset(sb.generation)`. */
export function encodeSuperblock(sb: JournalSuperblock): Buffer {
  if (sb.uuid.length !== UUID_BYTES) throw new JournalCorruptError('journal uuid must be 16 bytes');
  const buf = Buffer.alloc(SUPERBLOCK_SLOT_BYTES);
  buf.writeUInt32BE(JOURNAL_MAGIC, 0);
  buf.writeUInt32BE(JOURNAL_VERSION, 4);
  sb.uuid.copy(buf, 8);
  buf.writeUInt32BE(sb.blockSizeBytes, 24);
  buf.writeUInt32BE(sb.lengthBlocks, 28);
  buf.writeBigUInt64BE(BigInt(sb.tailSequence), 32);
  buf.writeUInt32BE(sb.tailBlock, 40);
  buf.writeUInt32BE(sb.generation >>> 0, 44);
  buf.writeUInt32BE(crc32c(buf.subarray(0, 48)), 48);
  return buf;
}

/** Byte offset of the slot a superblock of this generation is written to. */
export function slotOffset(generation: number): number {
  return (generation % 2) * SUPERBLOCK_SLOT_BYTES;
}

type SlotResult = { sb: JournalSuperblock } | { error: Error };

function decodeSlot(buf: Buffer, name: string): SlotResult {
  const magic = buf.readUInt32BE(0);
  if (magic !== JOURNAL_MAGIC) return { error: new JournalCorruptError(`${name}: not a cowvol journal (bad magic 0x${magic.toString(16)})`) };
  // Version before checksum: another version has another layout (its checksum sits elsewhere).
  const version = buf.readUInt32BE(4);
  if (version !== JOURNAL_VERSION) {
    return { error: new UnsupportedVersionError(`${name}: journal version ${version}; this cowvol reads version ${JOURNAL_VERSION}`, { details: { version } }) };
  }
  if (buf.readUInt32BE(48) !== crc32c(buf.subarray(0, 48))) return { error: new JournalCorruptError(`${name}: journal superblock checksum mismatch`) };
  const blockSizeBytes = buf.readUInt32BE(24);
  const lengthBlocks = buf.readUInt32BE(28);
  const tailSequence = Number(buf.readBigUInt64BE(32));
  const tailBlock = buf.readUInt32BE(40);
  const okBlock = isJournalBlockSize(blockSizeBytes);
  if (!okBlock || lengthBlocks < MIN_JOURNAL_BLOCKS || tailBlock < firstLogBlock(blockSizeBytes) || tailBlock >= lengthBlocks || !Number.isSafeInteger(tailSequence) || tailSequence < 1) {
    return { error: new JournalCorruptError(`${name}: journal superblock has impossible values`, { details: { blockSizeBytes, lengthBlocks, tailSequence, tailBlock } }) };
  }
  return { sb: { generation: buf.readUInt32BE(44), uuid: Buffer.from(buf.subarray(8, 24)), blockSizeBytes, lengthBlocks, tailSequence, tailBlock } };
}

/**
 * Decodes the superblock area (SUPERBLOCK_AREA_BYTES): the valid slot with
 * the newer generation wins (generations compare modulo 2^32).
 * @throws JOURNAL_CORRUPT when neither slot is valid, UNSUPPORTED_VERSION for another version
 */
export function decodeSuperblock(area: Buffer, name: string): JournalSuperblock {
  if (area.length < SUPERBLOCK_AREA_BYTES) throw new JournalCorruptError(`${name}: journal superblock is truncated`);
  const a = decodeSlot(area.subarray(0, SUPERBLOCK_SLOT_BYTES), name);
  const b = decodeSlot(area.subarray(SUPERBLOCK_SLOT_BYTES, SUPERBLOCK_AREA_BYTES), name);
  if ('sb' in a && 'sb' in b) return ((b.sb.generation - a.sb.generation) | 0) > 0 ? b.sb : a.sb;
  if ('sb' in a) return a.sb;
  if ('sb' in b) return b.sb;
  const isVersion = (e: Error) => hasCode(e, 'UNSUPPORTED_VERSION');
  throw isVersion(a.error) ? a.error : isVersion(b.error) ? b.error : a.error;
}

// ------------------------------------------------------------ log blocks

function header(buf: Buffer, type: number, sequence: number): void {
  buf.writeUInt32BE(BLOCK_MAGIC, 0);
  buf.writeUInt32BE(type, 4);
  buf.writeBigUInt64BE(BigInt(sequence), 8);
}

function sealTail(buf: Buffer, seed: number): Buffer {
  buf.writeUInt32BE(crc32c(buf.subarray(0, buf.length - TAIL_CHECKSUM_BYTES), seed), buf.length - TAIL_CHECKSUM_BYTES);
  return buf;
}

/** Header fields of a log block, or null when the block has no log header (bad magic). */
export function readHeader(buf: Buffer): { type: number; sequence: number } | null {
  if (buf.length < HEADER_BYTES || buf.readUInt32BE(0) !== BLOCK_MAGIC) return null;
  return { type: buf.readUInt32BE(4), sequence: Number(buf.readBigUInt64BE(8)) };
}

export function tailChecksumOk(buf: Buffer, seed: number): boolean {
  return buf.readUInt32BE(buf.length - TAIL_CHECKSUM_BYTES) === crc32c(buf.subarray(0, buf.length - TAIL_CHECKSUM_BYTES), seed);
}

export interface Tag {
  target: number;
  flags: number;
  checksum: number;
  homeBlock: number;
}

/** A descriptor for `images` (≤ tagsPerDescriptor) and the escaped image blocks that follow it. */
export function encodeDescriptor(images: BlockImage[], blockBytes: number, sequence: number, seed: number): Buffer[] {
  const desc = Buffer.alloc(blockBytes);
  header(desc, BlockType.descriptor, sequence);
  desc.writeUInt32BE(images.length, 16);
  const out: Buffer[] = [desc];
  images.forEach((img, i) => {
    let data = img.data;
    let flags = 0;
    if (data.readUInt32BE(0) === BLOCK_MAGIC) {
      data = Buffer.from(data);
      data.writeUInt32BE(0, 0);
      flags |= TAG_ESCAPED;
    }
    const at = BODY_OFFSET + i * TAG_BYTES;
    desc.writeUInt16BE(img.target, at);
    desc.writeUInt16BE(flags, at + 2);
    desc.writeUInt32BE(crc32c(img.data, seed), at + 4); // of the unescaped image
    desc.writeBigUInt64BE(BigInt(img.homeBlock), at + 8);
    out.push(data);
  });
  sealTail(desc, seed);
  return out;
}

export function decodeTags(desc: Buffer): Tag[] | null {
  const count = desc.readUInt32BE(16);
  if (count > tagsPerDescriptor(desc.length)) return null;
  const tags: Tag[] = [];
  for (let i = 0; i < count; i++) {
    const at = BODY_OFFSET + i * TAG_BYTES;
    tags.push({ target: desc.readUInt16BE(at), flags: desc.readUInt16BE(at + 2), checksum: desc.readUInt32BE(at + 4), homeBlock: Number(desc.readBigUInt64BE(at + 8)) });
  }
  return tags;
}

/** Restores an escaped image. */
export function unescapeImage(data: Buffer, tag: Tag): Buffer {
  if ((tag.flags & TAG_ESCAPED) === 0) return data;
  const out = Buffer.from(data);
  out.writeUInt32BE(BLOCK_MAGIC, 0);
  return out;
}

export function encodeRevoke(entries: Revocation[], blockBytes: number, sequence: number, seed: number): Buffer {
  const buf = Buffer.alloc(blockBytes);
  header(buf, BlockType.revoke, sequence);
  buf.writeUInt32BE(entries.length, 16);
  entries.forEach((e, i) => {
    const at = BODY_OFFSET + i * REVOKE_ENTRY_BYTES;
    buf.writeUInt16BE(e.target, at);
    buf.writeBigUInt64BE(BigInt(e.homeBlock), at + 4);
  });
  return sealTail(buf, seed);
}

export function decodeRevoke(buf: Buffer): Revocation[] | null {
  const count = buf.readUInt32BE(16);
  if (count > entriesPerRevoke(buf.length)) return null;
  const out: Revocation[] = [];
  for (let i = 0; i < count; i++) {
    const at = BODY_OFFSET + i * REVOKE_ENTRY_BYTES;
    out.push({ target: buf.readUInt16BE(at), homeBlock: Number(buf.readBigUInt64BE(at + 4)) });
  }
  return out;
}

/** A records block for `payload` (msgpack values, concatenated) and the payload blocks that follow it. */
export function encodeRecords(payload: Buffer, recordCount: number, blockBytes: number, sequence: number, seed: number): Buffer[] {
  const per = payloadPerBlock(blockBytes);
  const blocks = Math.ceil(payload.length / per);
  const head = Buffer.alloc(blockBytes);
  header(head, BlockType.records, sequence);
  head.writeUInt32BE(payload.length, 16);
  head.writeUInt32BE(blocks, 20);
  head.writeUInt32BE(crc32c(payload, seed), 24);
  head.writeUInt32BE(recordCount, 28);
  sealTail(head, seed);
  const out = [head];
  for (let i = 0; i < blocks; i++) {
    const b = Buffer.alloc(blockBytes); // bytes 0..3 stay zero: the payload marker
    payload.copy(b, PAYLOAD_MARKER_BYTES, i * per, Math.min(payload.length, (i + 1) * per));
    out.push(b);
  }
  return out;
}

export function decodeRecordsHead(head: Buffer): { payloadBytes: number; payloadBlocks: number; payloadCrc: number; recordCount: number } {
  return { payloadBytes: head.readUInt32BE(16), payloadBlocks: head.readUInt32BE(20), payloadCrc: head.readUInt32BE(24), recordCount: head.readUInt32BE(28) };
}

/** Commit block: the transaction's block count (before the commit block) and CRC32C chained over those blocks. */
export function encodeCommit(blockCount: number, transactionCrc: number, blockBytes: number, sequence: number, seed: number, commitTimeMs = Date.now()): Buffer {
  const buf = Buffer.alloc(blockBytes);
  header(buf, BlockType.commit, sequence);
  buf.writeUInt32BE(blockCount, 16);
  buf.writeUInt32BE(transactionCrc >>> 0, 20);
  buf.writeBigUInt64BE(BigInt(commitTimeMs), 24);
  return sealTail(buf, seed);
}

export function decodeCommit(buf: Buffer): { blockCount: number; transactionCrc: number } {
  return { blockCount: buf.readUInt32BE(16), transactionCrc: buf.readUInt32BE(20) };
}

/** Chains the transaction checksum over one more block. */
export function chainCrc(crc: number, block: Buffer): number {
  return crc32c(block, crc);
}

/** Key of one home block (`target:homeBlock`) in the in-memory maps: the revoke table, the image cache. Not on disk. */
export function revokeKey(target: number, homeBlock: number): string {
  return `${target}:${homeBlock}`;
}
