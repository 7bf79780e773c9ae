import { assert } from '@cowvol/base';
import { SHARED_COUNTS_FORMAT_VERSION } from './layout.js';
import { killPoint } from './kill-point.js';
import { keys, parseHexSuffix, type SnapshotRecord } from './metadata.js';
import type { MetadataDb } from './metadata-db.js';
import type { MetaRecord } from './meta-record.js';
import type { SpaceReport } from './space.js';
import type { VolumeContext } from './volume-context.js';

/**
 * Space accounting kept, not recomputed (docs/ARCHITECTURE.md §15.3, "The
 * accounting rule"). Every snapshot record counts its owned blocks
 * (`ownedBlocks`, |map|) and its shared blocks (`sharedBlocks`, |map ∩
 * map of its older catalog neighbour|, what deleting it alone frees). The
 * transactions that move them carry `shared` records with the change
 * (COW, delete hand-over and free, drop), computed against the live view
 * while it cannot change under them (a COW's older neighbour changes only
 * in a frozen delete step; delete steps run frozen). So `spaceUsage` is
 * O(snapshots), and recovery replays the counters with the maps.
 */

/** Above this many runs a count loads the whole map (one scan) instead of one LevelDB range per run. */
export const RANGE_COUNT_MAX_RUNS = 64;

/** The snapshot before `rec` in the catalog (the one it shares blocks with), or undefined for the oldest. */
export function olderNeighbour(ctx: VolumeContext, rec: SnapshotRecord): SnapshotRecord | undefined {
  const i = ctx.catalogIndexOf(rec.id);
  assert(i >= 0 && ctx.catalog[i] === rec, `snapshot ${rec.id} is not in the catalog`);
  return i > 0 ? ctx.catalog[i - 1] : undefined;
}

/**
 * How many of `blocks` (volume blocks, any order, no repeats) snapshot `id`
 * maps in the live view: its loaded map when there is one (or when the
 * blocks form many runs, loading it), else one LevelDB key range per run
 * of consecutive blocks — the committed state, which equals the live view
 * for a snapshot no COW writes into (the COW path asks about the active
 * snapshot's older neighbour), and for any snapshot during a frozen delete
 * step (every COW published; a snapshot with only a partial map, §4.15, is
 * counted this way then). @throws CORRUPT_METADATA
 */
export async function countMapped(ctx: VolumeContext, id: number, blocks: readonly number[]): Promise<number> {
  if (blocks.length === 0) return 0;
  const sorted = [...blocks].sort((a, b) => a - b);
  const runs: Array<[number, number]> = [];
  for (const b of sorted) {
    const last = runs[runs.length - 1];
    if (last && last[1] + 1 === b) last[1] = b;
    else runs.push([b, b]);
  }
  const loaded = ctx.maps.get(id) ?? (runs.length > RANGE_COUNT_MAX_RUNS ? await ctx.mapOf(id) : undefined);
  if (loaded) return sorted.reduce((n, b) => (loaded.has(b) ? n + 1 : n), 0);
  let n = 0;
  for (const [first, last] of runs) n += await countKeys(ctx.parts.db, keys.map(id, first), keys.map(id, last));
  return n;
}

/** Keys in [gte, lte]. */
async function countKeys(db: MetadataDb, gte: string, lte: string): Promise<number> {
  let n = 0;
  for await (const batch of db.scanBatches(gte, undefined, lte)) n += batch.length;
  return n;
}

/** |map(a) ∩ map(b)| in the live view: `a`'s keys scanned in batches against `b`'s loaded map. */
export async function countCommon(ctx: VolumeContext, a: number, b: number): Promise<number> {
  const other = await ctx.mapOf(b);
  const prefix = keys.mapPrefix(a);
  const own = ctx.maps.get(a);
  if (own) {
    let n = 0;
    for (const [block] of own.entries()) if (other.has(block)) n += 1;
    return n;
  }
  let n = 0;
  for await (const batch of ctx.parts.db.scanBatches(prefix)) for (const [key] of batch) if (other.has(parseHexSuffix(key, prefix))) n += 1;
  return n;
}

/** The shared-count changes of a step and their live update, applied once it committed. */
export interface SharedChange {
  records: MetaRecord[];
  apply: () => void;
}

function change(parts: Array<[SnapshotRecord | undefined, number]>): SharedChange {
  const real = parts.filter((p): p is [SnapshotRecord, number] => p[0] !== undefined && p[1] !== 0);
  return {
    records: real.flatMap(([rec, n]) => sharedRecord(rec.id, n)),
    apply: () => {
      for (const [rec, n] of real) addShared(rec, n);
    },
  };
}

