import type { ByteQueue } from './byte-queue.js';
import { KNOWN_CLIENT_FLAGS, MAX_OPTION_BYTES, MAX_PAYLOAD_BYTES, NBD_CMD_WRITE, NBD_OPTS_MAGIC, NBD_REQUEST_MAGIC, OPTION_HEADER_BYTES, REQUEST_HEADER_BYTES } from './constants.js';
import { NbdFramingError } from './errors.js';

/**
 * Incremental parsers of what a client sends (docs/FORMAT.md §10.1–§10.3).
 * Each looks at a ByteQueue and returns `undefined` while the message is
 * incomplete (consuming nothing), or consumes and returns one whole message.
 * A message that can never be valid throws NbdFramingError before its
 * payload is awaited, so the queue never has to hold more than the limits.
 */

/** One option of the option phase ("Option haggling"). */
export interface OptionMessage {
  option: number;
  data: Buffer;
}

/** One request of the transmission phase ("Request message"). */
export interface RequestMessage {
  flags: number;
  type: number;
  /** Opaque, echoed in the reply. */
  cookie: bigint;
  /** Byte offset; a value past 2^53 is kept approximately (it is out of range of any export). */
  offsetBytes: number;
  lengthBytes: number;
  /** WRITE only: the `lengthBytes` bytes that followed the header. */
  payload?: Buffer;
}

/**
 * The 4-byte client flags after the greeting ("Client flags").
 * @throws NBD_FRAMING when a bit this server does not know is set
 */
export function parseClientFlags(queue: ByteQueue): number | undefined {
  if (queue.length < 4) return undefined;
  const flags = queue.take(4).readUInt32BE(0);
  if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) throw new NbdFramingError(`unknown client flags 0x${flags.toString(16)}`);
  return flags >>> 0;
}

/**
 * One option: `IHAVEOPT`, u32 option, u32 length, data.
 * @throws NBD_FRAMING on a bad magic or a length over MAX_OPTION_BYTES (64 KiB)
 */
export function parseOption(queue: ByteQueue): OptionMessage | undefined {
  if (queue.length < OPTION_HEADER_BYTES) return undefined;
  const header = queue.peek(OPTION_HEADER_BYTES);
  if (header.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) throw new NbdFramingError('option without the IHAVEOPT magic');
  const option = header.readUInt32BE(8);
  const lengthBytes = header.readUInt32BE(12);
  if (lengthBytes > MAX_OPTION_BYTES) throw new NbdFramingError(`option ${option} carries ${lengthBytes} bytes, more than ${MAX_OPTION_BYTES}`);
  if (queue.length < OPTION_HEADER_BYTES + lengthBytes) return undefined;
  queue.skip(OPTION_HEADER_BYTES);
  return { option, data: Buffer.from(queue.take(lengthBytes)) };
}

/**
 * One request: u32 magic, u16 flags, u16 type, u64 cookie, u64 offset,
 * u32 length, and for WRITE the payload.
 * @throws NBD_FRAMING on a bad magic or a WRITE payload over MAX_PAYLOAD_BYTES (32 MiB)
 */
export function parseRequest(queue: ByteQueue): RequestMessage | undefined {
  if (queue.length < REQUEST_HEADER_BYTES) return undefined;
  const header = queue.peek(REQUEST_HEADER_BYTES);
  const magic = header.readUInt32BE(0);
  if (magic !== NBD_REQUEST_MAGIC) throw new NbdFramingError(`request with magic 0x${magic.toString(16)}, not 0x${NBD_REQUEST_MAGIC.toString(16)}`);
  const request: RequestMessage = {
    flags: header.readUInt16BE(4),
    type: header.readUInt16BE(6),
    cookie: header.readBigUInt64BE(8),
    // Two u32 reads, no BigInt per request: exact below 2^53, approximate above (out of range of any export either way).
    offsetBytes: header.readUInt32BE(16) * 0x1_0000_0000 + header.readUInt32BE(20),
    lengthBytes: header.readUInt32BE(24),
  };
  if (request.type === NBD_CMD_WRITE) {
    if (request.lengthBytes > MAX_PAYLOAD_BYTES) throw new NbdFramingError(`WRITE of ${request.lengthBytes} bytes, more than ${MAX_PAYLOAD_BYTES}`);
    if (queue.length < REQUEST_HEADER_BYTES + request.lengthBytes) return undefined;
    queue.skip(REQUEST_HEADER_BYTES);
    request.payload = queue.take(request.lengthBytes);
    return request;
  }
  queue.skip(REQUEST_HEADER_BYTES);
  return request;
}
