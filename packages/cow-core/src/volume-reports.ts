import { assert } from '@cowvol/base';
import { SnapshotNotFoundError, VolumeClosedError } from './errors.js';
import { decodeValue, keys, type ImportRecord, type SnapshotRecord } from './metadata.js';
import { MAX_FINDINGS, checkVolume, type CheckReport } from './check.js';
import { checkStoreInto } from './check-data.js';
import { unionOfMaps, type BlockRange, type DiffResult, type NamedMap } from './diff.js';
import { freeableBlocks, type SpaceReport } from './space.js';
import { recountShared, spaceFromCounters } from './space-accounting.js';
import { rebuildCatalogIndex } from './catalog-index.js';
import { killPoint } from './kill-point.js';
import { describeSnapshot } from './snapshot-lifecycle.js';
import type { VolumeContext } from './volume-context.js';
import type { ConsistencyReport, SnapshotInfo, VolumeInfo } from './volume-types.js';

/**
 * What a volume reports about itself (docs/ARCHITECTURE.md §8, §15.2, §15.3): info,
 * the checks, diffs and space accounting. Each runs inside the gate the
 * `Volume` method chose (settled or frozen); none changes the live view,
 * except `check --repair`, which frees leaks.
 */

/** Size, snapshots, store usage, format version, recovery report. */
export async function volumeInfo(ctx: VolumeContext): Promise<VolumeInfo> {
  const { meta, journal, store, layout, recovery } = ctx.parts;
  const usedBlocks = meta.allocator.highWaterBlocks - meta.allocator.freeBlocks;
  const sb = meta.sb;
  return {
    path: layout.volumePath,
    formatVersion: sb.formatVersion,
    uuid: sb.uuid,
    sizeBytes: sb.sizeBytes,
    blockSizeBytes: sb.blockSizeBytes,
    dataMode: sb.dataMode,
    maxAtomicWriteBytes: sb.dataMode === 'journal' ? ctx.pieceBytes() : 0,
    createdAt: sb.createdAt,
    snapshots: ctx.liveSnapshots().map((r) => describeSnapshot(ctx, r)),
    store: {
      highWaterBlocks: meta.allocator.highWaterBlocks,
      freeBlocks: meta.allocator.freeBlocks,
      usedBlocks,
      usedBytes: usedBlocks * sb.blockSizeBytes,
      fileBytes: await store.device.sizeBytes(),
    },
    journal: {
      sizeBytes: journal.lengthBlocks * journal.blockSizeBytes,
      lastSequence: journal.lastCommittedSequence,
      uncheckpointedBytes: journal.uncheckpointedBytes,
      commits: journal.stats.commits,
      handles: journal.stats.handles,
      syncs: journal.stats.syncs,
      checkpoints: journal.stats.checkpoints,
    },
    recovery,
    pendingImport: ctx.importPending ? ((await readImportMarker(ctx)) ?? null) : null,
  };
}

/** The import marker (an import applying or interrupted, FORMAT.md §6.10), or undefined. */
export async function readImportMarker(ctx: VolumeContext): Promise<ImportRecord | undefined> {
  const bytes = await ctx.parts.db.get(keys.importState);
  return bytes ? decodeValue.importState(keys.importState, bytes) : undefined;
}

/** Options of `Volume.check`. */
export interface CheckOptions {
  repair?: boolean;
  readData?: boolean;
  onProgress?: (doneBlocks: number, totalBlocks: number, phase?: 'data') => void;
}

/** `Volume.check`, frozen by the caller (docs/ARCHITECTURE.md §8.1). @throws IO_ERROR, JOURNAL_ABORTED */
export async function checkFrozen(ctx: VolumeContext, options: CheckOptions): Promise<CheckReport> {
  const { db, meta, store, journal, layout } = ctx.parts;
  await ctx.checkpoint(); // everything home: the store file must hold every mapped block
  const report = await checkVolume(db, meta, {
    storeFileBytes: await store.device.sizeBytes(),
    blockSizeBytes: ctx.blockSizeBytes,
    sizeBytes: meta.sb.sizeBytes,
    journal: { lastSequence: journal.lastCommittedSequence, appliedSequence: meta.appliedSequence },
    // Verified before LevelDB opened them, under the same owner lock (`verifyMetadata`): not read twice.
    ...(ctx.parts.metadataVerified ? {} : { metadataPath: layout.metaPath }),
    ...(options.onProgress ? { onProgress: options.onProgress } : {}),
  });
  if (options.readData) await checkStoreInto(report, db, meta, store, options.onProgress);
  if (options.repair) killPoint('check:repair'); // the repair's changes start here (tests stop it here: COWVOL_KILL_AT)
  if (options.repair) await repairCounts(ctx, report);
  if (options.repair && report.leaks.length > 0 && report.corruptions.length === 0) {
    await ctx.commitRecords(report.leaks.map((e) => ({ o: 'free' as const, p: e.startBlock, n: e.lengthBlocks })));
    // The live allocator learns the freed space too.
    for (const e of report.leaks) ctx.allocator.free(e);
    report.repairedBlocks = report.leakedBlocks;
    report.status = 'clean';
  }
  return report;
}

