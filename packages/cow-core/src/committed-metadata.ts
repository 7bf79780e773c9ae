import { assert } from '@cowvol/base';
import { asMetaRecord } from './meta-record.js';
import { ExtentAllocator, type Extent } from './allocator.js';
import { UnsupportedVersionError } from '@cowvol/base';
import { CorruptMetadataError, NotAVolumeError } from './errors.js';
import { FORMAT_VERSION, MAX_SNAPSHOTS, UPGRADABLE_FORMAT_VERSIONS } from './layout.js';
import { SCHEMA_VERSION, decodeValue, keys, parseHexSuffix, putOp, type SnapshotRecord, type VolumeRecord } from './metadata.js';
import { type MetaBatch, type MetadataDb } from './metadata-db.js';
import { countsOf, readCounts, type SnapshotCounts } from './catalog-index.js';
import { keyOperations, type CommittedState } from './key-operations.js';

/**
 * Bound of a replay batch (`CommittedMetadata.apply` at open): replayed
 * transactions are grouped into one LevelDB batch until it holds at least
 * this many key operations, then written. The batch lives in LevelDB's
 * native WriteBatch (key and value bytes, ≈ 60 bytes per operation: about
 * 256 KiB, plus the last transaction's own); one more may be in flight.
 */
export const REPLAY_BATCH_OPS = 4096;

/**
 * The metadata as LevelDB holds it (the *committed* state): the volume
 * record, the snapshot records with their owned-block counts, the committed
 * allocator, and `appliedSequence` — the last journal transaction applied.
 *
 * `apply` is the journal's apply callback: for each committed transaction,
 * in sequence order, it computes the key operations and writes them as one
 * LevelDB batch together with `cp = sequence`. LevelDB batches are atomic,
 * so a transaction is either fully in LevelDB (and skipped at replay:
 * sequence ≤ cp) or not at all (and replayed). This makes replay exact even
 * though records like `map` are not idempotent on their own.
 *
 * `apply` is also the journal's replay callback. Replayed transactions (the
 * journal marks them with `last`) are grouped: their key operations collect,
 * in order, in a replay batch that is written with `cp` = the newest
 * sequence in it once it holds {@link REPLAY_BATCH_OPS} operations, and at
 * the last replayed transaction. A batch holds whole transactions and their
 * `cp`, or none of them, so replay stays exact and idempotent. While
 * LevelDB writes one batch, the next one is computed (one write in flight:
 * LevelDB must apply them in order).
 */
export class CommittedMetadata implements CommittedState {
  /**
   * Replay batch being filled: the key operations of replayed transactions
   * not yet handed to LevelDB, in order, already copied into LevelDB's
   * native batch (bound: {@link REPLAY_BATCH_OPS} plus one transaction's),
   * and the sequence of the newest of them.
   */
  private replayBatch: MetaBatch | undefined;
  private replaySequence = 0;
  /** The replay batch LevelDB is writing, if any (at most one in flight). */
  private replayWrite: Promise<void> | undefined;

  /**
   * How many snapshot records the catalog holds and how many are `deleting`
   * (`snapcount`, catalog-index.ts), kept by every apply: from the records
   * once they are all read, from the stored record before (a lazy load).
   */
  counts: SnapshotCounts;
  /** An apply or a catalog read is running (they never overlap: {@link completeSnapshots}). */
  private busy = false;

  private constructor(
    private readonly db: MetadataDb,
    public sb: VolumeRecord,
    /** Every snapshot record once {@link complete}; before, only those created since the open (a lazy load). */
    readonly snapshots: Map<number, SnapshotRecord>,
    readonly allocator: ExtentAllocator,
    public appliedSequence: number,
    /** False after a lazy load until {@link completeSnapshots}. */
    public complete: boolean,
    counts: SnapshotCounts,
  ) {
    this.counts = counts;
  }

