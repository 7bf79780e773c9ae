import { assert, type BlockDevice } from '@cowvol/base';
import { AsyncLocalStorage } from 'node:async_hooks';
import { Mutex } from 'async-mutex';
import { JournalApplyError, type Handle, type Journal, type RecoveryReport } from '@cowvol/journal';
import { InvalidArgumentError, VolumeReadOnlyError } from './errors.js';
import { DELETE_BATCH_BLOCKS, IO_CHUNK_BYTES, type VolumeLayout } from './layout.js';
import type { SnapshotRecord } from './metadata.js';
import type { MetadataDb } from './metadata-db.js';
import type { ExtentAllocator } from './allocator.js';
import type { SnapshotMap } from './snapshot-map.js';
import { LoadedMaps } from './loaded-maps.js';
import type { SnapshotStore } from './store.js';
import type { CommittedMetadata } from './committed-metadata.js';
import type { MetaRecord } from './meta-record.js';
import { FreezeGate } from './freeze-gate.js';
import { WriteBackStage } from './write-back.js';
import type { OwnerLock } from './owner-lock.js';
import type { PrivateMetadata } from './read-only.js';
import type { ChangeStamps } from './outside-writes.js';
import { PendingCows } from './pending-cow.js';
import { VolumeStatus } from './volume-state.js';
import { SnapshotNames, catalogIndexAfter, catalogIndexOf, checkedCatalog } from './snapshot-names.js';
import type { VolumeStats } from './volume-types.js';
import { HomeIo } from './home-io.js';
import { BufferPool } from './buffer-pool.js';

/** What an open hands to a volume (volume-lifecycle.ts `openVolumeParts`). */
export interface VolumeParts {
  readonly layout: VolumeLayout;
  readonly meta: CommittedMetadata;
  readonly db: MetadataDb;
  /** The live volume file. */
  readonly volume: BlockDevice;
  readonly store: SnapshotStore;
  readonly journal: Journal;
  /** Every snapshot, oldest first (ids ascending), including one being deleted: the live view; undefined until read after a lazy open (`VolumeContext.loadCatalog`). */
  readonly catalog: SnapshotRecord[] | undefined;
  readonly lock: OwnerLock;
  readonly recovery: RecoveryReport;
  /** A read-only open's private metadata copy (read-only.ts); undefined when writable. */
  readonly privateMeta: PrivateMetadata | undefined;
  /** The volume file's identity and change stamps (outside-writes.ts). */
  readonly outside: ChangeStamps;
  readonly writeBackBytes: number;
  /** The LevelDB files' checksums were verified before LevelDB opened them (`verifyMetadata`): `check` need not again. */
  readonly metadataVerified: boolean;
}

/**
 * The shared state of one open volume, which every room of the engine
 * receives (docs/ARCHITECTURE.md §7): the opened parts, the live view
 * (catalog and loaded snapshot maps), the pending-COW markers, the
 * write-back stage, the freeze gate, the state machine, and the few
 * operations every room needs — map loads, journal handles and commits
 * (fail-stop), home reads overlaid with the journal's images.
 */
export class VolumeContext {
  readonly gate = new FreezeGate();
  /** Journal-mode block locks for read-modify-write of live blocks, by volume block (write-path.ts). */
  readonly blockLocks = new Map<number, Promise<void>>();
  /** One snapshot delete at a time: hand-over needs a live older neighbour. */
  readonly deleteLock = new Mutex();
  /** Loaded snapshot maps (the live view): whole ones, and partial ones for the COW path (loaded-maps.ts, §4.15). */
  readonly maps: LoadedMaps;
  /** Pending COWs into the active snapshot, by volume block (pending-cow.ts). */
  readonly pending = new PendingCows();
  /** data=ordered: overwrites held until the COW of their blocks commits (write-back.ts). */
  readonly writeBack: WriteBackStage;
  /** Hands out store blocks to COWs in flight (in memory only). */
  readonly allocator: ExtentAllocator;
  readonly status = new VolumeStatus();
  /** The live catalog (oldest first) and its name index (snapshot-names.ts), kept by create, rename and delete; undefined until read after a lazy open. */
  private live: { catalog: SnapshotRecord[]; names: SnapshotNames } | undefined;
  /** The catalog read of a lazy open in progress (one for every caller). */
  private catalogLoad: Promise<void> | undefined;
  /** What succeeded but could not finish, in words (Volume.warnings). */
  readonly notices: string[] = [];
  /**
   * The import marker is set (an import applies, or was interrupted): writes
   * other than the import's and a restore's are refused (IMPORT_PENDING,
   * docs/ARCHITECTURE.md §15.6). Read at open, kept by {@link commitRecords}.
   */
  importPending = false;
  /** A JOURNAL_APPLY_FAILED commit has been reported in `notices` (once: every later one says the same). */
  private applyFailureNoticed = false;
  readonly stats: VolumeStats = { cows: 0, cowBatches: 0, pendingWaits: 0, maxPendingWaitMs: 0, readRechecks: 0, cancelledCows: 0, mapScans: 0, mapRegionScans: 0, catalogReads: 0 };
  /**
   * Which block locks the current async context holds, for the lock-order
   * assertion. AsyncLocalStorage costs every promise in the process (async
   * hooks), so it is on only when COWVOL_LOCK_CHECKS=1 (the test suite sets it).
   */
  private readonly heldBlockLocks = process.env.COWVOL_LOCK_CHECKS === '1' ? new AsyncLocalStorage<{ blocks: number }>() : undefined;

