import { type BlockDevice, assert } from '@cowvol/base';
import { JournalAbortedError } from './errors.js';
import { firstLogBlock, type JournalSuperblock } from './format.js';
import { ImageCache } from './image-cache.js';
import type { RecoveredTransaction } from './recovery-scan.js';
import { Transaction } from './transaction.js';

export interface JournalStats {
  /** Transactions committed. */
  commits: number;
  /** Handles committed (≥ commits: group commit puts many handles in one transaction). */
  handles: number;
  /** fdatasyncs of the journal file. */
  syncs: number;
  /** fdatasyncs of ordered-data devices before commits. */
  orderedSyncs: number;
  bytesWritten: number;
  checkpoints: number;
  /** Times `start` waited for log space. */
  spaceWaits: number;
}

/**
 * The state of one open journal that the facade (journal.ts), the commit
 * writer and the checkpoint share (jbd2's `journal_t`; docs/ARCHITECTURE.md
 * §5): the log's geometry, its head and tail, the committed transactions not
 * yet checkpointed, the log space used and reserved, the image cache, the
 * counters, and the abort (jbd2 abort: once set, every call fails).
 */
export class LogState {
  readonly blockSizeBytes: number;
  readonly lengthBlocks: number;
  readonly firstBlock: number;
  /** Log blocks (the file minus its superblock area). */
  readonly dataBlocks: number;
  /** Generation of the newest superblock slot written. */
  generation: number;
  /** Where the next transaction goes. */
  headBlock: number;
  nextSequence: number;
  tailBlock: number;
  tailSequence: number;
  /** The newest transaction whose `apply` (or replay) finished: a checkpoint may cover it. */
  lastAppliedSequence: number;
  /** Committed transactions not yet checkpointed, oldest first. */
  readonly committed: Transaction[] = [];
  /** Log blocks of `committed`. */
  usedBlocks = 0;
  /** Log blocks reserved by started handles not yet committed or released. */
  reservedBlocks = 0;
  readonly images = new ImageCache();
  readonly stats: JournalStats = { commits: 0, handles: 0, syncs: 0, orderedSyncs: 0, bytesWritten: 0, checkpoints: 0, spaceWaits: 0 };
  /** The failure that aborted the journal, once one did. */
  abortedBy: unknown = undefined;
  closed = false;
  private spaceWaiters: Array<() => void> = [];

  constructor(
    readonly device: BlockDevice,
    readonly uuid: Buffer,
    sb: JournalSuperblock,
    scanned: { headBlock: number; nextSequence: number; transactions: readonly RecoveredTransaction[] },
  ) {
    this.blockSizeBytes = sb.blockSizeBytes;
    this.lengthBlocks = sb.lengthBlocks;
    this.firstBlock = firstLogBlock(sb.blockSizeBytes);
    this.dataBlocks = sb.lengthBlocks - this.firstBlock;
    this.generation = sb.generation;
    this.headBlock = scanned.headBlock;
    this.nextSequence = scanned.nextSequence;
    this.tailBlock = sb.tailBlock;
    this.tailSequence = sb.tailSequence;
    this.lastAppliedSequence = scanned.nextSequence - 1;
    for (const rec of scanned.transactions) {
      this.committed.push(Transaction.recovered(rec.sequence, rec.startBlock, rec.blocks));
      this.usedBlocks += rec.blocks;
    }
  }

  /** Records the first failure that aborts the journal (later ones keep the first). */
  abort(err: unknown): void {
    this.abortedBy ??= err;
  }

  /** @throws JOURNAL_ABORTED when closed or aborted */
  checkUsable(): void {
    if (this.closed) throw new JournalAbortedError('journal is closed');
    if (this.abortedBy !== undefined) throw new JournalAbortedError('journal aborted after a failed commit or checkpoint; reopen to recover', { cause: this.abortedBy });
  }

  /** Returns `blocks` of reserved log space (a handle released, committed or failed). */
  releaseReserved(blocks: number): void {
    this.reservedBlocks -= blocks;
    assert(this.reservedBlocks >= 0, 'negative log reservation');
  }

  /** Resolves at the next apply, release, checkpoint or close. Register it in the same tick as the test it waits on. */
  waitForSpace(): Promise<void> {
    return new Promise<void>((wake) => this.spaceWaiters.push(wake));
  }

  wakeSpaceWaiters(): void {
    for (const wake of this.spaceWaiters.splice(0)) wake();
  }
}
