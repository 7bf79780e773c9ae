import { assert, type BlockDevice } from '@cowvol/base';
import { chainCrc, encodeCommit, encodeDescriptor, encodeRecords, encodeRevoke, entriesPerRevoke, revokeKey, tagsPerDescriptor, transactionSeed, type BlockImage, type Revocation } from './format.js';
import type { Handle } from './transaction.js';

/** One transaction as blocks ready to write, and what it publishes once committed. */
export interface EncodedTransaction {
  /** Descriptors with their images, revokes, records blocks, then the commit block (docs/FORMAT.md, "Journal file"). */
  blocks: Buffer[];
  /** The images it logs (the last word on each block). */
  images: BlockImage[];
  /** The revokes it logs (the last word on each block). */
  revokes: Revocation[];
  /** Its records, concatenated msgpack values in handle order. */
  payload: Buffer;
  /** Devices to sync before the commit block is written (ordered data). */
  orderedDevices: Set<BlockDevice>;
}

/**
 * The last word on a block within the transaction wins, in handle order
 * (within one handle, its images come after its revokes): an image after a
 * revoke cancels the revoke (jbd2 cancel_revoke); a revoke after an image
 * drops the image. The cache and recovery then agree.
 */
function lastWords(handles: readonly Handle[]): { images: BlockImage[]; revokes: Revocation[] } {
  const last = new Map<string, 'image' | 'revoke'>();
  for (const h of handles) {
    for (const r of h.revokes) last.set(revokeKey(r.target, r.homeBlock), 'revoke');
    for (const img of h.images) last.set(revokeKey(img.target, img.homeBlock), 'image');
  }
  const images: BlockImage[] = [];
  const revokes: Revocation[] = [];
  const revoked = new Set<string>();
  for (const h of handles) {
    for (const r of h.revokes) {
      const k = revokeKey(r.target, r.homeBlock);
      if (last.get(k) === 'revoke' && !revoked.has(k)) {
        revoked.add(k);
        revokes.push(r);
      }
    }
    for (const img of h.images) if (last.get(revokeKey(img.target, img.homeBlock)) === 'image') images.push(img);
  }
  return { images, revokes };
}

/**
 * Encodes the handles of transaction `sequence` as its log blocks (jbd2
 * `jbd2_journal_commit_transaction`'s block building; layout:
 * docs/FORMAT.md, "Journal file"): descriptors with their images, revoke
 * blocks, records blocks, and the commit block carrying the block count and
 * the CRC32C chained over every block before it. Pure: writes nothing.
 * Asserts that the blocks fit what the handles reserved at start
 * (docs/ARCHITECTURE.md §5.1, credits).
 */
export function encodeTransaction(handles: readonly Handle[], uuid: Buffer, sequence: number, blockSizeBytes: number): EncodedTransaction {
  const bs = blockSizeBytes;
  const seed = transactionSeed(uuid, sequence);
  const recordBuffers: Buffer[] = [];
  let recordBytes = 0;
  let reservedBlocks = 0;
  const orderedDevices = new Set<BlockDevice>();
  for (const h of handles) {
    recordBuffers.push(...h.records);
    recordBytes += h.recordBytes;
    reservedBlocks += h.reservedBlocks;
    for (const d of h.orderedDevices) orderedDevices.add(d);
  }
  const { images, revokes } = lastWords(handles);
  const blocks: Buffer[] = [];
  const per = tagsPerDescriptor(bs);
  for (let i = 0; i < images.length; i += per) blocks.push(...encodeDescriptor(images.slice(i, i + per), bs, sequence, seed));
  const perRevoke = entriesPerRevoke(bs);
  for (let i = 0; i < revokes.length; i += perRevoke) blocks.push(encodeRevoke(revokes.slice(i, i + perRevoke), bs, sequence, seed));
  const payload = Buffer.concat(recordBuffers, recordBytes);
  if (recordBuffers.length > 0) blocks.push(...encodeRecords(payload, recordBuffers.length, bs, sequence, seed));
  let crc = seed;
  for (const b of blocks) crc = chainCrc(crc, b);
  blocks.push(encodeCommit(blocks.length, crc, bs, sequence, seed));
  assert(blocks.length <= reservedBlocks, `transaction ${sequence} needs ${blocks.length} log blocks; its handles reserved ${reservedBlocks}`);
  return { blocks, images, revokes, payload, orderedDevices };
}
