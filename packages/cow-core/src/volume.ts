import { ImportPendingError, InvalidArgumentError, InvalidSnapshotNameError, OutOfRangeError, SnapshotExistsError, SnapshotNotFoundError, VolumeReadOnlyError } from './errors.js';
import { MAX_READ_BYTES, SNAPSHOT_NAME_PATTERN } from './layout.js';
import { keys, type ImportRecord, type SnapshotIdentity } from './metadata.js';
import type { SnapshotRecord } from './metadata.js';
import type { CheckReport } from './check.js';
import type { CowvolError } from '@cowvol/base';
import { blocksTouched, type DiffResult } from './diff.js';
import { planDelete, type DeletePlan, type SpaceReport } from './space.js';
import { validateLabels } from './labels.js';
import { readThrough } from './read-through.js';
import { snapshotReaderOf, type SnapshotReader, type SnapshotReaderStats } from './snapshot-reader.js';
import type { SyncIoStats } from './sync-io-policy.js';
import type { StoreCacheStats } from './store-read-cache.js';
import { writeBackError } from './write-back.js';
import type { AcceptChangesReport, OutsideChange } from './outside-writes.js';
import { VolumeContext } from './volume-context.js';
import type { FailureListener, VolumeState } from './volume-state.js';
import { readCurrent, writePieces } from './write-path.js';
import {
  acceptOutsideChangesFrozen,
  changeSnapshotFrozen,
  createSnapshot,
  deleteSnapshotsLocked,
  describeSnapshot,
  findVictims,
  finishInterruptedDeletes,
  type SnapshotChange,
} from './snapshot-lifecycle.js';
import { abandonParts, closeVolume, openForReading, openVolumeParts } from './volume-lifecycle.js';
import { createVolumeFiles } from './volume-create.js';
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
import { upgradeSpaceCounters } from './space-accounting.js';
import {
  checkConsistencyFrozen,
  checkDataBesideIo,
  checkFrozen,
  diffOf,
  namedMaps,
  readImportMarker,
  snapshotInfoOf,
  snapshotPageOf,
  spaceUsageOf,
  volumeInfo,
  type CheckOptions,
  type SnapshotPage,
} from './volume-reports.js';
import type { ConsistencyReport, CreateSnapshotOptions, CreateVolumeOptions, DeleteResult, MultiDeleteResult, OpenVolumeOptions, SnapshotInfo, VolumeInfo, VolumeStats } from './volume-types.js';

export type {
  ConsistencyReport,
  CreateSnapshotOptions,
  CreateVolumeOptions,
  DeleteResult,
  DeviceRole,
  MultiDeleteResult,
  OpenVolumeOptions,
  RoleOpeners,
  SnapshotInfo,
  VolumeInfo,
  VolumeStats,
} from './volume-types.js';
export type { FailureListener, VolumeState } from './volume-state.js';

/**
 * The key of `Volume`'s write that passes a set import marker: import.ts and
 * restore.ts write through it. It is not exported from the package, so no
 * other package calls it by mistake — a guard against mistakes, not a
 * security boundary (code in the process can find any symbol).
 */
export const WRITE_PAST_IMPORT = Symbol('writePastImport');

/**
 * A volume file with Next3-style snapshots (docs/ARCHITECTURE.md §2, §7.2).
 *
 * The live volume is the file itself (block i at byte i × blockSize); COW
 * copies go to the snapshot store in the sidecar; metadata lives in LevelDB
 * and every metadata change is first committed to the journal, then applied
 * to LevelDB in commit order (committed-metadata.ts).
 *
 * `Volume` is the facade: each public method checks its arguments and the
 * volume's state, then a named module does the work (docs/ARCHITECTURE.md
 * §4): write-path.ts and cow.ts (writes, the COW), read-through.ts
 * (snapshot reads), snapshot-lifecycle.ts (create, delete), volume-create.ts
 * and volume-lifecycle.ts (create, open, close), volume-reports.ts (info,
 * checks, diff, space). They share one {@link VolumeContext}.
 *
 * State (volume-state.ts, docs/ARCHITECTURE.md §7.10): `open → failed →
 * closing → closed`. A failed volume refuses every call with the same
 * JOURNAL_ABORTED error until closed; {@link onFailure} tells a supervisor.
 *
 * Errors: each method names its codes (docs/ARCHITECTURE.md §10). A change
 * durable in the journal is never reported as an error (see {@link warnings}).
 */
