import { assert } from '@cowvol/base';
import { delOp, keys, putOp, SCHEMA_VERSION, type MetaOp } from './metadata.js';

/** A run of store blocks. */
export interface Extent {
  startBlock: number;
  lengthBlocks: number;
}

/**
 * Extent allocator for the snapshot store (docs/ARCHITECTURE.md §2).
 *
 * State: `highWaterBlocks` (blocks [0, highWater) have been handed out at
 * some time) and a sorted set of free extents below it. Allocation is
 * first-fit from the lowest free extent, so freed space is reused before the
 * store grows; only then does the high-water mark move.
 *
 * Two instances exist per volume. The *live* allocator hands out store
 * blocks to COWs in flight (in memory only; a cancelled COW frees its
 * reservation). The *committed* allocator mirrors LevelDB: it is changed
 * only by applying committed journal records, in commit order
 * (`allocateExact` for each new mapping, `free` for each unmapping), and
 * remembers which `free:<start>` keys its changes touched (and whether each
 * was a free extent before), so that `takeOps()` can hand the same LevelDB
 * batch one put or delete per touched key — the net change, not every
 * intermediate split (a run of adjacent mappings takes one extent apart
 * block by block, yet changes only two keys). A reservation that never commits is
 * therefore never persisted: nothing leaks across a crash (guarantee 6).
 * Freeing a block that is already free, or above the high-water mark, and
 * allocating one that is not free, are assertion failures (double use).
 *
 * Bound: the free set holds at most one extent per freed run; inserts are
 * O(free extents) (a sorted array), fine for the extent counts a delete
 * produces; an interval tree can replace it without changing the format.
 */
export class ExtentAllocator {
  private readonly starts: number[] = [];
  private readonly lengths = new Map<number, number>();
  /**
   * Committed allocator: free-extent starts inserted or removed since the
   * last `takeOps()`, each with whether it was a free extent (a `free:` key
   * in LevelDB) before. Bound: the starts one transaction touches.
   */
  private readonly touched = new Map<number, boolean>();
  private highWaterDirty = false;

  /** @param recordOps record LevelDB key operations for every change (the committed allocator). */
  constructor(
    public highWaterBlocks: number,
    freeExtents: Extent[] = [],
    private readonly recordOps = false,
  ) {
    for (const e of freeExtents) this.insert(e.startBlock, e.lengthBlocks);
    this.touched.clear(); // the loaded extents are what LevelDB holds
    for (let i = 1; i < this.starts.length; i++) {
      const prev = this.starts[i - 1]!;
      assert(prev + this.lengthOf(prev) < this.starts[i]!, 'free extents overlap or touch at load');
    }
    const last = this.starts.at(-1);
    assert(last === undefined || last + this.lengthOf(last) <= highWaterBlocks, 'free extent above high-water mark');
  }

  /** Blocks free below the high-water mark. */
  get freeBlocks(): number {
    let n = 0;
    for (const l of this.lengths.values()) n += l;
    return n;
  }

  /** Free extents, lowest first (copies). */
  extents(): Extent[] {
    return this.starts.map((s) => ({ startBlock: s, lengthBlocks: this.lengthOf(s) }));
  }

  /** Hands out `countBlocks` store blocks as one or more extents, lowest addresses first. */
  allocate(countBlocks: number): Extent[] {
    assert(Number.isSafeInteger(countBlocks) && countBlocks > 0, `allocate(${countBlocks})`);
    const out: Extent[] = [];
    let need = countBlocks;
    while (need > 0 && this.starts.length > 0) {
      const start = this.starts[0]!;
      const length = this.lengthOf(start);
      const take = Math.min(length, need);
      this.remove(start);
      if (take < length) this.insert(start + take, length - take);
      out.push({ startBlock: start, lengthBlocks: take });
      need -= take;
    }
    if (need > 0) {
      const start = this.highWaterBlocks;
      this.highWaterBlocks += need;
      this.highWaterDirty = true;
      out.push({ startBlock: start, lengthBlocks: need });
    }
    return out;
  }

