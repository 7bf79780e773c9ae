import { pack } from 'msgpackr';
import { InvalidLabelError } from './errors.js';
import { TERMINAL_UNSAFE, escapeTerminalText } from './terminal-text.js';

/** Label keys: 1-64 characters of `A-Z a-z 0-9 . _ : / -`, except `__proto__`. */
export const LABEL_KEY_PATTERN = /^[A-Za-z0-9._:/-]{1,64}$/;
/** Longest label value, in UTF-16 code units (JavaScript string length: a character beyond U+FFFF counts 2). */
export const MAX_LABEL_VALUE_CHARS = 256;
/** Most labels one snapshot carries. */
export const MAX_LABELS = 32;

/** Code points a label value may not hold: those of {@link TERMINAL_UNSAFE} (README, "Labels"). */
export const LABEL_VALUE_FORBIDDEN = TERMINAL_UNSAFE;

/**
 * A label key that `Object` assignment would not store: `__proto__` sets the
 * prototype instead of a property, and msgpackr renames it on decode.
 * Refused rather than stored (docs/FORMAT.md, "Snapshot record").
 */
const RESERVED_KEYS = new Set(['__proto__']);

/**
 * Checks one label key: {@link LABEL_KEY_PATTERN}, not `__proto__`. Keys to
 * remove that the snapshot does not carry are checked too, so a mistyped
 * one (`--remove k new=2` takes `new=2` as a second key) is refused instead
 * of removing nothing.
 * @throws INVALID_LABEL (details.label: the key)
 */
export function validateLabelKey(key: string): void {
  if (!LABEL_KEY_PATTERN.test(key)) throw new InvalidLabelError(`invalid label key ${escapeTerminalText(JSON.stringify(key))}: use 1-64 characters of A-Z a-z 0-9 . _ : / -`, key);
  if (RESERVED_KEYS.has(key)) throw new InvalidLabelError(`label key ${key} is reserved: choose another key`, key);
}

/**
 * Checks a labels map: at most {@link MAX_LABELS} entries, keys matching
 * {@link LABEL_KEY_PATTERN} and not `__proto__`, values strings of at most
 * {@link MAX_LABEL_VALUE_CHARS} characters with none of
 * {@link LABEL_VALUE_FORBIDDEN}. Own keys only (a map parsed from JSON may
 * carry `__proto__` as an own key: it is refused too).
 * @throws INVALID_LABEL (details.label: the offending key)
 */
export function validateLabels(labels: Record<string, string>): void {
  const keys = Object.keys(labels);
  if (keys.length > MAX_LABELS) throw new InvalidLabelError(`at most ${MAX_LABELS} labels per snapshot, got ${keys.length}`, keys.join(','));
  for (const key of keys) {
    validateLabelKey(key);
    const value: unknown = labels[key];
    if (typeof value !== 'string' || value.length > MAX_LABEL_VALUE_CHARS || LABEL_VALUE_FORBIDDEN.test(value)) {
      throw new InvalidLabelError(
        `invalid value for label ${key}: at most ${MAX_LABEL_VALUE_CHARS} characters, no control characters (C0, DEL, C1), line separators, bidirectional controls or lone surrogates`,
        key,
      );
    }
  }
}

/**
 * Parses `key=value` (the value may be empty or contain `=`).
 * @throws INVALID_LABEL
 */
export function parseLabel(text: string): [string, string] {
  const i = text.indexOf('=');
  if (i <= 0) throw new InvalidLabelError(`invalid label ${escapeTerminalText(JSON.stringify(text))}: use key=value`, text);
  const key = text.slice(0, i);
  const value = text.slice(i + 1);
  // A null-prototype map: a `__proto__` key is an own key here and is refused as such.
  const one = Object.create(null) as Record<string, string>;
  one[key] = value;
  validateLabels(one);
  return [key, value];
}

/**
 * Parses several `key=value` arguments (parseLabel each) into one labels
 * map. A key given twice is refused, whatever its values: which one a
 * careless `k=1 k=2` meant is not ours to guess.
 * @throws INVALID_LABEL
 */
export function parseLabels(texts: readonly string[]): Record<string, string> {
  const out = Object.create(null) as Record<string, string>;
  for (const text of texts) {
    const [key, value] = parseLabel(text);
    if (Object.hasOwn(out, key)) throw new InvalidLabelError(`label key ${escapeTerminalText(JSON.stringify(key))} is given twice: give each key once`, text);
    out[key] = value;
  }
  return { ...out };
}

/** Label text made safe to print (control and bidirectional code points escaped as `\\u{XXXX}`). */
export const escapeLabelText = escapeTerminalText;

/**
 * Checks that a snapshot's labels fit the one journal record that stores
 * them (the `labels` record, docs/FORMAT.md §5 and §6.7): a record must fit one
 * journal block, which is the volume's block size, less 128 bytes for the
 * block header and the record's other fields (as `maxMapRunBlocks`). So the
 * block size bounds the labels too: 32 labels of 256-character values fit
 * a 64 KiB-block volume, about 3.9 KiB of them a 4 KiB one, about 380 bytes
 * a 512-byte one. Checked before anything changes (create, label change,
 * import of a stream from a volume with larger blocks).
 * @param blockSizeBytes the volume's block size
 * @throws INVALID_LABEL (details.label: the keys)
 */
export function validateLabelsFit(labels: Record<string, string>, blockSizeBytes: number): void {
  const encodedBytes = pack({ o: 'labels', id: 0xffffffff, labels }).length;
  const limitBytes = blockSizeBytes - 128;
  if (encodedBytes > limitBytes) {
    throw new InvalidLabelError(
      `the labels take ${encodedBytes} bytes encoded, and at most ${limitBytes} fit one journal record of a volume with ${blockSizeBytes}-byte blocks: use fewer or shorter labels`,
      Object.keys(labels).join(','),
    );
  }
}