export class Volume {
  private readonly reader: SnapshotReader;

  private constructor(private readonly ctx: VolumeContext) {
    this.reader = snapshotReaderOf(ctx);
  }

  get sizeBytes(): number {
    return this.ctx.parts.meta.sb.sizeBytes;
  }

  get blockSizeBytes(): number {
    return this.ctx.blockSizeBytes;
  }

  /** Counters for stress runs and `info` (docs/ARCHITECTURE.md §7.8). */
  get stats(): VolumeStats {
    return this.ctx.stats;
  }

  /** `open`, `failed`, `closing` or `closed` (volume-state.ts). */
  get state(): VolumeState {
    return this.ctx.status.state;
  }

  /** Subscribes to the failure event (docs/ARCHITECTURE.md §7.10): `listener` hears once the JOURNAL_ABORTED error every later call gets (`cause`: what failed the volume). Returns the unsubscribe function; a volume already failed does not call it. */
  onFailure(listener: FailureListener): () => void {
    return this.ctx.status.onFailure(listener);
  }

  /**
   * Creates a volume (volume-create.ts: a new sparse file, or with `adopt`
   * an existing raw image, then its sidecar) and returns it opened.
   * @throws VOLUME_EXISTS, VOLUME_NOT_FOUND (adopt), VOLUME_BUSY, INVALID_ARGUMENT, IO_ERROR, NO_SPACE
   */
  static async create(path: string, options: CreateVolumeOptions = {}): Promise<Volume> {
    await createVolumeFiles(path, options);
    const { opener, openers, writeBackBytes } = options;
    return Volume.open(path, { ...(opener ? { opener } : {}), ...(openers ? { openers } : {}), ...(writeBackBytes !== undefined ? { writeBackBytes } : {}) });
  }

  /**
   * Opens a volume (volume-lifecycle.ts): takes the owner lock, validates
   * every part against the metadata, runs journal recovery, then (writable)
   * checkpoints what recovery replayed and finishes an interrupted snapshot
   * delete. With `readOnly`, writes nothing. Refuses a volume file changed
   * outside cowvol since its stamp unless `outsideChanges: 'hold'`.
   * @throws VOLUME_NOT_FOUND, NOT_A_VOLUME, VOLUME_BUSY, VOLUME_MODIFIED_OUTSIDE, CORRUPT_METADATA, UNSUPPORTED_VERSION, VOLUME_SIZE_MISMATCH, JOURNAL_CORRUPT, JOURNAL_NEEDS_RECOVERY (readOnly), IO_ERROR, NO_SPACE
   */
  static async open(path: string, options: OpenVolumeOptions = {}): Promise<Volume> {
    const parts = await openVolumeParts(path, options);
    const ctx = new VolumeContext(parts);
    const vol = new Volume(ctx);
    try {
      ctx.importPending = (await parts.db.get(keys.importState)) !== undefined;
      if (!ctx.readOnly && parts.recovery.replayedTransactions > 0) await ctx.checkpoint();
      await upgradeSpaceCounters(ctx); // a read-only open counts in memory only
      if (ctx.readOnly) return vol; // replayed into the private copy; an interrupted delete is finished by the next writable open
      await finishInterruptedDeletes(ctx);
    } catch (err) {
      await abandonParts(parts);
      throw err;
    }
    return vol;
  }

  /**
   * Opens for commands that only read: read-only when it can, else a
   * writable open that recovers (volume-lifecycle.ts, docs/ARCHITECTURE.md §4.10).
   * @throws what {@link open} throws; JOURNAL_NEEDS_RECOVERY
   */
  static async openForReading(path: string, options: Omit<OpenVolumeOptions, 'readOnly' | 'releaseReserve'> = {}): Promise<Volume> {
    return openForReading(path, options, (p, o) => Volume.open(p, o));
  }

  /** True when opened with `readOnly`. */
  get readOnly(): boolean {
    return this.ctx.readOnly;
  }

