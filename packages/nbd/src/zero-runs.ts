/**
 * Which parts of data read from an export are all zeros (docs/ARCHITECTURE.md
 * §14.11): what a READ answers with NBD_REPLY_TYPE_OFFSET_HOLE and what
 * `base:allocation` reports as NBD_STATE_ZERO. The volume keeps no state
 * that says a block is zero (the live volume is a plain file, a TRIM writes
 * zeros as data), so the bytes read are the source; the check is a `memcmp`
 * against a shared zero buffer, which stops at the first non-zero byte.
 */

/** A run of a buffer: `lengthBytes` bytes that are all zero (`zero`), or not. */
export interface ZeroRun {
  lengthBytes: number;
  zero: boolean;
}

/** Compared against, piece by piece: never written. */
const ZEROES = Buffer.alloc(64 * 1024);

/** True when every byte of `data` is zero (true for an empty buffer). */
export function isAllZero(data: Uint8Array): boolean {
  // Data usually shows at its ends: decided without making a view or calling compare.
  if (data.length > 0 && (data[0] !== 0 || data[data.length - 1] !== 0)) return false;
  for (let at = 0; at < data.length; at += ZEROES.length) {
    const end = Math.min(data.length, at + ZEROES.length);
    if (Buffer.compare(data.subarray(at, end), ZEROES.subarray(0, end - at)) !== 0) return false;
  }
  return true;
}

/**
 * The runs of `data`, read at byte `offsetBytes` of an export, cut at the
 * export's multiples of `pieceBytes` (a piece is zero when all its bytes
 * are; the first and last pieces may be partial), adjacent pieces of the
 * same kind merged. The runs cover `data` exactly, in order, none empty;
 * there are at most `ceil(data.length / pieceBytes) + 1` of them.
 */
export function zeroRuns(data: Buffer, offsetBytes: number, pieceBytes: number): ZeroRun[] {
  const out: ZeroRun[] = [];
  let at = 0;
  while (at < data.length) {
    const next = Math.min(data.length, (Math.floor((offsetBytes + at) / pieceBytes) + 1) * pieceBytes - offsetBytes);
    const zero = isAllZero(data.subarray(at, next));
    const last = out[out.length - 1];
    if (last?.zero === zero) last.lengthBytes += next - at;
    else out.push({ lengthBytes: next - at, zero });
    at = next;
  }
  return out;
}
