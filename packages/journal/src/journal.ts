import { randomBytes } from 'node:crypto';
import { pack, unpackMultiple } from 'msgpackr';
import { Mutex } from 'async-mutex';
import type { BlockDevice } from './block-device.js';
import {
  COMMIT_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_RECORDS,
  SUPERBLOCK_BYTES,
  TX_HEADER_BYTES,
  UUID_BYTES,
  checksumSeed,
  decodeSuperblock,
  encodeCommit,
  encodeHeader,
  encodeSuperblock,
} from './format.js';
import { scanJournal, type RecoveredTransaction, type ScanResult } from './recovery.js';
import { JournalAbortedError, JournalCorruptError, JournalCreditsExceededError, assert } from './errors.js';

/** Called once per committed transaction found at open, oldest first. Must be idempotent: recovery may run twice. */
export type ReplayFn = (tx: RecoveredTransaction) => Promise<void>;

/**
 * Called for every transaction this journal commits, in sequence order,
 * right after it is durable and before any of its handles' `commit()`
 * resolves — the place to apply the records to their home (jbd2's commit
 * callback). Commits wait for it, so homes see transactions in order.
 */
export type ApplyFn = (tx: { sequence: number; records: unknown[] }) => Promise<void>;

/** What `Journal.open` found and did. */
export interface RecoveryReport {
  replayedTransactions: number;
  replayedRecords: number;
  discardedBytes: number;
  stopReason: string;
  /** Sequence of the last transaction replayed, or tail-1 when none. */
  lastSequence: number;
}

export interface JournalStats {
  /** Transactions committed. */
  commits: number;
  /** Handles committed (≥ commits: group commit puts many handles in one transaction). */
  handles: number;
  syncs: number;
  bytesWritten: number;
  checkpoints: number;
}

/** Bounds of one group commit: a transaction never carries more than this. */
export const MAX_HANDLES_PER_COMMIT = 4096;

interface QueuedHandle {
  encoded: Buffer[];
  bytes: number;
  resolve: (sequence: number) => void;
  reject: (err: unknown) => void;
}

/**
 * A handle: one atomic operation's share of the journal (jbd2 `handle_t`).
 * It starts with `credits` — the most records it may log — and every record
 * it logs is committed together or not at all.
 *
 * Records are encoded with msgpackr at `log()` time, so the journal holds the
 * bytes as they were when logged: a caller that mutates or reuses a Buffer
 * afterwards changes nothing (stable buffers, seed 000).
 */
export class Handle {
  private readonly encoded: Buffer[] = [];
  private bytes = 0;
  private finished = false;

  /** @internal use {@link Journal.start}. */
  constructor(private readonly journal: Journal, readonly credits: number) {}

  /** Records logged so far. */
  get recordCount(): number {
    return this.encoded.length;
  }

  /**
   * Logs one record (any msgpackr-encodable value).
   * @throws JournalCreditsExceededError `JOURNAL_CREDITS_EXCEEDED` past the handle's credits or the transaction size bound.
   */
  log(record: unknown): void {
    assert(!this.finished, 'log() on a finished handle');
    if (this.encoded.length >= this.credits) {
      throw new JournalCreditsExceededError(`handle started with ${this.credits} credits; record ${this.encoded.length + 1} exceeds them`);
    }
    const bytes = pack(record);
    if (this.bytes + bytes.length > MAX_PAYLOAD_BYTES) {
      throw new JournalCreditsExceededError(`transaction payload would exceed ${MAX_PAYLOAD_BYTES} bytes`);
    }
    this.encoded.push(bytes);
    this.bytes += bytes.length;
  }

  /**
   * Commits the handle's records as one transaction and resolves, with its
   * sequence number, only after the journal file is `fdatasync`ed.
   * @throws IoError / NoSpaceError from the device; after that the journal is aborted (`JOURNAL_ABORTED`).
   */
  async commit(): Promise<number> {
    assert(!this.finished, 'commit() on a finished handle');
    this.finished = true;
    return this.journal.commitEncoded(this.encoded, this.bytes);
  }

  /** Drops the handle without committing anything. */
  abandon(): void {
    this.finished = true;
  }
}

/**
 * A write-ahead journal on one file, in the style of Linux jbd2.
 *
 * First version: each committed handle is one transaction, appended as
 * header | msgpackr records | commit block, with CRC32C over the whole
 * transaction (layout: ./format.ts, docs/FORMAT.md). `commit` resolves after
 * `fdatasync`. `open` scans from the tail, replays every committed
 * transaction through the caller's idempotent replay function and discards a
 * torn or corrupt tail. `checkpoint(n)` declares transactions ≤ n applied to
 * their home (the caller made them durable) and moves the tail past them;
 * when nothing is left the file is trimmed back to the superblock.
 *
 * Group commit: handles that commit while a transaction is being written
 * queue up and go out together in the next transaction — one write and one
 * fdatasync for all of them (jbd2 group commit). Transactions are written
 * one at a time, in sequence order, and each is passed to the `apply`
 * callback before its handles' `commit()` resolve.
 *
 * A failed commit aborts the journal (like jbd2's `jbd2_journal_abort`):
 * later calls throw `JOURNAL_ABORTED` until reopened.
 */
