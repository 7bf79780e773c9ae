import { assert, crc32c } from '@cowvol/base';

/**
 * The checksum of a store block, bound to its mapping (docs/FORMAT.md §4.2,
 * docs/ARCHITECTURE.md "Store block checksums"): the CRC32C of a 20-byte
 * identity prefix followed by the block's `blockSizeBytes` data bytes.
 *
 * | offset | size | field                                   |
 * | ------ | ---- | --------------------------------------- |
 * | 0      | 4    | snapshot id that owns the copy (u32 BE)  |
 * | 4      | 8    | volume block number (u64 BE)             |
 * | 12     | 8    | store block number (u64 BE)              |
 *
 * A mapping whose key or value names another block, snapshot or store block
 * than the one the copy was made for (a misdirected write, a flipped byte in
 * LevelDB) fails the check even when the data itself is intact.
 */
export const STORE_CRC_PREFIX_BYTES = 20;

/** Which mapping a store block belongs to: `map:<snapshotId>:<volumeBlock>` → `storeBlock`. */
export interface StoreBlockIdentity {
  snapshotId: number;
  volumeBlock: number;
  storeBlock: number;
}

/** The identity prefix of a store block checksum (table above), written into `into` (a fresh buffer by default). */
export function storeCrcPrefix(id: StoreBlockIdentity, into: Buffer = Buffer.allocUnsafe(STORE_CRC_PREFIX_BYTES)): Buffer {
  assert(Number.isSafeInteger(id.snapshotId) && id.snapshotId >= 0 && id.snapshotId <= 0xffffffff, `snapshot id ${id.snapshotId}`);
  assert(Number.isSafeInteger(id.volumeBlock) && id.volumeBlock >= 0, `volume block ${id.volumeBlock}`);
  assert(Number.isSafeInteger(id.storeBlock) && id.storeBlock >= 0, `store block ${id.storeBlock}`);
  into.writeUInt32BE(id.snapshotId, 0);
  writeU64(into, id.volumeBlock, 4);
  writeU64(into, id.storeBlock, 12);
  return into;
}

/** A safe integer as a u64 BE at `at` (no BigInt: this is on every store read). */
function writeU64(buf: Buffer, n: number, at: number): void {
  buf.writeUInt32BE(Math.floor(n / 0x1_0000_0000), at);
  buf.writeUInt32BE(n % 0x1_0000_0000, at + 4);
}

/** Scratch prefix of `storeBlockCrc` (used synchronously, never across an await). */
const scratch = Buffer.alloc(STORE_CRC_PREFIX_BYTES);

/** CRC32C (reflected polynomial 0x82F63B78) byte table, for the short prefix. */
const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/**
 * CRC32C of a few bytes, in JavaScript: the same value as `crc32c(bytes)`
 * without a native call, whose fixed cost is as large as a whole block's CRC.
 */
function shortCrc32c(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of bytes) c = TABLE[(c ^ byte) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * CRC32C of `storeCrcPrefix(id) ‖ data`: the `crc` of a `map:` record.
 * `data` is the block's bytes (one whole block).
 */
export function storeBlockCrc(id: StoreBlockIdentity, data: Uint8Array): number {
  return crc32c(data, shortCrc32c(storeCrcPrefix(id, scratch)));
}

/** CRC32C of `prefix + blockSizeBytes` zero bytes, per block size (a constant of the rebind). */
const zeroCrcs = new Map<number, number>();
/** `blockSizeBytes` zero bytes, per block size. */
const zeroBlocks = new Map<number, Buffer>();

function zeroBlock(blockSizeBytes: number): Buffer {
  let zeros = zeroBlocks.get(blockSizeBytes);
  if (!zeros) {
    zeros = Buffer.alloc(blockSizeBytes);
    zeroBlocks.set(blockSizeBytes, zeros);
  }
  return zeros;
}

/**
 * The checksum the same data has under another identity, computed from the
 * old checksum alone, without the data (a hand-over moves a copy to the next
 * older snapshot without reading it, docs/ARCHITECTURE.md "Store block
 * checksums"). CRC32C is affine over messages of one length:
 * `crc(x) ⊕ crc(y) ⊕ crc(z) = crc(x ⊕ y ⊕ z)`, so with `z` all zeros
 * `crc(B ‖ D) = crc(A ‖ D) ⊕ crc((A ⊕ B) ‖ 0ⁿ) ⊕ crc(0^(20+n))`.
 * Cost: two CRC32C passes over one block of zeros (no I/O).
 */
export function rebindStoreCrc(crc: number, from: StoreBlockIdentity, to: StoreBlockIdentity, blockSizeBytes: number): number {
  assert(Number.isSafeInteger(blockSizeBytes) && blockSizeBytes > 0, `block size ${blockSizeBytes}`);
  const a = storeCrcPrefix(from);
  const b = storeCrcPrefix(to);
  for (let i = 0; i < STORE_CRC_PREFIX_BYTES; i++) a[i]! ^= b[i]!;
  const zeros = zeroBlock(blockSizeBytes);
  let zeroCrc = zeroCrcs.get(blockSizeBytes);
  if (zeroCrc === undefined) {
    zeroCrc = crc32c(zeros, shortCrc32c(Buffer.alloc(STORE_CRC_PREFIX_BYTES)));
    zeroCrcs.set(blockSizeBytes, zeroCrc);
  }
  return (crc ^ crc32c(zeros, shortCrc32c(a)) ^ zeroCrc) >>> 0;
}
