import { Flags } from '@oclif/core';
import { OutOfRangeError } from '@cowvol/cow-core';
import { parseSize } from './size.js';

/** `--offset` and `--length` as sizes (bytes or K/M/G/T). */
export const rangeFlags = {
  offset: Flags.string({ description: 'byte offset (bytes, or K/M/G/T suffix)', helpValue: '<size>' }),
  length: Flags.string({ description: 'bytes to read (default: to the end of the volume)', helpValue: '<size>' }),
};

/** Resolves --offset/--length against the volume size; throws INVALID_SIZE or OUT_OF_RANGE. */
export function resolveRange(flags: { offset?: string | undefined; length?: string | undefined }, sizeBytes: number): { offsetBytes: number; lengthBytes: number } {
  const offsetBytes = flags.offset === undefined ? 0 : parseSize(flags.offset, '--offset');
  if (offsetBytes > sizeBytes) throw new OutOfRangeError(offsetBytes, 0, sizeBytes);
  const lengthBytes = flags.length === undefined ? sizeBytes - offsetBytes : parseSize(flags.length, '--length');
  if (offsetBytes + lengthBytes > sizeBytes) throw new OutOfRangeError(offsetBytes, lengthBytes, sizeBytes);
  return { offsetBytes, lengthBytes };
}
