import { performance } from 'node:perf_hooks';
import { assert } from '@cowvol/base';
import { validateLabelsFit } from './labels.js';
import { CorruptMetadataError, ImportPendingError, SnapshotExistsError, SnapshotLimitError } from './errors.js';
import { MAX_SNAPSHOTS } from './layout.js';
import { SCHEMA_VERSION, keys, type SnapshotRecord } from './metadata.js';
import { SnapshotMap } from './snapshot-map.js';
import type { MetaRecord } from './meta-record.js';
import type { VolumeContext } from './volume-context.js';
import { indexedId } from './catalog-index.js';
import { describeSnapshot } from './snapshot-lifecycle.js';
import type { CreateSnapshotOptions, SnapshotInfo } from './volume-types.js';

/**
 * Snapshot create (docs/ARCHITECTURE.md §4.4): the syncs before the freeze,
 * the checks, one journal transaction; on a volume opened with
 * `catalog: 'lazy'`, checked against the catalog index instead of the
 * catalog, which it never reads.
 */

/**
 * Takes a snapshot under the freeze (docs/ARCHITECTURE.md §4.4). Before
 * freezing, while writes go on, it waits for the overwrites the write-back
 * stage holds now to land and syncs the live volume file, so the drain and
 * the sync inside the freeze ({@link createSnapshotFrozen}) have only what
 * came since: the pause writers see is shorter. The guarantee is the same:
 * the drain and sync inside the freeze still cover every write acknowledged
 * before it.
 * @throws what {@link createSnapshotFrozen} throws
 */
export async function createSnapshot(ctx: VolumeContext, name: string, options: CreateSnapshotOptions, pastImport = false): Promise<SnapshotInfo> {
  if (!ctx.catalogLoaded) return createSnapshotIndexed(ctx, name, options, pastImport);
  // Refused before the settle and sync below, which would be work for nothing; checked again frozen.
  if (!pastImport) refusePendingImport(ctx);
  if (options.labels) validateLabelsFit(options.labels, ctx.blockSizeBytes);
  if (ctx.findLive(name)) throw new SnapshotExistsError(name);
  if (ctx.catalog.length >= MAX_SNAPSHOTS) throw new SnapshotLimitError(MAX_SNAPSHOTS);
  if (!ctx.readOnly) await syncBeforeFreeze(ctx);
  return ctx.frozen(() => {
    if (!pastImport) refusePendingImport(ctx); // an import may have set its marker while this create waited
    return createSnapshotFrozen(ctx, name, options);
  });
}

/**
 * IMPORT_PENDING while an import's marker is set: a snapshot would hold the
 * import half-applied, a state neither its base nor its source ever had,
 * and `--resume` would then copy the rest into it (docs/ARCHITECTURE.md
 * §15.6). A restore's safety snapshot is how that state is kept.
 */
function refusePendingImport(ctx: VolumeContext): void {
  if (!ctx.importPending) return;
  const path = ctx.parts.layout.volumePath;
  throw new ImportPendingError(
    `an import into ${path} is in progress or was interrupted; a snapshot now would hold it half-applied: finish it (the same cowvol import with --resume) or abandon it (cowvol snapshot restore, whose safety snapshot keeps the volume as it is now) first`,
    { details: { path } },
  );
}

/**
 * Most passes of {@link syncBeforeFreeze}. Bounded so that a create under a
 * write stream faster than the disk still freezes: each pass costs writers
 * nothing, but the create's round trip grows by one sync per pass.
 */
export const PRE_FREEZE_SYNC_PASSES = 4;

/**
 * A pre-freeze pass shorter than this ends the passes: what arrived during
 * it is about this many milliseconds of writes, which the sync inside the
 * freeze then writes while writers wait (docs/ARCHITECTURE.md §4.4 step 2).
 */
export const PRE_FREEZE_QUIET_MS = 20;

/**
 * Settles the write-back stage's entries held now and syncs the live volume,
 * while writes go on, again while a pass took {@link PRE_FREEZE_QUIET_MS} or
 * more and less than the pass before (at most {@link PRE_FREEZE_SYNC_PASSES}).
 * Each pass writes what came during the one before, so under a steady
 * stream the work left for the freeze shrinks from pass to pass — as a live
 * migration's pre-copy converges; a pass no shorter than the one before
 * says it does not (a disk whose every sync is slow), and more would only
 * lengthen the create. The first snapshot of a busy volume needs it most:
 * the volume had no snapshot to COW into, so the page cache may hold
 * hundreds of megabytes of writes, and one pass of that left the freeze's
 * sync tens of milliseconds of its own (docs/PERFORMANCE.md "The
 * snapshot-create pause under load"). Each pass holds the shared gate on
 * its own: a freeze that queues meanwhile (another create, a delete step)
 * waits for one pass, not all of them, and so do the writes queued behind
 * it.
 */
async function syncBeforeFreeze(ctx: VolumeContext, gate: { catalog?: boolean } = {}): Promise<void> {
  let previousMs = Infinity;
  for (let pass = 0; pass < PRE_FREEZE_SYNC_PASSES; pass++) {
    const tookMs = await ctx.shared(async () => {
      const startedMs = performance.now();
      await ctx.writeBack.settleHeld();
      await ctx.parts.volume.sync();
      return performance.now() - startedMs;
    }, gate);
    if (tookMs < PRE_FREEZE_QUIET_MS || tookMs >= previousMs) return;
    previousMs = tookMs;
  }
}