  /**
   * Loads and validates the committed state. With `lazy`, a volume of the
   * current format version whose `snapcount` says no delete waits to be
   * finished is loaded without its snapshot records (docs/ARCHITECTURE.md
   * §4.4, "A create that does not read the catalog"): {@link complete} is
   * false until {@link completeSnapshots}.
   * @throws NOT_A_VOLUME, CORRUPT_METADATA, UNSUPPORTED_VERSION
   */
  static async load(db: MetadataDb, volumePath: string, options: { lazy?: boolean } = {}): Promise<CommittedMetadata> {
    const sbBytes = await db.get(keys.volume);
    if (!sbBytes) throw new NotAVolumeError(`${volumePath}: sidecar is incomplete (no volume record); it was never fully created`);
    const sb = decodeValue.volume(keys.volume, sbBytes);
    // Versions 2 and 3 open and are upgraded once recovered (space-accounting.ts `upgradeSpaceCounters`, volume.ts).
    if (sb.formatVersion !== FORMAT_VERSION && !UPGRADABLE_FORMAT_VERSIONS.includes(sb.formatVersion)) throw unsupportedFormat(volumePath, sb.formatVersion);
    const cpBytes = await db.get(keys.checkpoint);
    const appliedSequence = cpBytes ? decodeValue.checkpoint(keys.checkpoint, cpBytes).sequence : 0;
    // An unreadable `snapcount` loads eagerly, as without one (`check` reports it).
    const stored = options.lazy === true && sb.formatVersion === FORMAT_VERSION ? await readCounts(db).catch(() => undefined) : undefined;
    const lazy = stored?.deleting === 0;
    const snapshots = lazy ? new Map<number, SnapshotRecord>() : await readSnapshots(db);
    const allocBytes = await db.get(keys.allocator);
    if (!allocBytes) throw new CorruptMetadataError('allocator record missing');
    const alloc = decodeValue.allocator(keys.allocator, allocBytes);
    const free: Extent[] = [];
    for await (const batch of db.scanBatches(keys.freePrefix)) {
      for (const [key, value] of batch) free.push({ startBlock: parseHexSuffix(key, keys.freePrefix), lengthBlocks: decodeValue.free(key, value).lengthBlocks });
    }
    let allocator: ExtentAllocator;
    try {
      allocator = new ExtentAllocator(alloc.highWaterBlocks, free, true);
    } catch (err) {
      throw new CorruptMetadataError(`allocator state is inconsistent: ${(err as Error).message}`, { cause: err });
    }
    return new CommittedMetadata(db, sb, snapshots, allocator, appliedSequence, !lazy, lazy ? stored : countsOf(snapshots.values()));
  }

  /**
   * Reads every snapshot record after a lazy load (a no-op once
   * complete). Never while an apply runs: the volume calls it frozen or
   * inside its gate, and an apply calls it itself before the records it
   * needs (see {@link apply}). The counts become the records' own.
   * @throws CORRUPT_METADATA, UNSUPPORTED_VERSION, LevelDB errors
   */
  async completeSnapshots(): Promise<void> {
    if (this.complete) return;
    assert(!this.busy, 'the catalog read overlaps an apply');
    this.busy = true;
    try {
      const all = await readSnapshots(this.db);
      for (const id of this.snapshots.keys()) assert(all.has(id), `snapshot ${id}, created since the open, is not in LevelDB`);
      this.snapshots.clear();
      for (const [id, rec] of all) this.snapshots.set(id, rec);
      this.counts = countsOf(all.values());
      this.complete = true;
    } finally {
      this.busy = false;
    }
  }

  /**
   * Whether a transaction's records only create snapshots (a snapshot
   * record of a new id, its labels and origin, the volume record, the
   * import marker): all a lazy load can apply without the catalog.
   */
  private createsOnly(records: unknown[]): boolean {
    const firstNew = this.sb.nextSnapshotId;
    return records.every((raw) => {
      const r = asMetaRecord(raw);
      return r.o === 'sb' || r.o === 'import' || ((r.o === 'snap' || r.o === 'labels' || r.o === 'origin') && r.id >= firstNew);
    });
  }