export class Journal {
  private readonly seed: number;
  private readonly lock = new Mutex();
  private nextOffsetBytes: number;
  private nextSequence: number;
  private tailSequence: number;
  private tailOffsetBytes: number;
  /** End offset of every committed, not yet checkpointed transaction (bounded by the file's size). */
  private readonly committedEnds = new Map<number, number>();
  private abortedBy: unknown = undefined;
  private closed = false;
  private readonly queue: QueuedHandle[] = [];
  private committing = false;
  private apply: ApplyFn = async () => undefined;
  private idleWaiters: Array<() => void> = [];
  readonly stats: JournalStats = { commits: 0, handles: 0, syncs: 0, bytesWritten: 0, checkpoints: 0 };

  private constructor(
    private readonly device: BlockDevice,
    readonly uuid: Buffer,
    scan: ScanResult,
    sb: { tailSequence: number; tailOffsetBytes: number },
  ) {
    this.seed = checksumSeed(uuid);
    this.nextOffsetBytes = scan.endOffsetBytes;
    this.nextSequence = scan.nextSequence;
    this.tailSequence = sb.tailSequence;
    this.tailOffsetBytes = sb.tailOffsetBytes;
    for (const tx of scan.transactions) this.committedEnds.set(tx.sequence, tx.endOffsetBytes);
  }

  /**
   * Formats `device` as an empty journal (superblock only) and syncs it.
   * @param uuid 16 bytes identifying the owner; random when absent.
   */
  static async format(device: BlockDevice, uuid: Buffer = randomBytes(UUID_BYTES)): Promise<void> {
    await device.truncate(0);
    await device.write(0, encodeSuperblock({ uuid, tailSequence: 1, tailOffsetBytes: SUPERBLOCK_BYTES }));
    await device.sync();
  }

  /**
   * Opens a journal and runs recovery: scan, replay every committed
   * transaction after the tail (oldest first) through `replay`, then cut off
   * any torn or corrupt tail so new transactions follow the last valid one.
   * The caller checkpoints once replayed records are durable at home.
   *
   * @param expectedUuid when given, a journal with another uuid is refused.
   * @throws JournalCorruptError `JOURNAL_CORRUPT` for a bad superblock or a foreign journal.
   */
  static async open(
    device: BlockDevice,
    options: { expectedUuid?: Buffer; replay: ReplayFn; apply?: ApplyFn },
  ): Promise<{ journal: Journal; recovery: RecoveryReport }> {
    const sb = decodeSuperblock(await device.read(0, SUPERBLOCK_BYTES), device.name);
    if (options.expectedUuid && !options.expectedUuid.equals(sb.uuid)) {
      throw new JournalCorruptError(`${device.name}: journal belongs to another volume (uuid mismatch)`);
    }
    const scan = await scanJournal(device, sb, checksumSeed(sb.uuid));
    let records = 0;
    for (const tx of scan.transactions) {
      await options.replay(tx);
      records += tx.records.length;
    }
    if (scan.discardedBytes > 0) {
      // Discard the torn tail so the next transaction is appended right after
      // the last valid one (a stale tail must never follow a fresh commit).
      await device.truncate(scan.endOffsetBytes);
      await device.sync();
    }
    const journal = new Journal(device, sb.uuid, scan, sb);
    if (options.apply) journal.apply = options.apply;
    return {
      journal,
      recovery: {
        replayedTransactions: scan.transactions.length,
        replayedRecords: records,
        discardedBytes: scan.discardedBytes,
        stopReason: scan.stopReason,
        lastSequence: scan.nextSequence - 1,
      },
    };
  }

  /**
   * Starts a handle that may log up to `credits` records (jbd2 `jbd2_journal_start`).
   * @throws JournalAbortedError `JOURNAL_ABORTED` after a failed commit.
   */
  start(credits: number): Handle {
    this.checkUsable();
    assert(Number.isInteger(credits) && credits > 0 && credits <= MAX_RECORDS, `credits must be 1..${MAX_RECORDS}, got ${credits}`);
    return new Handle(this, credits);
  }

  /** Convenience: one handle with exactly these records, committed. Resolves with the sequence after fdatasync. */
  async commit(records: unknown[]): Promise<number> {
    const handle = this.start(Math.max(1, records.length));
    for (const r of records) handle.log(r);
    return handle.commit();
  }

  /** Sequence of the newest committed transaction (tail-1 when empty). */
  get lastCommittedSequence(): number {
    return this.nextSequence - 1;
  }

  /** Bytes of committed transactions not yet checkpointed. */
  get uncheckpointedBytes(): number {
    return this.nextOffsetBytes - this.tailOffsetBytes;
  }

