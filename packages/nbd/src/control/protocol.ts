import { ERROR_CODES, type ErrorCode } from '@cowvol/base';

/**
 * The control protocol of `cowvol serve` as pure functions (docs/FORMAT.md
 * §11, docs/ARCHITECTURE.md §14.8): one JSON object per line, UTF-8,
 * ended by `\n`. A request is `{"v":1,"id":…,"method":…,"params":{…}}`; its
 * response carries the same id and either `result` or `error`. Framing and
 * validation never throw on what a client sends: a bad line becomes an
 * error response. (The shape is JSON-RPC's, without its batch and
 * notification forms.)
 */

/** The protocol version every request and response carries in `v`. */
export const CONTROL_PROTOCOL_VERSION = 1;
/** Longest line (request or response) in bytes, `\n` excluded; a longer request line is refused and its connection closed. */
export const MAX_CONTROL_LINE_BYTES = 64 * 1024;
/** Longest response line a client reads (a `snapshot.list` of many labelled snapshots is long). */
export const MAX_CONTROL_RESPONSE_BYTES = 16 * 1024 * 1024;
/** Requests of one connection running at once; further lines wait unread. */
export const MAX_CONTROL_IN_FLIGHT = 4;
/** Control connections served at once; one more is answered VOLUME_BUSY (id null) at accept and closed. */
export const MAX_CONTROL_CONNECTIONS = 8;
/**
 * A control connection with no request running that sends no complete
 * request line for this long is closed (the CLI sends its request at once):
 * idle connections cannot hold every slot of MAX_CONTROL_CONNECTIONS.
 */
export const CONTROL_IDLE_MS = 10_000;
/** How long `close()` lets a connection finish writing its responses before it is destroyed. */
export const CONTROL_CLOSE_GRACE_MS = 2000;

/** A request id: a safe integer or a string of at most 64 characters, echoed in the response. */
export type ControlId = number | string;

export interface ControlRequest {
  id: ControlId;
  method: string;
  params: Record<string, unknown>;
}

export interface ControlErrorBody {
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
}

/** A response; `id` is null when the request line could not be read far enough to find one. */
export type ControlResponse = { id: ControlId | null; result: unknown } | { id: ControlId | null; error: ControlErrorBody };

/** Lines cut from a byte stream by {@link takeLines}. */
export interface TakenLines {
  /** Complete lines, `\n` removed. */
  lines: Buffer[];
  /** Bytes after the last `\n`: the start of the next line. */
  rest: Buffer;
  /** True when `rest` (a line without its end) is already longer than the limit. */
  overflow: boolean;
}

/**
 * Cuts every complete line out of `pending` + `chunk`.
 * A complete line longer than `maxLineBytes` also sets `overflow`, and
 * the lines after it are not returned.
 */
export function takeLines(pending: Buffer, chunk: Buffer, maxLineBytes = MAX_CONTROL_LINE_BYTES): TakenLines {
  const bytes = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
  const lines: Buffer[] = [];
  let start = 0;
  for (let end = bytes.indexOf(0x0a, start); end !== -1; end = bytes.indexOf(0x0a, start)) {
    if (end - start > maxLineBytes) return { lines, rest: Buffer.alloc(0), overflow: true };
    lines.push(bytes.subarray(start, end));
    start = end + 1;
  }
  const rest = Buffer.from(bytes.subarray(start));
  return { lines, rest, overflow: rest.length > maxLineBytes };
}

/** One parsed request line: the request, or the error response it gets. */
export type ParsedRequest = { ok: true; request: ControlRequest } | { ok: false; response: ControlResponse };

/**
 * Reads one request line. Refused (an `INVALID_ARGUMENT` response): not
 * UTF-8 JSON, not an object, `v` not {@link CONTROL_PROTOCOL_VERSION}, a
 * missing or bad `id`, `method` not a non-empty string, `params` present
 * and not an object.
 */
export function parseControlRequest(line: Buffer): ParsedRequest {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(line));
  } catch {
    return refuse(null, 'the request is not a line of UTF-8 JSON');
  }
  if (!isRecord(value)) return refuse(null, 'the request is not a JSON object');
  const id = validId(value.id) ? value.id : null;
  if (id === null) return refuse(null, 'the request has no id (a safe integer or a string of at most 64 characters)');
  if (value.v !== CONTROL_PROTOCOL_VERSION)
    return refuse(id, `unsupported control protocol version ${value.v === undefined ? 'undefined' : JSON.stringify(value.v)} (this server speaks ${CONTROL_PROTOCOL_VERSION})`);
  if (typeof value.method !== 'string' || value.method === '') return refuse(id, 'the request has no method');
  if (value.params !== undefined && !isRecord(value.params)) return refuse(id, 'params must be a JSON object');
  return { ok: true, request: { id, method: value.method, params: value.params ?? {} } };
}

/** The bytes of a request: one JSON line. */
export function encodeControlRequest(request: ControlRequest): Buffer {
  return Buffer.from(`${JSON.stringify({ v: CONTROL_PROTOCOL_VERSION, id: request.id, method: request.method, params: request.params })}\n`);
}

/** The bytes of a response: one JSON line. */
export function encodeControlResponse(response: ControlResponse): Buffer {
  return Buffer.from(`${JSON.stringify({ v: CONTROL_PROTOCOL_VERSION, ...response })}\n`);
}

/**
 * Reads one response line (the client side). An error code the client does
 * not know becomes `INTERNAL`.
 * @returns undefined when the line is not a version-1 response
 */
export function parseControlResponse(line: Buffer): ControlResponse | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line.toString('utf8'));
  } catch {
    return undefined;
  }
  if (!isRecord(value) || value.v !== CONTROL_PROTOCOL_VERSION) return undefined;
  const id = validId(value.id) ? value.id : null;
  if ('result' in value) return { id, result: value.result };
  if (!isRecord(value.error) || typeof value.error.message !== 'string') return undefined;
  const code = (ERROR_CODES as readonly unknown[]).includes(value.error.code) ? (value.error.code as ErrorCode) : 'INTERNAL';
  const details = isRecord(value.error.details) ? value.error.details : undefined;
  return { id, error: { code, message: value.error.message, ...(details ? { details } : {}) } };
}

function refuse(id: ControlId | null, message: string): ParsedRequest {
  return { ok: false, response: { id, error: { code: 'INVALID_ARGUMENT', message } } };
}

function validId(id: unknown): id is ControlId {
  return (typeof id === 'number' && Number.isSafeInteger(id)) || (typeof id === 'string' && id.length <= 64);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