  /** Transient copy buffers of the write path, reused (§3.4): a COW's read of the old content, the write-back stage's copies. */
  readonly buffers = new BufferPool();
  /** Reads and writes of the journal targets' home files, journal images laid over, small ones synchronous (home-io.ts, §4.14). */
  readonly home: HomeIo;

  constructor(readonly parts: VolumeParts) {
    this.home = new HomeIo(parts);
    this.allocator = parts.meta.allocator.clone();
    if (parts.catalog) {
      this.live = { catalog: parts.catalog, names: SnapshotNames.of(parts.catalog) };
      this.stats.catalogReads = 1;
    }
    this.maps = new LoadedMaps(
      parts.db,
      (id) => {
        const rec = this.catalog[this.catalogIndexOf(id)];
        return rec?.id === id && rec.ownedBlocks === 0;
      },
      this.stats,
    );
    this.writeBack = new WriteBackStage(parts.meta.sb.blockSizeBytes, parts.writeBackBytes, { write: (offsetBytes, data) => this.home.writeLive(offsetBytes, data) }, this.buffers);
  }

  get blockSizeBytes(): number {
    return this.parts.meta.sb.blockSizeBytes;
  }

  get journaled(): boolean {
    return this.parts.meta.sb.dataMode === 'journal';
  }

  get readOnly(): boolean {
    return this.parts.privateMeta !== undefined;
  }

  /** The live catalog, oldest first. Read at open, or after a lazy open when an operation first enters the gate (`shared`, `frozen`), a lazy create's excepted. */
  get catalog(): SnapshotRecord[] {
    assert(this.live !== undefined, 'the catalog is used before it was read (a lazy open)');
    return this.live.catalog;
  }

  /** The live catalog's name index (snapshot-names.ts). */
  get names(): SnapshotNames {
    assert(this.live !== undefined, 'the name index is used before the catalog was read (a lazy open)');
    return this.live.names;
  }

  /** False after a lazy open until the catalog is read (docs/ARCHITECTURE.md §4.4, "A create that does not read the catalog"). */
  get catalogLoaded(): boolean {
    return this.live !== undefined;
  }

  /**
   * Reads the catalog a lazy open left unread: every committed record
   * (`CommittedMetadata.completeSnapshots`), then the live copy, checked,
   * and its name index. Called inside the gate, where no apply runs (a lazy
   * create, the only change before, is frozen and applied when it returns).
   * @throws CORRUPT_METADATA, UNSUPPORTED_VERSION, IO_ERROR
   */
  private async loadCatalog(): Promise<void> {
    if (this.live) return;
    this.catalogLoad ??= (async () => {
      await this.parts.meta.completeSnapshots();
      const catalog = checkedCatalog(this.parts.meta);
      this.live = { catalog, names: SnapshotNames.of(catalog) };
      this.stats.catalogReads += 1;
    })().finally(() => {
      this.catalogLoad = undefined;
    });
    await this.catalogLoad;
  }

  // ------------------------------------------------------------ the gate

  /**
   * Runs `fn` inside the freeze gate (shared with other I/O), once the state
   * allows calls and the catalog is read (`catalog: false`: a lazy create,
   * which does without).
   */
  async shared<T>(fn: () => Promise<T>, options?: { catalog?: boolean }): Promise<T> {
    const leave = await this.gate.enter();
    try {
      this.status.checkUsable();
      // No await on every I/O once the catalog is read (hot path): only a lazy open's first call waits for it.
      if (this.live === undefined && options?.catalog !== false) await this.loadCatalog();
      return await fn();
    } finally {
      leave();
    }
  }