  /** @internal Queues a handle for the next group commit; resolves with its transaction's sequence once durable and applied. */
  commitEncoded(encoded: Buffer[], payloadBytes: number): Promise<number> {
    this.checkUsable();
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ encoded, bytes: payloadBytes, resolve, reject });
      if (!this.committing) void this.runCommits();
    });
  }

  /** Number of handles waiting for the next commit. */
  get queuedHandles(): number {
    return this.queue.length;
  }

  /** The commit loop: while handles are queued, write them as one transaction. */
  private async runCommits(): Promise<void> {
    this.committing = true;
    try {
      while (this.queue.length > 0) {
        // Take as many queued handles as one transaction may carry.
        const batch: QueuedHandle[] = [];
        let bytes = 0;
        let records = 0;
        while (this.queue.length > 0 && batch.length < MAX_HANDLES_PER_COMMIT) {
          const next = this.queue[0]!;
          if (batch.length > 0 && (bytes + next.bytes > MAX_PAYLOAD_BYTES || records + next.encoded.length > MAX_RECORDS)) break;
          batch.push(this.queue.shift()!);
          bytes += next.bytes;
          records += next.encoded.length;
        }
        try {
          const sequence = await this.lock.runExclusive(() => this.writeTransaction(batch, bytes, records));
          for (const h of batch) h.resolve(sequence);
        } catch (err) {
          for (const h of batch) h.reject(err);
        }
      }
    } finally {
      this.committing = false;
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  /** Writes, syncs and applies one transaction. Caller holds the lock. */
  private async writeTransaction(batch: QueuedHandle[], payloadBytes: number, recordCount: number): Promise<number> {
    this.checkUsable();
    const sequence = this.nextSequence;
    const payload = Buffer.concat(batch.flatMap((h) => h.encoded), payloadBytes);
    const header = encodeHeader({ sequence, payloadLengthBytes: payload.length, recordCount }, this.seed);
    const commit = encodeCommit(sequence, header, payload, this.seed);
    const frame = Buffer.concat([header, payload, commit]);
    assert(frame.length === TX_HEADER_BYTES + payloadBytes + COMMIT_BYTES, 'transaction frame length');
    try {
      await this.device.write(this.nextOffsetBytes, frame);
      await this.device.sync();
      this.stats.commits += 1;
      this.stats.handles += batch.length;
      this.stats.syncs += 1;
      this.stats.bytesWritten += frame.length;
      this.nextOffsetBytes += frame.length;
      this.nextSequence = sequence + 1;
      this.committedEnds.set(sequence, this.nextOffsetBytes);
      // Decode from the committed bytes: the home sees exactly what recovery would replay.
      await this.apply({ sequence, records: unpackMultiple(payload) as unknown[] });
    } catch (err) {
      // The on-disk or applied state of this transaction is unknown; refuse
      // further commits so nothing is ordered after a commit that may be lost.
      this.abortedBy = err;
      throw err;
    }
    return sequence;
  }

  /**
   * Declares every transaction with sequence ≤ `sequence` applied and durable
   * at its home; moves the journal tail past them (superblock write + sync).
   * When that empties the journal, the file is trimmed back to the superblock.
   * Safe at any crash point: a stale transaction left behind has a sequence
   * below the new tail's and stops the scan.
   */
  async checkpoint(sequence: number): Promise<void> {
    await this.lock.runExclusive(async () => {
      this.checkUsable();
      assert(sequence <= this.lastCommittedSequence, `checkpoint(${sequence}) past last commit ${this.lastCommittedSequence}`);
      if (sequence < this.tailSequence) return;
      const emptied = sequence === this.lastCommittedSequence;
      const tailOffsetBytes = emptied ? SUPERBLOCK_BYTES : this.committedEnds.get(sequence);
      assert(tailOffsetBytes !== undefined, `no end offset recorded for transaction ${sequence}`);
      await this.device.write(0, encodeSuperblock({ uuid: this.uuid, tailSequence: sequence + 1, tailOffsetBytes }));
      await this.device.sync();
      if (emptied) {
        await this.device.truncate(SUPERBLOCK_BYTES);
        await this.device.sync();
        this.nextOffsetBytes = SUPERBLOCK_BYTES;
      }
      for (let s = this.tailSequence; s <= sequence; s++) this.committedEnds.delete(s);
      this.tailSequence = sequence + 1;
      this.tailOffsetBytes = tailOffsetBytes;
      this.stats.checkpoints += 1;
    });
  }

  /** Closes the device. Does not checkpoint: the owner decides (committed transactions replay at next open). */
  async close(): Promise<void> {
    if (this.closed) return;
    // Let queued handles commit first.
    while (this.committing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    await this.lock.runExclusive(async () => {
      this.closed = true;
      await this.device.close();
    });
  }

  private checkUsable(): void {
    if (this.closed) throw new JournalAbortedError('journal is closed');
    if (this.abortedBy !== undefined) throw new JournalAbortedError('journal aborted after a failed commit; reopen the volume to recover', { cause: this.abortedBy });
  }
}
