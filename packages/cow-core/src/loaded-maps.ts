import type { SnapshotRecord } from './metadata.js';
import type { MetadataDb } from './metadata-db.js';
import { MAP_PARTIAL_MAX_REGIONS, MAP_REGION_BLOCKS, SnapshotMap } from './snapshot-map.js';
import type { VolumeStats } from './volume-types.js';

/**
 * The snapshot maps an open volume has loaded — the live view of the maps
 * (docs/ARCHITECTURE.md §2, §4.15): **whole** maps, which snapshot reads,
 * export, diff, delete and its plans, `checkConsistency`, the outside-writes
 * scan and the shared counts that need them use (`check` scans LevelDB
 * itself; space reports use the kept counters), and **partial** maps, which
 * hold only the regions the COW path has needed so far. A snapshot has at
 * most one map object: completing its partial map turns that object into
 * its whole map, so the COW path and the readers never see two.
 */
export class LoadedMaps {
  /** Whole maps by snapshot id. */
  private readonly wholeMaps = new Map<number, SnapshotMap>();
  /** Partial maps by snapshot id, until a caller asks for the whole map. */
  private readonly partialMaps = new Map<number, SnapshotMap>();
  /** Whole loads and completions in flight (concurrent callers share one). */
  private readonly loads = new Map<number, Promise<SnapshotMap>>();

  /**
   * @param db the metadata database the maps are scanned from
   * @param ownsNoBlock whether snapshot `id` owns no block (its map is empty: no scan)
   * @param stats counted: `mapScans`, `mapRegionScans`
   */
  constructor(
    private readonly db: MetadataDb,
    private readonly ownsNoBlock: (id: number) => boolean,
    private readonly stats: VolumeStats,
  ) {}

  /** The whole map of snapshot `id` if it is loaded (never a partial one). */
  get(id: number): SnapshotMap | undefined {
    return this.wholeMaps.get(id);
  }

  /** `map` (whole) becomes snapshot `id`'s: a new snapshot's empty map. */
  set(id: number, map: SnapshotMap): void {
    this.wholeMaps.set(id, map);
  }

  /** Forgets every map of snapshot `id` (dropped by a delete). */
  forget(id: number): void {
    this.wholeMaps.delete(id);
    this.partialMaps.delete(id);
  }

  /**
   * The live view of snapshot `id`'s whole map, loaded once (concurrent
   * callers share the load; a failed load is retried by the next caller).
   * A partial map of the snapshot is completed, not loaded beside it.
   * @throws CORRUPT_METADATA, LevelDB errors
   */
  async whole(id: number): Promise<SnapshotMap> {
    const map = this.wholeMaps.get(id) ?? this.loads.get(id);
    if (map) return map;
    const partial = this.partialMaps.get(id);
    if (partial) return this.track(id, () => partial.complete(this.db).then(() => partial));
    // A snapshot that owns no block has an empty map (checkConsistency: map size = ownedBlocks): no LevelDB
    // scan. Reading the oldest of 65,536 snapshots loads every newer map; most are empty (docs/PERFORMANCE.md "Many snapshots").
    if (this.ownsNoBlock(id)) {
      const empty = new SnapshotMap(id);
      this.wholeMaps.set(id, empty);
      return empty;
    }
    return this.track(id, () => SnapshotMap.load(this.db, id));
  }

  /** Starts the load of snapshot `id`'s whole map (a fresh load or a completion), the one concurrent callers share. */
  private track(id: number, start: () => Promise<SnapshotMap>): Promise<SnapshotMap> {
    this.stats.mapScans += 1;
    const load = start().then(
      (m) => {
        this.wholeMaps.set(id, m);
        this.partialMaps.delete(id);
        this.loads.delete(id);
        return m;
      },
      (err: unknown) => {
        this.loads.delete(id);
        throw err;
      },
    );
    this.loads.set(id, load);
    return load;
  }

  /**
   * A map of snapshot `id` with at least the regions of blocks [first,
   * last] loaded (§4.15): its whole map when loaded (or cheap: a snapshot
   * that owns no block), else its partial map with those regions loaded by
   * one range scan. Once a partial map would pass `MAP_PARTIAL_MAX_REGIONS`
   * regions, or a whole load is running, the whole map instead.
   * @throws CORRUPT_METADATA, LevelDB errors
   */
  async covering(id: number, first: number, last: number): Promise<SnapshotMap> {
    const whole = this.wholeMaps.get(id);
    if (whole) return whole;
    let partial = this.partialMaps.get(id);
    if (partial?.covers(first, last)) return partial;
    const regions = Math.floor(last / MAP_REGION_BLOCKS) - Math.floor(first / MAP_REGION_BLOCKS) + 1;
    if (this.loads.has(id) || (partial?.loadedRegions ?? 0) + regions > MAP_PARTIAL_MAX_REGIONS) return this.whole(id);
    if (!partial) {
      if (this.ownsNoBlock(id)) return this.whole(id); // empty: whole at no cost
      partial = SnapshotMap.partial(id);
      this.partialMaps.set(id, partial);
    }
    this.stats.mapRegionScans += 1;
    await partial.loadRegions(this.db, first, last, MAP_PARTIAL_MAX_REGIONS);
    // Completed meanwhile (the same object, now whole) or not: either covers the range.
    return partial;
  }

  /** The maps of `chain`, in its order, each covering blocks [first, last]; synchronous (no promise on the hot path) once they do. */
  chain(chain: readonly SnapshotRecord[], first: number, last: number): SnapshotMap[] | Promise<SnapshotMap[]> {
    const out: SnapshotMap[] = [];
    for (const r of chain) {
      const map = this.wholeMaps.get(r.id) ?? this.partialMaps.get(r.id);
      if (!map?.covers(first, last)) return this.chainLoading(chain, first, last);
      out.push(map);
    }
    return out;
  }

  private async chainLoading(chain: readonly SnapshotRecord[], first: number, last: number): Promise<SnapshotMap[]> {
    const out: SnapshotMap[] = [];
    for (const r of chain) out.push(await this.covering(r.id, first, last));
    return out;
  }
}
