import { assert } from '@cowvol/base';
import { FORMAT_VERSION, MAX_SNAPSHOTS, SHARED_COUNTS_FORMAT_VERSION } from './layout.js';
import { killPoint } from './kill-point.js';
import type { VolumeContext } from './volume-context.js';
import { SCHEMA_VERSION, decodeValue, delOp, keys, putOp, type MetaOp, type SnapshotRecord } from './metadata.js';
import type { MetadataDb } from './metadata-db.js';

/**
 * The catalog index (docs/FORMAT.md §6.13, format version 4): keys derived
 * from the snapshot records, written in the same LevelDB batch as the
 * records they follow (`CommittedMetadata.apply`), so that an open for one
 * snapshot create need not read the whole catalog (docs/ARCHITECTURE.md
 * §4.4, "A create that does not read the catalog"):
 *
 * - `name:<name>` → `{v, id}`: one key per *live* snapshot. A snapshot
 *   being deleted gives its name up when it turns `deleting` (a newer one
 *   may take it), so the key set is exactly the live names.
 * - `snapcount` → `{v, snapshots, deleting}`: how many snapshot records the
 *   catalog holds (what MAX_SNAPSHOTS bounds) and how many are `deleting`
 *   (an open that skips the catalog must know that no delete waits to be
 *   finished).
 *
 * Derived, never the source of truth: an open that reads the catalog uses
 * the records; `check` compares the index with them and `check --repair`
 * rebuilds it ({@link rebuildCatalogIndex}).
 */

/** What `snapcount` holds. */
export interface SnapshotCounts {
  snapshots: number;
  deleting: number;
}

/** A snapshot's name and state on one side of a transaction; null: no record. */
export type IndexedState = Readonly<{ name: string; state: SnapshotRecord['state'] }> | null;

/** The live name of a state, if any: the name the index holds for it. */
function liveName(s: IndexedState): string | undefined {
  return s?.state === 'live' ? s.name : undefined;
}

/**
 * The index operations of one transaction, from each touched snapshot's
 * state before and after it (`changes`), advancing `counts` in place: the
 * deletes of names given up first, then the puts of names taken — a name
 * one snapshot gives up and another takes in the same transaction ends
 * pointing at the taker — then `snapcount` if a count moved.
 */
export function indexOperations(changes: ReadonlyMap<number, { before: IndexedState; after: IndexedState }>, counts: SnapshotCounts): MetaOp[] {
  const dels: MetaOp[] = [];
  const puts: MetaOp[] = [];
  const was = { ...counts };
  for (const [id, { before, after }] of changes) {
    const from = liveName(before);
    const to = liveName(after);
    if (from !== to) {
      if (from !== undefined) dels.push(delOp(keys.name(from)));
      if (to !== undefined) puts.push(putOp(keys.name(to), { v: SCHEMA_VERSION, id }));
    }
    counts.snapshots += (after ? 1 : 0) - (before ? 1 : 0);
    counts.deleting += (after?.state === 'deleting' ? 1 : 0) - (before?.state === 'deleting' ? 1 : 0);
    assert(counts.snapshots >= 0 && counts.deleting >= 0 && counts.deleting <= counts.snapshots, `snapshot counts ${counts.snapshots}/${counts.deleting} after snapshot ${id}`);
  }
  const ops = [...dels, ...puts];
  if (counts.snapshots !== was.snapshots || counts.deleting !== was.deleting) ops.push(countOp(counts));
  return ops;
}

/** The put of `snapcount`. */
export function countOp(counts: SnapshotCounts): MetaOp {
  return putOp(keys.snapshotCount, { v: SCHEMA_VERSION, snapshots: counts.snapshots, deleting: counts.deleting });
}

/** The counts of a whole catalog. */
export function countsOf(catalog: Iterable<SnapshotRecord>): SnapshotCounts {
  const counts = { snapshots: 0, deleting: 0 };
  for (const rec of catalog) {
    counts.snapshots++;
    if (rec.state === 'deleting') counts.deleting++;
  }
  return counts;
}

/** `snapcount` as stored, or undefined when absent. @throws CORRUPT_METADATA, UNSUPPORTED_VERSION */
export async function readCounts(db: MetadataDb): Promise<SnapshotCounts | undefined> {
  const bytes = await db.get(keys.snapshotCount);
  if (bytes === undefined) return undefined;
  const rec = decodeValue.snapshotCount(keys.snapshotCount, bytes);
  return { snapshots: rec.snapshots, deleting: rec.deleting };
}

/** The id the index gives the live snapshot `name`, or undefined. @throws CORRUPT_METADATA, UNSUPPORTED_VERSION */
export async function indexedId(db: MetadataDb, name: string): Promise<number | undefined> {
  const bytes = await db.get(keys.name(name));
  return bytes === undefined ? undefined : decodeValue.name(keys.name(name), bytes).id;
}

/** How the stored index differs from a catalog: names missing or naming another id, names of no live snapshot, and the counts. */
export interface IndexDifference {
  /** Live names whose key is missing or holds another id. */
  missing: string[];
  /** Keys of names no live snapshot has (or that do not decode). */
  extra: string[];
  /** The stored counts when they differ from the catalog's (null: `snapcount` absent or undecodable). */
  counts?: SnapshotCounts | null;
}

