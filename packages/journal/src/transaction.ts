import { pack } from 'msgpackr';
import { assert, type BlockDevice } from '@cowvol/base';
import { JournalCreditsExceededError } from './errors.js';
import { payloadPerBlock, type BlockImage, type Revocation } from './format.js';

/** jbd2 transaction states, in order. */
export type TransactionState = 'running' | 'locked' | 'committing' | 'committed' | 'checkpointed';

const NEXT: Record<TransactionState, TransactionState | undefined> = {
  running: 'locked',
  locked: 'committing',
  committing: 'committed',
  committed: 'checkpointed',
  checkpointed: undefined,
};

/**
 * One transaction (jbd2 `transaction_t`): the handles that joined it while
 * it was running, then locked (no more joins), written (committing),
 * durable and applied (committed), and finally written home (checkpointed).
 */
export class Transaction {
  state: TransactionState = 'running';
  readonly handles: Handle[] = [];
  /** Set once locked. */
  sequence = 0;
  startBlock = 0;
  blocks = 0;

  /** A transaction found committed by recovery (not yet checkpointed). */
  static recovered(sequence: number, startBlock: number, blocks: number): Transaction {
    const tx = new Transaction();
    tx.state = 'committed';
    tx.sequence = sequence;
    tx.startBlock = startBlock;
    tx.blocks = blocks;
    return tx;
  }

  advance(to: TransactionState): void {
    assert(NEXT[this.state] === to, `transaction ${this.sequence}: ${this.state} → ${to} is not a legal transition`);
    this.state = to;
  }
}

/**
 * Credits (log blocks) that `recordBytes` bytes of encoded records take:
 * records are concatenated into payload blocks of `payloadPerBlock` bytes
 * each, a record may straddle two of them (docs/FORMAT.md §5.5), so it is
 * `ceil(recordBytes / payloadPerBlock)`.
 */
export function creditsForRecordBytes(recordBytes: number, blockBytes: number): number {
  return Math.ceil(recordBytes / payloadPerBlock(blockBytes));
}

/** The journal side a handle talks to. */
export interface HandleOwner {
  /** `force`: commit now (a flush request) rather than at the next size or interval trigger. */
  stopHandle(handle: Handle, force: boolean): Promise<number>;
  releaseHandle(handle: Handle): void;
}

/**
 * A handle (jbd2 `handle_t`): one atomic operation's share of the running
 * transaction. It starts with `credits`, counted in log blocks as in jbd2
 * (docs/ARCHITECTURE.md §5.1): each block image and each revoke takes one,
 * and its records together take the payload blocks their encoded bytes fill
 * (`ceil(recordBytes / payloadPerBlock)`, {@link creditsForRecordBytes}) —
 * so thousands of small records fit a few dozen credits. The log blocks
 * those credits can need are reserved at start. Everything it logs is
 * committed together, or not at all.
 *
 * Stable buffers (docs/ARCHITECTURE.md §5.1): records are encoded and images copied at log
 * time, so a caller that mutates or reuses its Buffer afterwards changes
 * nothing in the journal.
 */
export class Handle {
  readonly records: Buffer[] = [];
  recordBytes = 0;
  readonly images: BlockImage[] = [];
  readonly revokes: Revocation[] = [];
  readonly orderedDevices = new Set<BlockDevice>();
  private items = 0;
  private finished = false;

  /** @internal use `Journal.start`. */
  constructor(
    private readonly owner: HandleOwner,
    readonly credits: number,
    readonly reservedBlocks: number,
    private readonly blockBytes: number,
  ) {}

  /** Charges `items` images or revokes and `recordBytes` bytes of records against the credits. */
  private take(items: number, recordBytes: number): void {
    assert(!this.finished, 'log on a finished handle');
    const used = this.items + items + creditsForRecordBytes(this.recordBytes + recordBytes, this.blockBytes);
    if (used > this.credits) throw new JournalCreditsExceededError(`handle started with ${this.credits} credits; this item would make it use ${used}`);
    this.items += items;
    this.recordBytes += recordBytes;
  }

  /**
   * Logs a logical record (any msgpackr-encodable value); it takes the
   * payload bytes it adds (see {@link creditsForRecordBytes}).
   * @throws JOURNAL_CREDITS_EXCEEDED
   */
  log(record: unknown): void {
    assert(!this.finished, 'log on a finished handle');
    const bytes = pack(record);
    assert(bytes.length <= payloadPerBlock(this.blockBytes), `a record must fit one journal block (${bytes.length} bytes)`);
    this.take(0, bytes.length);
    this.records.push(bytes);
  }

  /** Logs a full block image for `homeBlock` of `target` (a copy is taken now). @throws JOURNAL_CREDITS_EXCEEDED */
  logImage(target: number, homeBlock: number, data: Uint8Array): void {
    this.take(1, 0);
    assert(data.length === this.blockBytes, `image of ${data.length} bytes; the journal block is ${this.blockBytes}`);
    assert(Number.isSafeInteger(homeBlock) && homeBlock >= 0 && target >= 0 && target < 0x10000, 'bad image home');
    this.images.push({ target, homeBlock, data: Buffer.from(data) });
  }

  /** Revokes `homeBlock` of `target`: older images of it are never replayed (jbd2 revoke). @throws JOURNAL_CREDITS_EXCEEDED */
  revoke(target: number, homeBlock: number): void {
    this.take(1, 0);
    this.revokes.push({ target, homeBlock });
  }

  /** Data that must be durable (fdatasync) before this handle's commit block is written (ext4 data=ordered). */
  orderedData(device: BlockDevice): void {
    assert(!this.finished, 'orderedData on a finished handle');
    this.orderedDevices.add(device);
  }

  /**
   * Ends the handle (jbd2 `jbd2_journal_stop`): it joins the running
   * transaction and waits for nothing; that transaction commits at the next
   * trigger (a flush request, its size limit, or the commit interval). The
   * promise resolves with its sequence once committed.
   */
  stop(): Promise<number> {
    assert(!this.finished, 'stop() on a finished handle');
    this.finished = true;
    return this.owner.stopHandle(this, false);
  }

  /** Ends the handle and requests a commit now; resolves once its transaction is durable and applied. */
  commit(): Promise<number> {
    assert(!this.finished, 'commit() on a finished handle');
    this.finished = true;
    return this.owner.stopHandle(this, true);
  }

  /** Drops the handle without committing anything; its credits are released. */
  abandon(): void {
    if (this.finished) return;
    this.finished = true;
    this.owner.releaseHandle(this);
  }
}
