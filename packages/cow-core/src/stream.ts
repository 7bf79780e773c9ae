import { crc32c, UnsupportedVersionError } from '@cowvol/base';
import { NotAStreamError, StreamCorruptError, StreamExtentInvalidError, StreamHeaderTooLargeError } from './errors.js';
import type { SnapshotIdentity } from './metadata.js';
import { validateStreamHeader } from './stream-header.js';

/**
 * The cowvol snapshot stream, version 1 (docs/FORMAT.md, "Snapshot stream"):
 * what `snapshot export` writes and `import` reads. Big-endian integers.
 *
 * ```
 * stream  = header, extent*, trailer
 * header  = magic 'CVSX' u32 | version u32 | jsonLength u32 | json (jsonLength bytes, UTF-8) | headerCrc u32
 *           headerCrc = CRC32C(all header bytes before it)
 * extent  = magic 'CVXE' u32 | index u32 | offsetBytes u64 | lengthBytes u32 | flags u32 | data | extentCrc u32
 *           data is lengthBytes bytes, or nothing when flags bit 0 (ZERO) is set
 *           extentCrc = CRC32C(the 24 header bytes and the data)
 * trailer = magic 'CVXT' u32 | reserved u32 (0) | extentCount u64 | totalBytes u64 | chainCrc u32 | trailerCrc u32
 *           chainCrc = CRC32C(every extentCrc as 4 big-endian bytes, in order), seeded with headerCrc
 *           trailerCrc = CRC32C(trailer bytes 0..27)
 * ```
 *
 * Every byte is covered by a checksum; the chain binds the extents' order
 * and count and the trailer to its header. Extents are in increasing,
 * non-overlapping offset order, block-aligned, 1 byte to
 * {@link MAX_EXTENT_BYTES} long, inside the volume.
 */
export const STREAM_MAGIC = 0x43565358; // 'CVSX'
export const STREAM_VERSION = 1;
export const EXTENT_MAGIC = 0x43565845; // 'CVXE'
export const TRAILER_MAGIC = 0x43565854; // 'CVXT'
export const STREAM_HEADER_FIXED_BYTES = 12;
export const MAX_HEADER_JSON_BYTES = 64 * 1024;
export const EXTENT_HEADER_BYTES = 24;
export const EXTENT_CRC_BYTES = 4;
export const TRAILER_BYTES = 32;
/** Longest extent (data or zero) in a stream. */
export const MAX_EXTENT_BYTES = 4 * 1024 * 1024;
/** Extent flag: the extent is all zeros; no data bytes follow its header. */
export const EXTENT_FLAG_ZERO = 1;

/** The header's JSON document. */
export interface StreamHeader {
  /** `full`: every non-zero block of the source snapshot (zero blocks omitted: the target starts as zeros). `incremental`: every block changed since `base`. */
  kind: 'full' | 'incremental';
  sizeBytes: number;
  blockSizeBytes: number;
  /** The snapshot the stream reproduces. */
  source: SnapshotIdentity;
  /** For incremental streams: the snapshot the target must hold. */
  base: SnapshotIdentity | null;
  /** The source snapshot's labels, given to the imported snapshot. */
  labels: Record<string, string>;
  /** ISO 8601 UTC: when the stream was written. */
  createdAt: string;
  /** Who wrote it, e.g. `cowvol 0.1.0`. */
  producer: string;
}

/** One extent as read back from a stream. */
export interface StreamExtent {
  index: number;
  offsetBytes: number;
  lengthBytes: number;
  zero: boolean;
  /** The data (absent for zero extents). */
  data: Buffer | undefined;
  crc: number;
  /** Where the record starts in the stream. */
  streamOffsetBytes: number;
  /** Where the next record starts. */
  nextOffsetBytes: number;
}

/** Random access to a stream of known length (a file, or stdin spooled to one). */
export interface StreamSource {
  lengthBytes: number;
  /** Reads up to `lengthBytes` at `offsetBytes` (fewer only at the end). */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
}