/**
 * Compares the stored index with `catalog` (every record, live and
 * deleting). Bounded: it stops after MAX_SNAPSHOTS + 1 keys that are not
 * a live name (a damaged database), having said enough.
 */
export async function compareIndex(db: MetadataDb, catalog: readonly SnapshotRecord[]): Promise<IndexDifference> {
  const live = liveNames(catalog);
  const diff: IndexDifference = { missing: [], extra: [] };
  const correct = await scanIndex(db, live, (_key, name) => {
    if (!live.has(name)) diff.extra.push(name);
    return diff.extra.length <= MAX_SNAPSHOTS;
  });
  for (const name of live.keys()) if (!correct.has(name)) diff.missing.push(name);
  const counts = await wrongCounts(db, catalog);
  if (counts !== undefined) diff.counts = counts;
  return diff;
}

/**
 * One pass over the stored `name:` keys against the live names: returns
 * the names whose key holds their id; every other key goes to `wrong`
 * (key, name), and the pass stops when `wrong` returns false.
 */
async function scanIndex(db: MetadataDb, live: ReadonlyMap<string, number>, wrong: (key: string, name: string) => boolean): Promise<Set<string>> {
  const correct = new Set<string>();
  for await (const batch of db.scanBatches(keys.namePrefix)) {
    for (const [key, value] of batch) {
      const name = key.slice(keys.namePrefix.length);
      if (live.get(name) === storedId(key, value)) correct.add(name);
      else if (!wrong(key, name)) return correct;
    }
  }
  return correct;
}

/** The stored counts when they are not `catalog`'s (null: absent or undecodable); undefined when they are. */
async function wrongCounts(db: MetadataDb, catalog: readonly SnapshotRecord[]): Promise<SnapshotCounts | null | undefined> {
  const want = countsOf(catalog);
  const stored = (await readCounts(db).catch(() => undefined)) ?? null;
  return stored?.snapshots === want.snapshots && stored.deleting === want.deleting ? undefined : stored;
}

/** Whether {@link compareIndex} found nothing. */
export function indexMatches(diff: IndexDifference): boolean {
  return diff.missing.length === 0 && diff.extra.length === 0 && diff.counts === undefined;
}

/**
 * Makes the stored index exactly `catalog`'s, in one synced LevelDB batch
 * with `extra` (the upgrade to format version 4 puts its volume record
 * there) — the upgrade and `check --repair`. Idempotent. Reads every `name:` key (more than
 * MAX_SNAPSHOTS only in a damaged database, and each of those goes).
 * Returns how many keys it wrote or deleted.
 * @throws LevelDB errors
 */
export async function rebuildCatalogIndex(db: MetadataDb, catalog: readonly SnapshotRecord[], extra: readonly MetaOp[] = []): Promise<number> {
  const byName = liveNames(catalog);
  const ops: MetaOp[] = []; // deletes first: a key replaced is deleted, then put
  const correct = await scanIndex(db, byName, (key) => {
    ops.push(delOp(key));
    return true;
  });
  for (const [name, id] of byName) if (!correct.has(name)) ops.push(putOp(keys.name(name), { v: SCHEMA_VERSION, id }));
  if ((await wrongCounts(db, catalog)) !== undefined) ops.push(countOp(countsOf(catalog)));
  const changed = ops.length;
  if (changed + extra.length > 0) await db.apply([...ops, ...extra], true);
  return changed;
}

/** Live snapshot names to ids. */
function liveNames(catalog: readonly SnapshotRecord[]): Map<string, number> {
  const live = new Map<string, number>();
  for (const rec of catalog) if (rec.state === 'live') live.set(rec.name, rec.id);
  return live;
}

/** The id a stored `name:` value holds, or -1 when it does not decode (no snapshot has that id, so it never matches). */
function storedId(key: string, value: Buffer): number {
  try {
    return decodeValue.name(key, value).id;
  } catch {
    return -1;
  }
}

/**
 * At a writable open, once recovered: a volume of format version 3 gets its
 * catalog index and becomes version 4 (docs/FORMAT.md §1, "Format
 * versions"), in one synced LevelDB batch — the index and the volume record
 * with its new version together, not the version through the journal: a
 * power loss could then leave LevelDB at version 3 and the journal with the
 * version-4 record and catalog changes after it, which an older cowvol
 * would replay without their index before it refused the volume. Every
 * committed transaction is applied here (recovery ran), and the synced
 * batch makes LevelDB durable up to it, so nothing replays an older volume
 * record over it. A crash before it leaves version 3, upgraded by the next
 * open. A read-only open upgrades nothing (it reads the catalog whole).
 * @throws LevelDB errors
 */
export async function upgradeCatalogIndex(ctx: VolumeContext): Promise<void> {
  const { meta, db, journal } = ctx.parts;
  if (ctx.readOnly || meta.sb.formatVersion !== SHARED_COUNTS_FORMAT_VERSION) return;
  assert(meta.complete, 'a version-3 volume opens with its catalog read');
  assert(meta.appliedSequence === journal.lastCommittedSequence, `the upgrade runs with every transaction applied (${meta.appliedSequence} of ${journal.lastCommittedSequence})`);
  killPoint('index:upgrade');
  const sb = { ...meta.sb, formatVersion: FORMAT_VERSION };
  await rebuildCatalogIndex(db, [...meta.snapshots.values()], [putOp(keys.volume, sb)]);
  meta.sb = sb;
}
