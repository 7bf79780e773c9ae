import { InvalidArgumentError, SnapshotNotFoundError, SnapshotSuspectError } from './errors.js';
import { mergeExtents } from './diff.js';
import { MAX_EXTENT_BYTES, StreamWriter, type StreamHeader } from './stream.js';
import type { SnapshotIdentity } from './metadata.js';
import type { Volume } from './volume.js';

/**
 * What {@link exportSnapshot} reads of a volume: an opened Volume, or the
 * same calls answered by the server of a served volume (its control
 * methods and the NBD export `snapshot/<name>`; docs/ARCHITECTURE.md §14.10),
 * so both write the same stream. `info().path` is the volume file (its holes are read there).
 */
export type ExportSource = Pick<Volume, 'sizeBytes' | 'blockSizeBytes' | 'listSnapshots' | 'snapshotIdentity' | 'diff' | 'readSnapshot' | 'checkpointLive'> & {
  info(): Promise<{ path: string }>;
};
import { fileDataRanges, unionPieces, type ByteRange, type DataRangeOptions, type HoleDetection } from './live-data.js';

/** Options for {@link exportSnapshot}. */
export interface ExportOptions {
  /** Base snapshot of an incremental stream (older than the exported one). Absent: a full stream. */
  since?: string;
  /**
   * Called after each piece read with the volume bytes covered so far and the
   * total: for a full stream, the offset reached and the volume size (holes
   * are passed over at once); for an incremental, the changed bytes.
   */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** Written into the header's `producer` (default `cowvol`). */
  producer?: string;
  /** Full stream: find the live file's holes (default true); false reads the whole volume (comparisons, tests). */
  detectHoles?: boolean;
}

/** Result of {@link exportSnapshot}. */
export interface ExportResult {
  name: string;
  since: string | null;
  kind: 'full' | 'incremental';
  source: SnapshotIdentity;
  base: SnapshotIdentity | null;
  extentCount: number;
  /** Volume bytes the extents cover (zero extents included). */
  totalBytes: number;
  /** Data bytes carried. */
  dataBytes: number;
  /** Bytes of the whole stream (header, extents, trailer). */
  streamBytes: number;
  /** Bytes of the snapshot read to write the stream (the work done: holes of a full export are not read). */
  readBytes: number;
  /** Full stream: how the live file's holes were found (live-data.ts); incremental: null (it reads only changed blocks). */
  holeDetection: HoleDetection | null;
}

/**
 * Writes snapshot `name` as a cowvol stream (stream.ts; docs/FORMAT.md
 * "Snapshot stream") through `out`, in order, in pieces of at most 4 MiB.
 *
 * Full stream (no `since`): every non-zero block of the snapshot. Only the
 * blocks that can be non-zero are read (docs/ARCHITECTURE.md §15.5): the
 * blocks the snapshot's read-through chain maps (its map and every newer
 * one) and the data regions of the live volume file (`SEEK_DATA`,
 * live-data.ts) — a hole of the volume file was a hole when the snapshot
 * was taken (nothing cowvol does punches one), so the snapshot reads zeros
 * there. Cost O(mapped blocks + data regions + bytes in them); where holes
 * cannot be found, O(volume size) reads. Incremental (`since` = an older
 * snapshot): the blocks changed between `since` and `name` (their union of
 * maps, {@link Volume.diff}) with the content `name` has — data extents,
 * and zero extents (no data) for blocks that became all zeros. Cost
 * O(changed blocks). Memory: one 4 MiB piece and the list of mapped extents,
 * whatever the volume size. Every block read from the store is checked
 * against its CRC32C (STORE_CORRUPT rather than a stream of wrong data).
 * @throws SNAPSHOT_NOT_FOUND, INVALID_ARGUMENT (`since` not older), SNAPSHOT_SUSPECT (`since` is suspect), STORE_CORRUPT, IO_ERROR
 */