/** What {@link verifyStream} found: a stream whose every checksum holds. */
export interface VerifiedStream {
  header: StreamHeader;
  headerCrc: number;
  /** Stream offset of the first extent (= header length). */
  firstExtentOffsetBytes: number;
  /** Stream offset of each extent, by index. */
  extentOffsets: number[];
  /** CRC32C of each extent record as verified, by index: a later read of it must find the same (import.ts, STREAM_CHANGED). */
  extentCrcs: number[];
  extentCount: number;
  /** Sum of the extents' lengths (zero extents included). */
  totalBytes: number;
  /** Bytes of data carried (zero extents excluded). */
  dataBytes: number;
  streamBytes: number;
}

function u64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32BE(at);
  const lo = buf.readUInt32BE(at + 4);
  return hi * 2 ** 32 + lo;
}

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / 2 ** 32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

function crcBytes(crc: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(crc >>> 0, 0);
  return b;
}

/**
 * The checksum chain of a verified stream over its header and its first
 * `count` extents: what the trailer holds for all of them (docs/FORMAT.md §9.3), here for
 * a prefix (the import marker's `appliedChain`).
 */
export function extentChainOf(v: VerifiedStream, count: number): number {
  let chain = v.headerCrc;
  for (let i = 0; i < count; i++) chain = chainedWith(chain, v.extentCrcs[i] ?? 0);
  return chain;
}

/** The chain CRC after one more extent whose CRC32C is `extentCrc`: CRC32C of its 4 big-endian bytes, seeded with the chain so far (docs/FORMAT.md §9.3). */
export function chainedWith(chain: number, extentCrc: number): number {
  return crc32c(crcBytes(extentCrc), chain);
}

/** Encodes the header; returns its bytes and its CRC. */
export function encodeHeader(header: StreamHeader): { bytes: Buffer; crc: number } {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > MAX_HEADER_JSON_BYTES) throw new StreamHeaderTooLargeError(json.length, MAX_HEADER_JSON_BYTES);
  const bytes = Buffer.alloc(STREAM_HEADER_FIXED_BYTES + json.length + 4);
  bytes.writeUInt32BE(STREAM_MAGIC, 0);
  bytes.writeUInt32BE(STREAM_VERSION, 4);
  bytes.writeUInt32BE(json.length, 8);
  json.copy(bytes, STREAM_HEADER_FIXED_BYTES);
  const crc = crc32c(bytes.subarray(0, STREAM_HEADER_FIXED_BYTES + json.length));
  bytes.writeUInt32BE(crc, STREAM_HEADER_FIXED_BYTES + json.length);
  return { bytes, crc };
}

/** Encodes one extent record as [header, data?, crc] (no copy of the data). */
export function encodeExtent(index: number, offsetBytes: number, lengthBytes: number, data: Buffer | undefined): { parts: Buffer[]; crc: number } {
  const head = Buffer.alloc(EXTENT_HEADER_BYTES);
  head.writeUInt32BE(EXTENT_MAGIC, 0);
  head.writeUInt32BE(index, 4);
  writeU64(head, offsetBytes, 8);
  head.writeUInt32BE(lengthBytes, 16);
  head.writeUInt32BE(data === undefined ? EXTENT_FLAG_ZERO : 0, 20);
  let crc = crc32c(head);
  if (data !== undefined) crc = crc32c(data, crc);
  return { parts: data === undefined ? [head, crcBytes(crc)] : [head, data, crcBytes(crc)], crc };
}

export function encodeTrailer(extentCount: number, totalBytes: number, chainCrc: number): Buffer {
  const t = Buffer.alloc(TRAILER_BYTES);
  t.writeUInt32BE(TRAILER_MAGIC, 0);
  writeU64(t, extentCount, 8);
  writeU64(t, totalBytes, 16);
  t.writeUInt32BE(chainCrc >>> 0, 24);
  t.writeUInt32BE(crc32c(t.subarray(0, 28)), 28);
  return t;
}

/**
 * Writes a stream record by record to `out`, keeping the chain CRC and the
 * counts. Extents must come in increasing offset order.
 */
export class StreamWriter {
  private chain: number;
  private index = 0;
  private totalBytes = 0;
  private dataBytes = 0;
  private streamBytes = 0;
  private nextOffset = 0;

  constructor(
    readonly header: StreamHeader,
    private readonly out: (bytes: Buffer) => Promise<void>,
  ) {
    this.chain = 0;
  }

