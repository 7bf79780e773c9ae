import { assert } from '@cowvol/base';
import { asMetaRecord, type MetaRecord } from './meta-record.js';
import { ExtentAllocator, type Extent } from './allocator.js';
import { UnsupportedVersionError } from '@cowvol/base';
import { CorruptMetadataError, NotAVolumeError } from './errors.js';
import { FORMAT_VERSION, MAX_SNAPSHOTS, UPGRADABLE_FORMAT_VERSION } from './layout.js';
import { SCHEMA_VERSION, decodeValue, delOp, keys, parseHexSuffix, putMapOp, putOp, type MetaOp, type SnapshotRecord, type VolumeRecord } from './metadata.js';
import { type MetaBatch, type MetadataDb } from './metadata-db.js';

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
export class CommittedMetadata {
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

  private constructor(
    private readonly db: MetadataDb,
    public sb: VolumeRecord,
    readonly snapshots: Map<number, SnapshotRecord>,
    readonly allocator: ExtentAllocator,
    public appliedSequence: number,
  ) {}

  /** Loads and validates the committed state. Throws `NOT_A_VOLUME`, `CORRUPT_METADATA`, `UNSUPPORTED_VERSION`. */
  static async load(db: MetadataDb, volumePath: string): Promise<CommittedMetadata> {
    const sbBytes = await db.get(keys.volume);
    if (!sbBytes) throw new NotAVolumeError(`${volumePath}: sidecar is incomplete (no volume record); it was never fully created`);
    const sb = decodeValue.volume(keys.volume, sbBytes);
    // Version 2 opens and is upgraded once recovered (space-accounting.ts `upgradeSpaceCounters`).
    if (sb.formatVersion !== FORMAT_VERSION && sb.formatVersion !== UPGRADABLE_FORMAT_VERSION) throw unsupportedFormat(volumePath, sb.formatVersion);
    const cpBytes = await db.get(keys.checkpoint);
    const appliedSequence = cpBytes ? decodeValue.checkpoint(keys.checkpoint, cpBytes).sequence : 0;
    const snapshots = new Map<number, SnapshotRecord>();
    // In batches: one LevelDB round trip per 1,024 records, not a promise per record (65,536 of them at the limit, docs/PERFORMANCE.md "Many snapshots").
    for await (const batch of db.scanBatches(keys.snapshotPrefix)) {
      for (const [key, value] of batch) {
        const rec = decodeValue.snapshot(key, value);
        if (rec.id !== parseHexSuffix(key, keys.snapshotPrefix)) throw new CorruptMetadataError(`snapshot record ${key} has id ${rec.id}`);
        snapshots.set(rec.id, rec);
      }
      // Bounded: no more records are read than the limit allows, plus one batch.
      if (snapshots.size > MAX_SNAPSHOTS) throw new CorruptMetadataError(`more than ${MAX_SNAPSHOTS} snapshot records`);
    }
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
    return new CommittedMetadata(db, sb, snapshots, allocator, appliedSequence);
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
    if (tx.last === undefined) {
      assert(this.replayBatch === undefined && this.replayWrite === undefined, 'a commit applied while replayed transactions are still unwritten');
      if (tx.sequence <= this.appliedSequence) return;
      const ops = this.keyOperations(tx.records);
      ops.push(putOp(keys.checkpoint, { v: SCHEMA_VERSION, sequence: tx.sequence }));
      await this.db.apply(ops);
      this.appliedSequence = tx.sequence;
      return;
    }
    try {
      if (tx.sequence > this.appliedSequence) {
        const ops = this.keyOperations(tx.records);
        this.replayBatch ??= this.db.batch();
        this.replayBatch.add(ops);
        this.replaySequence = tx.sequence;
        this.appliedSequence = tx.sequence;
        if (this.replayBatch.length >= REPLAY_BATCH_OPS) await this.startReplayWrite();
      }
      if (tx.last) {
        await this.startReplayWrite();
        await this.replayWrite;
        this.replayWrite = undefined;
      }
    } catch (err) {
      // Leave no write running behind a failed open (LevelDB is closed next).
      await this.replayWrite?.catch(() => undefined);
      this.replayWrite = undefined;
      await this.replayBatch?.close().catch(() => undefined);
      this.replayBatch = undefined;
      throw err;
    }
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

  /**
   * The key operations of one transaction's records against the committed
   * state, which they advance (snapshots, owned-block counts, allocator,
   * volume record); `cp` not included.
   */
  private keyOperations(records: unknown[]): MetaOp[] {
    const ops: MetaOp[] = [];
    const tx: TxSnapshots = { touched: new Set<number>(), dropped: new Set<number>() };
    for (const raw of records) {
      const r = asMetaRecord(raw);
      if (!this.mappingOperations(r, ops, tx)) this.catalogOperations(r, ops, tx);
    }
    for (const op of this.allocator.takeOps()) ops.push(op);
    for (const id of tx.touched) {
      const rec = this.snapshots.get(id);
      if (tx.dropped.has(id) || !rec) continue;
      // A transaction moves both counts together: checked at its end (space-accounting.ts).
      const shared = rec.sharedBlocks ?? 0;
      assert(shared >= 0 && shared <= rec.ownedBlocks, `snapshot ${id} shares ${shared} of its ${rec.ownedBlocks} owned blocks`);
      ops.push(putOp(keys.snapshot(id), rec));
    }
    return ops;
  }

  /** The records that map, unmap, move or free store blocks; false for any other record. */
  private mappingOperations(r: MetaRecord, ops: MetaOp[], tx: TxSnapshots): boolean {
    switch (r.o) {
      case 'map':
        this.allocator.allocateExact(r.p);
        ops.push(putMapOp(r.id, r.b, r.p, r.crc));
        this.owned(tx, r.id, 1);
        return true;
      case 'mapx': {
        const n = r.crcs.length / 4;
        const crcs = Buffer.from(r.crcs.buffer, r.crcs.byteOffset, r.crcs.length);
        for (let i = 0; i < n; i++) {
          this.allocator.allocateExact(r.p + i);
          ops.push(putMapOp(r.id, r.b + i, r.p + i, crcs.readUInt32LE(4 * i)));
        }
        this.owned(tx, r.id, n);
        return true;
      }
      case 'unmap':
        ops.push(delOp(keys.map(r.id, r.b)));
        this.allocator.free({ startBlock: r.p, lengthBlocks: 1 });
        this.owned(tx, r.id, -1);
        return true;
      case 'move':
        ops.push(delOp(keys.map(r.from, r.b)));
        ops.push(putMapOp(r.to, r.b, r.p, r.crc));
        this.owned(tx, r.from, -1);
        this.owned(tx, r.to, 1);
        return true;
      case 'shared': {
        const rec = this.snapshots.get(r.id);
        assert(rec !== undefined, `journal record names snapshot ${r.id}, which does not exist`);
        const next = (rec.sharedBlocks ?? 0) + r.n;
        if (next === 0) delete rec.sharedBlocks;
        else rec.sharedBlocks = next;
        tx.touched.add(r.id);
        return true;
      }
      case 'free':
        this.allocator.free({ startBlock: r.p, lengthBlocks: r.n });
        return true;
      default:
        return false;
    }
  }

  /** Counts `delta` owned blocks into snapshot `id`. */
  private owned(tx: TxSnapshots, id: number, delta: number): void {
    const rec = this.snapshots.get(id);
    assert(rec !== undefined, `journal record names snapshot ${id}, which does not exist`);
    rec.ownedBlocks += delta;
    assert(rec.ownedBlocks >= 0, `snapshot ${id} owns a negative number of blocks`);
    tx.touched.add(id);
  }

  /** The records of the volume record, the catalog and the import marker. */
  private catalogOperations(r: MetaRecord, ops: MetaOp[], tx: TxSnapshots): void {
    switch (r.o) {
      case 'sb': {
        const op = putOp(keys.volume, r.v) as { o: 'p'; k: string; v: Buffer };
        this.sb = decodeValue.volume(keys.volume, op.v); // validate before it reaches LevelDB
        ops.push(op);
        break;
      }
      case 'snap': {
        const prev = this.snapshots.get(r.id);
        // A state change keeps the optional fields (labels, held, origin).
        this.snapshots.set(r.id, { ...prev, v: SCHEMA_VERSION, id: r.id, name: r.name, createdAt: r.createdAt, state: r.state, ownedBlocks: prev?.ownedBlocks ?? 0 });
        tx.touched.add(r.id);
        break;
      }
      case 'drop': {
        const rec = this.snapshots.get(r.id);
        assert(rec?.ownedBlocks === 0, `drop of snapshot ${r.id} that still owns blocks or does not exist`);
        this.snapshots.delete(r.id);
        tx.touched.delete(r.id);
        tx.dropped.add(r.id);
        ops.push(delOp(keys.snapshot(r.id)));
        break;
      }
      case 'rename':
      case 'labels':
      case 'hold':
      case 'origin':
      case 'suspect':
        this.changeFields(r);
        tx.touched.add(r.id);
        break;
      case 'import':
        if (r.state === null) ops.push(delOp(keys.importState));
        else {
          const op = putOp(keys.importState, r.state) as { o: 'p'; k: string; v: Buffer };
          decodeValue.importState(keys.importState, op.v); // validate before it reaches LevelDB
          ops.push(op);
        }
        break;
      default:
        assert(false, `journal record ${r.o} is no catalog record`);
    }
  }

  /** A change of a snapshot's optional fields (name, labels, held, origin, suspect). */
  private changeFields(r: Extract<MetaRecord, { o: 'rename' | 'labels' | 'hold' | 'origin' | 'suspect' }>): void {
    const rec = this.snapshots.get(r.id);
    assert(rec !== undefined, `journal record ${r.o} names snapshot ${r.id}, which does not exist`);
    if (r.o === 'rename') rec.name = r.name;
    else if (r.o === 'labels') {
      if (Object.keys(r.labels).length > 0) rec.labels = { ...r.labels };
      else delete rec.labels;
    } else if (r.o === 'hold') {
      if (r.held) rec.held = true;
      else delete rec.held;
    } else if (r.o === 'suspect') rec.suspect = true;
    else rec.origin = { ...r.origin };
  }
}

/** The snapshots one transaction touched (their records are rewritten) and dropped (deleted). */
interface TxSnapshots {
  readonly touched: Set<number>;
  readonly dropped: Set<number>;
}

/**
 * A volume of another format version (docs/FORMAT.md §1, "Format versions").
 * Version 1 kept data-only store checksums (not bound to their mapping) and
 * is not upgraded in place: its snapshots move through export and import.
 */
function unsupportedFormat(volumePath: string, found: number): UnsupportedVersionError {
  const older = found < FORMAT_VERSION;
  return new UnsupportedVersionError(
    `${volumePath} has format version ${found}; this cowvol reads versions ${UPGRADABLE_FORMAT_VERSION} (upgraded at the first open) and ${FORMAT_VERSION}` +
      (older ? ' (version 1 volumes keep store checksums that are not bound to their mapping: export their snapshots with the cowvol that made them, then import them into a new volume)' : ''),
    { details: { version: found, supported: FORMAT_VERSION } },
  );
}
