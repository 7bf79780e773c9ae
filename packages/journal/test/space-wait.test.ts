import { describe, expect, it } from 'vitest';
import { Journal, type Handle } from '../src/index.js';
import { firstLogBlock } from '../src/format.js';
import { MemoryDevice } from './memory-device.js';
import { commitRecords } from './commit-records.js';

const BS = 512;
const LENGTH_BLOCKS = 256;

/**
 * True when `p` settles within `turns` turns of the event loop. Every device
 * here is in memory, so each I/O completes within a few turns: a promise that
 * has not settled after many of them is waiting for something that will never
 * happen. A bounded check, not a sleep and not a timing assertion.
 */
async function settles(p: Promise<unknown>, turns = 200): Promise<boolean> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- settled is set by p's callbacks, which TypeScript's narrowing does not see
  for (let i = 0; i < turns && !settled; i++) await new Promise((r) => setImmediate(r));
  return settled;
}

/** Holds the first write of the superblock area (the tail move of a checkpoint) until released. */
function holdSuperblockWrite(log: MemoryDevice): { reached: Promise<void>; release: () => void } {
  const superblockAreaBytes = firstLogBlock(BS) * BS;
  let reach!: () => void;
  const reached = new Promise<void>((r) => (reach = r));
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let armed = true;
  log.before = async (op, offsetBytes) => {
    if (op === 'write' && offsetBytes < superblockAreaBytes && armed) {
      armed = false;
      reach();
      await gate;
    }
  };
  return { reached, release };
}

describe('start() waiting for log space', () => {
  it('a start() waiting for log space resumes when space is freed while its checkpoint runs (lost wake-up)', async () => {
    // The interleaving (regression for the space wait in Journal.start, fixed
    // in 236ad0b): start(A) finds the log too full and checkpoints; while that
    // checkpoint's tail move is held, big handles commit — so the log holds
    // at least as many blocks after the checkpoint as before it — and another
    // handle is abandoned, waking the space waiters while A is registered as
    // none. Afterwards A's reservation fits. The old loop compared the used
    // blocks before and after its checkpoint, saw "no progress", and waited
    // for a wake-up that had already happened: A hung forever.
    const log = new MemoryDevice('journal');
    const home = new MemoryDevice('home', Buffer.alloc(16 * BS));
    await Journal.format(log, { blockSizeBytes: BS, lengthBlocks: LENGTH_BLOCKS });
    const { journal } = await Journal.open(log, {
      targets: new Map([[0, home]]),
      replay: async () => undefined,
      checkpointFill: 1, // no background checkpoints: only A's start() checkpoints
      commitIntervalMs: 60_000,
    });
    const dataBlocks = LENGTH_BLOCKS - firstLogBlock(BS);
    const bigCredits = journal.maxHandleCredits;
    const big = journal.blocksForCredits(bigCredits);
    const smallCredits = 7;
    const small = journal.blocksForCredits(smallCredits);

    // Applied transactions in the way (records only: the checkpoint writes nothing home).
    let n = 0;
    while (journal.uncheckpointedBlocks < 40) await commitRecords(journal, [{ fill: n++ }]);
    const usedBefore = journal.uncheckpointedBlocks;

    // Three big handles that will commit during the checkpoint, one small one that will be abandoned.
    const committers: Handle[] = [];
    for (let i = 0; i < 3; i++) committers.push(await journal.start(bigCredits));
    const abandoned = await journal.start(smallCredits);
    const reserved = 3 * big + small;
    // A does not fit now: its start() must wait for space (and checkpoint).
    expect(usedBefore + reserved + big + 2, 'A must have to wait for space').toBeGreaterThan(dataBlocks);

    const hold = holdSuperblockWrite(log);
    const waitsBefore = journal.stats.spaceWaits;
    const startA = journal.start(bigCredits);
    expect(await settles(hold.reached), "A's start() should checkpoint to make room").toBe(true);
    expect(journal.stats.spaceWaits).toBeGreaterThan(waitsBefore);
    expect(await settles(startA), 'A cannot have its reservation while the log is full').toBe(false);

    // While the checkpoint's tail move is held: the big handles commit (the
    // log grows by more than the checkpoint will free) and the small one is
    // abandoned (its release wakes the space waiters).
    for (const [i, h] of committers.entries()) {
      for (let k = 0; k < bigCredits; k++) h.logImage(0, 1000 * (i + 1) + k, Buffer.alloc(BS, i + 1));
      await h.commit();
    }
    abandoned.abandon();
    const committedDuringCheckpoint = journal.uncheckpointedBlocks - usedBefore;
    // The situation that made the old loop wait: after the checkpoint frees
    // `usedBefore` blocks, the log holds no fewer blocks than before it…
    expect(committedDuringCheckpoint, 'the commits must outgrow what the checkpoint frees').toBeGreaterThanOrEqual(usedBefore);
    // …yet A fits then (with no reservation left but its own), and only
    // thanks to the abandoned handle's release.
    expect(committedDuringCheckpoint + big + 2, 'A must fit once the checkpoint is done').toBeLessThanOrEqual(dataBlocks);
    expect(committedDuringCheckpoint + small + big + 2, "A must need the abandoned handle's space").toBeGreaterThan(dataBlocks);
    expect(await settles(startA), 'A resolved before the checkpoint finished').toBe(false);

    hold.release();
    expect(await settles(startA), 'start() hung: its wake-up was lost while its checkpoint ran').toBe(true);
    const a = await startA;
    expect(journal.uncheckpointedBlocks).toBe(committedDuringCheckpoint); // the checkpoint freed exactly the fill
    a.log({ a: 'got its space' });
    const sequence = await a.commit();
    expect(sequence).toBe(journal.lastCommittedSequence);
    expect(journal.aborted).toBe(false);
    await journal.close();
  });
});
