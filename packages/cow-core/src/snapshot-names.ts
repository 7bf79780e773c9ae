import { assert } from '@cowvol/base';
import { CorruptMetadataError } from './errors.js';
import type { SnapshotRecord } from './metadata.js';
import type { CommittedMetadata } from './committed-metadata.js';

/**
 * The name index of the live catalog (docs/ARCHITECTURE.md §4.4): live
 * snapshots by name, and how many snapshots being deleted carry each name
 * (a name stays taken until its snapshot is dropped). Lookups are O(1), so
 * creating n snapshots costs O(n), not O(n²). Kept by the few places that
 * change the catalog — open ({@link SnapshotNames.of}), create, rename,
 * the delete's mark and drop — each right after it changed the record;
 * `Volume.check` and `checkConsistency` compare it with the catalog
 * ({@link SnapshotNames.problems}).
 */
export class SnapshotNames {
  private readonly live = new Map<string, SnapshotRecord>();
  private readonly deleting = new Map<string, number>();

  /** The index of `catalog` (oldest first). @throws CORRUPT_METADATA when two live snapshots share a name */
  static of(catalog: readonly SnapshotRecord[]): SnapshotNames {
    const names = new SnapshotNames();
    for (const rec of catalog) {
      if (rec.state === 'live' && names.live.has(rec.name)) throw new CorruptMetadataError(`two snapshots named ${rec.name}`);
      names.added(rec);
    }
    return names;
  }

  /** The live snapshot named `name`, or undefined. O(1). */
  findLive(name: string): SnapshotRecord | undefined {
    return this.live.get(name);
  }

  /** Whether any snapshot, live or being deleted, carries `name` (a rename may not take it). O(1). */
  taken(name: string): boolean {
    return this.live.has(name) || this.deleting.has(name);
  }

  /** Live snapshots indexed. */
  get liveCount(): number {
    return this.live.size;
  }

  /** `rec` joined the catalog (created, or at open). */
  added(rec: SnapshotRecord): void {
    if (rec.state === 'live') {
      assert(!this.live.has(rec.name), `two live snapshots named ${rec.name}`);
      this.live.set(rec.name, rec);
    } else this.deleting.set(rec.name, (this.deleting.get(rec.name) ?? 0) + 1);
  }

  /** `rec`, live until now, was marked `deleting` (call after the state changed). */
  markedDeleting(rec: SnapshotRecord): void {
    assert(rec.state === 'deleting' && this.live.get(rec.name) === rec, `snapshot ${rec.name} marked deleting is not indexed live`);
    this.live.delete(rec.name);
    this.deleting.set(rec.name, (this.deleting.get(rec.name) ?? 0) + 1);
  }

  /** `rec`, being deleted, was dropped from the catalog. */
  dropped(rec: SnapshotRecord): void {
    const n = this.deleting.get(rec.name) ?? 0;
    assert(rec.state === 'deleting' && n > 0, `snapshot ${rec.name} dropped is not indexed as being deleted`);
    if (n === 1) this.deleting.delete(rec.name);
    else this.deleting.set(rec.name, n - 1);
  }

  /** Live `rec` was renamed from `oldName` (call after its name changed). */
  renamed(rec: SnapshotRecord, oldName: string): void {
    assert(rec.state === 'live' && this.live.get(oldName) === rec && !this.live.has(rec.name), `rename of ${oldName} to ${rec.name} disagrees with the name index`);
    this.live.delete(oldName);
    this.live.set(rec.name, rec);
  }

  /** Where the index and `catalog` disagree, in words (none when they agree). O(snapshots). */
  problems(catalog: readonly SnapshotRecord[]): string[] {
    const out: string[] = [];
    const want = SnapshotNames.count(catalog);
    for (const rec of catalog) {
      if (rec.state === 'live' && this.live.get(rec.name) !== rec) out.push(`live snapshot ${rec.name} (id ${rec.id}) is not in the name index`);
    }
    if (this.live.size !== want.live) out.push(`the name index holds ${this.live.size} live names, the catalog ${want.live} live snapshots`);
    for (const [name, n] of want.deleting) if (this.deleting.get(name) !== n) out.push(`the name index counts ${this.deleting.get(name) ?? 0} snapshots named ${name} being deleted, the catalog ${n}`);
    if (this.deleting.size !== want.deleting.size) out.push(`the name index holds ${this.deleting.size} names being deleted, the catalog ${want.deleting.size}`);
    return out;
  }

  private static count(catalog: readonly SnapshotRecord[]): { live: number; deleting: Map<string, number> } {
    let live = 0;
    const deleting = new Map<string, number>();
    for (const rec of catalog) {
      if (rec.state === 'live') live += 1;
      else deleting.set(rec.name, (deleting.get(rec.name) ?? 0) + 1);
    }
    return { live, deleting };
  }
}

/** The position of snapshot `id` in `catalog` (ids ascending), or -1: a binary search, O(log snapshots). */
export function catalogIndexOf(catalog: readonly SnapshotRecord[], id: number): number {
  let lo = 0;
  let hi = catalog.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const at = catalog[mid]!.id;
    if (at === id) return mid;
    if (at < id) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

/** The position of the first snapshot of `catalog` (ids ascending) whose id is above `afterId`: catalog.length when none. O(log snapshots). */
export function catalogIndexAfter(catalog: readonly SnapshotRecord[], afterId: number): number {
  let lo = 0;
  let hi = catalog.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (catalog[mid]!.id <= afterId) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The live catalog: a copy of the committed one, oldest first, checked. @throws CORRUPT_METADATA */
export function checkedCatalog(meta: CommittedMetadata): SnapshotRecord[] {
  const catalog = [...meta.snapshots.values()].sort((a, b) => a.id - b.id).map((r) => ({ ...r }));
  const names = new Set<string>();
  for (const rec of catalog) {
    if (rec.state !== 'live') continue; // a snapshot being deleted may share its name with a newer one
    if (names.has(rec.name)) throw new CorruptMetadataError(`two snapshots named ${rec.name}`);
    names.add(rec.name);
    if (rec.id >= meta.sb.nextSnapshotId) throw new CorruptMetadataError(`snapshot id ${rec.id} not below nextSnapshotId ${meta.sb.nextSnapshotId}`);
  }
  return catalog;
}
