import { type BlockDevice, assert } from '@cowvol/base';
import { Mutex } from 'async-mutex';
import { encodeSuperblock, slotOffset } from './format.js';
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

/**
 * The checkpoint (jbd2 `jbd2_log_do_checkpoint`; docs/ARCHITECTURE.md §5.3):
 * writes the newest images of every applied transaction home, syncs the
 * homes, runs the owner's `beforeTailMove`, then moves the tail (superblock
 * write and sync), freeing their log space. One at a time; a failure aborts
 * the journal.
 */
export class Checkpoint {
  private readonly lock = new Mutex();

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
        const home = this.options.targets.get(e.target);
        assert(home !== undefined, `no home device for target ${e.target}`);
        await home.write(e.homeBlock * s.blockSizeBytes, e.data);
        homes.add(home);
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
