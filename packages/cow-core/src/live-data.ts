import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { IoError } from '@cowvol/base';
import { errorMessage } from './files.js';

/**
 * Where the live volume file may hold data (docs/ARCHITECTURE.md §15.5,
 * "Full export: cost follows the data"): a full export reads only these
 * regions (and the blocks the snapshot maps hold) instead of the whole
 * volume.
 *
 * Node has no `lseek`, so `SEEK_DATA` / `SEEK_HOLE` (Linux) are reached
 * through `perl`'s `sysseek`, which passes its `whence` to `lseek(2)` as is
 * (perl-base is an essential package on Debian and its derivatives). The
 * helper streams one `start end` line per data region; its output is read
 * with backpressure, so memory stays bounded however many regions the file
 * has. When the helper cannot run (no perl, another platform, a file system
 * error), the rest of the file counts as data: the export is then as slow
 * as a full read, never wrong. A file with no allocated block at all
 * (`st_blocks` = 0) has no data on any platform.
 */

/** A byte range. */
export interface ByteRange {
  offsetBytes: number;
  lengthBytes: number;
}

/**
 * How the data regions were found: `seek-data` (SEEK_DATA / SEEK_HOLE),
 * `no-blocks` (the file has no allocated block), `none` (not found: the
 * whole file, or the rest of it after a helper failure, counts as data),
 * `disabled` (the caller asked for no detection: the whole file counts).
 */
export type HoleDetection = 'seek-data' | 'no-blocks' | 'none' | 'disabled';

/** Linux `lseek` whence values: perl's Fcntl does not name them. */
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/** Prints `start end` for each data region of ARGV[0] in [ARGV[1], ARGV[2]); exit 0 when done, 3/4 when it cannot. */
const SEEK_SCRIPT = `
use strict;
my ($path, $pos, $end) = @ARGV;
open(my $fh, '<', $path) or exit 3;
while ($pos < $end) {
  my $d = sysseek($fh, $pos, ${SEEK_DATA});
  if (!defined $d) { exit(($!{ENXIO}) ? 0 : 4); }
  $d += 0;
  last if $d >= $end;
  my $h = sysseek($fh, $d, ${SEEK_HOLE});
  exit 4 if !defined $h;
  $h += 0;
  $h = $end if $h > $end;
  print "$d $h\\n";
  $pos = $h;
}
close(STDOUT) or exit 5;
exit 0;
`;

/** Options of {@link fileDataRanges}. */
export interface DataRangeOptions {
  /** `false`: skip detection, the whole file counts as data (tests and comparisons). Default true. */
  detectHoles?: boolean;
  /** Set to how the regions were found (final once the iteration ends). */
  report?: { holeDetection: HoleDetection };
}

/**
 * The regions of `path` within [0, sizeBytes) that may hold non-zero
 * bytes, in increasing order, non-overlapping. Holes are certainly zeros;
 * a region may hold zeros too (allocated but zero, or a file system that
 * reports everything as data).
 * @throws IO_ERROR (the file cannot be stat'ed)
 */
export async function* fileDataRanges(path: string, sizeBytes: number, options: DataRangeOptions = {}): AsyncGenerator<ByteRange> {
  const report = options.report ?? { holeDetection: 'none' };
  if (options.detectHoles === false) {
    report.holeDetection = 'disabled';
    yield { offsetBytes: 0, lengthBytes: sizeBytes };
    return;
  }
  const st = await stat(path).catch((err: unknown) => {
    throw new IoError(`cannot stat ${path}: ${errorMessage(err)}`, { cause: err, details: { path } });
  });
  if (st.blocks === 0) {
    report.holeDetection = 'no-blocks';
    return;
  }
  if (process.platform !== 'linux') {
    report.holeDetection = 'none';
    yield { offsetBytes: 0, lengthBytes: sizeBytes };
    return;
  }
  report.holeDetection = 'seek-data';
  let done = 0;
  const failed = yield* seekRegions(path, sizeBytes, (end) => (done = end));
  if (failed) {
    report.holeDetection = 'none';
    if (done < sizeBytes) yield { offsetBytes: done, lengthBytes: sizeBytes - done };
  }
}