/**
 * `Volume.check({ readData })` without `repair`, data=ordered
 * (docs/ARCHITECTURE.md §8.3, "Beside I/O"): the metadata check runs
 * frozen, as {@link checkFrozen}; the read of every mapped store block —
 * minutes on a large store — runs after the thaw, beside reads, writes
 * and snapshot creates. The caller holds the delete lock, so no store
 * block is freed or handed over meanwhile: a mapping the scan finds keeps
 * its store block and its bytes (a copy is written once, before its
 * mapping commits, straight to the store file in this data mode). New
 * COWs may add mappings; the scan reads LevelDB as of its start.
 * @throws IO_ERROR, JOURNAL_ABORTED; VOLUME_CLOSED when the volume closes before or during the data read
 */
export async function checkDataBesideIo(ctx: VolumeContext, options: CheckOptions): Promise<CheckReport> {
  assert(!ctx.journaled && options.repair !== true, 'the data read runs beside I/O only in data=ordered mode, without repair');
  const report = await ctx.frozen(() => checkFrozen(ctx, { ...options, readData: false }));
  ctx.status.checkUsable();
  const { db, meta, store } = ctx.parts;
  try {
    await checkStoreInto(report, db, meta, store, options.onProgress);
  } catch (err) {
    // A close meanwhile ends the scan (its LevelDB iterator, its store reads): say so, not how it broke.
    if (ctx.status.state === 'closing' || ctx.status.state === 'closed') throw new VolumeClosedError();
    throw err;
  }
  return report;
}

/**
 * `check --repair` of derived counts and keys: when shared counts and the
 * catalog index are the only corruption found, every shared count is set
 * to the recount (space-accounting.ts) and the index rebuilt from the
 * catalog (catalog-index.ts); the report says how many changed.
 */
async function repairCounts(ctx: VolumeContext, report: CheckReport): Promise<void> {
  const derived = (kind: string): boolean => kind === 'shared-count-mismatch' || kind === 'catalog-index';
  // Only when every finding is listed: past MAX_FINDINGS an unlisted one may be anything.
  if (report.corruptions.length === 0 || report.corruptions.length >= MAX_FINDINGS || !report.corruptions.every((f) => derived(f.kind))) return;
  if (report.corruptions.some((f) => f.kind === 'shared-count-mismatch')) report.repairedCounts = await recountShared(ctx);
  if (report.corruptions.some((f) => f.kind === 'catalog-index')) report.repairedIndexKeys = await rebuildCatalogIndex(ctx.parts.db, [...ctx.parts.meta.snapshots.values()]);
  report.corruptions = [];
  report.status = report.leaks.length > 0 ? 'leaks' : 'clean';
}

/** `Volume.checkConsistency`, frozen by the caller: the live view against itself (guarantee 6). */
export async function checkConsistencyFrozen(ctx: VolumeContext): Promise<ConsistencyReport> {
  const problems: string[] = [];
  const owner = new Map<number, string>();
  let mappedBlocks = 0;
  const { meta } = ctx.parts;
  const committed = meta.allocator;
  for (const rec of ctx.catalog) {
    const map = await ctx.mapOf(rec.id);
    if (map.size !== rec.ownedBlocks) problems.push(`snapshot ${rec.name} counts ${rec.ownedBlocks} owned blocks but maps ${map.size}`);
    if (meta.snapshots.get(rec.id)?.ownedBlocks !== rec.ownedBlocks) problems.push(`snapshot ${rec.name}: live and committed owned counts differ`);
    for (const [block, storeBlock] of map.entries()) {
      mappedBlocks += 1;
      const where = `${rec.name}:${block}`;
      if (block * ctx.blockSizeBytes >= meta.sb.sizeBytes) problems.push(`${where} maps a block beyond the volume`);
      if (storeBlock >= committed.highWaterBlocks) problems.push(`${where} maps store block ${storeBlock} beyond the store (${committed.highWaterBlocks})`);
      else if (committed.isFree(storeBlock)) problems.push(`${where} maps store block ${storeBlock}, which is free`);
      const prev = owner.get(storeBlock);
      if (prev !== undefined) problems.push(`store block ${storeBlock} mapped twice: ${prev} and ${where}`);
      owner.set(storeBlock, where);
    }
  }
  await checkSharedCounts(ctx, problems);
  problems.push(...ctx.names.problems(ctx.catalog));
  const leakedBlocks = committed.highWaterBlocks - committed.freeBlocks - owner.size;
  return { snapshots: ctx.catalog.length, mappedBlocks, leakedBlocks: Math.max(0, leakedBlocks), problems };
}

