import { assert, hasCode } from '@cowvol/base';
import {
  MAX_PAYLOAD_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
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
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_REPLY_TYPE_NONE,
} from './constants.js';
import type { BlockExport } from './block-export.js';
import type { RequestMessage } from './framing.js';
import { dirtyExtents, statusExtentsPerContext, type MetaContext } from './meta-context.js';
import type { Agreement } from './negotiation.js';
import { blockStatusChunk, chunkHeader, errorChunk, readReply, simpleReply, type Extent } from './replies.js';

/** Command flags this server accepts ("Command flags"); any other bit is EINVAL. */
const KNOWN_COMMAND_FLAGS = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF | NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO;
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
  if (flags & NBD_CMD_FLAG_FAST_ZERO && type !== NBD_CMD_WRITE_ZEROES) throw new RequestError(NBD_EINVAL, 'FAST_ZERO is only valid on WRITE_ZEROES');
  if (flags & NBD_CMD_FLAG_NO_HOLE && type !== NBD_CMD_WRITE_ZEROES) throw new RequestError(NBD_EINVAL, 'NO_HOLE is only valid on WRITE_ZEROES');
  if (!RANGED.has(type) && type !== NBD_CMD_FLUSH) throw new RequestError(NBD_EINVAL, `unknown command ${type}`);
  if (WRITING.has(type) && agreement.export.readOnly) throw new RequestError(NBD_EPERM, `${agreement.export.name} is read-only`);
  if (RANGED.has(type) && offsetBytes + lengthBytes > agreement.export.sizeBytes) {
    throw new RequestError(NBD_EINVAL, `range ${offsetBytes}+${lengthBytes} runs past the end of the export (${agreement.export.sizeBytes} bytes)`);
  }
  if (type === NBD_CMD_READ && lengthBytes > MAX_PAYLOAD_BYTES) throw new RequestError(NBD_EINVAL, `READ of ${lengthBytes} bytes, more than ${MAX_PAYLOAD_BYTES}`);
  if (type === NBD_CMD_BLOCK_STATUS) {
    if (agreement.contexts.length === 0) throw new RequestError(NBD_EINVAL, 'BLOCK_STATUS without a negotiated meta context');
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
      return agreement.structured ? readReply(cookie, offsetBytes, data, (request.flags & NBD_CMD_FLAG_DF) !== 0, target.preferredBlockBytes) : [simpleReply(cookie, 0), data];
    }
    case NBD_CMD_WRITE:
      if (lengthBytes > 0) {
        assert(request.payload !== undefined, 'parseRequest reads the payload of every WRITE');
        await target.write(offsetBytes, request.payload, { fua });
      } else if (fua) await target.flush();
      break;
    case NBD_CMD_WRITE_ZEROES:
      // FAST_ZERO: refuse without touching anything unless zeroing is fast (docs/ARCHITECTURE.md §14.9).
      if (request.flags & NBD_CMD_FLAG_FAST_ZERO && !(target.zeroIsFast && (await target.zeroIsFast(offsetBytes, lengthBytes)))) {
        throw new RequestError(NBD_ENOTSUP, 'zeroing this range would not be fast');
      }
      await target.writeZeroes(offsetBytes, lengthBytes, { fua });
      break;
    case NBD_CMD_TRIM:
      await target.writeZeroes(offsetBytes, lengthBytes, { fua });
      break;
    case NBD_CMD_FLUSH:
      await target.flush();
      break;
    case NBD_CMD_CACHE:
      break; // advisory: nothing to prefetch
    case NBD_CMD_BLOCK_STATUS:
      return blockStatusReply(agreement, request);
  }
  return [simpleReply(cookie, 0)];
}

/** The error reply for `request`: an ERROR chunk where structured replies answer it, else a simple reply. */
export function errorReply(agreement: Agreement | undefined, request: RequestMessage, errno: number, message: string): Buffer[] {
  const chunked = agreement?.structured === true && (request.type === NBD_CMD_READ || request.type === NBD_CMD_BLOCK_STATUS);
  return [chunked ? errorChunk(request.cookie, errno, message) : simpleReply(request.cookie, errno)];
}

/**
 * One BLOCK_STATUS chunk per selected context, in selection order, the last
 * carrying DONE ("NBD_CMD_BLOCK_STATUS"; docs/FORMAT.md §10). Bounded: each
 * context carries at most `statusExtentsPerContext(contexts)` descriptors,
 * so a reply is at most `statusReplyBytes(contexts)` whatever the range
 * and however many bitmaps are selected (docs/ARCHITECTURE.md §14.9).
 */
async function blockStatusReply(agreement: Agreement, request: RequestMessage): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  const perContext = statusExtentsPerContext(agreement.contexts.length);
  const maxExtents = request.flags & NBD_CMD_FLAG_REQ_ONE ? 1 : perContext;
  for (const [i, context] of agreement.contexts.entries()) {
    const extents = (await extentsOf(agreement.export, context, request, perContext)).filter((e) => e.lengthBytes > 0).slice(0, maxExtents);
    if (extents.length === 0) throw new RequestError(NBD_EIO, `the export reported no extent for ${context.name}`);
    chunks.push(blockStatusChunk(request.cookie, context.id, extents, i === agreement.contexts.length - 1));
  }
  return chunks;
}

/**
 * The extents of one context, at most `maxExtents` of them: `base:allocation`
 * from the export (else all data), a dirty bitmap from what changed since
 * its snapshot. The change list is asked for the first `maxExtents` blocks
 * of the range only: a clean or dirty run is at least one block, so those
 * blocks hold at least `maxExtents` runs (the reply ends inside them, or
 * with the range), and the work per request is bounded by them — the
 * mappings of that many blocks — not by the range a client asks about.
 */
async function extentsOf(target: BlockExport, context: MetaContext, request: RequestMessage, maxExtents: number): Promise<Extent[]> {
  const { offsetBytes, lengthBytes } = request;
  if (context.kind === 'allocation') return target.blockStatus ? target.blockStatus(offsetBytes, lengthBytes) : [{ lengthBytes, flags: 0 }];
  if (!target.changedSince) throw new RequestError(NBD_EINVAL, `${target.name} has no dirty bitmaps`);
  const blockBytes = target.preferredBlockBytes;
  const windowEndBytes = (Math.floor(offsetBytes / blockBytes) + maxExtents) * blockBytes;
  const windowBytes = Math.min(lengthBytes, windowEndBytes - offsetBytes);
  return dirtyExtents(await target.changedSince(context.snapshot, offsetBytes, windowBytes), offsetBytes, windowBytes, maxExtents);
}
