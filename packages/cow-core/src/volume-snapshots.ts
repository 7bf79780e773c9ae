import { InvalidArgumentError, InvalidSnapshotNameError, OutOfRangeError, SnapshotExistsError, SnapshotNotFoundError } from './errors.js';
import { MAX_READ_BYTES, SNAPSHOT_NAME_PATTERN } from './layout.js';
import type { SnapshotIdentity, SnapshotRecord } from './metadata.js';
import { pendingDeletes, planDelete, type DeletePlan, type SpaceReport } from './space.js';
import { validateLabels } from './labels.js';
import { readThrough } from './read-through.js';
import { snapshotReaderOf, type SnapshotReader, type SnapshotReaderStats } from './snapshot-reader.js';
import type { VolumeContext } from './volume-context.js';
import { createSnapshot } from './snapshot-create.js';
import { changeSnapshotFrozen, deleteSnapshotsLocked, describeSnapshot, findVictims, type SnapshotChange } from './snapshot-lifecycle.js';
import {
  deleteSelectedLocked,
  holdSnapshotsFrozen,
  labelChange,
  planSelected,
  validateDeleteSelection,
  type DeleteSelection,
  type LabelChange,
  type SelectedDeleteOptions,
  type SelectedDeletePlan,
  type SelectedDeleteResult,
} from './snapshot-policy.js';
import { namedMaps, snapshotInfoOf, snapshotPageOf, type SnapshotPage } from './volume-reports.js';
import type { CreateSnapshotOptions, DeleteResult, MultiDeleteResult, SnapshotInfo } from './volume-types.js';

/** Key of the create method that passes a pending import (restore.ts, import.ts); not exported by the package. */
export const CREATE_PAST_IMPORT = Symbol('createPastImport');

/**
 * The snapshot half of the {@link Volume} facade (docs/ARCHITECTURE.md §4):
 * take, list, read, delete, rename, label and hold snapshots, and the
 * argument checks every public method shares. `Volume` extends it with the
 * live volume's I/O and the volume's lifecycle (volume.ts); both check
 * their arguments and the volume's state here, then a named module does
 * the work: snapshot-lifecycle.ts (create, delete, catalog changes),
 * snapshot-policy.ts (selections, holds), read-through.ts (snapshot
 * reads), volume-reports.ts (lists, space). Errors: each method names its
 * codes (docs/ARCHITECTURE.md §10).
 */
export abstract class VolumeSnapshots {
  private readonly reader: SnapshotReader;

  protected constructor(protected readonly ctx: VolumeContext) {
    this.reader = snapshotReaderOf(ctx);
  }

  /** Size of the live volume and of every snapshot, in bytes. */
  get sizeBytes(): number {
    return this.ctx.parts.meta.sb.sizeBytes;
  }

  /** Block size in bytes: the unit of COW, of the maps and of the store (a power of two, 512 … 65,536). */
  get blockSizeBytes(): number {
    return this.ctx.blockSizeBytes;
  }

  /**
   * Takes a snapshot in O(1), frozen (docs/ARCHITECTURE.md §4.4).
   * @throws INVALID_SNAPSHOT_NAME, INVALID_LABEL, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, IO_ERROR,
   *   IMPORT_PENDING (an import is applying or was interrupted: a snapshot now would hold it half-applied; docs/ARCHITECTURE.md §15.6)
   */
  async createSnapshot(name: string, options: CreateSnapshotOptions = {}): Promise<SnapshotInfo> {
    return this[CREATE_PAST_IMPORT](name, options, options.clearImport === true);
  }

  /**
   * {@link createSnapshot}; `pastImport`: also while an import is pending —
   * the import's own last step (`clearImport`) and a restore's safety
   * snapshot, which keeps the half-applied state it abandons (restore.ts).
   * @throws what {@link createSnapshot} throws; IMPORT_PENDING (without `pastImport`, an import pending: a snapshot would hold it half-applied)
   */
  async [CREATE_PAST_IMPORT](name: string, options: CreateSnapshotOptions, pastImport: boolean): Promise<SnapshotInfo> {
    validateSnapshotName(name);
    if (options.labels) validateLabels(options.labels);
    return createSnapshot(this.ctx, name, options, pastImport);
  }

  /** Snapshots, oldest first. */
  async listSnapshots(): Promise<SnapshotInfo[]> {
    return this.ctx.settled(async () => this.ctx.liveSnapshots().map((r) => describeSnapshot(this.ctx, r)));
  }

  /**
   * One page of {@link listSnapshots}, with the space rows of its
   * snapshots (docs/ARCHITECTURE.md §14.8, a served `snapshot list`): the
   * live snapshots with ids above `afterId` (0: from the oldest), oldest
   * first — the first always, each next one while `take` accepts it (it
   * sees the snapshot and how many were taken before) — and `nextAfterId`.
   * O(log snapshots + page). @throws INVALID_ARGUMENT (`afterId` not a non-negative integer)
   */
  async listSnapshotsPage(afterId: number, take: (info: SnapshotInfo, taken: number) => boolean = () => true): Promise<SnapshotPage> {
    if (!Number.isSafeInteger(afterId) || afterId < 0) throw new InvalidArgumentError(`afterId must be a non-negative integer, got ${afterId}`);
    return this.ctx.settled(() => snapshotPageOf(this.ctx, afterId, take));
  }

