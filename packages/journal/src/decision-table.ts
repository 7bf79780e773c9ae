import { assert } from '@cowvol/base';
import { BlockType } from './format.js';

/**
 * The recovery decision table (docs/ARCHITECTURE.md §5.4): what the
 * scanner does with the block at its cursor. Both recovery passes classify
 * every block with it (transaction-walk.ts), so they agree on every verdict.
 */

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
 * Every on-disk pattern maps to exactly one action (a test enumerates every
 * pattern and checks that exactly one rule matches). Anything not a fully
 * valid block of the expected transaction ends the log; the partial
 * transaction is discarded, never replayed (guarantee 5).
 */
export const DECISION_TABLE: ReadonlyArray<{ rule: string; when: (p: BlockPattern) => boolean; action: ScanAction }> = [
  { rule: 'no log block header (clean end of log, or a torn first block)', when: (p) => !p.hasHeader, action: 'end-of-log' },
  { rule: 'sequence differs from the expected one (stale block of an older pass)', when: (p) => p.hasHeader && !p.sequenceMatches, action: 'end-of-log' },
  { rule: 'unknown block type', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'unknown', action: 'end-of-log' },
  { rule: 'tail checksum mismatch (torn or corrupt block)', when: (p) => p.hasHeader && p.sequenceMatches && p.type !== 'unknown' && !p.tailChecksumOk, action: 'end-of-log' },
  {
    rule: 'block vouches for data that does not match (torn image, payload or commit)',
    when: (p) => p.hasHeader && p.sequenceMatches && p.type !== 'unknown' && p.tailChecksumOk && !p.bodyOk,
    action: 'end-of-log',
  },
  { rule: 'valid descriptor', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'descriptor' && p.tailChecksumOk && p.bodyOk, action: 'take-descriptor' },
  { rule: 'valid revoke block', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'revoke' && p.tailChecksumOk && p.bodyOk, action: 'take-revoke' },
  { rule: 'valid records block', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'records' && p.tailChecksumOk && p.bodyOk, action: 'take-records' },
  { rule: 'valid commit block', when: (p) => p.hasHeader && p.sequenceMatches && p.type === 'commit' && p.tailChecksumOk && p.bodyOk, action: 'commit-transaction' },
];

/**
 * The one rule matching `p`.
 * @throws ASSERTION_FAILED if none or several match (a bug in the table)
 */
export function classify(p: BlockPattern): { rule: string; action: ScanAction } {
  const hits = DECISION_TABLE.filter((r) => r.when(p));
  const [hit] = hits;
  assert(hits.length === 1 && hit !== undefined, `recovery decision table: ${hits.length} rules match ${JSON.stringify(p)}`);
  return hit;
}

const TYPE_NAMES = new Map<number, BlockPattern['type']>([
  [BlockType.descriptor, 'descriptor'],
  [BlockType.revoke, 'revoke'],
  [BlockType.records, 'records'],
  [BlockType.commit, 'commit'],
]);

/** The pattern name of an on-disk block type (`unknown` for any other). */
export function typeName(type: number): BlockPattern['type'] {
  return TYPE_NAMES.get(type) ?? 'unknown';
}