/** The kept shared counts (space-accounting.ts) against a recount of the live maps, and live against committed. */
async function checkSharedCounts(ctx: VolumeContext, problems: string[]): Promise<void> {
  let older: NamedMap | undefined;
  for (const rec of ctx.catalog) {
    const named: NamedMap = { id: rec.id, name: rec.name, map: await ctx.mapOf(rec.id) };
    const recount = older ? freeableBlocks(named, older) : 0;
    const kept = rec.sharedBlocks ?? 0;
    if (kept !== recount) problems.push(`snapshot ${rec.name} counts ${kept} blocks shared with its older neighbour but shares ${recount}`);
    if ((ctx.parts.meta.snapshots.get(rec.id)?.sharedBlocks ?? 0) !== kept) problems.push(`snapshot ${rec.name}: live and committed shared counts differ`);
    older = named;
  }
}

/** `Volume.diff`, settled by the caller (docs/ARCHITECTURE.md §15.2); `blocks`: only those. @throws SNAPSHOT_NOT_FOUND */
export async function diffOf(ctx: VolumeContext, from: string, to: string | undefined, blocks?: BlockRange): Promise<DiffResult> {
  const a = ctx.findLive(from);
  if (!a) throw new SnapshotNotFoundError(from);
  const b = to === undefined ? undefined : ctx.findLive(to);
  if (to !== undefined && !b) throw new SnapshotNotFoundError(to);
  const [older, newer] = b !== undefined && b.id < a.id ? [b, a] : [a, b];
  const range = ctx.catalog.slice(ctx.catalogIndexOf(older.id), newer === undefined ? ctx.catalog.length : ctx.catalogIndexOf(newer.id));
  const bs = ctx.blockSizeBytes;
  const extents = unionOfMaps(await namedMaps(ctx, range), bs, blocks);
  const bytes = extents.reduce((n, e) => n + e.lengthBytes, 0);
  return { from, to: to ?? null, blockSizeBytes: bs, extents, bytes, blocks: bytes / bs };
}

/** One page of the snapshot list (`Volume.listSnapshotsPage`). */
export interface SnapshotPage {
  /** Live snapshots with ids above the page's `afterId`, oldest first; at least one unless none is left. */
  snapshots: SnapshotInfo[];
  /** The space report with the rows of these snapshots alone (the store totals whole). */
  space: SpaceReport;
  /** The `afterId` of the next page (the id of this page's last snapshot), or null when this page is the last. */
  nextAfterId: number | null;
}

/** `Volume.listSnapshotsPage`, settled by the caller: O(log snapshots + page) and the store totals' O(snapshots) sum. */
export async function snapshotPageOf(ctx: VolumeContext, afterId: number, take: (info: SnapshotInfo, taken: number) => boolean): Promise<SnapshotPage> {
  const page = ctx.livePage(afterId, (rec, taken) => take(describeSnapshot(ctx, rec), taken));
  const space = spaceFromCounters(ctx, await ctx.parts.store.device.sizeBytes(), page.records);
  return { snapshots: page.records.map((r) => describeSnapshot(ctx, r)), space, nextAfterId: page.nextAfterId };
}

/** `Volume.snapshotInfo`, settled by the caller: one snapshot and its space row (the store totals whole). @throws SNAPSHOT_NOT_FOUND */
export async function snapshotInfoOf(ctx: VolumeContext, name: string): Promise<{ snapshot: SnapshotInfo; space: SpaceReport }> {
  const rec = ctx.findLive(name);
  if (!rec) throw new SnapshotNotFoundError(name);
  return { snapshot: describeSnapshot(ctx, rec), space: spaceFromCounters(ctx, await ctx.parts.store.device.sizeBytes(), [rec]) };
}

/** `Volume.spaceUsage`, settled by the caller (docs/ARCHITECTURE.md §15.3): from the kept counters, O(snapshots). */
export async function spaceUsageOf(ctx: VolumeContext): Promise<SpaceReport> {
  return spaceFromCounters(ctx, await ctx.parts.store.device.sizeBytes());
}

/** The maps of `records`, loaded, in the same order. */
export async function namedMaps(ctx: VolumeContext, records: SnapshotRecord[]): Promise<NamedMap[]> {
  const out: NamedMap[] = [];
  for (const r of records) out.push({ id: r.id, name: r.name, map: await ctx.mapOf(r.id) });
  return out;
}
