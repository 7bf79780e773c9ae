import { Flags } from '@oclif/core';
import { OutOfRangeError } from '@cowvol/cow-core';
import { copyOut, openSink } from './io.js';
import { protectedFilesOf } from './output-guard.js';
import { createProgress } from './progress.js';
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

/** What `read` and `snapshot read` ask of the command line: the range, the output and the progress flag. */
export interface RangeOutputFlags {
  offset?: string | undefined;
  length?: string | undefined;
  output?: string | undefined;
  progress?: boolean | undefined;
}

/**
 * Copies the range that `flags` name out of `data` (a volume, a snapshot, or
 * an NBD export of either) to `--output` or stdout, with `--progress` on
 * stderr; the output is opened only once the range is known to be valid.
 * @throws INVALID_SIZE, OUT_OF_RANGE (the range); what openSink and data.read throw
 */
export async function copyRangeOut(
  data: { sizeBytes: number; read(offsetBytes: number, lengthBytes: number): Promise<Buffer> },
  flags: RangeOutputFlags,
  volumePath: string,
  operation: string,
): Promise<void> {
  const { offsetBytes, lengthBytes } = resolveRange(flags, data.sizeBytes);
  const sink = await openSink(flags.output, await protectedFilesOf(volumePath));
  const progress = createProgress(flags.progress, operation);
  try {
    await copyOut(
      (o, l) => data.read(o, l),
      offsetBytes,
      lengthBytes,
      sink,
      (d, t) => progress.update(d, t),
    );
  } finally {
    progress.stop();
    await sink.close();
  }
}