  /** Snapshot `name` as {@link listSnapshots} shows it, with its space row alone (`snapshot info`): O(1) but the store totals. @throws SNAPSHOT_NOT_FOUND */
  async snapshotInfo(name: string): Promise<{ snapshot: SnapshotInfo; space: SpaceReport }> {
    return this.ctx.settled(() => snapshotInfoOf(this.ctx, name));
  }

  /**
   * Reads snapshot `name` through its read-through chain, every store block CRC-checked (docs/ARCHITECTURE.md §4.3).
   * @throws SNAPSHOT_NOT_FOUND, OUT_OF_RANGE, INVALID_ARGUMENT, STORE_CORRUPT, IO_ERROR
   */
  async readSnapshot(name: string, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    this.checkReadLength(lengthBytes);
    return this.ctx.shared(async () => readThrough(this.ctx, this.reader, this.liveOrThrow(name), offsetBytes, lengthBytes));
  }

  /**
   * {@link readSnapshot} into the caller's buffer: `into.length` bytes at `offsetBytes`, with no
   * buffer allocated per call when the range is block-aligned (a reader reusing one buffer, like
   * `fs.read`; docs/ARCHITECTURE.md §4.3). On failure `into`'s content is unspecified.
   * @throws SNAPSHOT_NOT_FOUND, OUT_OF_RANGE, INVALID_ARGUMENT (not a Buffer, or longer than one read), STORE_CORRUPT, IO_ERROR
   */
  async readSnapshotInto(name: string, offsetBytes: number, into: Buffer): Promise<void> {
    if (!Buffer.isBuffer(into)) throw new InvalidArgumentError('readSnapshotInto needs a Buffer to read into');
    this.checkRange(offsetBytes, into.length);
    this.checkReadLength(into.length);
    await this.ctx.shared(async () => readThrough(this.ctx, this.reader, this.liveOrThrow(name), offsetBytes, into.length, into));
  }

  /**
   * Deletes snapshot `name`: its blocks are handed over to the next older snapshot or freed, in
   * bounded transactions; a crash in the middle is finished at the next open (docs/ARCHITECTURE.md §4.5).
   * @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_HELD, IO_ERROR
   */
  async deleteSnapshot(name: string): Promise<DeleteResult> {
    const [result] = await this.ctx.deleteLock.runExclusive(() => deleteSnapshotsLocked(this.ctx, () => findVictims(this.ctx, [name])));
    if (!result) throw new SnapshotNotFoundError(name);
    return result;
  }

  /**
   * Deletes several snapshots in one atomic step: all are checked first
   * (then nothing is deleted), marked `deleting` in one transaction, then
   * handed over or freed oldest first. `onProgress` counts blocks processed.
   * @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_HELD, IO_ERROR
   */
  async deleteSnapshots(names: string[], options: { onProgress?: (doneBlocks: number, totalBlocks: number) => void } = {}): Promise<MultiDeleteResult> {
    const deleted = await this.ctx.deleteLock.runExclusive(() => deleteSnapshotsLocked(this.ctx, () => findVictims(this.ctx, names), options.onProgress));
    const freedBlocks = deleted.reduce((n, d) => n + d.freedBlocks, 0);
    return { deleted, freedBlocks, freedBytes: freedBlocks * this.blockSizeBytes, handedOverBlocks: deleted.reduce((n, d) => n + d.handedOverBlocks, 0) };
  }

  /** What {@link deleteSnapshots} of `names` would free (docs/ARCHITECTURE.md §15.3); changes nothing. @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_HELD */
  async planDelete(names: string[]): Promise<DeletePlan> {
    return this.ctx.settled(async () => {
      const victims = findVictims(this.ctx, names);
      return planDelete(await namedMaps(this.ctx, this.ctx.catalog), new Set(victims.map((r) => r.id)), this.blockSizeBytes, pendingDeletes(this.ctx.catalog));
    });
  }

  /**
   * Deletes the snapshots `selection` chooses (snapshot-policy.ts), the
   * choice made frozen with the delete's mark: a concurrent create, hold or
   * label change cannot race it (docs/ARCHITECTURE.md §15.4). Held ones
   * are left alone (`skippedHeld`).
   * @throws INVALID_ARGUMENT, INVALID_LABEL (a bad selection), what `options.guard` throws, IO_ERROR
   */
  async deleteSelected(selection: DeleteSelection, options: SelectedDeleteOptions = {}): Promise<SelectedDeleteResult> {
    validateDeleteSelection(selection);
    return this.ctx.deleteLock.runExclusive(() => deleteSelectedLocked(this.ctx, selection, options));
  }

  /** What {@link deleteSelected} of `selection` would delete and free now; changes nothing. @throws INVALID_ARGUMENT, INVALID_LABEL */
  async planDeleteSelected(selection: DeleteSelection): Promise<SelectedDeletePlan> {
    validateDeleteSelection(selection);
    return this.ctx.settled(() => planSelected(this.ctx, selection));
  }

