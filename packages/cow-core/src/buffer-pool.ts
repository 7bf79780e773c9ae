import { assert } from '@cowvol/base';

/** Smallest pooled size class: 4 KiB (a block; smaller buffers come from Node's own 8 KiB pool). */
const MIN_CLASS_BYTES = 4096;
/** Largest pooled size class: 4 MiB (a COW run of one journal block's `mapx` record, a CLI write piece). */
const MAX_CLASS_BYTES = 4 * 1024 * 1024;
/** Bytes the free lists hold at most, all classes together (docs/ARCHITECTURE.md §3.4): a buffer given back past it is left to the garbage collector. */
export const BUFFER_POOL_MAX_BYTES = 32 * 1024 * 1024;
/** The byte a given-back buffer is filled with when poisoning is on: a use after `give` reads it instead of plausible data. */
const POISON_BYTE = 0xdb;

/**
 * Reusable I/O buffers for the write path's transient copies
 * (docs/ARCHITECTURE.md §3.4, "Buffer reuse"): the old content a COW reads
 * before it copies it to the store, and the write-back stage's private copy
 * of an overwrite. Each was a fresh `Buffer.allocUnsafe` of up to 4 MiB;
 * V8 counts such backing stores as external memory and answers a steady
 * stream of them with a full mark-compact every few tens of MiB — a fifth
 * of the CPU of a sequential first write after a snapshot
 * (docs/PERFORMANCE.md, "Buffer reuse").
 *
 * Sizes are rounded up to a power of two between 4 KiB and 4 MiB (larger
 * requests are plain allocations, never pooled); {@link take} hands out a
 * view of exactly the length asked for. Bounded: the free lists hold at
 * most `maxBytes`. Every buffer taken is tracked until given back, so a
 * foreign buffer, or a second `give` while the buffer is still free, is an
 * assertion failure (a second `give` after the pool handed it out again
 * looks like the new owner's: ownership rules prevent it, not this check). With `poison`, a buffer given back is filled with 0xdb, so a
 * use after `give` shows up as wrong bytes in tests (the suite turns it on
 * with `COWVOL_BUFFER_POOL_POISON=1`).
 */
export class BufferPool {
  /** Size class (bytes) → backing stores free for reuse, most recently given back last. */
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** Backing stores handed out by {@link take} and not yet given back (weak: one never given back is collected, not held). */
  private readonly taken = new WeakSet<ArrayBuffer>();
  private takenCount = 0;
  private freeBytes = 0;

  constructor(
    readonly maxBytes = BUFFER_POOL_MAX_BYTES,
    readonly poison = process.env.COWVOL_BUFFER_POOL_POISON === '1',
  ) {
    assert(Number.isSafeInteger(maxBytes) && maxBytes >= 0, 'buffer pool bound');
  }

  /** Buffers handed out and not yet given back (for tests and leak checks). */
  get outstanding(): number {
    return this.takenCount;
  }

  /** Bytes held in the free lists (at most `maxBytes`). */
  get pooledBytes(): number {
    return this.freeBytes;
  }

  /**
   * A buffer of exactly `lengthBytes` with arbitrary content (like
   * `Buffer.allocUnsafe`); the caller gives it back with {@link give} once
   * nothing refers to it any more. A buffer never given back is left to the
   * garbage collector (it still counts in {@link outstanding}).
   */
  take(lengthBytes: number): Buffer {
    assert(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0, 'buffer pool take of a bad length');
    const classBytes = sizeClass(lengthBytes);
    if (classBytes === 0) return Buffer.allocUnsafe(lengthBytes);
    let store = this.free.get(classBytes)?.pop();
    if (store === undefined) store = new ArrayBuffer(classBytes);
    else this.freeBytes -= classBytes;
    this.taken.add(store);
    this.takenCount += 1;
    return Buffer.from(store, 0, lengthBytes);
  }

  /**
   * Gives a buffer from {@link take} back. Only its owner calls it, once,
   * when no I/O, cache or reader refers to its bytes any more. Buffers that
   * were never pooled (outside the size classes) are ignored.
   * @throws ASSERTION_FAILED when the buffer is pooled-size but was not taken here, or was given back already
   */
  give(buffer: Buffer): void {
    const store = buffer.buffer;
    if (!(store instanceof ArrayBuffer) || sizeClass(buffer.length) === 0) return;
    assert(this.taken.delete(store), 'buffer given back to the pool twice, or not taken from it');
    this.takenCount -= 1;
    if (this.poison) new Uint8Array(store).fill(POISON_BYTE);
    const classBytes = store.byteLength;
    if (this.freeBytes + classBytes > this.maxBytes) return;
    let list = this.free.get(classBytes);
    if (!list) {
      list = [];
      this.free.set(classBytes, list);
    }
    list.push(store);
    this.freeBytes += classBytes;
  }
}

/** The pooled size class for `lengthBytes` (a power of two in [4 KiB, 4 MiB]), or 0 when it is not pooled. */
function sizeClass(lengthBytes: number): number {
  if (lengthBytes < MIN_CLASS_BYTES || lengthBytes > MAX_CLASS_BYTES) return 0;
  let classBytes = MIN_CLASS_BYTES;
  while (classBytes < lengthBytes) classBytes *= 2;
  return classBytes;
}
