import { assert, hasCode } from '@cowvol/base';
import {
  BASE_ALLOCATION_ID,
  MAX_PAYLOAD_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_REPLY_TYPE_NONE,
} from './constants.js';
import type { RequestMessage } from './framing.js';
import type { Agreement } from './negotiation.js';
import { blockStatusChunk, chunkHeader, errorChunk, offsetDataChunk, simpleReply, type Extent } from './replies.js';

/** Command flags this server accepts ("Command flags"); any other bit is EINVAL. */
const KNOWN_COMMAND_FLAGS = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF | NBD_CMD_FLAG_REQ_ONE;
/** Commands that change the export. */
const WRITING = new Set([NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES]);
/** Commands whose offset and length name a range of the export. */
const RANGED = new Set([NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES, NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS]);

/** A request refused before the export is called: its NBD errno and why. */
export class RequestError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The NBD errno for a failure of the export ("Error values"; docs/ARCHITECTURE.md
 * §14.4): EINVAL for a bad range or argument, ENOSPC for NO_SPACE,
 * ESHUTDOWN for a closed volume, EIO for everything else.
 */
export function errnoFor(err: unknown): number {
  if (err instanceof RequestError) return err.errno;
  if (hasCode(err, 'OUT_OF_RANGE', 'INVALID_ARGUMENT')) return NBD_EINVAL;
  if (hasCode(err, 'NO_SPACE')) return NBD_ENOSPC;
  if (hasCode(err, 'VOLUME_CLOSED')) return NBD_ESHUTDOWN;
  return NBD_EIO;
}

/**
 * Checks a request against the agreement before anything runs.
 * @throws RequestError (ESHUTDOWN while stopping, EINVAL for bad flags, ranges or lengths, EPERM on a read-only export)
 */
export function validateRequest(agreement: Agreement, request: RequestMessage, stopping: boolean): void {
  const { type, flags, offsetBytes, lengthBytes } = request;
  if (stopping) throw new RequestError(NBD_ESHUTDOWN, 'the server is stopping');
  if ((flags & ~KNOWN_COMMAND_FLAGS) !== 0) throw new RequestError(NBD_EINVAL, `unknown command flags 0x${flags.toString(16)}`);
  if (flags & NBD_CMD_FLAG_DF && (type !== NBD_CMD_READ || !agreement.structured)) throw new RequestError(NBD_EINVAL, 'DF is only valid on READ with structured replies');
  if (flags & NBD_CMD_FLAG_REQ_ONE && type !== NBD_CMD_BLOCK_STATUS) throw new RequestError(NBD_EINVAL, 'REQ_ONE is only valid on BLOCK_STATUS');
  if (!RANGED.has(type) && type !== NBD_CMD_FLUSH) throw new RequestError(NBD_EINVAL, `unknown command ${type}`);
  if (WRITING.has(type) && agreement.export.readOnly) throw new RequestError(NBD_EPERM, `${agreement.export.name} is read-only`);
  if (RANGED.has(type) && offsetBytes + lengthBytes > agreement.export.sizeBytes) {
    throw new RequestError(NBD_EINVAL, `range ${offsetBytes}+${lengthBytes} runs past the end of the export (${agreement.export.sizeBytes} bytes)`);
  }
  if (type === NBD_CMD_READ && lengthBytes > MAX_PAYLOAD_BYTES) throw new RequestError(NBD_EINVAL, `READ of ${lengthBytes} bytes, more than ${MAX_PAYLOAD_BYTES}`);
  if (type === NBD_CMD_BLOCK_STATUS) {
    if (!agreement.baseAllocation) throw new RequestError(NBD_EINVAL, 'BLOCK_STATUS without a negotiated meta context');
    if (lengthBytes === 0) throw new RequestError(NBD_EINVAL, 'BLOCK_STATUS of 0 bytes');
  }
}

/**
 * Runs one valid request against the export and returns its reply. READ
 * and BLOCK_STATUS answer in structured chunks when negotiated; every
 * other command answers with a simple reply ("Transmission").
 */
export async function runRequest(agreement: Agreement, request: RequestMessage): Promise<Buffer[]> {
  const target = agreement.export;
  const { cookie, offsetBytes, lengthBytes } = request;
  const fua = (request.flags & NBD_CMD_FLAG_FUA) !== 0;
  switch (request.type) {
    case NBD_CMD_READ: {
      // A zero-length READ has no data chunk to send: a NONE chunk ends it.
      if (lengthBytes === 0) return [agreement.structured ? chunkHeader(cookie, NBD_REPLY_TYPE_NONE, 0, true) : simpleReply(cookie, 0)];
      const data = await target.read(offsetBytes, lengthBytes);
      return agreement.structured ? offsetDataChunk(cookie, offsetBytes, data, true) : [simpleReply(cookie, 0), data];
    }
    case NBD_CMD_WRITE:
      if (lengthBytes > 0) {
        assert(request.payload !== undefined, 'parseRequest reads the payload of every WRITE');
        await target.write(offsetBytes, request.payload, { fua });
      } else if (fua) await target.flush();
      break;
    case NBD_CMD_TRIM:
    case NBD_CMD_WRITE_ZEROES:
      await target.writeZeroes(offsetBytes, lengthBytes, { fua });
      break;
    case NBD_CMD_FLUSH:
      await target.flush();
      break;
    case NBD_CMD_CACHE:
      break; // advisory: nothing to prefetch
    case NBD_CMD_BLOCK_STATUS:
      return [blockStatusChunk(cookie, BASE_ALLOCATION_ID, await extentsOf(agreement, request), true)];
  }
  return [simpleReply(cookie, 0)];
}

/** The error reply for `request`: an ERROR chunk where structured replies answer it, else a simple reply. */
export function errorReply(agreement: Agreement | undefined, request: RequestMessage, errno: number, message: string): Buffer[] {
  const chunked = agreement?.structured === true && (request.type === NBD_CMD_READ || request.type === NBD_CMD_BLOCK_STATUS);
  return [chunked ? errorChunk(request.cookie, errno, message) : simpleReply(request.cookie, errno)];
}

/** `base:allocation` extents: the export's own, else the whole range as data; with REQ_ONE only the first. */
async function extentsOf(agreement: Agreement, request: RequestMessage): Promise<Extent[]> {
  const target = agreement.export;
  let extents = target.blockStatus ? await target.blockStatus(request.offsetBytes, request.lengthBytes) : [{ lengthBytes: request.lengthBytes, flags: 0 }];
  extents = extents.filter((e) => e.lengthBytes > 0);
  if (extents.length === 0) throw new RequestError(NBD_EIO, 'the export reported no extent');
  return request.flags & NBD_CMD_FLAG_REQ_ONE ? extents.slice(0, 1) : extents;
}