/**
 * Takes a snapshot, the gate frozen by the caller: syncs the live volume
 * (the snapshot's read-through content must be durable), commits a catalog
 * entry, and makes the new snapshot active with an empty map.
 * @throws SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, INVALID_LABEL (labels too large for one journal record), IO_ERROR, JOURNAL_ABORTED
 */
export async function createSnapshotFrozen(ctx: VolumeContext, name: string, options: CreateSnapshotOptions): Promise<SnapshotInfo> {
  if (options.labels) validateLabelsFit(options.labels, ctx.blockSizeBytes);
  if (ctx.findLive(name)) throw new SnapshotExistsError(name);
  if (ctx.catalog.length >= MAX_SNAPSHOTS) throw new SnapshotLimitError(MAX_SNAPSHOTS);
  const rec = await commitCreate(ctx, name, options);
  ctx.catalog.push(rec);
  ctx.names.added(rec);
  return describeSnapshot(ctx, rec);
}

/**
 * The create itself, frozen, its name and the limit checked: syncs the live
 * volume (the snapshot's read-through content must be durable), commits the
 * snapshot record, the volume record's next id and the new snapshot's
 * labels and origin as one transaction, gives it an empty map. Returns its
 * record (not in the live catalog yet).
 * @throws IO_ERROR, JOURNAL_ABORTED, INVALID_ARGUMENT (records over one handle)
 */
async function commitCreate(ctx: VolumeContext, name: string, options: CreateSnapshotOptions): Promise<SnapshotRecord> {
  assert(ctx.pending.size === 0, 'pending COWs while frozen');
  await ctx.parts.volume.sync();
  const meta = ctx.parts.meta;
  const id = meta.sb.nextSnapshotId;
  const rec: SnapshotRecord = { v: SCHEMA_VERSION, id, name, createdAt: new Date().toISOString(), state: 'live', ownedBlocks: 0, ...snapshotExtras(options) };
  await ctx.commitRecords([{ o: 'snap', id, name, createdAt: rec.createdAt, state: 'live' }, { o: 'sb', v: { ...meta.sb, nextSnapshotId: id + 1 } }, ...snapshotExtraRecords(id, options)]);
  ctx.maps.set(id, new SnapshotMap(id));
  return rec;
}

/**
 * {@link createSnapshot} on a volume opened with `catalog: 'lazy'` whose
 * catalog is not read (docs/ARCHITECTURE.md §4.4, "A create that does not
 * read the catalog"): the name is checked against its `name:` key and the
 * limit against `snapcount` (catalog-index.ts), before the freeze and again
 * inside it; the rest is the same (the pre-freeze syncs, the transaction).
 * The snapshot it makes is the newest live one: the active snapshot.
 * @throws what {@link createSnapshot} throws
 */
async function createSnapshotIndexed(ctx: VolumeContext, name: string, options: CreateSnapshotOptions, pastImport: boolean): Promise<SnapshotInfo> {
  if (!pastImport) refusePendingImport(ctx);
  if (options.labels) validateLabelsFit(options.labels, ctx.blockSizeBytes);
  await refuseTakenIndexed(ctx, name);
  if (!ctx.readOnly) await syncBeforeFreeze(ctx, { catalog: false });
  return ctx.frozen(
    async () => {
      if (ctx.catalogLoaded) return createSnapshotFrozen(ctx, name, options); // another call read the catalog meanwhile
      if (!pastImport) refusePendingImport(ctx);
      await refuseTakenIndexed(ctx, name);
      // The id a damaged volume record would hand out again: an eager open refuses such a catalog, and so does this.
      const id = ctx.parts.meta.sb.nextSnapshotId;
      if ((await ctx.parts.db.get(keys.snapshot(id))) !== undefined)
        throw new CorruptMetadataError(`snapshot id ${id} is taken but the volume record gives it to the next snapshot (nextSnapshotId ${id})`);
      const rec = await commitCreate(ctx, name, options);
      return describeSnapshot(ctx, rec, true);
    },
    { catalog: false },
  );
}

/** SNAPSHOT_EXISTS when the catalog index names a live snapshot `name`; SNAPSHOT_LIMIT when `snapcount` is at the limit. */
async function refuseTakenIndexed(ctx: VolumeContext, name: string): Promise<void> {
  if ((await indexedId(ctx.parts.db, name)) !== undefined) throw new SnapshotExistsError(name);
  if (ctx.parts.meta.counts.snapshots >= MAX_SNAPSHOTS) throw new SnapshotLimitError(MAX_SNAPSHOTS);
}

/** The optional SnapshotRecord fields a new snapshot starts with. */
function snapshotExtras(options: CreateSnapshotOptions): Partial<SnapshotRecord> {
  return {
    ...(options.labels && Object.keys(options.labels).length > 0 ? { labels: { ...options.labels } } : {}),
    ...(options.origin ? { origin: { ...options.origin } } : {}),
  };
}

/** The journal records that give a new snapshot those fields (same transaction as its creation). */
function snapshotExtraRecords(id: number, options: CreateSnapshotOptions): MetaRecord[] {
  const records: MetaRecord[] = [];
  if (options.labels && Object.keys(options.labels).length > 0) records.push({ o: 'labels', id, labels: { ...options.labels } });
  if (options.origin) records.push({ o: 'origin', id, origin: { ...options.origin } });
  if (options.clearImport) records.push({ o: 'import', state: null });
  return records;
}
