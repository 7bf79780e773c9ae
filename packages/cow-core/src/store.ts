import { assert, crc32c, UnsupportedVersionError, type BlockDevice } from '@cowvol/base';
import { CorruptMetadataError, StoreCorruptError } from './errors.js';
import { StoreReadCache } from './store-read-cache.js';
import { SYNC_MAX_BYTES, SyncIoPolicy } from './sync-io-policy.js';

/**
 * The snapshot store file (docs/FORMAT.md, "Store file"): a header in its
 * first `blockSizeBytes`, then store block p at byte (p + 1) × blockSizeBytes.
 *
 * Header (big-endian):
 *   0  u32  magic 'CVST' (0x43565354)
 *   4  u32  version (1)
 *   8  16B  volume uuid (must match the metadata's)
 *  24  u32  blockSizeBytes
 *  28  u32  CRC32C of bytes 0..27
 */
export const STORE_MAGIC = 0x43565354;
export const STORE_VERSION = 1;

/** Most queued writes one batch takes. */
const MAX_COMBINED_WRITES = 256;
/** Writes up to this size are combined with their neighbours… */
const COMBINE_MAX_BYTES = 64 * 1024;
/** …into runs of at most this many bytes (bounds the copy a combined write makes). */
const COMBINED_RUN_MAX_BYTES = 1024 * 1024;

interface StoreWrite {
  storeBlock: number;
  data: Buffer;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/**
 * The snapshot store: its file, and the snapshot reads' cache of store
 * windows in front of it (store-read-cache.ts), which the store owns so
 * that every write invalidates what it touches (docs/ARCHITECTURE.md §4.3.1).
 */
export class SnapshotStore {
  private readonly queued: StoreWrite[] = [];
  private writing = false;
  /** The snapshot reads' cache of store windows. */
  readonly cache: StoreReadCache;
  /**
   * The store file as every writer must see it: the cache's device, whose
   * writes drop the cached windows they touch (the journal's checkpoint
   * and ordered-data sync go through it too).
   */
  readonly device: BlockDevice;
  /** When small store writes (a COW's copy) are done synchronously (docs/ARCHITECTURE.md §4.14). */
  readonly writes = new SyncIoPolicy();

  /**
   * @param file the store file, as opened (the store wraps it; close `device`, not `file`)
   * @param blockSizeBytes the volume's block size
   */
  constructor(
    file: BlockDevice,
    readonly blockSizeBytes: number,
  ) {
    this.cache = new StoreReadCache(file, blockSizeBytes);
    this.device = this.cache.device;
  }

  static header(uuid: Buffer, blockSizeBytes: number): Buffer {
    const buf = Buffer.alloc(blockSizeBytes);
    buf.writeUInt32BE(STORE_MAGIC, 0);
    buf.writeUInt32BE(STORE_VERSION, 4);
    uuid.copy(buf, 8);
    buf.writeUInt32BE(blockSizeBytes, 24);
    buf.writeUInt32BE(crc32c(buf.subarray(0, 28)), 28);
    return buf;
  }

  /** Validates the header against the volume's identity. Throws `STORE_CORRUPT` (no store header, or another volume's), `UNSUPPORTED_VERSION` or `CORRUPT_METADATA` (header checksum, block size). */
  async verifyHeader(uuid: Buffer): Promise<void> {
    const buf = await this.device.read(0, 32);
    // The metadata named this file as the volume's store: a wrong header is a damaged store, not "not a volume".
    if (buf.length < 32 || buf.readUInt32BE(0) !== STORE_MAGIC) throw new StoreCorruptError(`${this.device.name} is not a cowvol snapshot store (header missing or overwritten)`);
    if (buf.readUInt32BE(4) !== STORE_VERSION) throw new UnsupportedVersionError(`${this.device.name}: store version ${buf.readUInt32BE(4)} unknown`);
    if (buf.readUInt32BE(28) !== crc32c(buf.subarray(0, 28))) throw new CorruptMetadataError(`${this.device.name}: store header checksum mismatch`);
    if (!buf.subarray(8, 24).equals(uuid)) throw new StoreCorruptError(`${this.device.name} belongs to another volume (uuid mismatch)`);
    if (buf.readUInt32BE(24) !== this.blockSizeBytes) throw new CorruptMetadataError(`${this.device.name}: store block size ${buf.readUInt32BE(24)} differs from the volume's ${this.blockSizeBytes}`);
  }

  offsetOf(storeBlock: number): number {
    return (storeBlock + 1) * this.blockSizeBytes;
  }

  /** Reads `countBlocks` consecutive store blocks. */
  read(storeBlock: number, countBlocks: number): Promise<Buffer> {
    return this.device.read(this.offsetOf(storeBlock), countBlocks * this.blockSizeBytes);
  }

  /**
   * Writes whole blocks starting at `storeBlock`. Concurrent writes are
   * combined: while one batch is being written, new writes queue; the next
   * batch writes each run of queued writes consecutive in the store with one
   * write call (concurrent COWs get consecutive store blocks from the
   * allocator, so 16 writers of 4 KiB copies become one 64 KiB write). A
   * failed write fails every request of its run, and only those. A write
   * of at most `SYNC_MAX_BYTES` is instead made synchronously, alone, when
   * the device offers `writeSync` and {@link writes} allows it (§4.14).
   * @throws IO_ERROR, NO_SPACE (as the device reports them)
   */
  async write(storeBlock: number, data: Buffer): Promise<void> {
    assert(data.length > 0 && data.length % this.blockSizeBytes === 0, 'store writes are whole blocks');
    const { device } = this;
    if (data.length <= SYNC_MAX_BYTES && device.writeSync !== undefined) {
      if (this.writes.trySync()) {
        this.writes.run(() => device.writeSync?.(this.offsetOf(storeBlock), data)); // a throw rejects this call's promise
        return;
      }
      this.writes.noteAsync();
    }
    return new Promise<void>((resolve, reject) => {
      this.queued.push({ storeBlock, data, resolve, reject });
      if (!this.writing) void this.writeQueued();
    });
  }

  /** Writes queued by `write`, batch after batch, until the queue is empty. */
  private async writeQueued(): Promise<void> {
    this.writing = true;
    try {
      while (this.queued.length > 0) {
        const batch = this.queued.splice(0, MAX_COMBINED_WRITES).sort((a, b) => a.storeBlock - b.storeBlock);
        const runs: StoreWrite[][] = [];
        let runBytes = 0;
        for (const w of batch) {
          const run = runs.at(-1);
          const prev = run?.at(-1);
          // Only small writes are combined (a large one gains nothing from a copy into a bigger buffer).
          const joins =
            run &&
            prev &&
            prev.storeBlock + prev.data.length / this.blockSizeBytes === w.storeBlock &&
            w.data.length <= COMBINE_MAX_BYTES &&
            prev.data.length <= COMBINE_MAX_BYTES &&
            runBytes + w.data.length <= COMBINED_RUN_MAX_BYTES;
          if (joins) {
            run.push(w);
            runBytes += w.data.length;
          } else {
            runs.push([w]);
            runBytes = w.data.length;
          }
        }
        await Promise.all(
          runs.map(async (run) => {
            try {
              await this.device.write(this.offsetOf(run[0]!.storeBlock), run.length === 1 ? run[0]!.data : Buffer.concat(run.map((w) => w.data)));
              for (const w of run) w.resolve();
            } catch (err) {
              for (const w of run) w.reject(err);
            }
          }),
        );
      }
    } finally {
      this.writing = false;
    }
  }
}
