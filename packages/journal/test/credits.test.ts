import { describe, expect, it } from 'vitest';
import { Journal } from './support.js';
import { MemoryDevice } from './memory-device.js';

/**
 * Credits are log blocks (docs/ARCHITECTURE.md §5.1, jbd2): an image or a
 * revoke takes one, and a handle's records together take the payload blocks
 * their encoded bytes fill (records are packed into payload blocks of
 * blockSize − 4 bytes, docs/FORMAT.md §5.5). So thousands of small records
 * fit one handle of a small journal, and the blocks reserved at start still
 * bound what the transaction writes.
 */
const BS = 512;
/** Payload bytes per payload block at BS. */
const PAYLOAD_BYTES = BS - 4;
/** A msgpack str8 of 252 characters: 254 bytes encoded, so two fill one payload block exactly. */
const HALF = 'h'.repeat(252);

/** The home of target 0 (images are written there at checkpoint and recovery). */
const targets = new Map([[0, new MemoryDevice('home', Buffer.alloc(16 * BS))]]);

async function openFresh(lengthBlocks: number) {
  const log = new MemoryDevice('journal');
  await Journal.format(log, { blockSizeBytes: BS, lengthBlocks });
  const { journal } = await Journal.open(log, { targets, replay: async () => undefined });
  return { log, journal };
}

async function replayedRecords(log: MemoryDevice): Promise<unknown[][]> {
  const replayed: unknown[][] = [];
  const { journal } = await Journal.open(
    log.crash(() => 'drop'),
    {
      targets,
      replay: async (tx) => {
        replayed.push(tx.records);
      },
    },
  );
  await journal.close();
  return replayed;
}

describe('journal credits are log blocks', () => {
  it('creditsForRecords counts the payload blocks the encoded records fill', async () => {
    const { journal } = await openFresh(64);
    expect(journal.creditsForRecords([])).toBe(0);
    expect(journal.creditsForRecords([HALF])).toBe(1);
    expect(journal.creditsForRecords([HALF, HALF])).toBe(1); // 508 bytes: exactly one payload block
    expect(journal.creditsForRecords([HALF, HALF, 1])).toBe(2); // one byte more straddles into a second
    expect(journal.creditsForRecords(Array.from({ length: 1000 }, (_, i) => i % 100))).toBe(2); // 1000 one-byte records
  });

  it('a handle refuses the record whose bytes need one payload block more than its credits; images and revokes take one each', async () => {
    const { log, journal } = await openFresh(64);
    const h = await journal.start(1);
    h.log(HALF);
    h.log(HALF);
    expect(() => h.log(0)).toThrow(expect.objectContaining({ code: 'JOURNAL_CREDITS_EXCEEDED' }));
    await h.commit();
    const mixed = await journal.start(3);
    mixed.log({ a: 1 });
    mixed.revoke(0, 4);
    mixed.logImage(0, 5, Buffer.alloc(BS, 5));
    mixed.log({ b: 2 }); // same payload block as { a: 1 }: no new credit
    // A whole payload block's worth more (str16: 3 bytes of header) needs a second payload block.
    expect(() => mixed.log('f'.repeat(PAYLOAD_BYTES - 3))).toThrow(expect.objectContaining({ code: 'JOURNAL_CREDITS_EXCEEDED' }));
    await mixed.commit();
    expect(await replayedRecords(log)).toEqual([
      [HALF, HALF],
      [{ a: 1 }, { b: 2 }],
    ]);
  });

  it('thousands of small records in one handle of a 256-block journal commit and recover', async () => {
    const { log, journal } = await openFresh(256);
    // Records of 7 to 17 bytes, so many straddle two payload blocks.
    const records = Array.from({ length: 2000 }, (_, i) => ({ s: i, n: 'n'.repeat(i % 8) }));
    const credits = journal.creditsForRecords(records);
    expect(credits).toBeLessThanOrEqual(journal.maxHandleCredits);
    expect(records.length).toBeGreaterThan(10 * journal.maxHandleCredits); // one credit per record could never fit
    const h = await journal.start(credits);
    for (const r of records) h.log(r);
    const before = journal.stats.bytesWritten;
    await h.commit();
    // The records block, the payload blocks and the commit block: within the reservation.
    const writtenBlocks = (journal.stats.bytesWritten - before) / BS;
    expect(writtenBlocks).toBe(credits + 2);
    expect(writtenBlocks).toBeLessThanOrEqual(journal.blocksForCredits(credits));
    expect(await replayedRecords(log)).toEqual([records]);
  });
});
