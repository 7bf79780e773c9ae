import {
  CHUNK_HEADER_BYTES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_REPLY_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
} from './constants.js';
import { isAllZero, zeroRuns } from './zero-runs.js';

/**
 * Builders of everything the server sends (docs/FORMAT.md §10). Pure: each
 * returns the bytes; a reply that carries read data returns the header and
 * the data as separate buffers so the data is never copied.
 */

/** The 18-byte greeting: NBDMAGIC, IHAVEOPT, handshake flags FIXED_NEWSTYLE | NO_ZEROES ("Fixed newstyle negotiation"). */
export function greeting(): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
  b.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  b.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return b;
}

/** An option reply ("Option reply"): magic, u32 option, u32 reply type, u32 length, data. */
export function optionReply(option: number, replyType: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_BYTES + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_BYTES);
  return b;
}

/** An error reply carrying a human-readable message (UTF-8). */
export function optionError(option: number, errorType: number, message: string): Buffer {
  return optionReply(option, errorType, Buffer.from(message, 'utf8'));
}

/** NBD_REP_SERVER for NBD_OPT_LIST: u32 name length, name, description. */
export function serverReply(option: number, exportName: string, description: string): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const data = Buffer.alloc(4 + name.length);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  return optionReply(option, NBD_REP_SERVER, Buffer.concat([data, Buffer.from(description, 'utf8')]));
}

/** NBD_REP_INFO / NBD_INFO_EXPORT: u16 type, u64 size, u16 transmission flags. */
export function infoExportReply(option: number, sizeBytes: number, transmissionFlags: number): Buffer {
  const data = Buffer.alloc(12);
  data.writeUInt16BE(NBD_INFO_EXPORT, 0);
  data.writeBigUInt64BE(BigInt(sizeBytes), 2);
  data.writeUInt16BE(transmissionFlags, 10);
  return optionReply(option, NBD_REP_INFO, data);
}

/** NBD_REP_INFO / NBD_INFO_NAME or NBD_INFO_DESCRIPTION: u16 type, text. */
export function infoTextReply(option: number, infoType: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, text: string): Buffer {
  const body = Buffer.from(text, 'utf8');
  const data = Buffer.alloc(2 + body.length);
  data.writeUInt16BE(infoType, 0);
  body.copy(data, 2);
  return optionReply(option, NBD_REP_INFO, data);
}

/** NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: u16 type, u32 minimum, u32 preferred, u32 maximum ("Block size constraints"). */
export function infoBlockSizeReply(option: number, minimumBytes: number, preferredBytes: number, maximumBytes: number): Buffer {
  const data = Buffer.alloc(14);
  data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  data.writeUInt32BE(minimumBytes, 2);
  data.writeUInt32BE(preferredBytes, 6);
  data.writeUInt32BE(maximumBytes, 10);
  return optionReply(option, NBD_REP_INFO, data);
}

/** NBD_REP_META_CONTEXT: u32 context id, name. */
export function metaContextReply(option: number, contextId: number, name: string): Buffer {
  const body = Buffer.from(name, 'utf8');
  const data = Buffer.alloc(4 + body.length);
  data.writeUInt32BE(contextId, 0);
  body.copy(data, 4);
  return optionReply(option, NBD_REP_META_CONTEXT, data);
}

/** The reply to NBD_OPT_EXPORT_NAME: u64 size, u16 transmission flags, 124 zero bytes unless NO_ZEROES was agreed. */
export function exportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

