import { appendRange } from './extent-runs.js';
import type { SnapshotMap } from './snapshot-map.js';

/** One run of changed bytes, and the snapshot map it came from. */
export interface DiffExtent {
  /** Byte offset in the volume (a multiple of the block size). */
  offsetBytes: number;
  /** Length in bytes (a multiple of the block size). */
  lengthBytes: number;
  /**
   * The snapshot whose map holds these blocks: the oldest map in the range
   * that holds them, i.e. the one holding the `from` snapshot's content of
   * them.
   */
  snapshot: string;
  snapshotId: number;
}

/** Result of {@link Volume.diff}. */
export interface DiffResult {
  /** The older end of the range. */
  from: string;
  /** The newer end, or null for the live volume. */
  to: string | null;
  blockSizeBytes: number;
  /** Sorted by offset, non-overlapping; consecutive blocks from the same map are merged into one extent. */
  extents: DiffExtent[];
  /** Sum of the extents' lengths. */
  bytes: number;
  blocks: number;
}

/** Blocks `first` to `last`, both included: the part of the volume a ranged diff looks at. */
export interface BlockRange {
  first: number;
  last: number;
}

/** The blocks a byte range touches (none for a zero length: `last` < `first`). */
export function blocksTouched(range: { offsetBytes: number; lengthBytes: number }, blockSizeBytes: number): BlockRange {
  return { first: Math.floor(range.offsetBytes / blockSizeBytes), last: Math.ceil((range.offsetBytes + range.lengthBytes) / blockSizeBytes) - 1 };
}

/** A snapshot map with the name and id of its snapshot. */
export interface NamedMap {
  id: number;
  name: string;
  map: SnapshotMap;
}

/**
 * Changed-block tracking for free (docs/ARCHITECTURE.md §15.2): the blocks written between
 * snapshot A and snapshot B are exactly the union of the maps of the
 * snapshots from A up to, not including, B (between A and the live volume:
 * from A to the newest). `chain` is that range, oldest first.
 *
 * A block written with the same bytes it held still counts as written, so
 * the result is a superset of the bytes that differ; it never misses one.
 * Cost: O(Σ map sizes in the range + k log k) for k changed blocks — the
 * blocks changed, never the volume size. No data is read. With `blocks`,
 * only the mappings inside those blocks are visited (SnapshotMap
 * `forEachInRange`): O(regions and mappings inside them), what a ranged
 * query such as an NBD BLOCK_STATUS of a dirty bitmap needs (§14.9).
 */
export function unionOfMaps(chain: NamedMap[], blockSizeBytes: number, blocks?: BlockRange): DiffExtent[] {
  const source = new Map<number, number>(); // block -> index in chain of the oldest map holding it
  chain.forEach((m, i) => {
    if (blocks) {
      m.map.forEachInRange(blocks.first, blocks.last, (block) => {
        if (!source.has(block)) source.set(block, i);
      });
    } else for (const [block] of m.map.entries()) if (!source.has(block)) source.set(block, i);
  });
  const sources = [...source].sort(([a], [b]) => a - b);
  const extents: DiffExtent[] = [];
  let runStart = -1;
  let runLength = 0;
  let runSource = -1;
  const flush = (): void => {
    if (runLength === 0) return;
    const m = chain[runSource]!;
    extents.push({ offsetBytes: runStart * blockSizeBytes, lengthBytes: runLength * blockSizeBytes, snapshot: m.name, snapshotId: m.id });
  };
  for (const [b, s] of sources) {
    if (runLength > 0 && b === runStart + runLength && s === runSource) {
      runLength += 1;
      continue;
    }
    flush();
    runStart = b;
    runLength = 1;
    runSource = s;
  }
  flush();
  return extents;
}

/** Extents merged regardless of their source map (for streaming runs), each at most `maxBytes` long. */
export function mergeExtents(extents: Array<{ offsetBytes: number; lengthBytes: number }>, maxBytes: number): Array<{ offsetBytes: number; lengthBytes: number }> {
  const out: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  for (const e of extents) appendRange(out, e);
  const split: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  for (const e of out) {
    for (let pos = 0; pos < e.lengthBytes; pos += maxBytes) split.push({ offsetBytes: e.offsetBytes + pos, lengthBytes: Math.min(maxBytes, e.lengthBytes - pos) });
  }
  return split;
}
