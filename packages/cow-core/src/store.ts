import type { BlockDevice } from '@cowvol/journal';
import { crc32c } from '@cowvol/journal';
import { CorruptMetadataError, NotAVolumeError, UnsupportedVersionError } from './errors.js';
import type { StoreReadCache } from './store-read-cache.js';

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

export class SnapshotStore {
  /**
   * @param device the store file; writes must go through `cache.device` (or
   *   be `cache.device`) so that they invalidate the cache
   * @param cache the snapshot reads' cache of store windows (store-read-cache.ts)
   */
  constructor(readonly device: BlockDevice, readonly blockSizeBytes: number, readonly cache: StoreReadCache) {}

  static header(uuid: Buffer, blockSizeBytes: number): Buffer {
    const buf = Buffer.alloc(blockSizeBytes);
    buf.writeUInt32BE(STORE_MAGIC, 0);
    buf.writeUInt32BE(STORE_VERSION, 4);
    uuid.copy(buf, 8);
    buf.writeUInt32BE(blockSizeBytes, 24);
    buf.writeUInt32BE(crc32c(buf.subarray(0, 28)), 28);
    return buf;
  }

  /** Validates the header against the volume's identity. Throws `NOT_A_VOLUME`, `UNSUPPORTED_VERSION` or `CORRUPT_METADATA`. */
  async verifyHeader(uuid: Buffer): Promise<void> {
    const buf = await this.device.read(0, 32);
    if (buf.readUInt32BE(0) !== STORE_MAGIC) throw new NotAVolumeError(`${this.device.name} is not a cowvol snapshot store`);
    if (buf.readUInt32BE(4) !== STORE_VERSION) throw new UnsupportedVersionError(`${this.device.name}: store version ${buf.readUInt32BE(4)} unknown`);
    if (buf.readUInt32BE(28) !== crc32c(buf.subarray(0, 28))) throw new CorruptMetadataError(`${this.device.name}: store header checksum mismatch`);
    if (!buf.subarray(8, 24).equals(uuid)) throw new NotAVolumeError(`${this.device.name} belongs to another volume (uuid mismatch)`);
    if (buf.readUInt32BE(24) !== this.blockSizeBytes) throw new CorruptMetadataError(`${this.device.name}: store block size ${buf.readUInt32BE(24)} differs from the volume's ${this.blockSizeBytes}`);
  }

  offsetOf(storeBlock: number): number {
    return (storeBlock + 1) * this.blockSizeBytes;
  }

  /** Reads `countBlocks` consecutive store blocks. */
  read(storeBlock: number, countBlocks: number): Promise<Buffer> {
    return this.device.read(this.offsetOf(storeBlock), countBlocks * this.blockSizeBytes);
  }

  /** Writes whole blocks starting at `storeBlock`. */
  write(storeBlock: number, data: Buffer): Promise<void> {
    return this.device.write(this.offsetOf(storeBlock), data);
  }

  sync(): Promise<void> {
    return this.device.sync();
  }
}