  /** Renames a snapshot (id, creation time unchanged). @throws SNAPSHOT_NOT_FOUND, SNAPSHOT_EXISTS, INVALID_SNAPSHOT_NAME */
  async renameSnapshot(name: string, newName: string): Promise<SnapshotInfo> {
    validateSnapshotName(newName);
    return this.changeSnapshot(name, (rec) => {
      if (newName === name) return undefined;
      // Any record, even one being deleted, keeps its name until dropped.
      if (this.ctx.names.taken(newName)) throw new SnapshotExistsError(newName);
      return {
        records: [{ o: 'rename', id: rec.id, name: newName }],
        apply: () => {
          rec.name = newName;
          this.ctx.names.renamed(rec, name);
        },
      };
    });
  }

  /** Replaces a snapshot's labels (an empty map removes them all). @throws SNAPSHOT_NOT_FOUND, INVALID_LABEL */
  async setSnapshotLabels(name: string, labels: Record<string, string>): Promise<SnapshotInfo> {
    validateLabels(labels);
    return this.changeSnapshot(name, (rec) => ({
      records: [{ o: 'labels', id: rec.id, labels }],
      apply: () => {
        if (Object.keys(labels).length > 0) rec.labels = { ...labels };
        else delete rec.labels;
      },
    }));
  }

  /**
   * Sets and removes labels of a snapshot in one step, frozen: the labels
   * it carries are read and replaced with nothing between (no lost update
   * when two changes race; docs/ARCHITECTURE.md §15.4). A key in both `set` and `remove` is set.
   * @throws SNAPSHOT_NOT_FOUND, INVALID_LABEL
   */
  async changeSnapshotLabels(name: string, change: LabelChange): Promise<SnapshotInfo> {
    return this.changeSnapshot(name, labelChange(change));
  }

  /** Holds (`held` true; then SNAPSHOT_HELD refuses its delete) or releases a snapshot. Idempotent. @throws SNAPSHOT_NOT_FOUND */
  async holdSnapshot(name: string, held = true): Promise<SnapshotInfo> {
    return this.changeSnapshot(name, (rec) => {
      if ((rec.held === true) === held) return undefined;
      return { records: [{ o: 'hold', id: rec.id, held }], apply: () => (held ? (rec.held = true) : delete rec.held) };
    });
  }

  /**
   * Holds or releases several snapshots in one step: all found first (else
   * nothing changes), one transaction, frozen (snapshot-policy.ts, docs/ARCHITECTURE.md §15.4). Idempotent.
   * @throws SNAPSHOT_NOT_FOUND
   */
  async holdSnapshots(names: readonly string[], held = true): Promise<SnapshotInfo[]> {
    return this.ctx.frozen(() => holdSnapshotsFrozen(this.ctx, names, held));
  }

  /** The identity of a snapshot's content: its `origin` when imported, else this volume's uuid, its id and creation time. @throws SNAPSHOT_NOT_FOUND */
  async snapshotIdentity(name: string): Promise<SnapshotIdentity> {
    return this.ctx.shared(async () => {
      const rec = this.liveOrThrow(name);
      return rec.origin ? { ...rec.origin } : { volumeUuid: this.ctx.parts.meta.sb.uuid, snapshotId: rec.id, createdAt: rec.createdAt, name: rec.name };
    });
  }

  /** Counters of the snapshot reads' store reads: synchronous, pooled, back-offs, yields (a copy; docs/ARCHITECTURE.md §4.3). */
  get snapshotReadStats(): SnapshotReaderStats {
    return { ...this.reader.stats };
  }

  private async changeSnapshot(name: string, change: SnapshotChange): Promise<SnapshotInfo> {
    return this.ctx.frozen(() => changeSnapshotFrozen(this.ctx, this.liveOrThrow(name), change));
  }

  protected liveOrThrow(name: string): SnapshotRecord {
    const rec = this.ctx.findLive(name);
    if (!rec) throw new SnapshotNotFoundError(name);
    return rec;
  }

  protected checkRange(offsetBytes: number, lengthBytes: number): void {
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) throw new InvalidArgumentError(`offset must be a non-negative integer, got ${offsetBytes}`);
    if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0) throw new InvalidArgumentError(`length must be a non-negative integer, got ${lengthBytes}`);
    if (offsetBytes + lengthBytes > this.sizeBytes || (lengthBytes === 0 && offsetBytes > this.sizeBytes)) throw new OutOfRangeError(offsetBytes, lengthBytes, this.sizeBytes);
  }

  protected checkReadLength(lengthBytes: number): void {
    if (lengthBytes > MAX_READ_BYTES) throw new InvalidArgumentError(`one read returns at most ${MAX_READ_BYTES} bytes; read in pieces`);
  }
}

/** Validates a snapshot name. @throws INVALID_SNAPSHOT_NAME */
export function validateSnapshotName(name: unknown): void {
  if (typeof name !== 'string' || !SNAPSHOT_NAME_PATTERN.test(name)) throw new InvalidSnapshotNameError(String(name));
}
