import { Unpackr, unpackMultiple } from 'msgpackr';
import { assert, crc32c, type BlockDevice } from '@cowvol/base';
import { JournalCorruptError } from './errors.js';
import {
  BlockType,
  PAYLOAD_MARKER_BYTES,
  chainCrc,
  decodeCommit,
  decodeRecordsHead,
  decodeRevoke,
  decodeTags,
  firstLogBlock,
  payloadPerBlock,
  readHeader,
  tailChecksumOk,
  transactionSeed,
  unescapeImage,
  type JournalSuperblock,
  type Revocation,
} from './format.js';
import { LogReader, type LogGeometry } from './log-reader.js';

/**
 * Journal recovery in two passes over the log, after jbd2's recovery.c:
 *
 * 1. {@link scanJournal} — jbd2 `PASS_SCAN` with `PASS_REVOKE` folded in:
 *    validates transaction after transaction with {@link DECISION_TABLE}
 *    and keeps only where each committed one lies, its counts, and the
 *    revoke table. No image or record is retained.
 * 2. {@link replayJournal} — jbd2 `PASS_REPLAY`: reads the committed
 *    transactions again, one at a time, writing each image home as it is
 *    read (unless revoked) and then handing the transaction's records on.
 *
 * Memory: both passes read through a {@link LogReader} (one read-ahead
 * window, 4 MiB by default, reused); beyond it, a pass holds the record
 * payload of the one transaction it is in, in a reused {@link PayloadArena}
 * (decoded only if the owner reads it, during its replay call) — never more
 * than the commit that wrote the transaction held — and the scan keeps one
 * small entry per committed transaction plus one per revoked block.
 */

/** One committed transaction found by the scan: where it lies and what it holds (counts; the replay pass reads the contents again). */
export interface RecoveredTransaction {
  sequence: number;
  startBlock: number;
  /** Blocks it occupies, commit block included. */
  blocks: number;
  /** Records in its records blocks. */
  records: number;
  /** Block images in its descriptors (revoked ones included). */
  images: number;
}

/** What the recovery scan found (jbd2 PASS_SCAN and PASS_REVOKE). */
export interface ScanResult {
  /** The committed transactions after the tail, oldest first. */
  transactions: RecoveredTransaction[];
  /**
   * Revoke table: for every home block revoked by a committed transaction
   * ({@link revokeKey}), the highest sequence that revoked it. An image of
   * that block in a transaction with a sequence ≤ that one is never replayed.
   */
  revoked: Map<string, number>;
  /** Block where the next transaction goes. */
  headBlock: number;
  /** Sequence the next transaction gets. */
  nextSequence: number;
  /** Why the scan stopped (the decision-table rule that ended it). */
  stopReason: string;
}

/** Knobs of the recovery passes. */
export interface RecoveryOptions {
  /** Read-ahead window of each pass, in bytes (default `LOG_WINDOW_BYTES`, 4 MiB). */
  windowBytes?: number;
}

/**
 * What the scanner sees at the cursor, reduced to the facts the decision
 * table needs. `bodyOk` is the verdict on what the block vouches for: a
 * descriptor's images match their tag checksums; a records block's payload
 * matches its checksum and decodes to the promised record count; a revoke
 * block's entries decode; a commit block's count and transaction checksum
 * match the blocks read since the transaction began.
 */
export interface BlockPattern {
  hasHeader: boolean;
  sequenceMatches: boolean;
  type: 'descriptor' | 'revoke' | 'records' | 'commit' | 'unknown';
  tailChecksumOk: boolean;
  bodyOk: boolean;
}

export type ScanAction = 'end-of-log' | 'take-descriptor' | 'take-revoke' | 'take-records' | 'commit-transaction';

/**
 * The recovery decision table: every on-disk pattern maps to exactly one
 * action (a test enumerates every pattern and checks that exactly one rule
 * matches). Anything not a fully valid block of the expected transaction
 * ends the log; the partial transaction is discarded, never replayed
 * (guarantee 5).
 */
