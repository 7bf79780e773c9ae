import { pack } from 'msgpackr';
import { assert, type BlockDevice } from '@cowvol/base';
import { JournalCreditsExceededError } from './errors.js';
import type { BlockImage, Revocation } from './format.js';

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

/** The journal side a handle talks to. */
export interface HandleOwner {
  /** `force`: commit now (a flush request) rather than at the next size or interval trigger. */
  stopHandle(handle: Handle, force: boolean): Promise<number>;
  releaseHandle(handle: Handle): void;
}

/**
 * A handle (jbd2 `handle_t`): one atomic operation's share of the running
 * transaction. It starts with `credits` — the most items (records, block
 * images, revokes) it may log — reserved in the log at start. Everything it
 * logs is committed together, or not at all.
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

  private take(): void {
    assert(!this.finished, 'log on a finished handle');
    if (this.items >= this.credits) throw new JournalCreditsExceededError(`handle started with ${this.credits} credits; item ${this.items + 1} exceeds them`);
    this.items += 1;
  }

  /** Logs a logical record (any msgpackr-encodable value). @throws JOURNAL_CREDITS_EXCEEDED */
  log(record: unknown): void {
    this.take();
    const bytes = pack(record);
    assert(bytes.length <= this.blockBytes - 4, `a record must fit one journal block (${bytes.length} bytes)`);
    this.records.push(bytes);
    this.recordBytes += bytes.length;
  }

  /** Logs a full block image for `homeBlock` of `target` (a copy is taken now). @throws JOURNAL_CREDITS_EXCEEDED */
  logImage(target: number, homeBlock: number, data: Uint8Array): void {
    this.take();
    assert(data.length === this.blockBytes, `image of ${data.length} bytes; the journal block is ${this.blockBytes}`);
    assert(Number.isSafeInteger(homeBlock) && homeBlock >= 0 && target >= 0 && target < 0x10000, 'bad image home');
    this.images.push({ target, homeBlock, data: Buffer.from(data) });
  }

  /** Revokes `homeBlock` of `target`: older images of it are never replayed (jbd2 revoke). @throws JOURNAL_CREDITS_EXCEEDED */
  revoke(target: number, homeBlock: number): void {
    this.take();
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
