import { InvalidArgumentError, SnapshotNotFoundError } from './errors.js';
import { validateLabelKey, validateLabels } from './labels.js';
import type { SnapshotRecord } from './metadata.js';
import { pendingDeletes, planDelete, type DeletePlan } from './space.js';
import { deleteSnapshotsLocked, describeSnapshot, type SnapshotChange } from './snapshot-lifecycle.js';
import type { SnapshotInfo } from './volume-types.js';
import { namedMaps } from './volume-reports.js';
import type { VolumeContext } from './volume-context.js';
import type { MultiDeleteResult } from './volume-types.js';

/**
 * Snapshot policy in the core (docs/ARCHITECTURE.md §15.4): which
 * snapshots a delete filter chooses, and label changes, each computed
 * under the volume's own serialisation — the choice is made frozen, in the
 * same freeze as the delete's mark, so a snapshot created, held or
 * relabelled concurrently (by another control request of `cowvol serve`)
 * can never make the choice and the delete disagree.
 */

/**
 * A delete filter (`cowvol snapshot delete --older-than --label --keep-newest`).
 * At least one of `olderThanMs` and `keepNewest` is given; `labels` only narrows.
 */
export interface DeleteSelection {
  /** Only snapshots created more than this many milliseconds before the choice. */
  olderThanMs?: number;
  /** Only snapshots carrying every one of these labels (key, value). */
  labels?: Array<[string, string]>;
  /** Of the snapshots the label filter matches, never the newest this many. */
  keepNewest?: number;
}

/** What a filter chose: `chosen` (oldest first) and the held snapshots it matched and leaves alone. */
export interface SelectedSnapshots {
  chosen: string[];
  skippedHeld: string[];
}

/** A delete chosen by a filter: the deletes, and the held snapshots left alone. */
export type SelectedDeleteResult = MultiDeleteResult & { skippedHeld: string[] };
/** The plan of a delete chosen by a filter. */
export type SelectedDeletePlan = DeletePlan & { skippedHeld: string[] };

/** What the choice reads of a snapshot (SnapshotInfo and SnapshotRecord both have it). */
export interface SelectableSnapshot {
  name: string;
  createdAt: string;
  labels?: Record<string, string> | undefined;
  held?: boolean | undefined;
}

/**
 * Checks a selection's shape (it may come from a control request).
 * @throws INVALID_ARGUMENT (no olderThanMs nor keepNewest; a bad number), INVALID_LABEL
 */
export function validateDeleteSelection(selection: DeleteSelection): void {
  const { olderThanMs, keepNewest, labels = [] } = selection;
  if (olderThanMs === undefined && keepNewest === undefined) throw new InvalidArgumentError('--label only narrows a filter: add --older-than <duration> or --keep-newest <n>');
  if (olderThanMs !== undefined && (typeof olderThanMs !== 'number' || !Number.isFinite(olderThanMs) || olderThanMs < 0))
    throw new InvalidArgumentError(`olderThanMs must be a non-negative number of milliseconds, got ${String(olderThanMs)}`);
  if (keepNewest !== undefined && (!Number.isSafeInteger(keepNewest) || keepNewest < 0)) throw new InvalidArgumentError(`keepNewest must be a non-negative integer, got ${String(keepNewest)}`);
  if (!Array.isArray(labels)) throw new InvalidArgumentError('the labels of a filter are [key, value] pairs');
  // The shape is checked as unknown: a selection may come from a control request's JSON.
  for (const pair of labels as unknown[]) {
    if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== 'string' || typeof pair[1] !== 'string') throw new InvalidArgumentError('each label of a filter is a [key, value] pair');
    const one = Object.create(null) as Record<string, string>;
    one[pair[0]] = pair[1];
    validateLabels(one);
  }
}

/**
 * The snapshots `selection` chooses among `snapshots` (oldest first), at
 * `nowMs`: those carrying every label, minus the newest `keepNewest` of
 * them, created before `nowMs - olderThanMs`; held ones are set aside
 * (`skippedHeld`), never chosen. Pure.
 */
export function selectSnapshots(snapshots: readonly SelectableSnapshot[], selection: DeleteSelection, nowMs: number): SelectedSnapshots {
  const labels = selection.labels ?? [];
  let candidates = snapshots.filter((s) => labels.every(([k, v]) => s.labels !== undefined && Object.hasOwn(s.labels, k) && s.labels[k] === v));
  if (selection.keepNewest !== undefined) candidates = candidates.slice(0, Math.max(0, candidates.length - selection.keepNewest));
  const { olderThanMs } = selection;
  if (olderThanMs !== undefined) candidates = candidates.filter((s) => Date.parse(s.createdAt) < nowMs - olderThanMs);
  return { chosen: candidates.filter((s) => s.held !== true).map((s) => s.name), skippedHeld: candidates.filter((s) => s.held === true).map((s) => s.name) };
}