export const DECISION_TABLE: ReadonlyArray<{ rule: string; when: (p: BlockPattern) => boolean; action: ScanAction }> = [
  { rule: 'no log block header (clean end of log, or a torn first block)', when: (p) => !p.hasHeader, action: 'end-of-log' },
  { rule: 'sequence differs from the expected one (stale block of an older pass)', when: (p) => p.hasHeader && !p.sequenceMatches, action: 'end-of-log' },
  { rule: 'unknown block type', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'unknown', action: 'end-of-log' },
  { rule: 'tail checksum mismatch (torn or corrupt block)', when: (p) => p.hasHeader && p.sequenceMatches && p.type !== 'unknown' && !p.tailChecksumOk, action: 'end-of-log' },
  { rule: 'block vouches for data that does not match (torn image, payload or commit)', when: (p) => p.hasHeader && p.sequenceMatches && p.type !== 'unknown' && p.tailChecksumOk && !p.bodyOk, action: 'end-of-log' },
  { rule: 'valid descriptor', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'descriptor' && p.tailChecksumOk && p.bodyOk, action: 'take-descriptor' },
  { rule: 'valid revoke block', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'revoke' && p.tailChecksumOk && p.bodyOk, action: 'take-revoke' },
  { rule: 'valid records block', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'records' && p.tailChecksumOk && p.bodyOk, action: 'take-records' },
  { rule: 'valid commit block', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'commit' && p.tailChecksumOk && p.bodyOk, action: 'commit-transaction' },
];

/** The one rule matching `p`. Throws if none or several match (a bug in the table). */
export function classify(p: BlockPattern): { rule: string; action: ScanAction } {
  const hits = DECISION_TABLE.filter((r) => r.when(p));
  if (hits.length !== 1) throw new Error(`recovery decision table: ${hits.length} rules match ${JSON.stringify(p)}`);
  return hits[0]!;
}

const TYPE_NAMES = new Map<number, BlockPattern['type']>([
  [BlockType.descriptor, 'descriptor'],
  [BlockType.revoke, 'revoke'],
  [BlockType.records, 'records'],
  [BlockType.commit, 'commit'],
]);


/** One transaction as the replay pass hands it to the owner. */
export interface ReplayedTransaction {
  sequence: number;
  /**
   * Its records in log order. Decoded on first access, so an owner that
   * skips the transaction (already applied) never pays for decoding; that
   * first access must happen before the replay call resolves (the payload
   * buffer is then reused).
   * @throws JOURNAL_CORRUPT if the payload no longer decodes to the count the
   *   scan saw; ASSERTION_FAILED on a first access after the call resolved
   */
  readonly records: unknown[];
  /**
   * True for the last transaction of this recovery. An owner may defer the
   * effect of replayed transactions and group several into one write (e.g.
   * one LevelDB batch) as long as everything is applied when the call for
   * the last one resolves.
   */
  last: boolean;
}

/** Where the replay pass sends what it reads. */
export interface ReplaySink {
  /** Writes one image home (never called for a revoked one). `data` is a view into the read window: copy to keep. */
  image(target: number, homeBlock: number, data: Buffer, sequence: number): Promise<void>;
  /** Called after every image of the transaction has gone to `image`. */
  transaction(tx: ReplayedTransaction): Promise<void>;
}

/** What the replay pass did. */
export interface ReplayCounts {
  /** Images handed to `sink.image`. */
  images: number;
  /** Images skipped because a transaction with a sequence ≥ theirs revoked their block. */
  revokedImages: number;
}