  async start(): Promise<void> {
    const { bytes, crc } = encodeHeader(this.header);
    this.chain = crc;
    await this.emit(bytes);
  }

  /** Appends a data extent (`data` is copied to the stream as is). */
  async data(offsetBytes: number, data: Buffer): Promise<void> {
    await this.extent(offsetBytes, data.length, data);
  }

  /** Appends a zero extent of `lengthBytes`. */
  async zero(offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.extent(offsetBytes, lengthBytes, undefined);
  }

  /** Writes the trailer; returns the totals. */
  async finish(): Promise<{ extentCount: number; totalBytes: number; dataBytes: number; streamBytes: number }> {
    await this.emit(encodeTrailer(this.index, this.totalBytes, this.chain));
    return { extentCount: this.index, totalBytes: this.totalBytes, dataBytes: this.dataBytes, streamBytes: this.streamBytes };
  }

  private async extent(offsetBytes: number, lengthBytes: number, data: Buffer | undefined): Promise<void> {
    if (lengthBytes <= 0 || lengthBytes > MAX_EXTENT_BYTES) throw new StreamExtentInvalidError(`extent length ${lengthBytes} outside 1..${MAX_EXTENT_BYTES}`, { offsetBytes, lengthBytes });
    if (offsetBytes < this.nextOffset)
      throw new StreamExtentInvalidError(`extent at ${offsetBytes} is not after the previous one (${this.nextOffset})`, { offsetBytes, lengthBytes, nextOffsetBytes: this.nextOffset });
    const { parts, crc } = encodeExtent(this.index, offsetBytes, lengthBytes, data);
    this.chain = chainedWith(this.chain, crc);
    this.index += 1;
    this.totalBytes += lengthBytes;
    if (data) this.dataBytes += lengthBytes;
    this.nextOffset = offsetBytes + lengthBytes;
    for (const p of parts) await this.emit(p);
  }

  private async emit(bytes: Buffer): Promise<void> {
    this.streamBytes += bytes.length;
    await this.out(bytes);
  }
}

function corrupt(message: string, details: Record<string, unknown>): StreamCorruptError {
  return new StreamCorruptError(message, { details });
}

async function readExactly(source: StreamSource, offsetBytes: number, lengthBytes: number, what: string, details: Record<string, unknown>): Promise<Buffer> {
  const buf = lengthBytes === 0 ? Buffer.alloc(0) : await source.read(offsetBytes, lengthBytes);
  if (buf.length !== lengthBytes) {
    throw corrupt(`stream is truncated: ${what} at stream offset ${offsetBytes} needs ${lengthBytes} bytes, only ${buf.length} left`, { ...details, streamOffsetBytes: offsetBytes });
  }
  return buf;
}

/** Bytes {@link checkStreamStart} needs: the magic. */
export const STREAM_START_BYTES = 4;

/**
 * Checks the first bytes of what should be a stream (docs/FORMAT.md §9):
 * a reader that must take a whole input before it can verify it (a spool
 * of stdin) refuses one that is not a stream at its first bytes instead of
 * after its last — an endless `/dev/zero` would fill the disk first.
 * @throws NOT_A_STREAM
 */
export function checkStreamStart(head: Buffer): void {
  if (head.length < STREAM_START_BYTES || head.readUInt32BE(0) !== STREAM_MAGIC) throw new NotAStreamError('input is not a cowvol stream (no CVSX magic at offset 0)');
}

/**
 * Reads and checks the header: magic, CRC, version, then every JSON field
 * ({@link validateStreamHeader}).
 * @throws NOT_A_STREAM, UNSUPPORTED_VERSION, STREAM_CORRUPT
 */