  /** Like {@link shared}, once the write-back stage is empty: metadata views count every COW of the writes acknowledged before the call. */
  async settled<T>(fn: () => Promise<T>): Promise<T> {
    return this.shared(async () => {
      await this.writeBack.drain();
      return fn();
    });
  }

  /**
   * Runs `fn` alone: new operations wait, operations in flight drain first,
   * and so do overwrites still in the write-back stage (they belong to
   * writes that already returned: a snapshot holds every write acknowledged
   * before it).
   */
  async frozen<T>(fn: () => Promise<T>, options?: { catalog?: boolean }): Promise<T> {
    const thaw = await this.gate.freeze();
    try {
      await this.writeBack.drain();
      this.status.checkUsable();
      if (this.live === undefined && options?.catalog !== false) await this.loadCatalog();
      return await fn();
    } finally {
      thaw();
    }
  }

  // ------------------------------------------------------- the live view

  liveSnapshots(): SnapshotRecord[] {
    return this.catalog.filter((r) => r.state === 'live');
  }

  /** The live snapshot named `name`: O(1), from the name index. */
  findLive(name: string): SnapshotRecord | undefined {
    const rec = this.names.findLive(name);
    assert(rec === undefined || (rec.state === 'live' && rec.name === name), `the name index maps ${name} to snapshot ${rec?.name ?? ''} (${rec?.state ?? ''})`);
    return rec;
  }

  /** The position of snapshot `id` in the catalog, or -1: O(log snapshots) (ids ascending). */
  catalogIndexOf(id: number): number {
    return catalogIndexOf(this.catalog, id);
  }

  /**
   * Live snapshots with ids above `afterId`, oldest first, while `take`
   * accepts them (it sees each in turn and the count taken before it; the
   * first is taken whatever it says, so a page always advances), and the
   * id to continue after when more follow (else null): one page of a list,
   * O(log snapshots + page).
   */
  livePage(afterId: number, take: (rec: SnapshotRecord, taken: number) => boolean): { records: SnapshotRecord[]; nextAfterId: number | null } {
    const records: SnapshotRecord[] = [];
    for (let i = catalogIndexAfter(this.catalog, afterId); i < this.catalog.length; i++) {
      const rec = this.catalog[i]!;
      if (rec.state !== 'live') continue;
      if (!take(rec, records.length) && records.length > 0) return { records, nextAfterId: records.at(-1)?.id ?? afterId };
      records.push(rec);
    }
    return { records, nextAfterId: null };
  }

  /**
   * The COW chain: the active snapshot (the newest *live* one, which
   * receives copies) followed by any newer snapshot being deleted. A block
   * one of those deleting snapshots holds needs no copy: its copy is the
   * active snapshot's view of the block and is handed over to it. So a
   * delete of the newest snapshot terminates under write traffic (nothing
   * new is copied into it) and stays correct.
   */
  cowChain(): SnapshotRecord[] | undefined {
    let i = this.catalog.length - 1;
    while (i >= 0 && this.catalog[i]?.state !== 'live') i--;
    return i < 0 ? undefined : this.catalog.slice(i);
  }

  /** The live view of a snapshot's whole map (loaded-maps.ts: `LoadedMaps.whole`). @throws CORRUPT_METADATA */
  mapOf(id: number): Promise<SnapshotMap> {
    return this.maps.whole(id);
  }

  // ----------------------------------------------------------- the journal

  /**
   * Starts a journal handle. Lock order (docs/ARCHITECTURE.md §7.3): a
   * handle is started before any block lock is taken, never while one is
   * held — the assertion catches a violation.
   * @throws VOLUME_READ_ONLY
   */
  startHandle(credits: number): Promise<Handle> {
    if (this.readOnly) return Promise.reject(new VolumeReadOnlyError(this.parts.layout.volumePath, 'change its metadata'));
    const held = this.heldBlockLocks?.getStore();
    assert(held === undefined || held.blocks === 0, `lock order: journal handle started while holding ${held?.blocks ?? 0} block locks`);
    return this.parts.journal.start(credits);
  }

