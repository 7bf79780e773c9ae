/**
 * Code points that must never reach a terminal raw from user-supplied or
 * stored text (README, "Labels"): C0 controls (U+0000–U+001F), DEL and the
 * C1 controls (U+007F–U+009F; U+009B is CSI, an escape sequence of its own
 * on many terminals), the line and paragraph separators (U+2028, U+2029),
 * the bidirectional marks, embeddings, overrides and isolates (U+061C,
 * U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) that reorder what a
 * terminal shows, and lone UTF-16 surrogates (they do not survive UTF-8).
 */
// eslint-disable-next-line no-control-regex
export const TERMINAL_UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|\p{Cs}/u;

// eslint-disable-next-line no-control-regex
const TERMINAL_UNSAFE_GLOBAL = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|\p{Cs}/gu;

/**
 * `text` with every code point of {@link TERMINAL_UNSAFE} written as
 * `\u{XXXX}` (hex, at least 4 digits): safe to print on a terminal.
 */
export function escapeTerminalText(text: string): string {
  // Every match is one UTF-16 code unit (a BMP character or a lone surrogate), so its code unit is its code point.
  return text.replace(TERMINAL_UNSAFE_GLOBAL, (c) => `\\u{${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}}`);
}