export async function readHeader(source: StreamSource): Promise<{ header: StreamHeader; crc: number; lengthBytes: number }> {
  const d = { record: 'header' };
  if (source.lengthBytes < 4) throw new NotAStreamError(`input is ${source.lengthBytes} bytes: not a cowvol stream`);
  const fixed = await readExactly(source, 0, Math.min(STREAM_HEADER_FIXED_BYTES, source.lengthBytes), 'the header', d);
  checkStreamStart(fixed);
  if (fixed.length < STREAM_HEADER_FIXED_BYTES) throw corrupt('stream is truncated inside its header', { ...d, streamOffsetBytes: 0 });
  const version = fixed.readUInt32BE(4);
  const jsonLength = fixed.readUInt32BE(8);
  if (jsonLength > MAX_HEADER_JSON_BYTES) {
    // A flipped bit in the length field; the version is checked after the CRC for the same reason.
    throw corrupt(`stream header claims ${jsonLength} bytes of JSON, more than ${MAX_HEADER_JSON_BYTES}: corrupt`, { ...d, streamOffsetBytes: 0 });
  }
  const rest = await readExactly(source, STREAM_HEADER_FIXED_BYTES, jsonLength + 4, 'the header', d);
  const crc = crc32c(rest.subarray(0, jsonLength), crc32c(fixed));
  if (rest.readUInt32BE(jsonLength) !== crc) throw corrupt('stream header fails its checksum', { ...d, streamOffsetBytes: 0 });
  if (version > STREAM_VERSION || version === 0) throw new UnsupportedVersionError(`stream version ${version}; this cowvol reads version ${STREAM_VERSION}`, { details: { version } });
  let header: StreamHeader;
  try {
    header = JSON.parse(rest.subarray(0, jsonLength).toString('utf8')) as StreamHeader;
  } catch (err) {
    throw new StreamCorruptError('stream header JSON does not parse', { cause: err, details: { ...d, streamOffsetBytes: 0 } });
  }
  // Every field, before anything is written (docs/FORMAT.md §9.1).
  validateStreamHeader(header);
  return { header, crc, lengthBytes: STREAM_HEADER_FIXED_BYTES + jsonLength + 4 };
}

/**
 * Reads the record at `offsetBytes`: an extent (checked: magic, index,
 * bounds, CRC) or, when it carries the trailer magic, null.
 * @throws STREAM_CORRUPT naming the extent
 */
export async function readExtent(source: StreamSource, header: StreamHeader, offsetBytes: number, expectedIndex: number, minVolumeOffset: number): Promise<StreamExtent | null> {
  const d = { record: 'extent', extentIndex: expectedIndex };
  const head = await readExactly(source, offsetBytes, Math.min(EXTENT_HEADER_BYTES, source.lengthBytes - offsetBytes), `extent ${expectedIndex}`, d);
  if (head.length >= 4 && head.readUInt32BE(0) === TRAILER_MAGIC) return null;
  if (head.length < EXTENT_HEADER_BYTES)
    throw corrupt(`stream is truncated: it ends inside record ${expectedIndex} at stream offset ${offsetBytes}, without a trailer`, { ...d, streamOffsetBytes: offsetBytes });
  if (head.readUInt32BE(0) !== EXTENT_MAGIC) {
    if (source.lengthBytes - offsetBytes === TRAILER_BYTES)
      throw corrupt(`the trailer at stream offset ${offsetBytes} has no trailer magic: corrupt`, { record: 'trailer', extentIndex: expectedIndex, streamOffsetBytes: offsetBytes });
    throw corrupt(`extent ${expectedIndex} at stream offset ${offsetBytes} has no extent magic: corrupt`, { ...d, streamOffsetBytes: offsetBytes });
  }
  const index = head.readUInt32BE(4);
  const volOffset = u64(head, 8);
  const lengthBytes = head.readUInt32BE(16);
  const flags = head.readUInt32BE(20);
  const zero = (flags & EXTENT_FLAG_ZERO) !== 0;
  const where = `extent ${expectedIndex} (volume bytes ${volOffset}+${lengthBytes}, stream offset ${offsetBytes})`;
  const dd = { ...d, streamOffsetBytes: offsetBytes, offsetBytes: volOffset, lengthBytes };
  // Bounds first (a flipped length bit must not make us read gigabytes); then the CRC.
  const sane =
    lengthBytes > 0 &&
    lengthBytes <= MAX_EXTENT_BYTES &&
    (flags & ~EXTENT_FLAG_ZERO) === 0 &&
    index === expectedIndex &&
    volOffset >= minVolumeOffset &&
    volOffset + lengthBytes <= header.sizeBytes &&
    volOffset % header.blockSizeBytes === 0 &&
    lengthBytes % header.blockSizeBytes === 0;
  const body = zero ? 0 : lengthBytes;
  if (!sane) {
    // Say whether the record's own checksum fails (a damaged record) or holds (a malformed writer).
    const avail = Math.min(body, Math.max(0, source.lengthBytes - offsetBytes - EXTENT_HEADER_BYTES - EXTENT_CRC_BYTES));
    throw corrupt(`${where} is malformed or fails its checksum (index ${index}, flags ${flags}${avail < body ? ', truncated' : ''})`, dd);
  }
  const rest = await readExactly(source, offsetBytes + EXTENT_HEADER_BYTES, body + EXTENT_CRC_BYTES, where, dd);
  const data = zero ? undefined : rest.subarray(0, body);
  let crc = crc32c(head);
  if (data) crc = crc32c(data, crc);
  if (rest.readUInt32BE(body) !== crc) throw corrupt(`${where} fails its checksum`, dd);
  return { index, offsetBytes: volOffset, lengthBytes, zero, data, crc, streamOffsetBytes: offsetBytes, nextOffsetBytes: offsetBytes + EXTENT_HEADER_BYTES + body + EXTENT_CRC_BYTES };
}