/** Options of {@link deleteSelectedLocked}. */
export interface SelectedDeleteOptions {
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /**
   * Called frozen with the names chosen, before anything is marked: may
   * throw to refuse the whole delete (`cowvol serve`: SNAPSHOT_IN_USE for a
   * snapshot a client is attached to, docs/ARCHITECTURE.md §14.8).
   */
  guard?: (names: readonly string[]) => void;
}

/**
 * Chooses by `selection` and deletes, under the delete lock held by the
 * caller: the choice runs frozen, in the freeze that marks the chosen
 * snapshots `deleting` (snapshot-lifecycle.ts), so nothing changes the
 * catalog between the two. Chooses nothing: deletes nothing.
 * @throws what `guard` throws; IO_ERROR, JOURNAL_ABORTED
 */
export async function deleteSelectedLocked(ctx: VolumeContext, selection: DeleteSelection, options: SelectedDeleteOptions = {}): Promise<SelectedDeleteResult> {
  let skippedHeld: string[] = [];
  const pick = (): SnapshotRecord[] => {
    const live = ctx.liveSnapshots();
    const chosen = selectSnapshots(live, selection, Date.now());
    skippedHeld = chosen.skippedHeld;
    options.guard?.(chosen.chosen);
    const names = new Set(chosen.chosen);
    return live.filter((r) => names.has(r.name));
  };
  const deleted = await deleteSnapshotsLocked(ctx, pick, options.onProgress);
  const freedBlocks = deleted.reduce((n, d) => n + d.freedBlocks, 0);
  return { deleted, freedBlocks, freedBytes: freedBlocks * ctx.blockSizeBytes, handedOverBlocks: deleted.reduce((n, d) => n + d.handedOverBlocks, 0), skippedHeld };
}

/** What {@link deleteSelectedLocked} would do now; settled by the caller. Changes nothing. */
export async function planSelected(ctx: VolumeContext, selection: DeleteSelection): Promise<SelectedDeletePlan> {
  const live = ctx.liveSnapshots();
  const { chosen, skippedHeld } = selectSnapshots(live, selection, Date.now());
  const names = new Set(chosen);
  const ids = new Set(live.filter((r) => names.has(r.name)).map((r) => r.id));
  return { ...planDelete(await namedMaps(ctx, ctx.catalog), ids, ctx.blockSizeBytes, pendingDeletes(ctx.catalog)), skippedHeld };
}

/** A label change: keys to set (with their values) and keys to remove; a key in both is set. */
export interface LabelChange {
  set?: Record<string, string>;
  remove?: readonly string[];
}

/**
 * The labels a snapshot carries after `change` (removals first, then
 * the keys set), checked whole.
 * @throws INVALID_LABEL
 */
export function changedLabels(current: Readonly<Record<string, string>> | undefined, change: LabelChange): Record<string, string> {
  // A key the snapshot carries may be removed whatever it is (a label stored before today's rules, README "Labels").
  for (const key of change.remove ?? []) if (current === undefined || !Object.hasOwn(current, key)) validateLabelKey(key);
  const removed = new Set(change.remove ?? []);
  const kept = Object.fromEntries(Object.entries(current ?? {}).filter(([key]) => !removed.has(key)));
  const labels = { ...kept, ...(change.set ?? {}) };
  validateLabels(labels);
  return labels;
}

/**
 * The snapshot change (run frozen by Volume.changeSnapshot) that applies
 * `change` to the labels the snapshot carries at that moment: a read and
 * a write with nothing between them (docs/ARCHITECTURE.md §15.4).
 * @throws INVALID_LABEL (from the change, at commit time)
 */
export function labelChange(change: LabelChange): SnapshotChange {
  return (rec) => {
    const labels = changedLabels(rec.labels, change);
    return {
      records: [{ o: 'labels', id: rec.id, labels }],
      apply: () => {
        if (Object.keys(labels).length > 0) rec.labels = { ...labels };
        else delete rec.labels;
      },
    };
  };
}

/**
 * Holds (`held` true) or releases the snapshots `names`, frozen by the
 * caller, all or none: every name is found first (else SNAPSHOT_NOT_FOUND,
 * nothing changed), then the holds that change are committed in one
 * transaction (docs/ARCHITECTURE.md §15.4). Returns the snapshots in the order named.
 * @throws SNAPSHOT_NOT_FOUND, IO_ERROR, JOURNAL_ABORTED
 */
export async function holdSnapshotsFrozen(ctx: VolumeContext, names: readonly string[], held: boolean): Promise<SnapshotInfo[]> {
  const found = names.map((name) => {
    const rec = ctx.findLive(name);
    if (!rec) throw new SnapshotNotFoundError(name);
    return rec;
  });
  const changing = [...new Set(found)].filter((rec) => (rec.held === true) !== held);
  if (changing.length > 0) {
    await ctx.commitRecords(changing.map((rec) => ({ o: 'hold' as const, id: rec.id, held })));
    for (const rec of changing) {
      if (held) rec.held = true;
      else delete rec.held;
    }
  }
  return found.map((rec) => describeSnapshot(ctx, rec));
}
