import { StreamCorruptError } from './errors.js';
import { validateLabels, validateLabelsFit } from './labels.js';
import { TERMINAL_UNSAFE, escapeTerminalText } from './terminal-text.js';
import { MAX_BLOCK_SIZE_BYTES, MAX_VOLUME_BYTES, MIN_BLOCK_SIZE_BYTES, SNAPSHOT_NAME_PATTERN, isBlockSize } from './layout.js';
import { isIdentity, isLabels } from './metadata.js';
import type { StreamHeader } from './stream.js';

/**
 * The rules a stream header's JSON must keep to be imported here
 * (docs/FORMAT.md §9.1, "Header"), checked when the header is read — in
 * pass 1, before anything is written and under `--dry-run` too — so that a
 * stream whose checksums hold but whose header this cowvol cannot apply is
 * refused before the target is created or written, never half-way.
 *
 * A header that breaks one is `STREAM_CORRUPT` (exit 8): the stream, not
 * the command line, is wrong. `details.field` names the field and
 * `details.reason` says why; a header of an impossible block size (1000)
 * or size (beyond `MAX_VOLUME_BYTES`) is refused here rather than by
 * `Volume.create` as a bad argument.
 */

/** Longest `createdAt` / `producer` / identity string accepted. */
const MAX_HEADER_STRING_CHARS = 256;

function refuse(field: string, reason: string): StreamCorruptError {
  return new StreamCorruptError(`stream header: ${field} ${reason}; nothing was applied`, { details: { record: 'header', streamOffsetBytes: 0, field, reason } });
}

/** A printable string: no more than the bound, nothing a label value may not hold. */
function checkString(field: string, value: unknown): void {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_HEADER_STRING_CHARS || TERMINAL_UNSAFE.test(value)) {
    throw refuse(field, `must be 1-${MAX_HEADER_STRING_CHARS} printable characters`);
  }
}

function checkIdentity(field: string, value: unknown): void {
  if (!isIdentity(value)) throw refuse(field, 'is not a snapshot identity { volumeUuid, snapshotId, createdAt, name }');
  if (!SNAPSHOT_NAME_PATTERN.test(value.name))
    throw refuse(`${field}.name ${escapeTerminalText(JSON.stringify(value.name))}`, 'is not a valid snapshot name (1-128 characters of A-Z a-z 0-9 . _ : -)');
  checkString(`${field}.volumeUuid`, value.volumeUuid);
  checkString(`${field}.createdAt`, value.createdAt);
}

function checkGeometry(h: Record<string, unknown>): void {
  const bs = h.blockSizeBytes;
  if (!isBlockSize(bs)) {
    throw refuse(`blockSizeBytes ${String(bs)}`, `is not a power of two from ${MIN_BLOCK_SIZE_BYTES} to ${MAX_BLOCK_SIZE_BYTES}`);
  }
  const size = h.sizeBytes;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0 || size > MAX_VOLUME_BYTES || size % bs !== 0) {
    throw refuse(`sizeBytes ${String(size)}`, `is not a positive multiple of the block size ${bs} of at most ${MAX_VOLUME_BYTES}`);
  }
}

/**
 * Checks every field of a parsed header JSON (kind, geometry, identities,
 * labels by the rules of `validateLabels`, createdAt, producer).
 * @throws STREAM_CORRUPT (details.record `header`, details.field, details.reason)
 */
export function validateStreamHeader(json: unknown): StreamHeader {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw refuse('JSON', 'is not an object');
  const h = json as Record<string, unknown>;
  if (h.kind !== 'full' && h.kind !== 'incremental') throw refuse(`kind ${JSON.stringify(h.kind)}`, 'is not "full" or "incremental"');
  checkGeometry(h);
  checkIdentity('source', h.source);
  if (h.kind === 'full') {
    if (h.base !== null) throw refuse('base', 'must be null in a full stream');
  } else checkIdentity('base', h.base);
  if (!isLabels(h.labels)) throw refuse('labels', 'is not a map of strings');
  try {
    validateLabels(h.labels);
    // checkGeometry made blockSizeBytes a valid block size; the target has the same.
    validateLabelsFit(h.labels, h.blockSizeBytes as number);
  } catch (err) {
    throw refuse('labels', `break the label rules (${(err as Error).message})`);
  }
  checkString('createdAt', h.createdAt);
  checkString('producer', h.producer);
  return json as StreamHeader;
}
