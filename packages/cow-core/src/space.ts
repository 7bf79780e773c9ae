import type { NamedMap } from './diff.js';
import type { SnapshotRecord } from './metadata.js';

/** Space accounting of one snapshot (see {@link Volume.spaceUsage}). */
export interface SnapshotSpace {
  id: number;
  name: string;
  /** Store blocks in this snapshot's map (the store space it holds). */
  ownedBlocks: number;
  ownedBytes: number;
  /**
   * Store blocks deleting this snapshot alone would free: every block of its
   * map when it has no older neighbour; otherwise only the blocks its older
   * neighbour also maps — the others are handed over to that neighbour,
   * which read through to them, and free nothing.
   */
  freeableBlocks: number;
  freeableBytes: number;
}

/** Store totals (see {@link Volume.spaceUsage}). */
export interface StoreSpace {
  /** Store blocks ever handed out: the store file's data area. */
  highWaterBlocks: number;
  /** Blocks mapped by some snapshot (or leaked). */
  usedBlocks: number;
  usedBytes: number;
  /** Free blocks below the high-water mark, reused before the store file grows. */
  freeBlocks: number;
  freeBytes: number;
  /** Size of the store file on disk (header included). */
  fileBytes: number;
  /** Sum of every snapshot's owned blocks (equals usedBlocks when nothing leaked). */
  ownedBlocks: number;
  ownedBytes: number;
  /**
   * Of `ownedBlocks`, those still held by snapshots whose delete was
   * interrupted (state `deleting`, in no row): the next writable open or
   * delete hands them over to older snapshots (their rows' owned and
   * freeable counts grow) or frees them. 0 when no delete is unfinished.
   */
  pendingDeleteBlocks: number;
}

/** Result of {@link Volume.spaceUsage}. */
export interface SpaceReport {
  blockSizeBytes: number;
  /** Oldest first. */
  snapshots: SnapshotSpace[];
  store: StoreSpace;
}

/** What deleting a set of snapshots together frees (the dry run of a multi-delete). */
export interface DeletePlan {
  /** Oldest first: the order the delete processes them in. */
  snapshots: Array<{ id: number; name: string; freedBlocks: number; freedBytes: number; handedOverBlocks: number }>;
  freedBlocks: number;
  freedBytes: number;
  handedOverBlocks: number;
}

/**
 * Blocks deleting `map` alone frees: |map| without an older neighbour, else
 * |map ∩ older|. O(min(|map|, |older|)), no I/O.
 */
export function freeableBlocks(map: NamedMap, older: NamedMap | undefined): number {
  if (!older) return map.map.size;
  const [small, large] = map.map.size <= older.map.size ? [map.map, older.map] : [older.map, map.map];
  let n = 0;
  for (const [block] of small.entries()) if (large.has(block)) n += 1;
  return n;
}

/** The ids of `catalog`'s snapshots whose delete was interrupted (state `deleting`): what {@link planDelete} finishes first. */
export function pendingDeletes(catalog: readonly SnapshotRecord[]): Set<number> {
  return new Set(catalog.filter((r) => r.state === 'deleting').map((r) => r.id));
}

/**
 * Simulates deleting `victims` (ids) out of `catalog` (every snapshot, oldest
 * first, with its map) exactly as the delete does it: oldest victim first,
 * each block handed over to the nearest older surviving snapshot when that
 * one neither maps it nor received it from an earlier victim, else freed.
 * `pending`: snapshots in state `deleting` (an interrupted delete, in the
 * catalog with their maps): the next writable open finishes them before
 * anything else, so they are simulated first — their blocks reach the
 * survivors they are handed to, and what they free is not this plan's
 * (docs/ARCHITECTURE.md §15.3). O(Σ victims' and pending map sizes);
 * touches no state.
 */
export function planDelete(catalog: NamedMap[], victims: Set<number>, blockSizeBytes: number, pending: ReadonlySet<number> = new Set()): DeletePlan {
  const received = new Map<number, Set<number>>(); // survivor id -> blocks handed over to it
  const plan: DeletePlan = { snapshots: [], freedBlocks: 0, freedBytes: 0, handedOverBlocks: 0 };
  if (pending.size > 0) simulateDeletes(catalog, pending, received);
  const rest = pending.size > 0 ? catalog.filter((m) => !pending.has(m.id)) : catalog;
  for (const { victim, freed, moved } of simulateDeletes(rest, victims, received)) {
    plan.snapshots.push({ id: victim.id, name: victim.name, freedBlocks: freed, freedBytes: freed * blockSizeBytes, handedOverBlocks: moved });
    plan.freedBlocks += freed;
    plan.handedOverBlocks += moved;
  }
  plan.freedBytes = plan.freedBlocks * blockSizeBytes;
  return plan;
}

/**
 * The steps of {@link planDelete} for `victims` out of `catalog`: each
 * victim's blocks — its map and those `received` from earlier deletes —
 * handed over to the nearest older survivor (added to `received`) or freed.
 */
function simulateDeletes(catalog: NamedMap[], victims: ReadonlySet<number>, received: Map<number, Set<number>>): Array<{ victim: NamedMap; freed: number; moved: number }> {
  const steps: Array<{ victim: NamedMap; freed: number; moved: number }> = [];
  for (let i = 0; i < catalog.length; i++) {
    const victim = catalog[i]!;
    if (!victims.has(victim.id)) continue;
    let older: NamedMap | undefined;
    for (let j = i - 1; j >= 0; j--) {
      if (!victims.has(catalog[j]!.id)) {
        older = catalog[j];
        break;
      }
    }
    let freed = 0;
    let moved = 0;
    let got = older ? received.get(older.id) : undefined;
    const handOver = (block: number): void => {
      if (older && !older.map.has(block) && !got?.has(block)) {
        if (!got) {
          got = new Set();
          received.set(older.id, got);
        }
        got.add(block);
        moved += 1;
      } else freed += 1;
    };
    for (const [block] of victim.map.entries()) handOver(block);
    for (const block of received.get(victim.id) ?? []) handOver(block);
    received.delete(victim.id);
    steps.push({ victim, freed, moved });
  }
  return steps;
}