/**
 * One delete step of the snapshot at catalog `index` (frozen): `freed`
 * blocks it unmaps (its older neighbour maps them: its own count drops),
 * `moved` blocks it hands over to the older neighbour (whose count grows by
 * those its own older neighbour maps); its newer neighbour loses every one
 * of `blocks` it maps too (docs/ARCHITECTURE.md §15.3).
 */
export async function deleteStepShared(ctx: VolumeContext, index: number, blocks: number[], moved: number[], freed: number): Promise<SharedChange> {
  const victim = ctx.catalog[index];
  const older = index > 0 ? ctx.catalog[index - 1] : undefined;
  const olderOlder = index > 1 ? ctx.catalog[index - 2] : undefined;
  const newer = ctx.catalog[index + 1];
  return change([
    [victim, older ? -freed : 0],
    [older, olderOlder && moved.length > 0 ? await countMapped(ctx, olderOlder.id, moved) : 0],
    [newer, newer ? -(await countMapped(ctx, newer.id, blocks)) : 0],
  ]);
}

/**
 * The drop of the (empty) snapshot at catalog `index`: its newer neighbour
 * shared nothing with it and now neighbours its older one — recounted,
 * O(|newer map|) (docs/ARCHITECTURE.md §15.3).
 */
export async function dropShared(ctx: VolumeContext, index: number): Promise<SharedChange> {
  const older = index > 0 ? ctx.catalog[index - 1] : undefined;
  const newer = ctx.catalog[index + 1];
  if (!newer) return change([]);
  assert((newer.sharedBlocks ?? 0) === 0, `snapshot ${newer.id} shares ${newer.sharedBlocks ?? 0} blocks with an empty snapshot`);
  return change([[newer, older && older.ownedBlocks > 0 && newer.ownedBlocks > 0 ? await countCommon(ctx, newer.id, older.id) : 0]]);
}

/** A `shared` record adding `n` to snapshot `id`'s shared count, or nothing for 0. */
export function sharedRecord(id: number, n: number): MetaRecord[] {
  return n === 0 ? [] : [{ o: 'shared', id, n }];
}

/** Adds `n` to a live record's shared count (absent means 0; kept absent at 0). */
export function addShared(rec: SnapshotRecord, n: number): void {
  const next = (rec.sharedBlocks ?? 0) + n;
  assert(next >= 0, `snapshot ${rec.id} shares a negative number of blocks`);
  if (next === 0) delete rec.sharedBlocks;
  else rec.sharedBlocks = next;
}

/**
 * Recounts every snapshot's shared blocks from the persisted maps in one
 * ordered scan of the `map:` keys (they sort by snapshot, then block):
 * the older neighbour's blocks are held as a sorted list while the next
 * snapshot's keys are merged against it. Memory: two maps' block numbers.
 * `catalogIds` ascending. Returns id → shared blocks (every id).
 */
export class SharedRecount {
  private readonly counts = new Map<number, number>();
  private readonly olderOf = new Map<number, number>();
  private currentId = -1;
  private current: number[] = [];
  private previousId = -1;
  private previous: number[] = [];
  private at = 0;

  constructor(catalogIds: readonly number[]) {
    for (let i = 0; i < catalogIds.length; i++) {
      this.counts.set(catalogIds[i]!, 0);
      if (i > 0) this.olderOf.set(catalogIds[i]!, catalogIds[i - 1]!);
    }
  }

  /** One persisted key, in key order. */
  visit(id: number, block: number): void {
    if (id !== this.currentId) {
      [this.previousId, this.previous] = [this.currentId, this.current];
      this.currentId = id;
      this.current = [];
      this.at = 0;
    }
    this.current.push(block);
    if (this.olderOf.get(id) !== this.previousId || !this.counts.has(id)) return;
    while (this.at < this.previous.length && this.previous[this.at]! < block) this.at += 1;
    if (this.previous[this.at] === block) this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
  }

  result(): Map<number, number> {
    return this.counts;
  }

  /** Scans every `map:` key of `db` into a recount. */
  static async of(db: MetadataDb, catalogIds: readonly number[]): Promise<Map<number, number>> {
    const recount = new SharedRecount(catalogIds);
    for await (const batch of db.scanBatches('map:')) {
      for (const [key] of batch) {
        const id = Number.parseInt(key.slice(4, 12), 16);
        recount.visit(id, Number.parseInt(key.slice(13), 16));
      }
    }
    return recount.result();
  }
}

