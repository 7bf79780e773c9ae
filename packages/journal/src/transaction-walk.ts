import { crc32c } from '@cowvol/base';
import { unpackMultiple } from 'msgpackr';
import { classify, typeName, type BlockPattern } from './decision-table.js';
import { PAYLOAD_MARKER_BYTES, chainCrc, decodeCommit, decodeRecordsHead, decodeRevoke, decodeTags, payloadPerBlock, readHeader, tailChecksumOk, unescapeImage, type Revocation } from './format.js';
import type { LogReader } from './log-reader.js';

/**
 * The walk of one transaction through the log (jbd2 `do_one_pass` for one
 * transaction; docs/ARCHITECTURE.md §5.4): both recovery passes read every
 * transaction with {@link walkTransaction}, so they agree on every verdict.
 */

/** Where one walk starts and how far it may go. */
export interface Walk {
  reader: LogReader;
  sequence: number;
  /** Checksum seed of that sequence (`transactionSeed`). */
  seed: number;
  start: number;
  /** Log blocks this transaction may occupy before it would run over the tail. */
  room: number;
  /** Scan: decode every payload to check its record count. Replay: the scan did (the owner decodes lazily). */
  decodeRecords: boolean;
  /** Where record payloads are assembled (reset by the pass: per records block in the scan, per transaction in the replay). */
  payloads: PayloadArena;
}

/** What a walk hands on, as each part of the transaction is verified. */
export interface TransactionVisitor {
  /**
   * An image whose tag checksum matched (unescaped; a view — copy to keep).
   * Called as each image is verified, before its descriptor is classified:
   * only the replay pass, which walks transactions the scan found valid,
   * passes it.
   */
  image?(target: number, homeBlock: number, data: Buffer): Promise<void>;
  /** The entries of a revoke block taken into the transaction. */
  revokes?(entries: Revocation[]): void;
  /** The payload of a records block taken into the transaction, and its record count. */
  records?(payload: Buffer, count: number): void;
}

export type WalkResult = { committed: true; blocks: number; nextBlock: number; records: number; images: number } | { committed: false; stopReason: string };

/**
 * Where the passes assemble record payloads: regions of one buffer, handed
 * out until `reset()`, so a pass reuses one allocation instead of leaving a
 * payload's worth of garbage per transaction. Bound: the largest
 * transaction's payloads (twice that while growing; a region handed out
 * before growth keeps the old buffer alive until reset).
 */
export class PayloadArena {
  private buffer = Buffer.alloc(0);
  private usedBytes = 0;

  /** `bytes` bytes, valid until the next `reset()`. */
  take(bytes: number): Buffer {
    if (this.usedBytes + bytes > this.buffer.length) {
      this.buffer = Buffer.allocUnsafe(Math.max(this.usedBytes + bytes, 2 * this.buffer.length));
      this.usedBytes = 0;
    }
    const region = this.buffer.subarray(this.usedBytes, this.usedBytes + bytes);
    this.usedBytes += bytes;
    return region;
  }

  reset(): void {
    this.usedBytes = 0;
  }
}

/** Counts the msgpack values of a payload with msgpackr, building no array. Throws what msgpackr throws. */
function countRecords(payload: Buffer): number {
  let n = 0;
  unpackMultiple(payload, () => {
    n += 1;
  });
  return n;
}

/**
 * One block under verification: the blocks it owns (images, payload blocks)
 * are read through it, chaining `crc`, which becomes the transaction
 * checksum if the block is taken.
 */
class BlockCheck {
  ownedBlocks = 0;
  /** The block after the last one read (the next block of the walk if this one is taken). */
  nextBlock: number;

  constructor(
    private readonly reader: LogReader,
    at: number,
    public crc: number,
  ) {
    this.nextBlock = reader.next(at);
  }

  async readOwned(): Promise<Buffer> {
    const b = await this.reader.block(this.nextBlock);
    this.nextBlock = this.reader.next(this.nextBlock);
    this.ownedBlocks += 1;
    this.crc = chainCrc(this.crc, b);
    return b;
  }
}

/** What the verification of one block found. */
interface Verdict {
  bodyOk: boolean;
  images: number;
  records: number;
  revokes?: Revocation[];
  payload?: Buffer;
}

/** Where the walk is in its transaction: blocks taken so far and their chained checksum. */
interface Progress {
  blocks: number;
  crc: number;
}

/** A descriptor vouches for its images: each matches the checksum in its tag. Verified images go to `visit.image`. */
async function verifyDescriptor(w: Walk, block: Buffer, check: BlockCheck, taken: Progress, visit: TransactionVisitor): Promise<Verdict> {
  const tags = decodeTags(block);
  if (!tags || taken.blocks + 1 + tags.length > w.room) return { bodyOk: false, images: 0, records: 0 };
  for (const t of tags) {
    const data = unescapeImage(await check.readOwned(), t);
    if (crc32c(data, w.seed) !== t.checksum) return { bodyOk: false, images: tags.length, records: 0 };
    await visit.image?.(t.target, t.homeBlock, data);
  }
  return { bodyOk: true, images: tags.length, records: 0 };
}