  /** Returns an extent to the free set, merging with neighbours. */
  free(extent: Extent): void {
    const { startBlock, lengthBlocks } = extent;
    assert(lengthBlocks > 0 && startBlock >= 0 && startBlock + lengthBlocks <= this.highWaterBlocks, `free of ${startBlock}+${lengthBlocks} outside [0, ${this.highWaterBlocks})`);
    const i = this.lowerIndex(startBlock);
    // i = first free extent with start >= startBlock
    const next = this.starts[i];
    const prev = i > 0 ? this.starts[i - 1] : undefined;
    if (next !== undefined) assert(next >= startBlock + lengthBlocks, `double free: ${startBlock}+${lengthBlocks} overlaps free extent at ${next}`);
    const prevLength = prev === undefined ? 0 : this.lengthOf(prev);
    if (prev !== undefined) assert(prev + prevLength <= startBlock, `double free: ${startBlock}+${lengthBlocks} overlaps free extent at ${prev}`);
    let newStart = startBlock;
    let newLength = lengthBlocks;
    if (prev !== undefined && prev + prevLength === startBlock) {
      this.remove(prev);
      newStart = prev;
      newLength += prevLength;
    }
    if (next !== undefined && next === startBlock + lengthBlocks) {
      const nextLength = this.lengthOf(next);
      this.remove(next);
      newLength += nextLength;
    }
    this.insert(newStart, newLength);
  }

  /**
   * Takes one specific block out of the free space (the committed allocator
   * applying a mapping that the live allocator handed out). A block above
   * the high-water mark raises it, the gap becoming free (commits may land
   * in another order than their allocations). Asserts the block is free.
   */
  allocateExact(block: number): void {
    assert(Number.isSafeInteger(block) && block >= 0, `allocateExact(${block})`);
    if (block >= this.highWaterBlocks) {
      const gapStart = this.highWaterBlocks;
      this.highWaterBlocks = block + 1;
      this.highWaterDirty = true;
      if (block > gapStart) this.free({ startBlock: gapStart, lengthBlocks: block - gapStart });
      return;
    }
    const i = this.lowerIndex(block + 1) - 1;
    const start = i >= 0 ? this.starts[i]! : -1;
    const length = i >= 0 ? this.lengthOf(start) : 0;
    assert(i >= 0 && block < start + length, `double use: store block ${block} is already in use`);
    this.remove(start);
    if (block > start) this.insert(start, block - start);
    if (block + 1 < start + length) this.insert(block + 1, start + length - block - 1);
  }

  /** True when `block` is in a free extent (used by checks). */
  isFree(block: number): boolean {
    const i = this.lowerIndex(block + 1) - 1;
    if (i < 0) return false;
    const s = this.starts[i]!;
    return block < s + this.lengthOf(s);
  }

  /**
   * The LevelDB key operations that bring LevelDB from the state of the
   * last take to this one (empty unless constructed with `recordOps`): for
   * each touched free-extent start, a put of its current length if it is a
   * free extent now, else a delete if it was one before; then an `alloc`
   * put if the high-water mark moved. One operation per key, so their order
   * within a batch does not matter.
   */
  takeOps(): MetaOp[] {
    const ops: MetaOp[] = [];
    for (const [start, wasFree] of this.touched) {
      const length = this.lengths.get(start);
      if (length !== undefined) ops.push(putOp(keys.free(start), { v: SCHEMA_VERSION, lengthBlocks: length }));
      else if (wasFree) ops.push(delOp(keys.free(start)));
    }
    this.touched.clear();
    if (this.highWaterDirty && this.recordOps) ops.push(putOp(keys.allocator, { v: SCHEMA_VERSION, highWaterBlocks: this.highWaterBlocks }));
    this.highWaterDirty = false;
    return ops;
  }

  /** An independent copy with the same state (the live allocator starts as a copy of the committed one). */
  clone(recordOps = false): ExtentAllocator {
    return new ExtentAllocator(this.highWaterBlocks, this.extents(), recordOps);
  }

  /** Committed allocator: remember `start`'s key as changed, with whether it was a free extent before the first change. */
  private touch(start: number): void {
    if (this.recordOps && !this.touched.has(start)) this.touched.set(start, this.lengths.has(start));
  }

  /** The length of the free extent starting at `start`, which must be one (`starts` and `lengths` hold the same starts). */
  private lengthOf(start: number): number {
    const length = this.lengths.get(start);
    assert(length !== undefined, `free extent ${start} has no length`);
    return length;
  }

  private lowerIndex(block: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid]! < block) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private insert(start: number, length: number): void {
    assert(!this.lengths.has(start), `free extent ${start} inserted twice`);
    this.touch(start);
    this.starts.splice(this.lowerIndex(start), 0, start);
    this.lengths.set(start, length);
  }

  private remove(start: number): void {
    const i = this.lowerIndex(start);
    assert(this.starts[i] === start, `free extent ${start} missing`);
    this.touch(start);
    this.starts.splice(i, 1);
    this.lengths.delete(start);
  }
}
