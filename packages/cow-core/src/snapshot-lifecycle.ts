import { AssertionFailedError, assert } from '@cowvol/base';
import { blockExtents } from './extent-runs.js';
import { validateLabelsFit } from './labels.js';
import { SnapshotHeldError, SnapshotNotFoundError } from './errors.js';
import { TARGET_STORE } from './layout.js';
import type { SnapshotRecord } from './metadata.js';
import type { MapEntry } from './snapshot-map.js';
import type { MetaRecord } from './meta-record.js';
import { rebindStoreCrc } from './store-crc.js';
import { suspectSnapshots, type AcceptChangesReport } from './outside-writes.js';
import type { VolumeContext } from './volume-context.js';
import { deleteStepShared, dropShared } from './space-accounting.js';
import type { DeleteResult, SnapshotInfo } from './volume-types.js';

/**
 * Snapshot lifecycle (docs/ARCHITECTURE.md §4.4, §4.5): create, delete with
 * hand-over to the next older snapshot, and the deferred finish of a delete
 * a crash or a full disk interrupted. Each step runs frozen
 * (`VolumeContext.frozen`); a delete is one journal transaction to mark it,
 * then bounded transactions of hand-over.
 */

/** A snapshot as shown to users; `active` when the caller knows (else: it heads the COW chain). */
export function describeSnapshot(ctx: VolumeContext, rec: SnapshotRecord, active?: boolean): SnapshotInfo {
  return {
    id: rec.id,
    name: rec.name,
    createdAt: rec.createdAt,
    ownedBlocks: rec.ownedBlocks,
    ownedBytes: rec.ownedBlocks * ctx.blockSizeBytes,
    active: active ?? rec === ctx.cowChain()?.[0],
    labels: { ...rec.labels },
    held: rec.held === true,
    suspect: rec.suspect === true,
    ...(rec.origin ? { origin: { ...rec.origin } } : {}),
  };
}

/** The live snapshots named, oldest first; none held. @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_HELD */
export function findVictims(ctx: VolumeContext, names: string[]): SnapshotRecord[] {
  const found: SnapshotRecord[] = [];
  for (const name of new Set(names)) {
    const rec = ctx.findLive(name);
    if (!rec) throw new SnapshotNotFoundError(name);
    found.push(rec);
  }
  const held = found.filter((r) => r.held);
  if (held.length > 0) throw new SnapshotHeldError(held.map((r) => r.name));
  return found.sort((a, b) => a.id - b.id);
}

/**
 * Deletes `victims` (from {@link findVictims}, under the delete lock): marks
 * them all `deleting` in one transaction under one freeze — from that
 * commit on their deletes complete, across a crash too — then hands over or
 * frees their blocks, oldest first. `pick` runs frozen and names them;
 * `onProgress` counts blocks processed: first (0, total) once the
 * snapshots are marked, then after each batch.
 * @throws what `pick` throws; IO_ERROR, JOURNAL_ABORTED (before the mark only; see {@link finishMarked})
 */
export async function deleteSnapshotsLocked(ctx: VolumeContext, pick: () => SnapshotRecord[], onProgress?: (doneBlocks: number, totalBlocks: number) => void): Promise<DeleteResult[]> {
  // A delete left unfinished (a full disk; on a served volume nothing else finishes it before the next open) goes
  // first, as `planDelete` counts it: the figures a dry run gave are then what this delete frees.
  await finishInterruptedDeletes(ctx);
  const victims = await ctx.frozen(async () => {
    const found = pick();
    if (found.length === 0) return [];
    await ctx.commitRecords(found.map((r) => ({ o: 'snap' as const, id: r.id, name: r.name, createdAt: r.createdAt, state: 'deleting' as const })));
    for (const r of found) {
      r.state = 'deleting';
      ctx.names.markedDeleting(r);
    }
    return found;
  });
  const totalBlocks = victims.reduce((n, r) => n + r.ownedBlocks, 0);
  let doneBlocks = 0;
  if (victims.length > 0) onProgress?.(0, totalBlocks); // marked: from here the delete is made (finished by the next open if stopped)
  return finishMarked(ctx, victims, (n) => {
    doneBlocks += n;
    onProgress?.(doneBlocks, totalBlocks);
  });
}

