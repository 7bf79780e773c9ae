import { MAX_STRING_BYTES } from './constants.js';

/**
 * Decoders of option payloads (docs/FORMAT.md §10.2). Pure: a malformed
 * payload is answered with NBD_REP_ERR_INVALID, not a framing violation,
 * so they return `{ error }` instead of throwing.
 */

/** NBD_OPT_INFO / NBD_OPT_GO: u32 name length, name, u16 count, count × u16 info type. */
export interface InfoRequest {
  exportName: string;
  infoTypes: number[];
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: u32 name length, name, u32 count, count × (u32 length, query). */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

export type Decoded<T> = { value: T } | { error: string };

/** A length-prefixed string at `at`, or why it cannot be read: it runs past `data`, or is longer than the spec's 4096 bytes. */
function readString(data: Buffer, at: number): { text: string; end: number } | { tooLong: number } | undefined {
  if (at + 4 > data.length) return undefined;
  const lengthBytes = data.readUInt32BE(at);
  if (lengthBytes > MAX_STRING_BYTES) return { tooLong: lengthBytes };
  if (at + 4 + lengthBytes > data.length) return undefined;
  return { text: data.toString('utf8', at + 4, at + 4 + lengthBytes), end: at + 4 + lengthBytes };
}

/** The error text for a string {@link readString} could not read. */
function unreadable(what: string, found: { tooLong: number } | undefined): string {
  return found === undefined ? `${what} runs past the option` : `${what} is ${String(found.tooLong)} bytes, longer than the ${String(MAX_STRING_BYTES)} the protocol allows`;
}

export function decodeInfoRequest(data: Buffer): Decoded<InfoRequest> {
  const name = readString(data, 0);
  if (name === undefined || 'tooLong' in name) return { error: unreadable('export name', name) };
  if (name.end + 2 > data.length) return { error: 'no information request count' };
  const count = data.readUInt16BE(name.end);
  if (name.end + 2 + 2 * count !== data.length) return { error: `option length does not match ${count} information requests` };
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(data.readUInt16BE(name.end + 2 + 2 * i));
  return { value: { exportName: name.text, infoTypes } };
}

export function decodeMetaContextRequest(data: Buffer): Decoded<MetaContextRequest> {
  const name = readString(data, 0);
  if (name === undefined || 'tooLong' in name) return { error: unreadable('export name', name) };
  if (name.end + 4 > data.length) return { error: 'no query count' };
  const count = data.readUInt32BE(name.end);
  const queries: string[] = [];
  let at = name.end + 4;
  for (let i = 0; i < count; i++) {
    const query = readString(data, at);
    if (query === undefined || 'tooLong' in query) return { error: unreadable(`query ${String(i)}`, query) };
    queries.push(query.text);
    at = query.end;
  }
  if (at !== data.length) return { error: 'bytes after the last query' };
  return { value: { exportName: name.text, queries } };
}
