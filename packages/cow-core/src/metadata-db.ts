import { Level } from 'level';
import { assert } from '@cowvol/base';
import type { MetaOp } from './metadata.js';
import { metadataError, refuseSpecialFiles } from './sidecar-damage.js';
import { markLostLog } from './leveldb-verify.js';
import { levelError } from './level-errors.js';
/**
 * The metadata database (docs/FORMAT.md §6): LevelDB opened, scanned in
 * batches, written in atomic batches (`MetaBatch`), made durable. What the
 * keys and values mean, and their validation, is metadata.ts.
 */
/** Entries per LevelDB round trip of `scanBatches`. */
export const SCAN_BATCH_ENTRIES = 1024;

/** A key range below every cowvol key (they are printable ASCII): no LevelDB table overlaps it. */
const NO_KEYS = '\x00';

/** In Node, `level` is classic-level, which also has compactRange (not in the universal typings). */
interface Compactable {
  compactRange(start: string, end: string): Promise<void>;
}

/** The part of a LevelDB chained batch that {@link MetaBatch} uses. */
interface ChainedBatch {
  put(key: string, value: Buffer): unknown;
  del(key: string): unknown;
  write(options: { sync: boolean }): Promise<void>;
  close(): Promise<void>;
}

/**
 * One LevelDB batch being filled: a chained batch, so each key operation
 * goes straight into the native WriteBatch, which copies it — nothing of it
 * stays on the JavaScript heap, and none of the per-op object spreading of
 * an array batch (≈ 5× faster on mixed puts and deletes). Applied
 * atomically by `write()`; `close()` drops it unwritten.
 */
export class MetaBatch {
  private count = 0;

  constructor(
    private readonly batch: ChainedBatch,
    private readonly path = '',
  ) {}

  /** Key operations added so far. */
  get length(): number {
    return this.count;
  }

  /** Appends ops, in order. Throws what LevelDB throws for an invalid key or value. */
  add(ops: readonly MetaOp[]): void {
    for (const op of ops) {
      if (op.o === 'p') this.batch.put(op.k, op.v);
      else this.batch.del(op.k);
    }
    this.count += ops.length;
  }

  /** Writes every op added, atomically (`sync`: fsync LevelDB's log first). */
  write(sync = false): Promise<void> {
    return this.batch.write({ sync }).catch((err: unknown) => {
      throw metadataError(levelError(err, 'cannot write the metadata database'), this.path);
    });
  }

  close(): Promise<void> {
    return this.batch.close();
  }
}

/** Thin wrapper over the LevelDB database (classic-level, the node backend of `level`). */
export class MetadataDb {
  /** LevelDB damage met by any method is `CORRUPT_METADATA` (sidecar-damage.ts). */
  private constructor(
    readonly db: Level<string, Buffer>,
    private readonly path = '',
  ) {}

  /**
   * `reportedPath`: the folder errors name (a read-only open's private copy
   * names the sidecar's, read-only.ts). Opening a sidecar's own database
   * (not a new one, not a private copy) first records a deleted current
   * log (`markLostLog`): this open would make a new one.
   */
  static async open(path: string, createIfMissing: boolean, reportedPath = path): Promise<MetadataDb> {
    if (!createIfMissing && reportedPath === path) {
      await refuseSpecialFiles(path);
      await markLostLog(path);
    }
    const db = new Level<string, Buffer>(path, { keyEncoding: 'utf8', valueEncoding: 'buffer', createIfMissing, errorIfExists: createIfMissing });
    await db.open().catch((err: unknown) => {
      throw levelError(err, `cannot open the metadata database ${reportedPath}`);
    });
    return new MetadataDb(db, reportedPath);
  }

  async get(key: string): Promise<Buffer | undefined> {
    try {
      return await this.db.get(key);
    } catch (err) {
      throw metadataError(err, this.path);
    }
  }

  /** Applies ops in order as one LevelDB batch (atomic in LevelDB; not synced: the journal carries durability). */
  async apply(ops: MetaOp[], sync = false): Promise<void> {
    if (ops.length === 0) return;
    const batch = this.batch();
    try {
      batch.add(ops);
    } catch (err) {
      await batch.close(); // an op LevelDB refused: nothing of the batch is written
      throw err;
    }
    await batch.write(sync);
  }

  /** A new, empty batch to fill and write (see {@link MetaBatch}). */
  batch(): MetaBatch {
    return new MetaBatch(this.db.batch(), this.path);
  }

  /** All [key, value] with the prefix, in key order; `limit` bounds the scan. */
  async *scan(prefix: string, limit = -1): AsyncGenerator<[string, Buffer]> {
    try {
      for await (const entry of this.db.iterator({ gte: prefix, lt: `${prefix}\xff`, limit })) yield entry;
    } catch (err) {
      throw metadataError(err, this.path);
    }
  }

  /**
   * All [key, value] with the prefix, in key order, in batches of at most
   * `batchEntries` (bounds memory): one LevelDB round trip per batch instead
   * of one per entry, for long scans such as a snapshot map load. With
   * `lte`, the keys in [prefix, lte] instead. The next batch is read while
   * the caller works on this one (one read ahead: LevelDB reads in its
   * thread while the main thread decodes), so at most two batches are held.
   */
  async *scanBatches(prefix: string, batchEntries = SCAN_BATCH_ENTRIES, lte?: string): AsyncGenerator<Array<[string, Buffer]>> {
    assert(Number.isSafeInteger(batchEntries) && batchEntries > 0, `scan batch of ${batchEntries} entries`);
    const it = this.db.iterator(lte === undefined ? { gte: prefix, lt: `${prefix}\xff` } : { gte: prefix, lte });
    const next = (): Promise<Array<[string, Buffer]>> => {
      const read = it.nextv(batchEntries).catch((err: unknown) => {
        throw metadataError(err, this.path);
      });
      // Observed at once: a read ahead may fail while the caller awaits something else between batches (check's store
      // reads); its error is thrown by the next await of it, never reported as an unhandled rejection.
      read.catch(() => undefined);
      return read;
    };
    let ahead: Promise<Array<[string, Buffer]>> | undefined = next();
    try {
      for (;;) {
        const batch = await ahead;
        ahead = undefined;
        // Only an empty batch ends the scan: LevelDB may return fewer entries than asked before the end.
        if (batch.length === 0) return;
        ahead = next();
        yield batch;
      }
    } finally {
      // A caller that stops early (or a failed read) leaves at most one read in flight: let it end before the close.
      await ahead?.catch(() => undefined);
      await it.close();
    }
  }

  /**
   * Makes every write so far durable in LevelDB: flushing the memtable writes
   * a synced table file and a synced manifest (LevelDB's CompactRange always
   * compacts the memtable first), so nothing depends on LevelDB's own
   * unsynced log any more. Used by checkpoint before the journal tail moves.
   * The range, {@link NO_KEYS}, holds no key, so no table overlaps it and
   * nothing but the memtable is compacted (LevelDB compacts its levels in
   * the background as usual): a checkpoint costs one memtable's worth of
   * writing, not a rewrite of every table holding a `cp` (≈ 0.6 s after a
   * 64 MiB replay).
   */
  async makeDurable(): Promise<void> {
    await (this.db as unknown as Compactable).compactRange(NO_KEYS, NO_KEYS).catch((err: unknown) => {
      throw metadataError(levelError(err, 'cannot flush the metadata database'), this.path);
    });
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}