/** Where one walk starts and how far it may go. */
interface Walk {
  reader: LogReader;
  sequence: number;
  /** Checksum seed of that sequence ({@link transactionSeed}). */
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
interface TransactionVisitor {
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

type WalkResult =
  | { committed: true; blocks: number; nextBlock: number; records: number; images: number }
  | { committed: false; stopReason: string };

/**
 * Decoder of replayed records: msgpackr's default decoding (as `unpackMultiple`)
 * except that binary values are copied, not views of the payload — the
 * payload's buffer is reused once the replay call returns.
 */
const recordDecoder = new Unpackr({ useRecords: false, copyBuffers: true });

/** Counts the msgpack values of a payload with msgpackr, building no array. Throws what msgpackr throws. */
function countRecords(payload: Buffer): number {
  let n = 0;
  unpackMultiple(payload, () => {
    n += 1;
  });
  return n;
}

/**
 * Reads one transaction from `w.start`, block by block (jbd2 do_one_pass),
 * classifying each block with {@link DECISION_TABLE} and taking the valid
 * ones, until its commit block or the end of the log. Both passes walk with
 * it, so they agree on every verdict. Memory: the reader's window, one
 * descriptor's tags, and the payload of the records block being read.
 */
async function walkTransaction(w: Walk, visit: TransactionVisitor): Promise<WalkResult> {
  const { reader, seed, sequence } = w;
  const bs = reader.blockSizeBytes;
  const per = payloadPerBlock(bs);
  let blocks = 0;
  let txCrc = seed;
  let records = 0;
  let images = 0;
  let at = w.start;
  for (;;) {
    if (blocks >= w.room) return { committed: false, stopReason: 'transaction would run over the tail (log full of garbage)' };
    const block = await reader.block(at);
    const h = readHeader(block);
    const pattern: BlockPattern = {
      hasHeader: h !== null,
      sequenceMatches: h?.sequence === sequence,
      type: h ? (TYPE_NAMES.get(h.type) ?? 'unknown') : 'unknown',
      tailChecksumOk: h !== null && tailChecksumOk(block, seed),
      bodyOk: false,
    };
    // Verify what the block vouches for, reading the blocks it owns; `crc`
    // becomes the transaction checksum if the block is taken.
    let crc = txCrc;
    let owned = 0;
    let ownedAt = reader.next(at);
    const fits = (n: number): boolean => blocks + 1 + n <= w.room;
    const readOwned = async (): Promise<Buffer> => {
      const b = await reader.block(ownedAt);
      ownedAt = reader.next(ownedAt);
      owned += 1;
      crc = chainCrc(crc, b);
      return b;
    };
    let revokes: Revocation[] | undefined;
    let payload: Buffer | undefined;
    let recordCount = 0;
    let imageCount = 0;
    if (pattern.hasHeader && pattern.sequenceMatches && pattern.tailChecksumOk) {
      if (pattern.type !== 'commit') crc = chainCrc(crc, block);
      if (pattern.type === 'descriptor') {
        const tags = decodeTags(block);
        if (tags && fits(tags.length)) {
          pattern.bodyOk = true;
          for (const t of tags) {
            const data = unescapeImage(await readOwned(), t);
            if (crc32c(data, seed) !== t.checksum) {
              pattern.bodyOk = false;
              break;
            }
            await visit.image?.(t.target, t.homeBlock, data);
          }
          imageCount = tags.length;
        }
      } else if (pattern.type === 'records') {
        const head = decodeRecordsHead(block);
        if (head.payloadBlocks === Math.ceil(head.payloadBytes / per) && fits(head.payloadBlocks)) {
          // Bounded by the transaction: the commit that wrote it held this payload whole.
          if (w.decodeRecords) w.payloads.reset(); // the scan keeps no payload
          payload = w.payloads.take(head.payloadBytes);
          for (let i = 0; i < head.payloadBlocks; i++) {
            const b = await readOwned();
            b.copy(payload, i * per, PAYLOAD_MARKER_BYTES, PAYLOAD_MARKER_BYTES + Math.min(per, head.payloadBytes - i * per));
          }
          if (crc32c(payload, seed) === head.payloadCrc) {
            if (!w.decodeRecords) pattern.bodyOk = true;
            else {
              try {
                pattern.bodyOk = (head.payloadBytes === 0 ? 0 : countRecords(payload)) === head.recordCount;
              } catch {
                pattern.bodyOk = false;
              }
            }
            recordCount = head.recordCount;
          }
        }
      } else if (pattern.type === 'revoke') {
        const entries = decodeRevoke(block);
        if (entries) {
          revokes = entries;
          pattern.bodyOk = true;
        }
      } else if (pattern.type === 'commit') {
        const c = decodeCommit(block);
        pattern.bodyOk = c.blockCount === blocks && c.transactionCrc === txCrc >>> 0;
      }
    }
    const { rule, action } = classify(pattern);
    if (action === 'end-of-log') return { committed: false, stopReason: rule };
    if (action === 'commit-transaction') return { committed: true, blocks: blocks + 1, nextBlock: reader.next(at), records, images };
    // Take the block and the blocks it owns into the transaction.
    txCrc = crc;
    blocks += 1 + owned;
    images += imageCount;
    records += recordCount;
    if (revokes) visit.revokes?.(revokes);
    if (payload) visit.records?.(payload, recordCount);
    at = ownedAt;
  }
}

function geometryOf(sb: JournalSuperblock): LogGeometry {
  return { blockSizeBytes: sb.blockSizeBytes, lengthBlocks: sb.lengthBlocks, firstBlock: firstLogBlock(sb.blockSizeBytes) };
}

/**
 * Scan pass (jbd2 PASS_SCAN, with PASS_REVOKE folded in): walks the circular
 * log from the superblock's tail, transaction by transaction, classifying
 * each block with {@link DECISION_TABLE}. Returns where each committed
 * transaction lies, the revoke table (revokes of committed transactions
 * only), and where the log ends. Reads only; retains no image or record.
 * @throws IO_ERROR from the device
 */
export async function scanJournal(device: BlockDevice, sb: JournalSuperblock, options: RecoveryOptions = {}): Promise<ScanResult> {
  const geometry = geometryOf(sb);
  const reader = new LogReader(device, geometry, options.windowBytes);
  const dataBlocks = sb.lengthBlocks - geometry.firstBlock;
  const transactions: RecoveredTransaction[] = [];
  const revoked = new Map<string, number>();
  let cursor = sb.tailBlock;
  let sequence = sb.tailSequence;
  const payloads = new PayloadArena();
  let scanned = 0;
  for (;;) {
    const revokes: Revocation[] = [];
    const walk = { reader, sequence, seed: transactionSeed(sb.uuid, sequence), start: cursor, room: dataBlocks - scanned, decodeRecords: true, payloads };
    const end = await walkTransaction(walk, { revokes: (entries) => void revokes.push(...entries) });
    if (!end.committed) return { transactions, revoked, headBlock: cursor, nextSequence: sequence, stopReason: end.stopReason };
    // Committed: its revokes count (a torn transaction's never do).
    for (const r of revokes) revoked.set(revokeKey(r.target, r.homeBlock), sequence);
    transactions.push({ sequence, startBlock: cursor, blocks: end.blocks, records: end.records, images: end.images });
    scanned += end.blocks;
    cursor = end.nextBlock;
    sequence += 1;
  }
}

/**
 * Replay pass (jbd2 PASS_REPLAY): reads the transactions `scan` found again,
 * oldest first, one at a time. Each image goes to `sink.image` as soon as it
 * is read and verified, unless a transaction with a sequence ≥ its own
 * revoked its block; then the transaction's records go to
 * `sink.transaction` (decoded on first access). Every block is verified
 * again as it is read.
 * @throws JOURNAL_CORRUPT if a transaction no longer validates as the scan
 *   found it (the log changed between the passes); IO_ERROR; whatever the sink throws
 */
export async function replayJournal(device: BlockDevice, sb: JournalSuperblock, scan: ScanResult, sink: ReplaySink, options: RecoveryOptions = {}): Promise<ReplayCounts> {
  const geometry = geometryOf(sb);
  const reader = new LogReader(device, geometry, options.windowBytes);
  const dataBlocks = sb.lengthBlocks - geometry.firstBlock;
  const counts: ReplayCounts = { images: 0, revokedImages: 0 };
  const arena = new PayloadArena();
  let scanned = 0;
  for (const [i, tx] of scan.transactions.entries()) {
    const payloads: Array<{ payload: Buffer; count: number }> = [];
    arena.reset(); // the previous transaction's call has returned: its payloads are done with
    const walk = { reader, sequence: tx.sequence, seed: transactionSeed(sb.uuid, tx.sequence), start: tx.startBlock, room: dataBlocks - scanned, decodeRecords: false, payloads: arena };
    const end = await walkTransaction(walk, {
      image: async (target, homeBlock, data) => {
        const r = scan.revoked.get(revokeKey(target, homeBlock));
        if (r !== undefined && r >= tx.sequence) {
          counts.revokedImages += 1;
          return;
        }
        await sink.image(target, homeBlock, data, tx.sequence);
        counts.images += 1;
      },
      records: (payload, count) => void payloads.push({ payload, count }),
    });
    if (!end.committed || end.blocks !== tx.blocks || end.records !== tx.records) {
      throw new JournalCorruptError(`${device.name}: transaction ${tx.sequence} at block ${tx.startBlock} changed between the recovery scan and replay`, {
        details: { sequence: tx.sequence, startBlock: tx.startBlock, stopReason: end.committed ? undefined : end.stopReason },
      });
    }
    scanned += end.blocks;
    const replayed = lazyTransaction(device.name, tx.sequence, payloads, i === scan.transactions.length - 1);
    try {
      await sink.transaction(replayed.tx);
    } finally {
      replayed.close();
    }
  }
  return counts;
}

/**
 * Where the passes assemble record payloads: regions of one buffer, handed
 * out until `reset()`, so a pass reuses one allocation instead of leaving a
 * payload's worth of garbage per transaction. Bound: the largest
 * transaction's payloads (twice that while growing; a region handed out
 * before growth keeps the old buffer alive until reset).
 */
class PayloadArena {
  private buffer = Buffer.alloc(0);
  private used = 0;

