import { crc32c as nativeCrc32c } from '@node-rs/crc32';

/**
 * CRC32C (Castagnoli), the checksum jbd2 uses for checksum v3, via
 * `@node-rs/crc32` (hardware-accelerated). `seed` chains a running value, so
 * `crc32c(b, crc32c(a)) === crc32c(a ++ b)`.
 */
export function crc32c(data: Uint8Array, seed = 0): number {
  return nativeCrc32c(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength), seed) >>> 0;
}