/**
 * Pass 1 of an import: reads the whole stream and checks every checksum, the
 * extents' order and bounds, the trailer's counts and chain, and that
 * nothing follows the trailer. Reads only; memory O(extents).
 * @throws NOT_A_STREAM, UNSUPPORTED_VERSION, STREAM_CORRUPT (naming the record that failed)
 */
export async function verifyStream(source: StreamSource, onProgress?: (doneBytes: number, totalBytes: number) => void): Promise<VerifiedStream> {
  const { header, crc: headerCrc, lengthBytes: headerBytes } = await readHeader(source);
  let chain = headerCrc;
  let offset = headerBytes;
  const extentOffsets: number[] = [];
  const extentCrcs: number[] = [];
  let totalBytes = 0;
  let dataBytes = 0;
  let minVolumeOffset = 0;
  for (;;) {
    const extent = await readExtent(source, header, offset, extentOffsets.length, minVolumeOffset);
    if (extent === null) break;
    extentOffsets.push(offset);
    extentCrcs.push(extent.crc);
    chain = chainedWith(chain, extent.crc);
    totalBytes += extent.lengthBytes;
    if (!extent.zero) dataBytes += extent.lengthBytes;
    minVolumeOffset = extent.offsetBytes + extent.lengthBytes;
    offset = extent.nextOffsetBytes;
    onProgress?.(offset, source.lengthBytes);
  }
  const d = { record: 'trailer', streamOffsetBytes: offset, extentIndex: extentOffsets.length };
  const t = await readExactly(source, offset, Math.min(TRAILER_BYTES, source.lengthBytes - offset), 'the trailer', d);
  if (t.length < TRAILER_BYTES) throw corrupt(`stream is truncated inside its trailer at stream offset ${offset}`, d);
  if (t.readUInt32BE(28) !== crc32c(t.subarray(0, 28))) throw corrupt(`the trailer at stream offset ${offset} fails its checksum`, d);
  const extentCount = u64(t, 8);
  if (extentCount !== extentOffsets.length) throw corrupt(`the trailer counts ${extentCount} extents but the stream holds ${extentOffsets.length}`, d);
  if (u64(t, 16) !== totalBytes) throw corrupt(`the trailer counts ${u64(t, 16)} bytes but the extents hold ${totalBytes}`, d);
  if (t.readUInt32BE(24) !== chain >>> 0) throw corrupt('the extent checksum chain does not match the trailer (extents missing, reordered or from another stream)', d);
  if (t.readUInt32BE(4) !== 0) throw corrupt('the trailer has non-zero reserved bytes', d);
  const end = offset + TRAILER_BYTES;
  if (end !== source.lengthBytes) throw corrupt(`${source.lengthBytes - end} unexpected bytes follow the trailer`, { ...d, streamOffsetBytes: end });
  onProgress?.(end, source.lengthBytes);
  return { header, headerCrc, firstExtentOffsetBytes: headerBytes, extentOffsets, extentCrcs, extentCount, totalBytes, dataBytes, streamBytes: end };
}