  /** `bytes` bytes, valid until the next `reset()`. */
  take(bytes: number): Buffer {
    if (this.used + bytes > this.buffer.length) {
      this.buffer = Buffer.allocUnsafe(Math.max(this.used + bytes, 2 * this.buffer.length));
      this.used = 0;
    }
    const region = this.buffer.subarray(this.used, this.used + bytes);
    this.used += bytes;
    return region;
  }

  reset(): void {
    this.used = 0;
  }
}

/**
 * A {@link ReplayedTransaction} whose records are decoded from `payloads`
 * (views into the replay's arena) on first access, and `close()`, which
 * forbids a first access once the arena may be reused.
 */
function lazyTransaction(name: string, sequence: number, payloads: Array<{ payload: Buffer; count: number }>, last: boolean): { tx: ReplayedTransaction; close(): void } {
  let records: unknown[] | undefined;
  let closed = false;
  const tx: ReplayedTransaction = {
    sequence,
    get records(): unknown[] {
      if (records === undefined) {
        assert(!closed, `records of replayed transaction ${sequence} first read after its replay call returned`);
        const out: unknown[] = [];
        for (const { payload, count } of payloads) {
          let values: unknown[];
          try {
            values = payload.length === 0 ? [] : (recordDecoder.unpackMultiple(payload) as unknown[]);
          } catch (err) {
            throw new JournalCorruptError(`${name}: records of transaction ${sequence} no longer decode`, { cause: err });
          }
          // Assert after the read: the scan counted these records.
          if (values.length !== count) throw new JournalCorruptError(`${name}: transaction ${sequence} holds ${values.length} records, the scan counted ${count}`);
          for (const v of values) out.push(v);
        }
        records = out;
      }
      return records;
    },
    last,
  };
  return {
    tx,
    close: () => {
      closed = true;
      payloads.length = 0;
    },
  };
}

export function revokeKey(target: number, homeBlock: number): string {
  return `${target}:${homeBlock}`;
}
