import { CowvolError } from '@cowvol/base';

/** `INVALID_DURATION`: a duration is not a number with s, m, h, d or w. */
export class InvalidDurationError extends CowvolError {
  constructor(flag: string, value: string) {
    super('INVALID_DURATION', `invalid duration for ${flag}: ${JSON.stringify(value)} (use a number with s, m, h, d or w, e.g. 90s, 12h, 7d, 2w)`, { details: { flag, value } });
  }
}

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/**
 * The longest duration taken: 1,000 years. A time that far back or ahead
 * is still a date (`Date` holds ±273,790 years); `prune --grace
 * 99999999999999d` was an INTERNAL "Invalid time value".
 */
export const MAX_DURATION_MS = 1000 * 365.25 * 86_400_000;

/** Parses `90s`, `30m`, `12h`, `7d`, `2w`, `1.5d` into milliseconds, at most {@link MAX_DURATION_MS}. @throws INVALID_DURATION */
export function parseDuration(value: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$/.exec(value);
  if (!m) throw new InvalidDurationError(flag, value);
  const ms = Number(m[1]) * UNIT_MS[m[2]!]!;
  if (!Number.isFinite(ms) || ms > MAX_DURATION_MS) throw new InvalidDurationError(flag, value);
  return Math.round(ms);
}
