import { assert, type BlockDevice } from '@cowvol/base';

/** Most bytes of store windows the cache holds (the bound; in-flight fills come on top, at most one window per store read in flight). */
export const STORE_CACHE_BYTES = 16 * 1024 * 1024;
/** Bytes of one window: the unit of readahead, eviction and invalidation (a multiple of the block size). */
export const STORE_WINDOW_BYTES = 128 * 1024;
/** Evictions (readahead on) or new ghost windows (readahead off) between two readahead decisions. */
export const READAHEAD_DECISION_EVENTS = 64;
/** Readahead pays when a window serves on average at least this many blocks besides the read that filled it. */
export const READAHEAD_MIN_HITS = 2;

/** Counters of a {@link StoreReadCache}. */
export interface StoreCacheStats {
  /** Blocks served from a cached window (or a fill started by another read). */
  hits: number;
  /** Windows read whole from the store file (readahead). */
  fills: number;
  /** Reads that went to the store file as asked (readahead off, long runs, fills invalidated meanwhile). */
  directReads: number;
  /** Cached windows dropped by a write or truncate of the store file (or a re-read). */
  invalidations: number;
  /** Re-reads from the file after a block served failed its checksum (`readFresh`). */
  rereads: number;
  /** Readahead on now (it turns off while windows are evicted unused, and back on when missed windows come back). */
  readahead: boolean;
  /** Windows cached now (a gauge, not a counter): at most `STORE_CACHE_BYTES / STORE_WINDOW_BYTES`. */
  cachedWindows: number;
}

/** A cached window: its bytes and how many blocks it served since it was filled. */
interface Window {
  data: Buffer;
  hits: number;
}

/** A window fill in flight; `valid` is cleared when a write touches the window meanwhile. */
interface Fill {
  valid: boolean;
  done: Promise<Buffer | undefined>;
}

/**
 * A bounded read cache over the snapshot store file, for snapshot reads:
 * the store blocks one snapshot read needs are often few and scattered (one
 * COW per random write), each costing one read call; reading the whole
 * `STORE_WINDOW_BYTES` window around a block instead (readahead) serves the
 * blocks next to it from memory when a later read needs them.
 *
 * - **Bounded**: at most `STORE_CACHE_BYTES` of windows, least recently used
 *   evicted first.
 * - **Never stale**: every write and truncate of the store file goes
 *   through {@link device}, which drops the cached windows it touches before
 *   and after the write and marks fills in flight over them invalid (an
 *   invalid fill is not cached, and its waiters read the file themselves).
 *   Every way a store block gets new content — a COW copy (`ordered` mode),
 *   a checkpoint or a recovery writing a journaled copy home (`journal`
 *   mode), the reuse of a freed block — is such a write, so the cache never
 *   needs to know about allocation or free. The journal's cached images are
 *   laid over what this cache returns by the caller (`HomeIo.readHomeInto`),
 *   exactly as over a file read.
 * - **Checked anyway**: callers verify each block against its CRC32C, and
 *   on a mismatch re-read it with {@link readFresh} (which drops the window)
 *   before reporting `STORE_CORRUPT`.
 * - **Adaptive**: when windows are evicted having served fewer than
 *   `READAHEAD_MIN_HITS` blocks on average (a random read over a store much
 *   larger than the cache), readahead turns off and misses read just their
 *   blocks; a ghost list of the windows missed since (ids only, at most as
 *   many as the cache holds) turns it back on when missed windows come back
 *   often enough.
 *
 * Offsets and lengths are in bytes of the store file and block-aligned.
 */
export class StoreReadCache {
  /** The store device to use for everything else: reads pass through, writes and truncates invalidate. */
  readonly device: BlockDevice;
  /** Readahead starts off: it turns on once missed windows come back (the ghost list), so a random read over a big store never pays for it. */
  readonly stats: StoreCacheStats = { hits: 0, fills: 0, directReads: 0, invalidations: 0, rereads: 0, readahead: false, cachedWindows: 0 };
  private readonly windowBytes: number;
  private readonly capacityWindows: number;
  /** Window index → window, least recently used first (Map order). */
  private readonly windows = new Map<number, Window>();
  private readonly fills = new Map<number, Fill>();
  /** Readahead off: windows missed recently (least recent first), at most `capacityWindows`. */
  private readonly ghosts = new Map<number, true>();
  /** Since the last readahead decision: evictions (on) or misses (off) … */
  private decisionEvents = 0;
  /** … windows filled and evicted (on) or missed for the first time recently (off) … */
  private decisionWindows = 0;
  /** … and the blocks those windows served (on) or would have served (off). */
  private decisionHits = 0;

