import { CowvolError } from '@cowvol/base';

/** `INVALID_SIZE`: a size or offset argument is not a plain byte count or a K/M/G/T size. */
export class InvalidSizeError extends CowvolError {
  constructor(flag: string, value: string) {
    super('INVALID_SIZE', `invalid size for ${flag}: ${JSON.stringify(value)} (use bytes, or a number with K, M, G, T, KiB, MiB, GiB or TiB; powers of 1024)`, {
      details: { flag, value },
    });
  }
}

const UNITS: Record<string, number> = { '': 1, B: 1, K: 1024, KIB: 1024, M: 1024 ** 2, MIB: 1024 ** 2, G: 1024 ** 3, GIB: 1024 ** 3, T: 1024 ** 4, TIB: 1024 ** 4 };

/**
 * Parses `123`, `123B`, `64K`, `64k`, `1.5M`, `2GiB`, `1T` (powers of 1024, units in any case; README "Using it") into a byte
 * count. Anything else — `10X`, `-1`, `1e3`, empty, a fraction of a byte,
 * beyond 2^53 — throws `INVALID_SIZE`.
 */
export function parseSize(value: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(value);
  if (!m) throw new InvalidSizeError(flag, value);
  const unit = UNITS[m[2]!.toUpperCase()];
  if (unit === undefined) throw new InvalidSizeError(flag, value);
  // Exact, on the decimal digits: `1.00000000000000001K` is 1024.00000000000001 bytes (a fraction), not 1024 as a double rounds it.
  const [whole = '', fraction = ''] = m[1]!.split('.');
  const scaled = BigInt(whole + fraction) * BigInt(unit);
  const divisor = 10n ** BigInt(fraction.length);
  if (scaled % divisor !== 0n) throw new InvalidSizeError(flag, value);
  const bytes = scaled / divisor;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidSizeError(flag, value);
  return Number(bytes);
}