export async function exportSnapshot(volume: ExportSource, name: string, out: (bytes: Buffer) => Promise<void>, options: ExportOptions = {}): Promise<ExportResult> {
  const snapshots = await volume.listSnapshots();
  const snap = snapshots.find((s) => s.name === name);
  if (!snap) throw new SnapshotNotFoundError(name);
  const since = options.since;
  if (since !== undefined) {
    const base = snapshots.find((s) => s.name === since);
    if (!base) throw new SnapshotNotFoundError(since);
    if (base.id >= snap.id) throw new InvalidArgumentError(`--since ${since} must name a snapshot older than ${name}`);
    if (base.suspect) {
      // Changed-block tracking never saw the writes made outside cowvol that its content now holds (docs/ARCHITECTURE.md §13).
      throw new SnapshotSuspectError(
        since,
        `snapshot ${since} is suspect (writes made outside cowvol were accepted while it read live blocks): a stream since it would miss those writes on a copy of ${since} taken before; export a full stream instead`,
      );
    }
  }
  const source = await volume.snapshotIdentity(name);
  const base = since === undefined ? null : await volume.snapshotIdentity(since);
  const header: StreamHeader = {
    kind: since === undefined ? 'full' : 'incremental',
    sizeBytes: volume.sizeBytes,
    blockSizeBytes: volume.blockSizeBytes,
    source,
    base,
    labels: snap.labels,
    createdAt: new Date().toISOString(),
    producer: options.producer ?? 'cowvol',
  };
  const report = { holeDetection: 'none' as HoleDetection };
  let pieces: AsyncIterable<ByteRange> | Iterable<ByteRange>;
  let totalBytes: number;
  if (since === undefined) {
    pieces = await snapshotDataPieces(volume, name, { detectHoles: options.detectHoles !== false, report });
    totalBytes = volume.sizeBytes;
  } else {
    const changed = mergeExtents((await volume.diff(since, name)).extents, MAX_EXTENT_BYTES);
    pieces = changed;
    totalBytes = changed.reduce((n, r) => n + r.lengthBytes, 0);
  }
  const writer = new StreamWriter(header, out);
  await writer.start();
  const readBytes = await writePieces(volume, name, writer, pieces, (done) => options.onProgress?.(done, totalBytes));
  const totals = await writer.finish();
  return { name, since: since ?? null, kind: header.kind, source, base, ...totals, readBytes, holeDetection: since === undefined ? report.holeDetection : null };
}

/**
 * The pieces of snapshot `name` that can hold non-zero bytes, in volume
 * order, block-aligned, at most 4 MiB each (docs/ARCHITECTURE.md §15.5): the
 * extents its read-through chain maps and the data regions of the volume
 * file, after the journal's live images are home. Every byte outside them
 * reads as zero in the snapshot. Lazy: memory is the mapped-extent list.
 * @throws SNAPSHOT_NOT_FOUND, IO_ERROR
 */
export async function snapshotDataPieces(volume: ExportSource, name: string, options: DataRangeOptions = {}): Promise<AsyncIterable<ByteRange>> {
  // Live images home first (journal mode): the file's holes are then the snapshot's zeros.
  await volume.checkpointLive();
  const mapped = (await volume.diff(name)).extents;
  const live = fileDataRanges((await volume.info()).path, volume.sizeBytes, options);
  return unionPieces(live, mapped, volume.blockSizeBytes, volume.sizeBytes, MAX_EXTENT_BYTES);
}

/** All zeros, the size of the largest piece. */
const ZERO_PIECE = Buffer.alloc(MAX_EXTENT_BYTES);

/**
 * Reads each piece of snapshot `name` and writes its runs of non-zero
 * blocks as data extents — and, in an incremental stream, its runs of zero
 * blocks as zero extents (a full stream omits them: the target starts as
 * zeros). Returns the bytes read.
 */
async function writePieces(volume: ExportSource, name: string, writer: StreamWriter, pieces: AsyncIterable<ByteRange> | Iterable<ByteRange>, progress: (doneBytes: number) => void): Promise<number> {
  const bs = volume.blockSizeBytes;
  const incremental = writer.header.kind === 'incremental';
  const zeroBlock = Buffer.alloc(bs);
  let readBytes = 0;
  let done = 0;
  progress(0);
  for await (const r of pieces) {
    const data = await volume.readSnapshot(name, r.offsetBytes, r.lengthBytes);
    readBytes += r.lengthBytes;
    if (!incremental && data.equals(ZERO_PIECE.subarray(0, data.length))) {
      // A whole piece of zeros (one compare, not one per block): nothing to write.
      done = r.offsetBytes + r.lengthBytes;
      progress(done);
      continue;
    }
    let runStart = 0;
    let runZero = false;
    const emit = async (end: number): Promise<void> => {
      if (end === runStart) return;
      if (!runZero) await writer.data(r.offsetBytes + runStart, data.subarray(runStart, end));
      else if (incremental) await writer.zero(r.offsetBytes + runStart, end - runStart);
    };
    for (let pos = 0; pos < data.length; pos += bs) {
      const zero = data.subarray(pos, pos + bs).equals(zeroBlock);
      if (pos === 0) runZero = zero;
      else if (zero !== runZero) {
        await emit(pos);
        runStart = pos;
        runZero = zero;
      }
    }
    await emit(data.length);
    done = incremental ? done + r.lengthBytes : r.offsetBytes + r.lengthBytes;
    progress(done);
  }
  if (!incremental) progress(volume.sizeBytes);
  return readBytes;
}