  constructor(
    private readonly inner: BlockDevice,
    private readonly blockSizeBytes: number,
    capacityBytes = STORE_CACHE_BYTES,
    windowBytes = STORE_WINDOW_BYTES,
  ) {
    this.windowBytes = Math.max(windowBytes, blockSizeBytes);
    assert(this.windowBytes % blockSizeBytes === 0, `store window of ${this.windowBytes} bytes is not a multiple of the block size ${blockSizeBytes}`);
    this.capacityWindows = Math.max(1, Math.floor(capacityBytes / this.windowBytes));
    const invalidating = async (offsetBytes: number, lengthBytes: number, io: () => Promise<void>): Promise<void> => {
      this.invalidate(offsetBytes, lengthBytes);
      try {
        await io();
      } finally {
        this.invalidate(offsetBytes, lengthBytes);
      }
    };
    this.device = {
      name: inner.name,
      read: (offsetBytes, lengthBytes) => inner.read(offsetBytes, lengthBytes),
      readInto: (offsetBytes, into) => inner.readInto(offsetBytes, into),
      write: (offsetBytes, data) => invalidating(offsetBytes, data.length, () => inner.write(offsetBytes, data)),
      sync: () => inner.sync(),
      sizeBytes: () => inner.sizeBytes(),
      truncate: (sizeBytes) => invalidating(0, Number.MAX_SAFE_INTEGER, () => inner.truncate(sizeBytes)),
      close: () => inner.close(),
    };
    const innerWriteSync = inner.writeSync?.bind(inner);
    if (innerWriteSync !== undefined) {
      // The synchronous write invalidates like the others; no fill can start while it runs.
      this.device.writeSync = (offsetBytes, data) => {
        this.invalidate(offsetBytes, data.length);
        innerWriteSync(offsetBytes, data);
      };
    }
  }

  /**
   * Reads `into.length` bytes at `offsetBytes` of the store file into
   * `into`: from cached windows where it can, else from the file (filling
   * the window when readahead is on). Runs of a window or more go to the
   * file directly. @throws IO_ERROR
   */
  readInto(offsetBytes: number, into: Uint8Array): Promise<void> {
    const lengthBytes = into.length;
    assert(offsetBytes % this.blockSizeBytes === 0 && lengthBytes % this.blockSizeBytes === 0, `unaligned store read ${offsetBytes}+${lengthBytes}`);
    if (lengthBytes === 0) return Promise.resolve();
    const W = this.windowBytes;
    if (lengthBytes >= W) {
      this.stats.directReads += 1;
      return this.inner.readInto(offsetBytes, into);
    }
    const window = Math.floor(offsetBytes / W);
    if (offsetBytes + lengthBytes <= (window + 1) * W) return this.readPiece(window, offsetBytes - window * W, into); // the common case: one window
    return this.readPieces(offsetBytes, into);
  }

  /** A read across window boundaries, window by window. */
  private async readPieces(offsetBytes: number, into: Uint8Array): Promise<void> {
    const W = this.windowBytes;
    for (let at = 0; at < into.length;) {
      const offset = offsetBytes + at;
      const window = Math.floor(offset / W);
      const n = Math.min(into.length - at, (window + 1) * W - offset);
      await this.readPiece(window, offset - window * W, into.subarray(at, at + n));
      at += n;
    }
  }

  /** Whether {@link readIntoSync} is available: the store file's device reads synchronously (`BlockDevice.readIntoSync`). */
  get syncReads(): boolean {
    return this.inner.readIntoSync !== undefined;
  }

  /**
   * `readInto`, synchronously on the calling thread, with the same policy:
   * a cached window serves the piece; a miss inside one window fills it
   * (one synchronous read of the window) while readahead is on, else counts
   * toward turning it on (the ghost list) and reads just the piece. Only
   * when {@link syncReads}. @throws IO_ERROR
   */
  readIntoSync(offsetBytes: number, into: Uint8Array): void {
    const lengthBytes = into.length;
    assert(this.inner.readIntoSync !== undefined, `store device ${this.inner.name} has no synchronous read`);
    assert(offsetBytes % this.blockSizeBytes === 0 && lengthBytes % this.blockSizeBytes === 0, `unaligned store read ${offsetBytes}+${lengthBytes}`);
    const W = this.windowBytes;
    const window = Math.floor(offsetBytes / W);
    const at = offsetBytes - window * W;
    if (lengthBytes > 0 && at + lengthBytes <= W) {
      const cached = this.windows.get(window);
      if (cached) {
        this.windows.delete(window); // most recently used
        this.windows.set(window, cached);
        cached.data.copy(into, 0, at, at + lengthBytes);
        this.hit(cached, lengthBytes / this.blockSizeBytes);
        return;
      }
      if (!this.fills.has(window) && this.wantsFill(window, lengthBytes / this.blockSizeBytes)) {
        this.stats.fills += 1;
        const data = Buffer.allocUnsafe(W); // the device fills every byte (zeros past the end of the file)
        this.inner.readIntoSync(window * W, data);
        this.insert(window, { data, hits: 0 }); // nothing ran meanwhile: no write can have touched the window
        data.copy(into, 0, at, at + lengthBytes);
        return;
      }
    }
    this.stats.directReads += 1;
    this.inner.readIntoSync(offsetBytes, into);
  }

  /** Reads from the file, dropping the cached windows of the range first (a block served failed its checksum). @throws IO_ERROR */
  async readFresh(offsetBytes: number, into: Uint8Array): Promise<void> {
    this.stats.rereads += 1;
    this.invalidate(offsetBytes, into.length);
    await this.inner.readInto(offsetBytes, into);
  }

