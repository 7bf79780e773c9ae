import { InvalidArgumentError, SnapshotNotFoundError, SnapshotSuspectError } from './errors.js';
import { mergeExtents } from './diff.js';
import { MAX_EXTENT_BYTES, StreamWriter, type StreamHeader } from './stream.js';
import type { SnapshotIdentity } from './metadata.js';
import type { Volume } from './volume.js';

/** Options for {@link exportSnapshot}. */
export interface ExportOptions {
  /** Base snapshot of an incremental stream (older than the exported one). Absent: a full stream. */
  since?: string;
  /** Called after each piece read with the bytes of the snapshot read so far and the total to read. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** Written into the header's `producer` (default `cowvol`). */
  producer?: string;
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
}

/**
 * Writes snapshot `name` as a cowvol stream (stream.ts; docs/FORMAT.md
 * "Snapshot stream") through `out`, in order, in pieces of at most 4 MiB.
 *
 * Full stream (no `since`): every non-zero block of the snapshot (reads the
 * whole snapshot: O(volume size)). Incremental (`since` = an older
 * snapshot): the blocks changed between `since` and `name` (their union of
 * maps, {@link Volume.diff}) with the content `name` has — data extents, and
 * zero extents (no data) for blocks that became all zeros. Cost O(changed
 * blocks). Every block read from the store is checked against its CRC32C
 * (STORE_CORRUPT rather than a stream of wrong data).
 * @throws SNAPSHOT_NOT_FOUND, INVALID_ARGUMENT (`since` not older), SNAPSHOT_SUSPECT (`since` is suspect), STORE_CORRUPT, IO_ERROR
 */
export async function exportSnapshot(volume: Volume, name: string, out: (bytes: Buffer) => Promise<void>, options: ExportOptions = {}): Promise<ExportResult> {
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
  const bs = volume.blockSizeBytes;
  const source = await volume.snapshotIdentity(name);
  const base = since === undefined ? null : await volume.snapshotIdentity(since);
  const header: StreamHeader = {
    kind: since === undefined ? 'full' : 'incremental',
    sizeBytes: volume.sizeBytes,
    blockSizeBytes: bs,
    source,
    base,
    labels: snap.labels,
    createdAt: new Date().toISOString(),
    producer: options.producer ?? 'cowvol',
  };
  const ranges =
    since === undefined
      ? mergeExtents([{ offsetBytes: 0, lengthBytes: volume.sizeBytes }], MAX_EXTENT_BYTES)
      : mergeExtents((await volume.diff(since, name)).extents, MAX_EXTENT_BYTES);
  const totalBytes = ranges.reduce((n, r) => n + r.lengthBytes, 0);
  const writer = new StreamWriter(header, out);
  await writer.start();
  const zeroBlock = Buffer.alloc(bs);
  let done = 0;
  options.onProgress?.(0, totalBytes);
  for (const r of ranges) {
    const data = await volume.readSnapshot(name, r.offsetBytes, r.lengthBytes);
    // Runs of all-zero and non-zero blocks: a full stream omits zero runs
    // (the target starts as zeros); an incremental one sends them as zero extents.
    let runStart = 0;
    let runZero = false;
    const emit = async (end: number): Promise<void> => {
      if (end === runStart) return;
      if (!runZero) await writer.data(r.offsetBytes + runStart, data.subarray(runStart, end));
      else if (header.kind === 'incremental') await writer.zero(r.offsetBytes + runStart, end - runStart);
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
    done += r.lengthBytes;
    options.onProgress?.(done, totalBytes);
  }
  const totals = await writer.finish();
  return { name, since: since ?? null, kind: header.kind, source, base, ...totals };
}
