import { SnapshotExistsError, SnapshotNotFoundError } from './errors.js';
import { mergeExtents } from './diff.js';
import { IO_CHUNK_BYTES } from './layout.js';
import { killPoint } from './kill-point.js';
import { WRITE_PAST_IMPORT, type Volume } from './volume.js';
import { CREATE_PAST_IMPORT } from './volume-snapshots.js';

/** Options for {@link restoreSnapshot}. */
export interface RestoreOptions {
  /** Take a safety snapshot of the pre-restore state first (default true). */
  safetySnapshot?: boolean;
  /** Its name (default `pre-restore-<ISO time>`). */
  safetyName?: string;
  /** Called after each piece with the bytes restored so far and the total. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

/** Result of {@link restoreSnapshot}. */
export interface RestoreResult {
  name: string;
  /** The safety snapshot taken, or null. */
  safetySnapshot: string | null;
  /** Bytes of the blocks changed since the snapshot (the union of maps): read and compared. */
  examinedBytes: number;
  /** Blocks rewritten: those whose live content differed from the snapshot's. */
  restoredBlocks: number;
  restoredBytes: number;
}

/**
 * Makes the live volume's content that of snapshot `name`, destroying
 * nothing: first (unless `safetySnapshot: false`) a safety snapshot of the
 * current state is taken, then every block changed since `name` (the union
 * of the maps from `name` to the newest — {@link Volume.diff} to live) is
 * compared with `name`'s content and, where it differs, rewritten with it
 * through the normal write path, so the old live content is COWed into the
 * newest snapshot (the safety snapshot) before it is overwritten. Every snapshot, older and newer, stays
 * intact; restoring the safety snapshot undoes the restore. Cost O(blocks
 * changed since `name`), not the volume size. Flushed before it resolves.
 *
 * Idempotent: a restore interrupted by a crash or an error (NO_SPACE: every
 * snapshot stays readable) is finished by running it again (with
 * `safetySnapshot: false`, or a second safety snapshot is taken; run again
 * with the same `safetyName`, it is SNAPSHOT_EXISTS saying so). An
 * interrupted import's marker is cleared before the first write: a restore
 * that started abandons the import for good, finished or not.
 * @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_EXISTS (safety name taken), INVALID_SNAPSHOT_NAME, NO_SPACE, IO_ERROR, STORE_CORRUPT
 */
export async function restoreSnapshot(volume: Volume, name: string, options: RestoreOptions = {}): Promise<RestoreResult> {
  const snapshots = await volume.listSnapshots();
  if (!snapshots.some((s) => s.name === name)) throw new SnapshotNotFoundError(name);
  let safety: string | null = null;
  if (options.safetySnapshot !== false) {
    const taken = options.safetyName === undefined ? undefined : snapshots.find((s) => s.name === options.safetyName);
    // The same command run again after an interruption: its safety snapshot exists. Which live content came since is
    // unknown (the restore's own writes, or new ones), so it is not reused; the message says how to finish.
    if (taken?.labels['cowvol.safety'] === 'pre-restore' && taken.labels['cowvol.restore-of'] === name) {
      throw new SnapshotExistsError(
        taken.name,
        `it is the safety snapshot of an earlier restore of ${JSON.stringify(name)}: if that restore was interrupted and nothing wrote the volume since, finish it with --no-safety-snapshot (the safety snapshot holds the state before it); if it completed, or anything wrote the volume since, choose another --safety-name, so that a safety snapshot keeps the state as it is now`,
      );
    }
    safety = options.safetyName ?? uniqueName(`pre-restore-${new Date().toISOString()}`, new Set(snapshots.map((s) => s.name)));
    // Also while an import is pending: the safety snapshot keeps the half-applied state the restore abandons, and the
    // marker goes in the same transaction (a kill between the two would leave a snapshot that --resume then COWs into).
    const abandon = (await volume.importState()) !== undefined;
    await volume[CREATE_PAST_IMPORT](safety, { labels: { 'cowvol.safety': 'pre-restore', 'cowvol.restore-of': name }, ...(abandon ? { clearImport: true } : {}) }, true);
  }
  // An import pending is abandoned before the first write, durably: a restore stopped part way must not leave a marker that
  // `--resume` would finish on top of half-restored content.
  if (await volume.importState()) await volume.setImportState(null);
  const diff = await volume.diff(name);
  const pieces = mergeExtents(diff.extents, IO_CHUNK_BYTES);
  const bs = volume.blockSizeBytes;
  let done = 0;
  let restoredBytes = 0;
  options.onProgress?.(0, diff.bytes);
  for (const p of pieces) {
    const want = await volume.readSnapshot(name, p.offsetBytes, p.lengthBytes);
    const have = await volume.read(p.offsetBytes, p.lengthBytes);
    // Rewrite only the runs of blocks whose content differs: a block changed and changed back
    // costs a read, not a write and a copy into the safety snapshot.
    for (let i = 0; i < p.lengthBytes;) {
      if (want.subarray(i, i + bs).equals(have.subarray(i, i + bs))) {
        i += bs;
        continue;
      }
      let j = i + bs;
      while (j < p.lengthBytes && !want.subarray(j, j + bs).equals(have.subarray(j, j + bs))) j += bs;
      await volume[WRITE_PAST_IMPORT](p.offsetBytes + i, want.subarray(i, j));
      restoredBytes += j - i;
      i = j;
    }
    done += p.lengthBytes;
    options.onProgress?.(done, diff.bytes);
    killPoint('restore:piece'); // tests stop a restore part way here (COWVOL_KILL_AT=restore:piece#n)
  }
  await volume.flush();
  return { name, safetySnapshot: safety, examinedBytes: diff.bytes, restoredBlocks: restoredBytes / bs, restoredBytes };
}

function uniqueName(base: string, taken: Set<string>): string {
  if (!taken.has(base)) return base;
  for (let i = 2; ; i++) if (!taken.has(`${base}-${i}`)) return `${base}-${i}`;
}
