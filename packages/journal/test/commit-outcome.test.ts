import { describe, expect, it } from 'vitest';
import { IoError, NoSpaceError, type BlockDevice } from '@cowvol/base';
import { Journal } from '../src/index.js';
import { MemoryDevice } from './memory-device.js';
import { commitRecords } from './commit-records.js';

/**
 * What a failed commit says about its transaction (docs/ARCHITECTURE.md,
 * "Outcomes of a failed command"; FORMAT.md §5.7): a failed write — it
 * does not exist; a failed flush — OUTCOME_UNKNOWN; a failed apply —
 * JOURNAL_APPLY_FAILED, and recovery replays it. And a read-only open writes
 * nothing.
 */
const BS = 512;

async function fresh(): Promise<MemoryDevice> {
  const log = new MemoryDevice('journal');
  await Journal.format(log, { blockSizeBytes: BS, lengthBlocks: 128 });
  return log;
}

async function recovered(device: BlockDevice, readOnly = false): Promise<Array<{ sequence: number; records: unknown[] }>> {
  const replayed: Array<{ sequence: number; records: unknown[] }> = [];
  const home = new MemoryDevice('home', Buffer.alloc(16 * BS));
  await Journal.open(device, {
    targets: new Map([[0, home]]),
    replay: async (tx) => void replayed.push({ sequence: tx.sequence, records: tx.records }),
    readOnly,
  });
  return replayed;
}

describe('the outcome of a failed commit', () => {
  it('a failed journal write: its own error (NO_SPACE), and the transaction does not exist', async () => {
    const log = await fresh();
    const { journal } = await Journal.open(log, { replay: async () => undefined });
    await commitRecords(journal, [{ first: 1 }]);
    log.before = async (op) => {
      if (op === 'write') throw new NoSpaceError('injected: no space');
    };
    await expect(commitRecords(journal, [{ second: 2 }])).rejects.toMatchObject({ code: 'NO_SPACE' });
    expect(journal.aborted).toBe(true);
    log.before = undefined;
    expect((await recovered(log.crash(() => 'apply'))).map((t) => t.records)).toEqual([[{ first: 1 }]]);
  });

  it('a failed flush after the write: OUTCOME_UNKNOWN; either outcome recovers', async () => {
    const log = await fresh();
    const { journal } = await Journal.open(log, { replay: async () => undefined });
    log.failSyncs = true;
    const err = await commitRecords(journal, [{ maybe: 1 }]).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'OUTCOME_UNKNOWN', details: { sequence: 1 } });
    expect((err as Error).cause).toBeInstanceOf(IoError);
    expect(journal.aborted).toBe(true);
    expect((await recovered(log.crash(() => 'apply'))).map((t) => t.records)).toEqual([[{ maybe: 1 }]]);
    expect(await recovered(log.crash(() => 'drop'))).toEqual([]);
  });

  it('a failed apply after the flush: JOURNAL_APPLY_FAILED naming the sequence, and recovery replays it', async () => {
    const log = await fresh();
    const { journal } = await Journal.open(log, { replay: async () => undefined, apply: () => Promise.reject(new Error('home is full')) });
    await expect(commitRecords(journal, [{ durable: 1 }])).rejects.toMatchObject({ code: 'JOURNAL_APPLY_FAILED', details: { sequence: 1 } });
    await expect(journal.start(1)).rejects.toMatchObject({ code: 'JOURNAL_ABORTED' });
    // Durable: even a crash that drops every unsynced write keeps it.
    expect((await recovered(log.crash(() => 'drop'))).map((t) => t.records)).toEqual([[{ durable: 1 }]]);
  });
});

describe('a read-only open', () => {
  it('replays records without writing; block images to write home refuse it with JOURNAL_NEEDS_RECOVERY', async () => {
    const log = await fresh();
    const { journal } = await Journal.open(log, { replay: async () => undefined });
    await commitRecords(journal, [{ only: 'records' }]);
    const recordsOnly = log.crash(() => 'apply');
    const writes: string[] = [];
    recordsOnly.before = async (op) => void writes.push(op);
    expect((await recovered(recordsOnly, true)).map((t) => t.records)).toEqual([[{ only: 'records' }]]);
    expect(writes).toEqual([]);

    const h = await journal.start(1);
    h.logImage(0, 3, Buffer.alloc(BS, 7));
    await h.commit();
    const withImage = log.crash(() => 'apply');
    withImage.before = async (op) => void writes.push(op);
    await expect(recovered(withImage, true)).rejects.toMatchObject({ code: 'JOURNAL_NEEDS_RECOVERY', details: { sequence: 2 } });
    expect(writes).toEqual([]);

    const ro = await Journal.open(recordsOnly, { replay: async () => undefined, readOnly: true });
    await expect(ro.journal.start(1)).rejects.toMatchObject({ code: 'ASSERTION_FAILED' });
  });
});
