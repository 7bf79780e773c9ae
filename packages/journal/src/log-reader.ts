import type { BlockDevice } from '@cowvol/base';
import { JournalCorruptError } from './errors.js';

/**
 * Default read-ahead of one {@link LogReader}: 4 MiB per device read, the
 * bound of the reader's own memory (one window buffer, refilled in place
 * with `readInto`).
 */
export const LOG_WINDOW_BYTES = 4 * 1024 * 1024;

/** Geometry of the circular log (journal superblock fields). */
export interface LogGeometry {
  blockSizeBytes: number;
  /** Total blocks in the file, superblock area included. */
  lengthBlocks: number;
  /** First log block (after the superblock area). */
  firstBlock: number;
}

/**
 * Sequential reader of the circular log for recovery (jbd2 reads the log
 * with read-ahead in do_one_pass; this is its window). Hands out log blocks
 * by block number from a read-ahead window of at most `windowBytes`, filled
 * with one device read starting at the block asked for whenever that block
 * is outside the window. The window never wraps: at the end of the file it
 * is shorter, and the block after `lengthBlocks − 1` is `firstBlock` (the
 * caller's `next()`), which starts a new window.
 *
 * Blocks are views into the window, valid until the next `block()` call:
 * the one window buffer is refilled in place with `readInto` (no garbage
 * per window). Copy what must outlive that. Reading
 * ahead past the end of the log reads stale or zero blocks, which is
 * harmless: recovery only reads.
 */
export class LogReader {
  private window: Buffer = Buffer.alloc(0);
  /** The reused window buffer; empty until the first fill. */
  private buffer: Buffer = Buffer.alloc(0);
  /** Block number of the window's first block. */
  private windowStart = 0;
  private windowBlocks = 0;
  private readonly maxWindowBlocks: number;

  /** @param windowBytes read-ahead, in bytes (rounded down to whole blocks, at least one) */
  constructor(
    private readonly device: BlockDevice,
    private readonly geometry: LogGeometry,
    windowBytes = LOG_WINDOW_BYTES,
  ) {
    this.maxWindowBlocks = Math.max(1, Math.floor(windowBytes / geometry.blockSizeBytes));
  }

  get blockSizeBytes(): number {
    return this.geometry.blockSizeBytes;
  }

  /** The block after `b` in the circular log. */
  next(b: number): number {
    return b + 1 >= this.geometry.lengthBlocks ? this.geometry.firstBlock : b + 1;
  }

  /**
   * Log block `b` (a view of `blockSizeBytes` into the window).
   * @throws IO_ERROR from the device; JOURNAL_CORRUPT if `b` is not a log block or the device returns a short read
   */
  async block(b: number): Promise<Buffer> {
    const { blockSizeBytes: bs, lengthBlocks, firstBlock } = this.geometry;
    if (!Number.isInteger(b) || b < firstBlock || b >= lengthBlocks) {
      throw new JournalCorruptError(`${this.device.name}: block ${b} is outside the log [${firstBlock}, ${lengthBlocks})`);
    }
    if (b < this.windowStart || b >= this.windowStart + this.windowBlocks) {
      const blocks = Math.min(this.maxWindowBlocks, lengthBlocks - b);
      // One buffer for the reader's life, as large as a window can get.
      if (this.buffer.length === 0) this.buffer = Buffer.allocUnsafe(Math.min(this.maxWindowBlocks, lengthBlocks - firstBlock) * bs);
      const data = this.buffer.subarray(0, blocks * bs);
      this.windowBlocks = 0; // the old window is gone even if the read fails
      await this.device.readInto(b * bs, data);
      if (data.length !== blocks * bs) {
        throw new JournalCorruptError(`${this.device.name}: read of ${blocks * bs} bytes at block ${b} returned ${data.length}`);
      }
      this.window = data;
      this.windowStart = b;
      this.windowBlocks = blocks;
    }
    const at = (b - this.windowStart) * bs;
    return this.window.subarray(at, at + bs);
  }
}
