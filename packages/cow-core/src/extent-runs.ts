/**
 * Runs of consecutive blocks or bytes as extents: the one coalescing every
 * module uses (free lists, leaks, changed ranges).
 */

import type { Extent } from './allocator.js';

/** Appends `block` to `runs` (blocks in ascending order): the last run grows when `block` follows it, else a run of one block starts. */
export function appendBlock(runs: Extent[], block: number): void {
  const last = runs.at(-1);
  if (last && last.startBlock + last.lengthBlocks === block) last.lengthBlocks += 1;
  else runs.push({ startBlock: block, lengthBlocks: 1 });
}

/** Sorted, merged extents of a list of block numbers (any order). */
export function blockExtents(blocks: readonly number[]): Extent[] {
  const runs: Extent[] = [];
  for (const b of [...blocks].sort((x, y) => x - y)) appendBlock(runs, b);
  return runs;
}

/** A byte range: `lengthBytes` from `offsetBytes`. */
export interface ByteRun {
  offsetBytes: number;
  lengthBytes: number;
}

/** Appends a byte range to `runs` (ranges in ascending order): the last run grows when the range starts where it ends, else a new run starts (a copy: the caller's object is not kept). */
export function appendRange(runs: ByteRun[], range: ByteRun): void {
  const last = runs.at(-1);
  if (last && last.offsetBytes + last.lengthBytes === range.offsetBytes) last.lengthBytes += range.lengthBytes;
  else runs.push({ offsetBytes: range.offsetBytes, lengthBytes: range.lengthBytes });
}