  /** What an operation that succeeded could not finish, in words (docs/ARCHITECTURE.md §4.12, "Outcomes of a failed command"). */
  get warnings(): readonly string[] {
    return this.ctx.notices;
  }

  /**
   * Writes `data` at `offsetBytes` of the live volume (write-path.ts,
   * docs/ARCHITECTURE.md §4.1), COWing into the active snapshot first every
   * block touched for the first time since it was taken. Resolves when every
   * piece has been written or — data=ordered — handed to the bounded
   * write-back stage; durable after {@link flush}. `data` must not change
   * until the promise settles (like `fs.write`). On failure the error keeps
   * its code and `details.failedRanges` lists the byte ranges not written;
   * a failure after a piece was handed to the write-back stage is reported
   * by the next `flush()` (or `close()`).
   * @throws OUT_OF_RANGE, INVALID_ARGUMENT, IO_ERROR, NO_SPACE, JOURNAL_ABORTED, VOLUME_CLOSED, VOLUME_READ_ONLY, VOLUME_MODIFIED_OUTSIDE (held, not accepted),
   *   IMPORT_PENDING (an import is applying or was interrupted: resume it, or abandon it by a restore; docs/ARCHITECTURE.md §15.6)
   */
  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    // Not async itself: every write passes here, and the write below is the one promise it needs.
    if (this.ctx.importPending) return Promise.reject(importPendingWrite(this.ctx.parts.layout.volumePath));
    return this[WRITE_PAST_IMPORT](offsetBytes, data);
  }

  /** {@link write} for the import and the restore themselves, which write while the import marker is set (import.ts, restore.ts). */
  async [WRITE_PAST_IMPORT](offsetBytes: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new VolumeReadOnlyError(this.ctx.parts.layout.volumePath, 'write');
    this.checkRange(offsetBytes, data.length);
    if (data.length === 0) return;
    // No copy on the overwrite path; the write-back stage and the journal copy what they keep.
    const stable = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await this.ctx.shared(async () => {
      await this.ctx.parts.outside.beforeLiveWrite(); // the stamp says `open` before the file changes
      await writePieces(this.ctx, offsetBytes, stable);
    });
  }

  /** Reads live data, at most `MAX_READ_BYTES` per call (docs/ARCHITECTURE.md §4.2). @throws OUT_OF_RANGE, INVALID_ARGUMENT, IO_ERROR */
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    this.checkReadLength(lengthBytes);
    return this.ctx.shared(() => readCurrent(this.ctx, offsetBytes, lengthBytes));
  }

  /**
   * Makes every write completed before the call durable (guarantee 4, docs/ARCHITECTURE.md §4.6);
   * reports, once, any earlier acknowledged write that could not reach the volume.
   * @throws IO_ERROR, NO_SPACE, JOURNAL_ABORTED (with `details.failedRanges` for write-back failures), VOLUME_CLOSED
   */
  async flush(): Promise<void> {
    const leave = await this.ctx.gate.enter();
    try {
      await this.ctx.writeBack.drain();
      // Reported first, with their ranges (even when the cause also failed the volume); a second flush syncs what did land.
      const failures = this.ctx.writeBack.takeFailures();
      if (failures.length > 0) throw writeBackError(failures);
      // After a commit durable but not applied, the writes before it happened: they are synced like any.
      this.ctx.status.checkUsable(true);
      await this.ctx.parts.volume.sync();
    } finally {
      leave();
    }
  }

  /**
   * Takes a snapshot in O(1), frozen (docs/ARCHITECTURE.md §4.4).
   * @throws INVALID_SNAPSHOT_NAME, INVALID_LABEL, SNAPSHOT_EXISTS, SNAPSHOT_LIMIT, IO_ERROR
   */
  async createSnapshot(name: string, options: CreateSnapshotOptions = {}): Promise<SnapshotInfo> {
    validateSnapshotName(name);
    if (options.labels) validateLabels(options.labels);
    return createSnapshot(this.ctx, name, options);
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
      return planDelete(await namedMaps(this.ctx, this.ctx.catalog), new Set(victims.map((r) => r.id)), this.blockSizeBytes);
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

  /** Size, snapshots, store usage, format version, recovery report. */
  async info(): Promise<VolumeInfo> {
    return this.ctx.settled(() => volumeInfo(this.ctx));
  }

  /**
   * Checks the persisted metadata like `qemu-img check`, frozen
   * (docs/ARCHITECTURE.md §8.1): leaks told apart from corruption; `repair`
   * frees leaks in one transaction; `readData` also reads every mapped
   * store block against its CRC32C (check-data.ts) — in data=ordered mode
   * without `repair`, after the thaw and beside I/O, deletes waiting for it
   * (§8.3, "Beside I/O").
   * @throws IO_ERROR (a store read of `readData` fails)
   */
  async check(options: CheckOptions = {}): Promise<CheckReport> {
    if (options.readData === true && options.repair !== true && !this.ctx.journaled) return this.ctx.deleteLock.runExclusive(() => checkDataBesideIo(this.ctx, options));
    return this.ctx.frozen(() => checkFrozen(this.ctx, options));
  }

  /** Cross-checks the in-memory view against itself (guarantee 6, docs/ARCHITECTURE.md §8.2). Loads every map. */
  async checkConsistency(): Promise<ConsistencyReport> {
    return this.ctx.frozen(() => checkConsistencyFrozen(this.ctx));
  }

  /**
   * The blocks written between snapshot `from` and snapshot `to` (or live)
   * as sorted extents (docs/ARCHITECTURE.md §15.2); no data is read.
   * `range` (bytes) limits it to the blocks that range touches, at a cost
   * in the mappings inside them, not in the whole maps (§14.9).
   * @throws SNAPSHOT_NOT_FOUND; OUT_OF_RANGE (a range not inside the volume)
   */
  async diff(from: string, to?: string, range?: { offsetBytes: number; lengthBytes: number }): Promise<DiffResult> {
    if (range) this.checkRange(range.offsetBytes, range.lengthBytes);
    return this.ctx.settled(() => diffOf(this.ctx, from, to, range && blocksTouched(range, this.blockSizeBytes)));
  }

  /** Journal mode: checkpoints, so the volume file holds every live block written (docs/ARCHITECTURE.md §15.5). @throws IO_ERROR, NO_SPACE, JOURNAL_ABORTED */
  async checkpointLive(): Promise<void> {
    if (!this.ctx.journaled) return;
    await this.ctx.frozen(() => this.ctx.checkpoint());
  }

  /** Space accounting per snapshot and for the store (docs/ARCHITECTURE.md §15.3); reads no data. */
  async spaceUsage(): Promise<SpaceReport> {
    return this.ctx.settled(() => spaceUsageOf(this.ctx));
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

  /** The marker of an interrupted import (import.ts), or undefined. */
  async importState(): Promise<ImportRecord | undefined> {
    return this.ctx.shared(() => readImportMarker(this.ctx));
  }

  /** Sets (journaled) or, with null, clears the import marker. */
  async setImportState(state: ImportRecord | null): Promise<void> {
    await this.ctx.shared(() => this.ctx.commitRecords([{ o: 'import', state }]));
  }

  /** The change to the volume file found at open and not accepted yet (open with `outsideChanges: 'hold'`), else undefined. */
  get outsideChanges(): OutsideChange | undefined {
    return this.ctx.parts.outside.pending;
  }

  /**
   * Takes the volume file as it is now, after writes made outside cowvol
   * (docs/ARCHITECTURE.md §13): marks suspect, in one transaction, every
   * live snapshot that reads through to the live volume, then stamps the
   * file anew. `accepted` false when no change is pending. With `recheck`
   * (a volume kept open, as `cowvol serve` keeps it), the file is first
   * compared with its stamp again, frozen (ChangeStamps.recheck).
   * @throws IO_ERROR, NO_SPACE, JOURNAL_ABORTED; with `recheck` also VOLUME_SIZE_MISMATCH and `replaced()` (the path names another file now)
   */
  async acceptOutsideChanges(options: { recheck?: { replaced: () => CowvolError } } = {}): Promise<AcceptChangesReport> {
    const { recheck } = options;
    return this.ctx.frozen(async () => {
      if (recheck) await this.ctx.parts.outside.recheck(this.sizeBytes, recheck.replaced);
      return acceptOutsideChangesFrozen(this.ctx);
    });
  }

  /** Counters of the snapshot reads' store reads: synchronous, pooled, back-offs, yields (a copy; docs/ARCHITECTURE.md §4.3). */
  get snapshotReadStats(): SnapshotReaderStats {
    return { ...this.reader.stats };
  }

  /** Counters of small synchronous I/O on the hot paths (copies; docs/ARCHITECTURE.md §4.14): live-file reads (live reads, COW source reads), live-file writes, store writes (COW copies). */
  get syncIoStats(): { liveReads: SyncIoStats; liveWrites: SyncIoStats; storeWrites: SyncIoStats } {
    return { liveReads: { ...this.ctx.home.liveReads.stats }, liveWrites: { ...this.ctx.home.liveWrites.stats }, storeWrites: { ...this.ctx.parts.store.writes.stats } };
  }

  /** The write path's buffer pool (docs/ARCHITECTURE.md §3.4): buffers taken and not given back, bytes kept free for reuse. */
  get bufferPoolStats(): { outstanding: number; pooledBytes: number } {
    return { outstanding: this.ctx.buffers.outstanding, pooledBytes: this.ctx.buffers.pooledBytes };
  }

  /** Counters of the snapshot reads' store cache (a copy). */
  get storeCacheStats(): StoreCacheStats {
    return { ...this.ctx.parts.store.cache.stats };
  }

  /**
   * Closes (volume-lifecycle.ts, docs/ARCHITECTURE.md §4.9): `closing`,
   * frozen, then `closed` — from `open` or `failed`. Idempotent. A failed
   * checkpoint loses nothing (the next open replays the journal): a warning.
   * @throws IO_ERROR, NO_SPACE (the volume sync; acknowledged writes that never reached the volume, with `details.failedRanges`)
   */
  async close(): Promise<void> {
    const { gate, status } = this.ctx;
    if (status.state === 'closing' || status.state === 'closed') return;
    const thaw = await gate.freeze();
    let failures: Awaited<ReturnType<typeof closeVolume>>;
    try {
      if (!status.beginClose()) return;
      try {
        failures = await closeVolume(this.ctx);
      } finally {
        status.finishClose();
      }
    } finally {
      thaw();
    }
    // Closed either way; an acknowledged write that never reached the volume is not silently lost.
    if (failures.length > 0) throw writeBackError(failures);
  }

  private async changeSnapshot(name: string, change: SnapshotChange): Promise<SnapshotInfo> {
    return this.ctx.frozen(() => changeSnapshotFrozen(this.ctx, this.liveOrThrow(name), change));
  }

  private liveOrThrow(name: string): SnapshotRecord {
    const rec = this.ctx.findLive(name);
    if (!rec) throw new SnapshotNotFoundError(name);
    return rec;
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0) throw new InvalidArgumentError(`offset must be a non-negative integer, got ${offsetBytes}`);
    if (!Number.isSafeInteger(lengthBytes) || lengthBytes < 0) throw new InvalidArgumentError(`length must be a non-negative integer, got ${lengthBytes}`);
    if (offsetBytes + lengthBytes > this.sizeBytes || (lengthBytes === 0 && offsetBytes > this.sizeBytes)) throw new OutOfRangeError(offsetBytes, lengthBytes, this.sizeBytes);
  }

  private checkReadLength(lengthBytes: number): void {
    if (lengthBytes > MAX_READ_BYTES) throw new InvalidArgumentError(`one read returns at most ${MAX_READ_BYTES} bytes; read in pieces`);
  }
}

/** Validates a snapshot name. @throws INVALID_SNAPSHOT_NAME */
function importPendingWrite(volumePath: string): ImportPendingError {
  return new ImportPendingError(
    `an import into ${volumePath} is in progress or was interrupted; writes would mix with it: finish it (the same cowvol import with --resume) or abandon it (cowvol snapshot restore) first`,
    { details: { path: volumePath } },
  );
}

export function validateSnapshotName(name: unknown): void {
  if (typeof name !== 'string' || !SNAPSHOT_NAME_PATTERN.test(name)) throw new InvalidSnapshotNameError(String(name));
}
