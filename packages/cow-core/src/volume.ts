import { ImportPendingError, VolumeReadOnlyError } from './errors.js';
import { keys, type ImportRecord } from './metadata.js';
import type { CheckReport } from './check.js';
import type { CowvolError } from '@cowvol/base';
import { blocksTouched, type DiffResult } from './diff.js';
import type { SpaceReport } from './space.js';
import type { SyncIoStats } from './sync-io-policy.js';
import type { StoreCacheStats } from './store-read-cache.js';
import { writeBackError } from './write-back.js';
import type { AcceptChangesReport, OutsideChange } from './outside-writes.js';
import { VolumeContext } from './volume-context.js';
import { VolumeSnapshots } from './volume-snapshots.js';
import type { FailureListener, VolumeState } from './volume-state.js';
import { readCurrent, writePieces, zeroPieces, ZERO_SPAN_BYTES } from './write-path.js';
import { acceptOutsideChangesFrozen, finishInterruptedDeletes } from './snapshot-lifecycle.js';
import { abandonParts, closeVolume, openForReading, openVolumeParts } from './volume-lifecycle.js';
import { createVolumeFiles } from './volume-create.js';
import { upgradeSpaceCounters } from './space-accounting.js';
import { upgradeCatalogIndex } from './catalog-index.js';
import { checkConsistencyFrozen, checkDataBesideIo, checkFrozen, diffOf, readImportMarker, spaceUsageOf, volumeInfo, type CheckOptions } from './volume-reports.js';
import type { ConsistencyReport, CreateVolumeOptions, OpenVolumeOptions, VolumeInfo, VolumeStats } from './volume-types.js';

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
export { validateSnapshotName, VolumeSnapshots } from './volume-snapshots.js';

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
 * §4): write-path.ts and cow.ts (writes, the COW), volume-create.ts and
 * volume-lifecycle.ts (create, open, close), volume-reports.ts (info,
 * checks, diff, space). Its snapshot methods — take, list, read, delete,
 * rename, label, hold — come from {@link VolumeSnapshots}
 * (volume-snapshots.ts). They share one {@link VolumeContext}.
 *
 * State (volume-state.ts, docs/ARCHITECTURE.md §7.10): `open → failed →
 * closing → closed`. A failed volume refuses every call with the same
 * JOURNAL_ABORTED error until closed; {@link onFailure} tells a supervisor.
 *
 * Errors: each method names its codes (docs/ARCHITECTURE.md §10). A change
 * durable in the journal is never reported as an error (see {@link warnings}).
 */
export class Volume extends VolumeSnapshots {
  private constructor(ctx: VolumeContext) {
    super(ctx);
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
      await upgradeCatalogIndex(ctx);
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

  /**
   * Writes zeros over `lengthBytes` at `offsetBytes` of the live volume, in
   * spans of at most {@link ZERO_SPAN_BYTES}, each one operation of the
   * freeze gate: a snapshot taken meanwhile holds all of a span or none of
   * it, and waits for at most one span (NBD WRITE_ZEROES and TRIM, up to
   * 4 GiB each, docs/ARCHITECTURE.md §14.9: a whole discard held at once
   * would stall every request behind the snapshot for seconds). A piece
   * that reads as zeros already is not written (write-path.ts `zeroPieces`).
   * @throws what {@link write} throws
   */
  async writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.ctx.importPending) throw importPendingWrite(this.ctx.parts.layout.volumePath);
    if (this.readOnly) throw new VolumeReadOnlyError(this.ctx.parts.layout.volumePath, 'write');
    this.checkRange(offsetBytes, lengthBytes);
    for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += ZERO_SPAN_BYTES) {
      const spanBytes = Math.min(ZERO_SPAN_BYTES, offsetBytes + lengthBytes - at);
      await this.ctx.shared(async () => {
        await this.ctx.parts.outside.beforeLiveWrite();
        await zeroPieces(this.ctx, at, spanBytes);
      });
    }
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
}

/** IMPORT_PENDING for a write while the import marker is set. */
function importPendingWrite(volumePath: string): ImportPendingError {
  return new ImportPendingError(
    `an import into ${volumePath} is in progress or was interrupted; writes would mix with it: finish it (the same cowvol import with --resume) or abandon it (cowvol snapshot restore) first`,
    { details: { path: volumePath } },
  );
}