/**
 * Finishes the deletes of `victims`, marked `deleting` by a durable
 * commit: the delete happened at that commit (it completes at the next
 * open if not now). So a failure after it (a full disk, an I/O error) is
 * no failure of the delete: the rest is left to the next writable open,
 * the result says `unfinished` and counts what was done, and a warning
 * says so (docs/ARCHITECTURE.md §4.12, "Outcomes of a failed command").
 */
async function finishMarked(ctx: VolumeContext, victims: SnapshotRecord[], onBatch?: (blocks: number) => void): Promise<DeleteResult[]> {
  const results: DeleteResult[] = victims.map((r) => ({ name: r.name, freedBlocks: 0, handedOverBlocks: 0 }));
  for (const [i, rec] of victims.entries()) {
    try {
      await finishDelete(ctx, rec, onBatch, results[i]);
    } catch (err) {
      if (err instanceof AssertionFailedError) throw err;
      for (const r of results.slice(i)) r.unfinished = true;
      const names = results
        .slice(i)
        .map((r) => r.name)
        .join(', ');
      ctx.notices.push(`the delete of ${names} is committed but its hand-over stopped (${(err as Error).message}); the next writable open of the volume finishes it`);
      break;
    }
  }
  return results;
}

/** At a writable open, and before each delete: finishes every delete a crash or a failure interrupted (each step was its own transaction). */
export async function finishInterruptedDeletes(ctx: VolumeContext): Promise<void> {
  // Before the catalog is read (a lazy open, which `snapcount` allowed only with no snapshot `deleting`, and which marks
  // none before it reads the catalog: every mark runs frozen), there is nothing to finish. Deletes come here first.
  if (!ctx.catalogLoaded) {
    assert(ctx.parts.meta.counts.deleting === 0, 'a lazy open with a delete to finish');
    return;
  }
  // A copy of the few being deleted (each drop splices the catalog), not of the whole catalog: this runs before every delete.
  for (const rec of ctx.catalog.filter((r) => r.state === 'deleting')) await finishDelete(ctx, rec);
}

/** Hands over or frees every block of a snapshot in `deleting` state, batch by batch, each under a freeze; then drops it. Counts into `result` as it goes. */
async function finishDelete(
  ctx: VolumeContext,
  rec: SnapshotRecord,
  onBatch?: (blocks: number) => void,
  result: DeleteResult = { name: rec.name, freedBlocks: 0, handedOverBlocks: 0 },
): Promise<DeleteResult> {
  assert(rec.state === 'deleting', `finishDelete of snapshot ${rec.name} in state ${rec.state}`);
  for (;;) {
    const done = await ctx.frozen(() => deleteStep(ctx, rec, result, onBatch));
    if (done) return result;
  }
}

/** One frozen step of a delete: one batch handed over or freed, or — the map empty — the snapshot dropped (returns true). */
async function deleteStep(ctx: VolumeContext, rec: SnapshotRecord, result: DeleteResult, onBatch?: (blocks: number) => void): Promise<boolean> {
  const index = ctx.catalogIndexOf(rec.id);
  assert(index >= 0 && ctx.catalog[index] === rec, 'snapshot being deleted is not in the catalog');
  const older = index > 0 ? ctx.catalog[index - 1] : undefined;
  assert(older === undefined || older.state === 'live', 'two deletes at once');
  const map = await ctx.mapOf(rec.id);
  if (map.size === 0) {
    assert(rec.ownedBlocks === 0, `snapshot ${rec.name} still counts ${rec.ownedBlocks} owned blocks after hand-over`);
    const shared = await dropShared(ctx, index);
    await ctx.commitRecords([{ o: 'drop', id: rec.id }, ...shared.records]);
    shared.apply();
    ctx.catalog.splice(index, 1);
    ctx.names.dropped(rec);
    ctx.maps.forget(rec.id);
    return true;
  }
  const olderMap = older ? await ctx.mapOf(older.id) : undefined;
  const batch = map.take(ctx.deleteBatchBlocks());
  const records: MetaRecord[] = [];
  const moved: MapEntry[] = [];
  const freed: number[] = [];
  for (const [block, storeBlock, crc] of batch) {
    if (older && olderMap && !olderMap.has(block)) {
      // The older snapshot read through to this copy: it becomes its own, its CRC rebound without reading it (docs/FORMAT.md §4.2).
      const handed = rebindStoreCrc(crc, { snapshotId: rec.id, volumeBlock: block, storeBlock }, { snapshotId: older.id, volumeBlock: block, storeBlock }, ctx.blockSizeBytes);
      records.push({ o: 'move', from: rec.id, to: older.id, b: block, p: storeBlock, crc: handed });
      moved.push([block, storeBlock, handed]);
    } else {
      records.push({ o: 'unmap', id: rec.id, b: block, p: storeBlock });
      freed.push(storeBlock);
    }
  }
  const shared = await deleteStepShared(
    ctx,
    index,
    batch.map(([block]) => block),
    moved.map(([block]) => block),
    freed.length,
  );
  await commitDeleteBatch(ctx, [...records, ...shared.records], freed);
  shared.apply();
  for (const [block] of batch) map.delete(block);
  for (const [block, storeBlock, crc] of moved) olderMap?.set(block, storeBlock, crc);
  for (const extent of blockExtents(freed)) ctx.allocator.free(extent);
  rec.ownedBlocks -= batch.length;
  if (older) older.ownedBlocks += moved.length;
  result.freedBlocks += freed.length;
  result.handedOverBlocks += moved.length;
  onBatch?.(batch.length);
  return false;
}

