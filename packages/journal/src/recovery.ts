import { unpackMultiple } from 'msgpackr';
import type { BlockDevice } from './block-device.js';
import {
  BlockType,
  chainCrc,
  decodeCommit,
  decodeRecordsHead,
  decodeRevoke,
  decodeTags,
  firstLogBlock,
  joinPayload,
  readHeader,
  tailChecksumOk,
  transactionSeed,
  unescapeImage,
  type BlockImage,
  type JournalSuperblock,
  type Revocation,
} from './format.js';
import { crc32c } from './checksum.js';

/** One committed transaction found by the recovery scan. */
export interface RecoveredTransaction {
  sequence: number;
  /** Records in the order they were logged. */
  records: unknown[];
  /** Block images (unescaped), in log order. */
  images: BlockImage[];
  revokes: Revocation[];
  startBlock: number;
  /** Blocks it occupies, commit block included. */
  blocks: number;
}

/** What the recovery scan found (jbd2 PASS_SCAN). */
export interface ScanResult {
  transactions: RecoveredTransaction[];
  /** Block where the next transaction goes. */
  headBlock: number;
  /** Sequence the next transaction gets. */
  nextSequence: number;
  /** Why the scan stopped (the decision-table rule that ended it). */
  stopReason: string;
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

/**
 * Scans the circular log from the superblock's tail, transaction by
 * transaction (jbd2 do_one_pass, PASS_SCAN), classifying each block with
 * {@link DECISION_TABLE}. Returns the committed transactions in order and
 * where the log ends. Reads only.
 */
export async function scanJournal(device: BlockDevice, sb: JournalSuperblock): Promise<ScanResult> {
  const bs = sb.blockSizeBytes;
  const first = firstLogBlock(bs);
  const dataBlocks = sb.lengthBlocks - first;
  const next = (b: number): number => (b + 1 >= sb.lengthBlocks ? first : b + 1);
  const readBlock = (b: number): Promise<Buffer> => device.read(b * bs, bs);
  const transactions: RecoveredTransaction[] = [];
  let cursor = sb.tailBlock;
  let sequence = sb.tailSequence;
  let scanned = 0;
  for (;;) {
    const seed = transactionSeed(sb.uuid, sequence);
    const tx: RecoveredTransaction = { sequence, records: [], images: [], revokes: [], startBlock: cursor, blocks: 0 };
    let txCrc = seed;
    let at = cursor;
    let stop: string | undefined;
    // Blocks of one transaction, until its commit block or the end of the log.
    for (;;) {
      if (scanned + tx.blocks >= dataBlocks) {
        stop = 'transaction would run over the tail (log full of garbage)';
        break;
      }
      const block = await readBlock(at);
      const h = readHeader(block);
      const pattern: BlockPattern = {
        hasHeader: h !== null,
        sequenceMatches: h?.sequence === sequence,
        type: h ? (TYPE_NAMES.get(h.type) ?? 'unknown') : 'unknown',
        tailChecksumOk: h !== null && tailChecksumOk(block, seed),
        bodyOk: false,
      };
      // Verify what the block vouches for (reading the blocks it owns).
      const owned: Buffer[] = [];
      let ownedAt = next(at);
      const readOwned = async (n: number): Promise<boolean> => {
        if (scanned + tx.blocks + 1 + n > dataBlocks) return false;
        for (let i = 0; i < n; i++) {
          owned.push(await readBlock(ownedAt));
          ownedAt = next(ownedAt);
        }
        return true;
      };
      let images: BlockImage[] = [];
      let records: unknown[] = [];
      let revokes: Revocation[] = [];
      if (pattern.hasHeader && pattern.sequenceMatches && pattern.tailChecksumOk) {
        if (pattern.type === 'descriptor') {
          const tags = decodeTags(block);
          if (tags && (await readOwned(tags.length))) {
            images = tags.map((t, i) => ({ target: t.target, homeBlock: t.homeBlock, data: unescapeImage(owned[i]!, t) }));
            pattern.bodyOk = tags.every((t, i) => crc32c(images[i]!.data, seed) === t.checksum);
          }
        } else if (pattern.type === 'records') {
          const head = decodeRecordsHead(block);
          if (head.payloadBlocks === Math.ceil(head.payloadBytes / (bs - 4)) && (await readOwned(head.payloadBlocks))) {
            const payload = joinPayload(owned, head.payloadBytes);
            if (crc32c(payload, seed) === head.payloadCrc) {
              try {
                records = head.payloadBytes === 0 ? [] : (unpackMultiple(payload) as unknown[]);
                pattern.bodyOk = records.length === head.recordCount;
              } catch {
                pattern.bodyOk = false;
              }
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
          pattern.bodyOk = c.blockCount === tx.blocks && c.transactionCrc === txCrc >>> 0;
        }
      }
      const { rule, action } = classify(pattern);
      if (action === 'end-of-log') {
        stop = rule;
        break;
      }
      if (action === 'commit-transaction') {
        tx.blocks += 1;
        at = next(at);
        break;
      }
      // Take the block and the blocks it owns into the transaction.
      txCrc = chainCrc(txCrc, block);
      for (const b of owned) txCrc = chainCrc(txCrc, b);
      tx.blocks += 1 + owned.length;
      tx.images.push(...images);
      tx.records.push(...records);
      tx.revokes.push(...revokes);
      at = ownedAt;
    }
    if (stop !== undefined) return { transactions, headBlock: cursor, nextSequence: sequence, stopReason: stop };
    transactions.push(tx);
    scanned += tx.blocks;
    cursor = at;
    sequence += 1;
  }
}

/**
 * Revoke pass (jbd2 PASS_REVOKE): for every revoked home block, the newest
 * transaction that revoked it. An image of that block in a transaction with
 * a sequence ≤ that one is never replayed.
 */
export function revokeTable(transactions: RecoveredTransaction[]): Map<string, number> {
  const table = new Map<string, number>();
  for (const tx of transactions) for (const r of tx.revokes) table.set(revokeKey(r.target, r.homeBlock), tx.sequence);
  return table;
}

export function revokeKey(target: number, homeBlock: number): string {
  return `${target}:${homeBlock}`;
}