  /**
   * Records that every sequence up to `sequence` is applied, for sequences a
   * journal reset skipped (no transaction has them): the `cp` record moves
   * there, synced. @throws LevelDB errors
   */
  async skipTo(sequence: number): Promise<void> {
    assert(sequence > this.appliedSequence && this.replayBatch === undefined, `skip to ${sequence} from ${this.appliedSequence}`);
    await this.db.apply([putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence })], true);
    this.appliedSequence = sequence;
  }

  /**
   * Applies one committed transaction (skipped when LevelDB already has it).
   * With `last` (a transaction the journal replays at open), its key
   * operations join the replay batch instead, written when the batch is
   * full and at the last one (class comment); the committed state in memory
   * advances at once either way.
   * @throws CORRUPT_METADATA (a record that is not a metadata record), ASSERTION_FAILED (a record the committed state contradicts), LevelDB errors
   */
  async apply(tx: { sequence: number; records: unknown[]; last?: boolean }): Promise<void> {
    // A lazy load applies a create as is; anything else (also at replay) needs every record first — and a replayed create
    // still in the replay batch (or its write) would be missed by that read: the batch is written whole first.
    if (!this.complete && tx.sequence > this.appliedSequence && !this.createsOnly(tx.records)) {
      await this.writeReplayBatch();
      await this.completeSnapshots();
    }
    assert(!this.busy, 'an apply overlaps a catalog read');
    this.busy = true;
    try {
      await this.applyTransaction(tx);
    } finally {
      this.busy = false;
    }
  }

  private async applyTransaction(tx: { sequence: number; records: unknown[]; last?: boolean }): Promise<void> {
    if (tx.last === undefined) {
      assert(this.replayBatch === undefined && this.replayWrite === undefined, 'a commit applied while replayed transactions are still unwritten');
      if (tx.sequence <= this.appliedSequence) return;
      const ops = keyOperations(this, tx.records);
      ops.push(putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence: tx.sequence }));
      await this.db.apply(ops);
      this.appliedSequence = tx.sequence;
      return;
    }
    try {
      if (tx.sequence > this.appliedSequence) {
        const ops = keyOperations(this, tx.records);
        this.replayBatch ??= this.db.batch();
        this.replayBatch.add(ops);
        this.replaySequence = tx.sequence;
        this.appliedSequence = tx.sequence;
        if (this.replayBatch.length >= REPLAY_BATCH_OPS) await this.startReplayWrite();
      }
      if (tx.last) await this.writeReplayBatch();
    } catch (err) {
      await this.dropReplay();
      throw err;
    }
  }

  /**
   * Writes the replay batch, if any, and waits for every replay write (whole
   * transactions with their `cp`, as always); on failure leaves none running.
   */
  private async writeReplayBatch(): Promise<void> {
    try {
      await this.startReplayWrite();
      await this.replayWrite;
      this.replayWrite = undefined;
    } catch (err) {
      await this.dropReplay();
      throw err;
    }
  }

  /** Leaves no replay write running and drops the batch being filled (a failed open: LevelDB is closed next). */
  private async dropReplay(): Promise<void> {
    await this.replayWrite?.catch(() => undefined);
    this.replayWrite = undefined;
    await this.replayBatch?.close().catch(() => undefined);
    this.replayBatch = undefined;
  }

  /**
   * Hands the replay batch, if any, to LevelDB with `cp` = the newest
   * transaction in it, once the previous batch is written; does not wait
   * for this one (its failure surfaces at the next call or the last one).
   */
  private async startReplayWrite(): Promise<void> {
    const batch = this.replayBatch;
    if (batch === undefined) return;
    this.replayBatch = undefined;
    batch.add([putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence: this.replaySequence })]);
    try {
      await this.replayWrite;
    } catch (err) {
      await batch.close().catch(() => undefined);
      throw err;
    }
    const write = batch.write();
    write.catch(() => undefined); // observed by the next await of replayWrite, never unhandled
    this.replayWrite = write;
  }
}

/** Every snapshot record, validated. Bounded: no more records are read than the limit allows, plus one batch. @throws CORRUPT_METADATA, UNSUPPORTED_VERSION */
async function readSnapshots(db: MetadataDb): Promise<Map<number, SnapshotRecord>> {
  const snapshots = new Map<number, SnapshotRecord>();
  // In batches: one LevelDB round trip per 1,024 records, not a promise per record (65,536 of them at the limit, docs/PERFORMANCE.md "Many snapshots").
  for await (const batch of db.scanBatches(keys.snapshotPrefix)) {
    for (const [key, value] of batch) {
      const rec = decodeValue.snapshot(key, value);
      if (rec.id !== parseHexSuffix(key, keys.snapshotPrefix)) throw new CorruptMetadataError(`snapshot record ${key} has id ${rec.id}`);
      snapshots.set(rec.id, rec);
    }
    if (snapshots.size > MAX_SNAPSHOTS) throw new CorruptMetadataError(`more than ${MAX_SNAPSHOTS} snapshot records`);
  }
  return snapshots;
}

/**
 * A volume of another format version (docs/FORMAT.md §1, "Format versions").
 * Version 1 kept data-only store checksums (not bound to their mapping) and
 * is not upgraded in place: its snapshots move through export and import.
 */
function unsupportedFormat(volumePath: string, found: number): UnsupportedVersionError {
  const older = found < FORMAT_VERSION;
  return new UnsupportedVersionError(
    `${volumePath} has format version ${found}; this cowvol reads versions ${UPGRADABLE_FORMAT_VERSIONS.join(' and ')} (upgraded at the first writable open) and ${FORMAT_VERSION}` +
      (older ? ' (version 1 volumes keep store checksums that are not bound to their mapping: export their snapshots with the cowvol that made them, then import them into a new volume)' : ''),
    { details: { version: found, supported: FORMAT_VERSION } },
  );
}