/** Commits one delete batch; in journal mode a freed store block's journaled copy is revoked, so it is never replayed over a later reuse (jbd2 revoke). */
async function commitDeleteBatch(ctx: VolumeContext, records: MetaRecord[], freed: number[]): Promise<void> {
  if (!ctx.journaled || freed.length === 0) return ctx.commitRecords(records);
  // The records take the payload blocks their bytes fill (docs/ARCHITECTURE.md §5.1), a revoke one credit each. A batch is at most half
  // of a handle (`deleteBatchBlocks`), so the revokes fit, and so do the records: a few dozen bytes each.
  const { journal } = ctx.parts;
  const credits = journal.creditsForRecords(records) + freed.length;
  assert(credits <= journal.maxHandleCredits, `a delete batch of ${freed.length} freed blocks needs ${credits} credits; a handle may take ${journal.maxHandleCredits}`);
  const handle = await ctx.startHandle(credits);
  for (const p of freed) handle.revoke(TARGET_STORE, p + 1);
  return ctx.commitRecords(records, handle);
}

/** A metadata change of one snapshot: its records and its in-memory update; undefined when there is nothing to do. */
export type SnapshotChange = (rec: SnapshotRecord) => { records: MetaRecord[]; apply: () => unknown } | undefined;

/** Runs `change` on `rec`, frozen by the caller (rename, labels, hold: docs/ARCHITECTURE.md §15.4): commits its records, then updates the live catalog. */
export async function changeSnapshotFrozen(ctx: VolumeContext, rec: SnapshotRecord, change: SnapshotChange): Promise<SnapshotInfo> {
  const todo = change(rec);
  if (todo) {
    for (const r of todo.records) if (r.o === 'labels') validateLabelsFit(r.labels, ctx.blockSizeBytes);
    await ctx.commitRecords(todo.records);
    todo.apply();
  }
  return describeSnapshot(ctx, rec);
}

/**
 * `Volume.acceptOutsideChanges`, frozen by the caller (docs/ARCHITECTURE.md
 * §13): marks suspect, in one transaction, every live snapshot that reads
 * through to the live volume, then stamps the file anew.
 * @throws IO_ERROR, NO_SPACE, JOURNAL_ABORTED
 */
export async function acceptOutsideChangesFrozen(ctx: VolumeContext): Promise<AcceptChangesReport> {
  const { outside, meta } = ctx.parts;
  const held = outside.pending;
  if (!held) return { accepted: false, changes: [], suspectSnapshots: [], abandonedImport: false };
  const names = await suspectSnapshots(ctx.catalog, Math.ceil(meta.sb.sizeBytes / ctx.blockSizeBytes), (id) => ctx.mapOf(id));
  const marked = ctx.liveSnapshots().filter((r) => names.includes(r.name) && r.suspect !== true);
  // An import pending is abandoned with the acceptance: live now holds bytes that are not the stream's, and `--resume`
  // would skip the extents before its marker and name the result after the source (docs/ARCHITECTURE.md §13).
  const abandonedImport = ctx.importPending;
  const records: MetaRecord[] = marked.map((r) => ({ o: 'suspect' as const, id: r.id }));
  if (abandonedImport) records.push({ o: 'import', state: null });
  await ctx.commitRecords(records);
  for (const r of marked) r.suspect = true;
  await outside.accept();
  return { accepted: true, changes: held.changes, suspectSnapshots: names, abandonedImport };
}