  /** Runs `fn` marked as holding `blocks` block locks (for the lock-order assertion). */
  withBlockLocks<T>(blocks: number, fn: () => Promise<T>): Promise<T> {
    return this.heldBlockLocks ? this.heldBlockLocks.run({ blocks }, fn) : fn();
  }

  /**
   * Commits records as one handle; resolves once durable and applied to
   * LevelDB. Fail-stop on error. Without `handle`, one of the credits the
   * records need is started (`Journal.creditsForRecords`: the payload blocks
   * they fill, docs/ARCHITECTURE.md §5.1).
   * @throws INVALID_ARGUMENT, before anything is written, when they need more than one handle may take (a small journal and thousands of snapshots); VOLUME_READ_ONLY; what `commitHandle` throws
   */
  async commitRecords(records: MetaRecord[], handle?: Handle): Promise<void> {
    if (records.length === 0) {
      handle?.abandon();
      return;
    }
    const h = handle ?? (await this.startHandle(this.recordCredits(records)));
    for (const r of records) h.log(r);
    await this.commitHandle(h);
    for (const r of records) if (r.o === 'import') this.importPending = r.state !== null;
  }

  /** Credits `records` need in one handle. @throws INVALID_ARGUMENT when the journal cannot hold them in one (docs/ARCHITECTURE.md §5.1) */
  private recordCredits(records: readonly MetaRecord[]): number {
    const { journal } = this.parts;
    const credits = journal.creditsForRecords(records);
    if (credits <= journal.maxHandleCredits) return credits;
    const journalMiB = (journal.lengthBlocks * journal.blockSizeBytes) / (1024 * 1024);
    throw new InvalidArgumentError(
      `this journal (${journalMiB} MiB) cannot hold one atomic step of ${records.length} metadata records (${credits} log blocks; at most ${journal.maxHandleCredits}): act on fewer snapshots at once (delete them in smaller groups) or use a larger --journal-size`,
      { details: { records: records.length, credits, maxHandleCredits: journal.maxHandleCredits, journalMiB } },
    );
  }

  /**
   * Commits a handle; fail-stop when the journal aborted (the volume
   * becomes `failed`, volume-state.ts). A transaction durable in the
   * journal whose apply to LevelDB failed has happened (the next open
   * replays it): that resolves, with a warning, and the volume fails
   * (docs/ARCHITECTURE.md §4.12, "Outcomes of a failed command").
   */
  async commitHandle(h: Handle): Promise<void> {
    try {
      await h.commit();
    } catch (err) {
      if (err instanceof JournalApplyError) {
        this.status.fail(err);
        // Every handle of the failed group commit gets the same error, and a transaction durable behind it one
        // naming its own sequence (the journal's pipeline, §5.2): one notice for them all.
        if (!this.applyFailureNoticed) this.notices.push(err.message);
        this.applyFailureNoticed = true;
        return;
      }
      // If the journal aborted, the commit may or may not be durable: the
      // in-memory view can no longer be trusted (like jbd2's abort). A commit
      // that failed before touching the log (its ordered data could not be
      // synced) changed nothing: the caller cancels and the volume goes on.
      if (this.parts.journal.aborted) this.status.fail(err);
      throw err;
    }
  }

  /** Checkpoints the journal: images home, LevelDB durable (beforeTailMove), tail moved. Fail-stop on error. */
  async checkpoint(): Promise<void> {
    if (this.readOnly) return; // everything committed is in the private copy; nothing to write home
    try {
      await this.parts.journal.checkpoint();
    } catch (err) {
      this.status.fail(err);
      throw err;
    }
  }

  /**
   * Largest piece one write is cut into: IO_CHUNK_BYTES, or less when the
   * journal is small — a piece spans at most pieceBytes/blockSize + 1 blocks,
   * and its COW needs two credits per block in journal mode (copy image +
   * map record). In journal mode, a write of up to this many bytes is atomic.
   */
  pieceBytes(): number {
    const bs = this.blockSizeBytes;
    const blocks = Math.min(Math.floor(IO_CHUNK_BYTES / bs), Math.floor(this.parts.journal.maxHandleCredits / 2) - 1);
    assert(blocks >= 1, 'journal too small for one block per handle');
    return blocks * bs;
  }

  /** Blocks handed over or freed per delete transaction: bounded by DELETE_BATCH_BLOCKS and by what one handle may carry. */
  deleteBatchBlocks(): number {
    return Math.max(1, Math.min(DELETE_BATCH_BLOCKS, Math.floor(this.parts.journal.maxHandleCredits / 2)));
  }
}