/** One line of the helper, `<start> <end>` in bytes, as a region within [0, sizeBytes); undefined when it is not one. */
function parseRegion(line: string, sizeBytes: number): ByteRange | undefined {
  const [start, end] = line.split(' ').map(Number);
  if (start === undefined || end === undefined || !Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end <= start || end > sizeBytes) return undefined;
  return { offsetBytes: start, lengthBytes: end - start };
}

/**
 * Runs the helper and yields its regions; `covered(end)` is told how far
 * the yielded regions reach. Returns true when the helper failed (its
 * regions so far are still right: each line is complete before it counts).
 */
async function* seekRegions(path: string, sizeBytes: number, covered: (endBytes: number) => void): AsyncGenerator<ByteRange, boolean> {
  const child = spawn('perl', ['-e', SEEK_SCRIPT, '--', path, '0', String(sizeBytes)], { stdio: ['ignore', 'pipe', 'ignore'] });
  const exited = new Promise<number | null>((resolve) => {
    child.once('error', () => resolve(null));
    child.once('close', (code) => resolve(code));
  });
  let pending = '';
  let bad = false;
  let ended = false;
  try {
    for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
      pending += chunk.toString('latin1');
      const cut = pending.lastIndexOf('\n');
      if (cut < 0) continue; // no complete line yet
      const lines = pending.slice(0, cut).split('\n');
      pending = pending.slice(cut + 1);
      for (const line of lines) {
        const region = parseRegion(line, sizeBytes);
        if (!region) {
          bad = true;
          break;
        }
        covered(region.offsetBytes + region.lengthBytes);
        yield region;
      }
      if (bad) break;
    }
    ended = !bad;
  } finally {
    // Stopped early (a bad line, or the consumer gave up): the helper has nothing more to say.
    if (!ended && child.exitCode === null) child.kill();
  }
  const code = await exited;
  return bad || code !== 0 || pending !== '';
}

/**
 * Merges two increasing range sources into increasing, non-overlapping
 * ranges aligned to `blockBytes` (starts rounded down, ends rounded up,
 * clipped to `sizeBytes`), cut into pieces of at most `maxBytes`. Lazy:
 * memory is one range of each source.
 */
export async function* unionPieces(a: AsyncIterable<ByteRange>, b: Iterable<ByteRange>, blockBytes: number, sizeBytes: number, maxBytes: number): AsyncGenerator<ByteRange> {
  const ia = a[Symbol.asyncIterator]();
  const ib = b[Symbol.iterator]();
  let na = await ia.next();
  let nb = ib.next();
  let cur: { start: number; end: number } | undefined;
  while (!na.done || !nb.done) {
    let r: ByteRange;
    if (nb.done || (!na.done && na.value.offsetBytes <= nb.value.offsetBytes)) {
      r = na.value as ByteRange;
      na = await ia.next();
    } else {
      r = nb.value;
      nb = ib.next();
    }
    const start = Math.floor(r.offsetBytes / blockBytes) * blockBytes;
    const end = Math.min(sizeBytes, Math.ceil((r.offsetBytes + r.lengthBytes) / blockBytes) * blockBytes);
    if (end <= start) continue;
    if (cur && start <= cur.end) {
      cur.end = Math.max(cur.end, end);
      continue;
    }
    if (cur) yield* cut(cur.start, cur.end, maxBytes);
    cur = { start, end };
  }
  if (cur) yield* cut(cur.start, cur.end, maxBytes);
}

function* cut(start: number, end: number, maxBytes: number): Generator<ByteRange> {
  for (let pos = start; pos < end; pos += maxBytes) yield { offsetBytes: pos, lengthBytes: Math.min(maxBytes, end - pos) };
}
