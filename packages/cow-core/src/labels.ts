import { InvalidLabelError } from './errors.js';

/** Label keys: 1-64 characters of `A-Z a-z 0-9 . _ : / -`. */
export const LABEL_KEY_PATTERN = /^[A-Za-z0-9._:/-]{1,64}$/;
/** Longest label value, in characters. */
export const MAX_LABEL_VALUE_CHARS = 256;
/** Most labels one snapshot carries. */
export const MAX_LABELS = 32;

/**
 * Checks a labels map: at most {@link MAX_LABELS} entries, keys matching
 * {@link LABEL_KEY_PATTERN}, values strings of at most
 * {@link MAX_LABEL_VALUE_CHARS} characters without control characters.
 * @throws INVALID_LABEL
 */
export function validateLabels(labels: Record<string, string>): void {
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS) throw new InvalidLabelError(`at most ${MAX_LABELS} labels per snapshot, got ${entries.length}`, entries.map(([k]) => k).join(','));
  for (const [key, value] of entries) {
    if (!LABEL_KEY_PATTERN.test(key)) throw new InvalidLabelError(`invalid label key ${JSON.stringify(key)}: use 1-64 characters of A-Z a-z 0-9 . _ : / -`, key);
    // eslint-disable-next-line no-control-regex
    if (typeof value !== 'string' || value.length > MAX_LABEL_VALUE_CHARS || /[\u0000-\u001f\u007f]/.test(value)) {
      throw new InvalidLabelError(`invalid value for label ${key}: at most ${MAX_LABEL_VALUE_CHARS} characters, no control characters`, key);
    }
  }
}

/** Parses `key=value` (the value may be empty or contain `=`). @throws INVALID_LABEL */
export function parseLabel(text: string): [string, string] {
  const i = text.indexOf('=');
  if (i <= 0) throw new InvalidLabelError(`invalid label ${JSON.stringify(text)}: use key=value`, text);
  const key = text.slice(0, i);
  const value = text.slice(i + 1);
  validateLabels({ [key]: value });
  return [key, value];
}
