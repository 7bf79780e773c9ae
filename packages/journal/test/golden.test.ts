import { pack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import {
  BLOCK_MAGIC,
  DECISION_TABLE,
  Journal,
  chainCrc,
  classify,
  encodeCommit,
  encodeDescriptor,
  encodeRecords,
  encodeRevoke,
  encodeSuperblock,
  transactionSeed,
  type BlockImage,
  type BlockPattern,
  type Revocation,
} from '../src/index.js';
import { MemoryDevice } from './memory-device.js';

/**
 * Golden journals: journal files built by hand, block by block, with the
 * format's encoders, for each on-disk pattern recovery must handle; each
 * must recover to exactly the expected records and home content.
 */
const BS = 512;
const LENGTH = 64;
/** First log block for 512-byte blocks: the superblock area takes blocks 0 and 1. */
const FIRST = 2;
const UUID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

interface TxSpec {
  sequence: number;
  records?: unknown[];
  images?: BlockImage[];
  revokes?: Revocation[];
  /** Replace the commit's transaction checksum (valid tail, wrong content). */
  wrongTxCrc?: boolean;
  omitCommit?: boolean;
}

/** The blocks of one transaction, exactly as the journal writes them. */
function txBlocks(spec: TxSpec): Buffer[] {
  const seed = transactionSeed(UUID, spec.sequence);
  const out: Buffer[] = [];
  if (spec.images?.length) out.push(...encodeDescriptor(spec.images, BS, spec.sequence, seed));
  if (spec.revokes?.length) out.push(encodeRevoke(spec.revokes, BS, spec.sequence, seed));
  if (spec.records?.length) {
    const payload = Buffer.concat(spec.records.map((r) => pack(r)));
    out.push(...encodeRecords(payload, spec.records.length, BS, spec.sequence, seed));
  }
  let crc = seed;
  for (const b of out) crc = chainCrc(crc, b);
  if (!spec.omitCommit) out.push(encodeCommit(out.length, spec.wrongTxCrc ? crc ^ 1 : crc, BS, spec.sequence, seed));
  return out;
}

/** A journal file: superblock + the given blocks laid out from `startBlock`, wrapping after the last block. */
function journalFile(tail: { block: number; sequence: number }, blocks: Buffer[], startBlock = tail.block): Buffer {
  const file = Buffer.alloc(LENGTH * BS);
  encodeSuperblock({ generation: 0, uuid: UUID, blockSizeBytes: BS, lengthBlocks: LENGTH, tailSequence: tail.sequence, tailBlock: tail.block }).copy(file, 0);
  let at = startBlock;
  for (const b of blocks) {
    b.copy(file, at * BS);
    at = at + 1 >= LENGTH ? FIRST : at + 1;
  }
  return file;
}

async function recover(file: Buffer): Promise<{ records: Array<[number, unknown[]]>; home: MemoryDevice; stopReason: string; revokedImages: number }> {
  const home = new MemoryDevice('home', Buffer.alloc(16 * BS, 0xee));
  const records: Array<[number, unknown[]]> = [];
  const { recovery } = await Journal.open(new MemoryDevice('journal', file), {
    targets: new Map([[0, home]]),
    replay: async (tx) => void records.push([tx.sequence, tx.records]),
  });
  return { records, home, stopReason: recovery.stopReason, revokedImages: recovery.revokedImages };
}

const img = (homeBlock: number, byte: number): BlockImage => ({ target: 0, homeBlock, data: Buffer.alloc(BS, byte) });
const homeBlock = async (home: MemoryDevice, b: number) => (await home.read(b * BS, BS))[0];

const TX1: TxSpec = { sequence: 7, records: [{ op: 'one' }], images: [img(1, 0x11)] };
const TX2: TxSpec = { sequence: 8, records: [{ op: 'two' }, { op: 'two-b' }], images: [img(2, 0x22)], revokes: [{ target: 0, homeBlock: 9 }] };

describe('golden journals recover to the exact expected state', () => {
  it('two complete transactions: both replayed', async () => {
    const r = await recover(journalFile({ block: FIRST, sequence: 7 }, [...txBlocks(TX1), ...txBlocks(TX2)]));
    expect(r.records).toEqual([
      [7, [{ op: 'one' }]],
      [8, [{ op: 'two' }, { op: 'two-b' }]],
    ]);
    expect([await homeBlock(r.home, 1), await homeBlock(r.home, 2)]).toEqual([0x11, 0x22]);
  });

  it('missing commit block: the transaction is not replayed', async () => {
    const r = await recover(journalFile({ block: FIRST, sequence: 7 }, [...txBlocks(TX1), ...txBlocks({ ...TX2, omitCommit: true })]));
    expect(r.records).toEqual([[7, [{ op: 'one' }]]]);
    expect(await homeBlock(r.home, 2)).toBe(0xee);
  });

  // Block index within TX2's blocks: 0 descriptor, 1 image, 2 revoke, 3 records head, 4 payload, 5 commit.
  const kinds: Array<[string, number, number]> = [
    ['descriptor', 0, 40],
    ['image (tag checksum)', 1, 100],
    ['revoke', 2, 30],
    ['records block', 3, 20],
    ['record payload', 4, 10],
    ['commit block', 5, 17],
  ];
  for (const [kind, index, byte] of kinds) {
    it(`a bad checksum in the ${kind}: the transaction is discarded, the one before it replayed`, async () => {
      const blocks = txBlocks(TX2);
      expect(blocks).toHaveLength(6);
      blocks[index] = Buffer.from(blocks[index]!);
      blocks[index][byte]! ^= 0x04;
      const r = await recover(journalFile({ block: FIRST, sequence: 7 }, [...txBlocks(TX1), ...blocks]));
      expect(r.records).toEqual([[7, [{ op: 'one' }]]]);
      expect(await homeBlock(r.home, 2)).toBe(0xee);
      expect(r.stopReason).not.toMatch(/^no log block header/);
    });
  }

  it('a commit whose transaction checksum does not match the blocks before it (torn in the middle) is discarded', async () => {
    const r = await recover(journalFile({ block: FIRST, sequence: 7 }, [...txBlocks(TX1), ...txBlocks({ ...TX2, wrongTxCrc: true })]));
    expect(r.records).toEqual([[7, [{ op: 'one' }]]]);
    expect(r.stopReason).toMatch(/does not match/);
  });

  it('revoke across transactions: an image in a transaction ≤ the revoke is not replayed; a later one is', async () => {
    const blocks = [
      ...txBlocks({ sequence: 7, images: [img(5, 0x51), img(6, 0x61)] }),
      ...txBlocks({
        sequence: 8,
        revokes: [
          { target: 0, homeBlock: 5 },
          { target: 0, homeBlock: 6 },
        ],
      }),
      ...txBlocks({ sequence: 9, images: [img(6, 0x62)] }),
    ];
    const r = await recover(journalFile({ block: FIRST, sequence: 7 }, blocks));
    expect(await homeBlock(r.home, 5)).toBe(0xee); // revoked: never resurrected
    expect(await homeBlock(r.home, 6)).toBe(0x62); // journaled again after the revoke
    expect(r.revokedImages).toBe(2);
  });

  it('wrap-around: a transaction that runs past the last block continues at the first log block', async () => {
    const blocks = [...txBlocks(TX1), ...txBlocks(TX2)];
    const start = LENGTH - 4; // TX1 (4 blocks) fills the end, TX2 starts at block 1
    const r = await recover(journalFile({ block: start, sequence: 7 }, blocks, start));
    expect(r.records.map(([s]) => s)).toEqual([7, 8]);
    const start2 = LENGTH - 6; // TX2 itself wraps
    const r2 = await recover(journalFile({ block: start2, sequence: 7 }, blocks, start2));
    expect(r2.records.map(([s]) => s)).toEqual([7, 8]);
    expect(await homeBlock(r2.home, 2)).toBe(0x22);
  });

  it('stale sequence: an older transaction left from a previous pass ends the log; so does a sequence from the future', async () => {
    const stale = txBlocks({ sequence: 3, records: [{ op: 'old' }] });
    const r = await recover(journalFile({ block: FIRST, sequence: 7 }, [...txBlocks(TX1), ...stale]));
    expect(r.records).toEqual([[7, [{ op: 'one' }]]]);
    expect(r.stopReason).toMatch(/sequence/);
    const future = txBlocks({ sequence: 9, records: [{ op: 'skip' }] });
    const r2 = await recover(journalFile({ block: FIRST, sequence: 7 }, [...txBlocks(TX1), ...future]));
    expect(r2.records).toEqual([[7, [{ op: 'one' }]]]);
  });

  it('escaped magic in a data block: stored escaped, replayed exactly', async () => {
    const data = Buffer.alloc(BS, 0x33);
    data.writeUInt32BE(BLOCK_MAGIC, 0);
    data.writeUInt32BE(1, 4); // looks like a descriptor header …
    data.writeBigUInt64BE(8n, 8); // … of the next sequence
    const blocks = txBlocks({ sequence: 7, images: [{ target: 0, homeBlock: 3, data }] });
    expect(blocks[1]!.readUInt32BE(0)).toBe(0); // escaped on disk
    const r = await recover(journalFile({ block: FIRST, sequence: 7 }, [...blocks, ...txBlocks({ sequence: 8, records: [{ op: 'after' }] })]));
    expect((await r.home.read(3 * BS, BS)).equals(data)).toBe(true);
    expect(r.records.map(([s]) => s)).toEqual([7, 8]);
  });

  it('an empty log (tail at a zeroed block) replays nothing', async () => {
    const r = await recover(journalFile({ block: 10, sequence: 1 }, []));
    expect(r.records).toEqual([]);
    expect(r.stopReason).toMatch(/^no log block header/);
  });
});

describe('recovery decision table', () => {
  it('every on-disk pattern matches exactly one rule', () => {
    const types: Array<BlockPattern['type']> = ['descriptor', 'revoke', 'records', 'commit', 'unknown'];
    let patterns = 0;
    const used = new Set<string>();
    for (const hasHeader of [false, true])
      for (const sequenceMatches of [false, true])
        for (const type of types)
          for (const tailChecksumOk of [false, true])
            for (const bodyOk of [false, true]) {
              const p: BlockPattern = { hasHeader, sequenceMatches, type, tailChecksumOk, bodyOk };
              const hits = DECISION_TABLE.filter((r) => r.when(p));
              expect(hits.length, JSON.stringify(p)).toBe(1);
              used.add(classify(p).rule);
              patterns += 1;
            }
    expect(patterns).toBe(80);
    expect(used.size).toBe(DECISION_TABLE.length); // no dead rule
  });
});