/** A records block vouches for its payload: its checksum, and (scan) the record count it decodes to. */
async function verifyRecords(w: Walk, block: Buffer, check: BlockCheck, taken: Progress): Promise<Verdict> {
  const per = payloadPerBlock(w.reader.blockSizeBytes);
  const head = decodeRecordsHead(block);
  if (head.payloadBlocks !== Math.ceil(head.payloadBytes / per) || taken.blocks + 1 + head.payloadBlocks > w.room) return { bodyOk: false, images: 0, records: 0 };
  // Bounded by the transaction: the commit that wrote it held this payload whole.
  if (w.decodeRecords) w.payloads.reset(); // the scan keeps no payload
  const payload = w.payloads.take(head.payloadBytes);
  for (let i = 0; i < head.payloadBlocks; i++) {
    const b = await check.readOwned();
    b.copy(payload, i * per, PAYLOAD_MARKER_BYTES, PAYLOAD_MARKER_BYTES + Math.min(per, head.payloadBytes - i * per));
  }
  if (crc32c(payload, w.seed) !== head.payloadCrc) return { bodyOk: false, images: 0, records: 0, payload };
  let bodyOk = true;
  if (w.decodeRecords) {
    try {
      bodyOk = (head.payloadBytes === 0 ? 0 : countRecords(payload)) === head.recordCount;
    } catch {
      bodyOk = false;
    }
  }
  return { bodyOk, images: 0, records: head.recordCount, payload };
}

/** Verifies what a block with a valid header, sequence and tail checksum vouches for, reading the blocks it owns. */
async function verifyBody(w: Walk, pattern: BlockPattern, block: Buffer, check: BlockCheck, taken: Progress, visit: TransactionVisitor): Promise<Verdict> {
  if (pattern.type !== 'commit') check.crc = chainCrc(check.crc, block);
  switch (pattern.type) {
    case 'descriptor':
      return verifyDescriptor(w, block, check, taken, visit);
    case 'records':
      return verifyRecords(w, block, check, taken);
    case 'revoke': {
      const entries = decodeRevoke(block);
      return entries ? { bodyOk: true, images: 0, records: 0, revokes: entries } : { bodyOk: false, images: 0, records: 0 };
    }
    case 'commit': {
      const c = decodeCommit(block);
      return { bodyOk: c.blockCount === taken.blocks && c.transactionCrc === taken.crc >>> 0, images: 0, records: 0 };
    }
    case 'unknown':
      return { bodyOk: false, images: 0, records: 0 };
  }
}

/**
 * Reads one transaction from `w.start`, block by block (jbd2 do_one_pass),
 * classifying each block with the decision table and taking the valid
 * ones, until its commit block or the end of the log. Memory: the reader's
 * window, one descriptor's tags, and the payload of the records block being read.
 * @throws IO_ERROR, JOURNAL_CORRUPT (short read) from the reader; whatever `visit.image` throws
 */
export async function walkTransaction(w: Walk, visit: TransactionVisitor): Promise<WalkResult> {
  const taken: Progress = { blocks: 0, crc: w.seed };
  let records = 0;
  let images = 0;
  let at = w.start;
  for (;;) {
    if (taken.blocks >= w.room) return { committed: false, stopReason: 'transaction would run over the tail (log full of garbage)' };
    const block = await w.reader.block(at);
    const h = readHeader(block);
    const pattern: BlockPattern = {
      hasHeader: h !== null,
      sequenceMatches: h?.sequence === w.sequence,
      type: h ? typeName(h.type) : 'unknown',
      tailChecksumOk: h !== null && tailChecksumOk(block, w.seed),
      bodyOk: false,
    };
    const check = new BlockCheck(w.reader, at, taken.crc);
    let verdict: Verdict = { bodyOk: false, images: 0, records: 0 };
    if (pattern.hasHeader && pattern.sequenceMatches && pattern.tailChecksumOk) verdict = await verifyBody(w, pattern, block, check, taken, visit);
    pattern.bodyOk = verdict.bodyOk;
    const { rule, action } = classify(pattern);
    if (action === 'end-of-log') return { committed: false, stopReason: rule };
    if (action === 'commit-transaction') return { committed: true, blocks: taken.blocks + 1, nextBlock: w.reader.next(at), records, images };
    // Take the block and the blocks it owns into the transaction.
    taken.crc = check.crc;
    taken.blocks += 1 + check.ownedBlocks;
    images += verdict.images;
    records += verdict.records;
    if (verdict.revokes) visit.revokes?.(verdict.revokes);
    if (verdict.payload) visit.records?.(verdict.payload, verdict.records);
    at = check.nextBlock;
  }
}