/**
 * Sets every snapshot's shared count to a full recount (an upgrade from
 * format version 2, `check --repair`):
 * commits `shared` records with the difference to the committed counts,
 * in transactions of at most {@link RECOUNT_RECORDS_PER_COMMIT} records;
 * with `formatVersion`, the volume record with it joins the last one (a
 * crash before it redoes the whole recount, which converges: the records
 * are differences from what is committed). A read-only open sets the
 * live view only. Returns the snapshots whose count changed.
 * @throws CORRUPT_METADATA, IO_ERROR, JOURNAL_ABORTED
 */
export async function recountShared(ctx: VolumeContext, formatVersion?: number): Promise<number> {
  const { meta, db } = ctx.parts;
  const recount = await SharedRecount.of(
    db,
    ctx.catalog.map((r) => r.id),
  );
  const records: MetaRecord[] = [];
  for (const rec of ctx.catalog) {
    const committed = meta.snapshots.get(rec.id)?.sharedBlocks ?? 0;
    records.push(...sharedRecord(rec.id, (recount.get(rec.id) ?? 0) - committed));
  }
  const changed = records.length;
  if (!ctx.readOnly) {
    if (formatVersion !== undefined) records.push({ o: 'sb', v: { ...meta.sb, formatVersion } });
    for (let i = 0; i < records.length; i += RECOUNT_RECORDS_PER_COMMIT) {
      killPoint('recount:commit'); // before each transaction: the upgrade's crash test kills between them (§15.3)
      await ctx.commitRecords(records.slice(i, i + RECOUNT_RECORDS_PER_COMMIT));
    }
  }
  for (const rec of ctx.catalog) {
    const n = recount.get(rec.id) ?? 0;
    addShared(rec, n - (rec.sharedBlocks ?? 0));
    // Read-only: nothing committed, so the committed view in memory takes the counts too (they agree, as after a commit).
    const committed = meta.snapshots.get(rec.id);
    if (ctx.readOnly && committed) addShared(committed, n - (committed.sharedBlocks ?? 0));
  }
  return changed;
}

/** Records per transaction of a recount (small enough for the smallest journal's handle). */
export const RECOUNT_RECORDS_PER_COMMIT = 256;

/** At open: a volume of format version 2 gets its shared counts and becomes version 3 (docs/FORMAT.md §1, "Format versions"). */
export async function upgradeSpaceCounters(ctx: VolumeContext): Promise<void> {
  if (ctx.parts.meta.sb.formatVersion >= SHARED_COUNTS_FORMAT_VERSION) return;
  assert(ctx.parts.meta.sb.formatVersion === 2, `format version ${ctx.parts.meta.sb.formatVersion} reached the upgrade`);
  await recountShared(ctx, SHARED_COUNTS_FORMAT_VERSION);
}

/**
 * `Volume.spaceUsage` from the counters, O(snapshots): a snapshot's owned
 * blocks are its map's, its freeable blocks all of them when it is the
 * oldest, else those it shares with its older neighbour. With `only`
 * (records of the catalog, oldest first), the rows of those alone
 * (a page of a list, O(page · log snapshots)); the store totals stay whole.
 */
export function spaceFromCounters(ctx: VolumeContext, fileBytes: number, only?: readonly SnapshotRecord[]): SpaceReport {
  const bs = ctx.blockSizeBytes;
  const snapshots: SpaceReport['snapshots'] = [];
  let ownedBlocks = 0;
  let pendingDeleteBlocks = 0;
  for (const rec of ctx.catalog) {
    ownedBlocks += rec.ownedBlocks;
    if (rec.state === 'deleting') pendingDeleteBlocks += rec.ownedBlocks;
  }
  const rows = only ?? ctx.catalog;
  for (const rec of rows) {
    if (rec.state !== 'live') continue;
    const oldest = only ? ctx.catalogIndexOf(rec.id) === 0 : rec === ctx.catalog[0];
    const freeable = oldest ? rec.ownedBlocks : (rec.sharedBlocks ?? 0);
    snapshots.push({ id: rec.id, name: rec.name, ownedBlocks: rec.ownedBlocks, ownedBytes: rec.ownedBlocks * bs, freeableBlocks: freeable, freeableBytes: freeable * bs });
  }
  const alloc = ctx.parts.meta.allocator;
  const usedBlocks = alloc.highWaterBlocks - alloc.freeBlocks;
  return {
    blockSizeBytes: bs,
    snapshots,
    store: {
      highWaterBlocks: alloc.highWaterBlocks,
      usedBlocks,
      usedBytes: usedBlocks * bs,
      freeBlocks: alloc.freeBlocks,
      freeBytes: alloc.freeBlocks * bs,
      fileBytes,
      ownedBlocks,
      ownedBytes: ownedBlocks * bs,
      pendingDeleteBlocks,
    },
  };
}
