import { describe, expect, it } from 'vitest';
import { Journal, decodeSuperblock, repairJournal, scanJournal, type ReplayedTransaction } from '../src/index.js';
import { MemoryDevice } from './memory-device.js';
import { commitRecords } from './commit-records.js';

/**
 * repairJournal (repair.ts, docs/ARCHITECTURE.md §5.6): replays the
 * transactions that verify up to the first that does not, lists every
 * transaction beyond it from its surviving blocks, resets the log above
 * every sequence seen; an unreadable superblock discards the log unread.
 */
const BS = 512;
const LENGTH = 200;
const HOME_BLOCKS = 16;
const TRANSACTIONS = 10;

const imageOf = (sequence: number): Buffer => Buffer.alloc(BS, sequence);

/** A journal of TRANSACTIONS committed transactions, each with one record and an image of home block `sequence`, never checkpointed. */
async function writeJournal(): Promise<{ log: MemoryDevice; uuid: Buffer }> {
  const log = new MemoryDevice('journal');
  await Journal.format(log, { blockSizeBytes: BS, lengthBlocks: LENGTH });
  const home = new MemoryDevice('home', Buffer.alloc(HOME_BLOCKS * BS));
  const { journal } = await Journal.open(log, { targets: new Map([[0, home]]), replay: async () => undefined, checkpointFill: 1 });
  for (let s = 1; s <= TRANSACTIONS; s++) {
    const h = await journal.start(2);
    h.log({ s });
    h.logImage(0, s, imageOf(s));
    expect(await h.commit()).toBe(s);
  }
  return { log: log.crash(() => 'apply'), uuid: journal.uuid };
}

async function repair(log: MemoryDevice, uuid: Buffer, minNextSequence = 1) {
  const home = new MemoryDevice('home', Buffer.alloc(HOME_BLOCKS * BS));
  const replayed: number[] = [];
  const events: string[] = [];
  const report = await repairJournal(log, {
    uuid,
    blockSizeBytes: BS,
    lengthBlocks: LENGTH,
    targets: new Map([[0, home]]),
    replay: async (tx: ReplayedTransaction) => {
      replayed.push(tx.sequence);
      expect(tx.records).toEqual([{ s: tx.sequence }]);
    },
    beforeReset: async () => void events.push(`reset with ${replayed.length} replayed`),
    minNextSequence,
  });
  return { report, replayed, events, home };
}

describe('repairJournal', () => {
  it('replays up to the damaged transaction, reports every later one, resets above them all', async () => {
    const { log, uuid } = await writeJournal();
    const sb = decodeSuperblock(await log.read(0, 1024), 'journal');
    const txs = (await scanJournal(log, sb)).transactions;
    expect(txs.map((t) => t.sequence)).toEqual(Array.from({ length: TRANSACTIONS }, (_, i) => i + 1));
    const victim = txs[5]!; // sequence 6
    const b = await log.read(victim.startBlock * BS + 40, 1);
    await log.write(victim.startBlock * BS + 40, Buffer.from([b[0]! ^ 0x01]));

    const { report, replayed, events, home } = await repair(log, uuid);
    expect(replayed).toEqual([1, 2, 3, 4, 5]);
    expect(events).toEqual(['reset with 5 replayed']); // the owner made its state durable before the reset
    expect(report).toMatchObject({ superblockDamaged: false, replayedTransactions: 5, lastReplayedSequence: 5, newTailSequence: TRANSACTIONS + 1 });
    expect(report.discarded.map((d) => d.sequence)).toEqual([6, 7, 8, 9, 10]);
    const headerBlocks = report.discarded[1]!.blocksFound; // descriptor, records, commit: image blocks carry no header
    expect(headerBlocks).toBeGreaterThanOrEqual(3);
    for (const d of report.discarded) {
      expect(d.commitFound, `commit of ${d.sequence}`).toBe(true);
      expect(d.blocksFound, `blocks of ${d.sequence}`).toBe(d.sequence === 6 ? headerBlocks - 1 : headerBlocks);
      if (d.sequence !== 6) expect(d.images).toEqual([{ target: 0, homeBlock: d.sequence }]);
    }
    // Replayed images are home; discarded ones are not.
    for (let s = 1; s <= TRANSACTIONS; s++) expect((await home.read(s * BS, BS)).equals(s <= 5 ? imageOf(s) : Buffer.alloc(BS)), `home block ${s}`).toBe(true);

    // The reset journal opens empty, continues above every sequence seen, and a second repair finds nothing.
    const { journal, recovery } = await Journal.open(log, { expectedUuid: uuid, replay: async () => undefined });
    expect(recovery.replayedTransactions).toBe(0);
    expect(journal.lastCommittedSequence).toBe(TRANSACTIONS);
    expect(await commitRecords(journal, [{ s: TRANSACTIONS + 1 }])).toBe(TRANSACTIONS + 1);
    await journal.close();
    const again = await repair(
      log.crash(() => 'apply'),
      uuid,
    );
    expect(again.replayed).toEqual([TRANSACTIONS + 1]);
    expect(again.report.discarded).toEqual([]);
    expect(again.report.newTailSequence).toBe(TRANSACTIONS + 2);
  });

  it('an unreadable or foreign superblock discards the log unread and starts at minNextSequence', async () => {
    for (const damage of ['zeroed', 'foreign', 'truncated'] as const) {
      const { log, uuid } = await writeJournal();
      if (damage === 'zeroed') await log.write(0, Buffer.alloc(1024));
      if (damage === 'truncated') await log.truncate(0);
      const owner = damage === 'foreign' ? Buffer.alloc(16, 7) : uuid;
      const { report, replayed } = await repair(log, owner, 42);
      expect(replayed, damage).toEqual([]);
      expect(report, damage).toMatchObject({ superblockDamaged: true, discarded: [], newTailSequence: 42 });
      const { journal } = await Journal.open(log, { expectedUuid: owner, replay: async () => undefined });
      expect(journal.lastCommittedSequence, damage).toBe(41);
      await journal.close();
    }
  });
});