/** A simple reply ("Simple reply message"): magic, u32 error, u64 cookie. Read data, if any, follows it. */
export function simpleReply(cookie: bigint, error: number): Buffer {
  // allocUnsafe: every byte is written below; small buffers come from Node's shared pool (one slab, no allocation per reply).
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

/** A structured reply chunk header ("Structured reply message"): magic, u16 flags, u16 type, u64 cookie, u32 length. */
export function chunkHeader(cookie: bigint, type: number, lengthBytes: number, done: boolean): Buffer {
  return writeChunkHeader(Buffer.allocUnsafe(CHUNK_HEADER_BYTES), cookie, type, lengthBytes, done);
}

/** Writes a chunk header at the start of `b` (which holds the chunk's fixed fields after it) and returns `b`. */
function writeChunkHeader(b: Buffer, cookie: bigint, type: number, lengthBytes: number, done: boolean): Buffer {
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? NBD_REPLY_FLAG_DONE : 0, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(lengthBytes, 16);
  return b;
}

/** Writes `value` (a byte offset, < 2^53) as a u64 BE at `at` without a BigInt. */
function writeU64(b: Buffer, value: number, at: number): void {
  b.writeUInt32BE(Math.floor(value / 0x1_0000_0000), at);
  b.writeUInt32BE(value % 0x1_0000_0000, at + 4);
}

/** NBD_REPLY_TYPE_OFFSET_DATA: header, u64 offset, then `data` (returned separately, not copied). */
export function offsetDataChunk(cookie: bigint, offsetBytes: number, data: Buffer, done: boolean): Buffer[] {
  const head = writeChunkHeader(Buffer.allocUnsafe(CHUNK_HEADER_BYTES + 8), cookie, NBD_REPLY_TYPE_OFFSET_DATA, 8 + data.length, done);
  writeU64(head, offsetBytes, CHUNK_HEADER_BYTES);
  return [head, data];
}

/** NBD_REPLY_TYPE_OFFSET_HOLE: header, u64 offset, u32 hole length. */
export function offsetHoleChunk(cookie: bigint, offsetBytes: number, lengthBytes: number, done: boolean): Buffer {
  const b = writeChunkHeader(Buffer.allocUnsafe(CHUNK_HEADER_BYTES + 12), cookie, NBD_REPLY_TYPE_OFFSET_HOLE, 12, done);
  writeU64(b, offsetBytes, CHUNK_HEADER_BYTES);
  b.writeUInt32BE(lengthBytes, CHUNK_HEADER_BYTES + 8);
  return b;
}

/** NBD_REPLY_TYPE_ERROR (always the last chunk): header, u32 error, u16 message length, message. */
export function errorChunk(cookie: bigint, error: number, message: string): Buffer {
  let text = Buffer.from(message, 'utf8');
  if (text.length > 4096) text = text.subarray(0, 4096);
  const b = writeChunkHeader(Buffer.alloc(CHUNK_HEADER_BYTES + 6 + text.length), cookie, NBD_REPLY_TYPE_ERROR, 6 + text.length, true);
  b.writeUInt32BE(error, CHUNK_HEADER_BYTES);
  b.writeUInt16BE(text.length, CHUNK_HEADER_BYTES + 4);
  text.copy(b, CHUNK_HEADER_BYTES + 6);
  return b;
}

/** One block status extent ("Block status descriptor"). */
export interface Extent {
  lengthBytes: number;
  flags: number;
}

/** NBD_REPLY_TYPE_BLOCK_STATUS: header, u32 context id, then per extent u32 length, u32 status flags. */
export function blockStatusChunk(cookie: bigint, contextId: number, extents: readonly Extent[], done: boolean): Buffer {
  const b = writeChunkHeader(Buffer.alloc(CHUNK_HEADER_BYTES + 4 + 8 * extents.length), cookie, NBD_REPLY_TYPE_BLOCK_STATUS, 4 + 8 * extents.length, done);
  b.writeUInt32BE(contextId, CHUNK_HEADER_BYTES);
  extents.forEach((e, i) => {
    b.writeUInt32BE(e.lengthBytes, CHUNK_HEADER_BYTES + 4 + 8 * i);
    b.writeUInt32BE(e.flags, CHUNK_HEADER_BYTES + 8 + 8 * i);
  });
  return b;
}

/** Most chunks a READ reply is cut into: larger reads are cut into coarser pieces. */
export const MAX_READ_CHUNKS = 256;

/**
 * The structured reply to a READ of `data` at `offsetBytes` (docs/ARCHITECTURE.md
 * §14.11; NBD spec "NBD_CMD_READ", "NBD_CMD_FLAG_DF"): one OFFSET_HOLE chunk when
 * every byte is zero; otherwise, with `dontFragment` or for a read shorter
 * than two `pieceBytes`, one OFFSET_DATA chunk; otherwise the read cut at
 * the export's multiples of `pieceBytes` (doubled until there are at most
 * MAX_READ_CHUNKS pieces) into OFFSET_HOLE chunks for the zero runs and
 * OFFSET_DATA chunks (views of `data`, not copies) for the rest, in order,
 * the last with DONE.
 */
export function readReply(cookie: bigint, offsetBytes: number, data: Buffer, dontFragment: boolean, pieceBytes: number): Buffer[] {
  if (isAllZero(data)) return [offsetHoleChunk(cookie, offsetBytes, data.length, true)];
  if (dontFragment || data.length < 2 * pieceBytes) return offsetDataChunk(cookie, offsetBytes, data, true);
  let piece = pieceBytes;
  while (data.length / piece > MAX_READ_CHUNKS) piece *= 2;
  const runs = zeroRuns(data, offsetBytes, piece);
  if (runs.length === 1) return offsetDataChunk(cookie, offsetBytes, data, true);
  const out: Buffer[] = [];
  let at = 0;
  runs.forEach((run, i) => {
    const done = i === runs.length - 1;
    if (run.zero) out.push(offsetHoleChunk(cookie, offsetBytes + at, run.lengthBytes, done));
    else out.push(...offsetDataChunk(cookie, offsetBytes + at, data.subarray(at, at + run.lengthBytes), done));
    at += run.lengthBytes;
  });
  return out;
}