  /** `into.length` bytes at `at` of window `window` (one window). */
  private readPiece(window: number, at: number, into: Uint8Array): Promise<void> {
    const blocks = into.length / this.blockSizeBytes;
    const cached = this.windows.get(window);
    if (cached) {
      this.windows.delete(window); // most recently used: to the end of the LRU order
      this.windows.set(window, cached);
      cached.data.copy(into, 0, at, at + into.length);
      this.hit(cached, blocks);
      return Promise.resolve();
    }
    const fill = this.fills.get(window);
    if (fill) return this.fromFill(fill, window, at, into, false);
    if (this.wantsFill(window, blocks)) return this.fromFill(this.fill(window), window, at, into, true);
    this.stats.directReads += 1;
    return this.inner.readInto(window * this.windowBytes + at, into);
  }

  /** The piece from a fill in flight (`mine`: this read started it); from the file when the fill failed or was overtaken by a write. */
  private async fromFill(fill: Fill, window: number, at: number, into: Uint8Array, mine: boolean): Promise<void> {
    const data = await fill.done;
    if (data) {
      data.copy(into, 0, at, at + into.length);
      const entry = this.windows.get(window);
      if (!mine && entry) this.hit(entry, into.length / this.blockSizeBytes);
      return;
    }
    this.stats.directReads += 1;
    await this.inner.readInto(window * this.windowBytes + at, into);
  }

  private hit(entry: Window, blocks: number): void {
    entry.hits += blocks;
    this.stats.hits += blocks;
  }

  /** Starts reading window `window` whole; it is cached when it arrives unless a write touched it meanwhile. */
  private fill(window: number): Fill {
    this.stats.fills += 1;
    const data = Buffer.allocUnsafe(this.windowBytes); // the device fills every byte (zeros past the end of the file)
    const fill: Fill = { valid: true, done: Promise.resolve(undefined) };
    fill.done = (async () => {
      try {
        await this.inner.readInto(window * this.windowBytes, data);
      } catch {
        return undefined; // each waiter reads its own piece and reports the error
      } finally {
        this.fills.delete(window);
      }
      if (!fill.valid) return undefined;
      this.insert(window, { data, hits: 0 });
      return data;
    })();
    this.fills.set(window, fill);
    return fill;
  }

  private insert(window: number, entry: Window): void {
    this.windows.set(window, entry);
    // Oldest first: a Map iterates in insertion order, and deleting the entry being visited is safe.
    for (const [oldest, evicted] of this.windows) {
      if (this.windows.size <= this.capacityWindows) break;
      this.windows.delete(oldest);
      this.count(evicted.hits);
    }
    this.stats.cachedWindows = this.windows.size;
  }

  /**
   * Whether a miss of `blocks` blocks in `window` should fill it: yes while
   * readahead is on; while it is off, the miss is recorded in the ghost list
   * (a miss of a window missed recently would have been a hit).
   */
  private wantsFill(window: number, blocks: number): boolean {
    if (this.stats.readahead) return true;
    if (this.ghosts.delete(window)) this.decisionHits += blocks;
    else this.decisionWindows += 1;
    this.decisionEvents += 1;
    this.ghosts.set(window, true);
    if (this.ghosts.size > this.capacityWindows) {
      const oldest = this.ghosts.keys().next();
      if (oldest.done !== true) this.ghosts.delete(oldest.value);
    }
    this.decide();
    return false;
  }

  /** Readahead on: one evicted window that served `hits` blocks. */
  private count(hits: number): void {
    this.decisionEvents += 1;
    this.decisionWindows += 1;
    this.decisionHits += hits;
    this.decide();
  }

  /** After `READAHEAD_DECISION_EVENTS` events: readahead on when windows served (or would have served) enough blocks each. */
  private decide(): void {
    if (this.decisionEvents < READAHEAD_DECISION_EVENTS) return;
    const on = this.decisionHits >= READAHEAD_MIN_HITS * Math.max(1, this.decisionWindows);
    if (on !== this.stats.readahead) this.ghosts.clear();
    this.stats.readahead = on;
    this.decisionEvents = 0;
    this.decisionWindows = 0;
    this.decisionHits = 0;
  }

  /** Drops the cached windows that overlap [offsetBytes, offsetBytes + lengthBytes) and invalidates fills in flight over them. */
  private invalidate(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes <= 0) return;
    const W = this.windowBytes;
    const first = Math.floor(offsetBytes / W);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / W);
    if (last - first + 1 > this.windows.size + this.fills.size) {
      // Long range (a truncate): visit what is cached rather than every window of the range.
      for (const window of [...this.windows.keys()]) if (window >= first && window <= last) this.drop(window);
      for (const [window, fill] of this.fills) if (window >= first && window <= last) fill.valid = false;
      return;
    }
    for (let window = first; window <= last; window++) {
      this.drop(window);
      const fill = this.fills.get(window);
      if (fill) fill.valid = false;
    }
  }

  private drop(window: number): void {
    if (!this.windows.delete(window)) return;
    this.stats.invalidations += 1;
    this.stats.cachedWindows = this.windows.size;
  }
}
