import { type BlockDevice, assert } from '@cowvol/base';
import { Mutex } from 'async-mutex';
import { encodeSuperblock, revokeKey, slotOffset, type Revocation } from './format.js';
import type { CachedImage } from './image-cache.js';
import type { LogState } from './log-state.js';

/** What the checkpoint needs besides the journal's state. */
export interface CheckpointOptions {
  /** Home devices of block images, by target id. */
  targets: ReadonlyMap<number, BlockDevice>;
  /** Makes the owner's own state durable up to `sequence` before the tail moves past it. */
  beforeTailMove: (sequence: number) => Promise<void>;
  /** Start a background checkpoint when the log is this full (0–1). */
  checkpointFill: number;
  readOnly: boolean;
}

/** The one home write a checkpoint has in flight. */
interface HomeWrite {
  key: string;
  /** Settles (never rejects) when the write has reached the device. */
  settled: Promise<void>;
}

/**
 * The checkpoint (jbd2 `jbd2_log_do_checkpoint`; docs/ARCHITECTURE.md §5.3):
 * writes the newest images of every applied transaction home, syncs the
 * homes, runs the owner's `beforeTailMove`, then moves the tail (superblock
 * write and sync), freeing their log space. One at a time; a failure aborts
 * the journal.
 *
 * A block revoked (or imaged anew) while the checkpoint runs leaves it, as
 * a revoked buffer leaves jbd2's checkpoint list: each home write is issued
 * only if the image cache still holds the captured entry, in the same
 * synchronous step as that test, and a commit that revokes the block of the
 * one write in flight waits for it before it resolves
 * ({@link Checkpoint.homeWriteSettled}). So no captured image lands over a
 * write the owner makes to a revoked block after the revoke committed.
 */
export class Checkpoint {
  private readonly lock = new Mutex();
  private inFlight: HomeWrite | undefined;

  constructor(
    private readonly state: LogState,
    private readonly options: CheckpointOptions,
  ) {}

  /**
   * Checkpoints every transaction applied when it runs. Serialized: a call
   * never returns the result of an older, narrower one.
   * @throws JOURNAL_ABORTED, IO_ERROR, NO_SPACE, whatever `beforeTailMove` throws (these abort the journal)
   */
  run(): Promise<void> {
    return this.lock.runExclusive(() => this.checkpointApplied());
  }

  /** Starts a background checkpoint when the log is fuller than `checkpointFill` and none runs; its failure aborts the journal, and the next call reports it. */
  startIfFull(): void {
    if (this.state.usedBlocks > this.state.dataBlocks * this.options.checkpointFill && !this.lock.isLocked()) {
      // Background: writers are not blocked by it unless the log is full.
      void this.run().catch(() => undefined);
    }
  }

  /**
   * The home write in flight, if its block is among `revokes`: a commit that
   * publishes those revokes waits for it before its handles' commits
   * resolve, so the owner's writes to the revoked blocks land after it
   * (docs/ARCHITECTURE.md §5.3). Undefined when there is nothing to wait for.
   * The promise never rejects: a failed write aborts the journal through the checkpoint.
   */
  homeWriteSettled(revokes: readonly Revocation[]): Promise<void> | undefined {
    const w = this.inFlight;
    if (w === undefined || !revokes.some((r) => revokeKey(r.target, r.homeBlock) === w.key)) return undefined;
    return w.settled;
  }

  /** True while a home write of one of `revokes`' blocks is in flight (must never be, once a revoking commit waited: §5.3). */
  isWritingHome(revokes: readonly Revocation[]): boolean {
    return this.homeWriteSettled(revokes) !== undefined;
  }

  /** Resolves once no checkpoint runs. */
  waitIdle(): Promise<void> {
    return this.lock.waitForUnlock();
  }

  private async checkpointApplied(): Promise<void> {
    const s = this.state;
    s.checkUsable();
    assert(!this.options.readOnly, 'checkpoint of a read-only journal');
    const n = s.lastAppliedSequence;
    const [oldest] = s.committed;
    if (oldest === undefined || oldest.sequence > n) return;
    try {
      // Frozen copies: the buffers captured here are written; newer images replace cache entries, never these buffers.
      const captured = s.images.capture(n);
      const homes = new Set<BlockDevice>();
      for (const e of captured) {
        const home = await this.writeHome(e);
        if (home) homes.add(home);
      }
      for (const home of homes) await home.sync();
      await this.options.beforeTailMove(n);
      await this.moveTail(n);
      s.images.forget(captured);
      s.stats.checkpoints += 1;
    } catch (err) {
      s.abort(err);
      throw err;
    }
    s.wakeSpaceWaiters();
  }

  /**
   * Writes one captured image home, unless the cache no longer holds it
   * (revoked or replaced since the capture: the newer state is in the log
   * after `n`, or the block is the owner's again). The test and the issue
   * of the write are one synchronous step, and the write is published as
   * in flight in that step too (docs/ARCHITECTURE.md §5.3).
   * @returns the home device written, or undefined when skipped
   */
  private async writeHome(e: CachedImage): Promise<BlockDevice | undefined> {
    const s = this.state;
    if (!s.images.holds(e)) return undefined;
    const home = this.options.targets.get(e.target);
    assert(home !== undefined, `no home device for target ${e.target}`);
    assert(this.inFlight === undefined, 'two checkpoint home writes in flight');
    const write = home.write(e.homeBlock * s.blockSizeBytes, e.data);
    this.inFlight = { key: revokeKey(e.target, e.homeBlock), settled: write.then(noop, noop) };
    try {
      await write;
    } finally {
      this.inFlight = undefined;
    }
    return home;
  }

  /** Writes and syncs the superblock whose tail is the first transaction after `n`, then frees the log space of those ≤ `n`. */
  private async moveTail(n: number): Promise<void> {
    const s = this.state;
    const after = s.committed.find((c) => c.sequence > n);
    const tailBlock = after ? after.startBlock : s.headBlock;
    const tailSequence = after ? after.sequence : s.nextSequence;
    const generation = (s.generation + 1) >>> 0;
    const sb = { generation, uuid: s.uuid, blockSizeBytes: s.blockSizeBytes, lengthBlocks: s.lengthBlocks, tailSequence, tailBlock };
    await s.device.write(slotOffset(generation), encodeSuperblock(sb));
    await s.device.sync();
    s.generation = generation;
    s.stats.syncs += 1;
    for (let done = s.committed[0]; done !== undefined && done.sequence <= n; done = s.committed[0]) {
      s.committed.shift();
      done.advance('checkpointed');
      s.usedBlocks -= done.blocks;
    }
    s.tailBlock = tailBlock;
    s.tailSequence = tailSequence;
  }
}

function noop(): void {
  // A settled promise's value is not needed.
}
