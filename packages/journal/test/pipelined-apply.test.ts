import { describe, expect, it } from 'vitest';
import { Journal } from '../src/index.js';
import { MemoryDevice } from './memory-device.js';
import { commitRecords } from './commit-records.js';

/**
 * The commit pipeline (docs/ARCHITECTURE.md §5.2): the apply of one
 * transaction overlaps the write and sync of the next; applies run in
 * sequence order; a handle's commit resolves only once its own transaction
 * is applied; a failed apply fails every later transaction's handles with
 * JOURNAL_APPLY_FAILED naming their own sequence (each is durable, and the
 * next open replays it).
 */
const BS = 512;

async function fresh(): Promise<MemoryDevice> {
  const log = new MemoryDevice('journal');
  await Journal.format(log, { blockSizeBytes: BS, lengthBlocks: 128 });
  return log;
}

/** A promise and the function that resolves it. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

/** Resolves once `test()` holds, checking every millisecond; fails after `ms`. */
async function until(test: () => boolean, what: string, ms = 2000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** What settled, in order: `resolved <label> <sequence>` or `rejected <label> <code> <sequence>`. */
function track(events: string[], label: string, commit: Promise<number>): Promise<void> {
  return commit.then(
    (sequence) => void events.push(`resolved ${label} ${sequence}`),
    (err: unknown) => {
      const { code, details } = err as { code?: string; details?: { sequence?: number } };
      events.push(`rejected ${label} ${String(code)} ${String(details?.sequence)}`);
    },
  );
}

/** A fresh journal whose apply of transaction 1 waits for `first` to open; `applied` lists the sequences applied, in order. */
async function gatedJournal(): Promise<{ journal: Journal; first: ReturnType<typeof gate>; applied: number[] }> {
  const first = gate();
  const applied: number[] = [];
  const { journal } = await Journal.open(await fresh(), {
    replay: async () => undefined,
    apply: async (tx) => {
      if (tx.sequence === 1) await first.opened;
      applied.push(tx.sequence);
    },
  });
  return { journal, first, applied };
}

describe('the commit pipeline', () => {
  it('writes and syncs the next transaction while the apply of the one before runs; applies in order; each commit resolves after its own apply', async () => {
    const { journal, first, applied } = await gatedJournal();
    const events: string[] = [];
    const a = track(events, 'a', commitRecords(journal, [{ a: 1 }]));
    await until(() => journal.stats.commits === 1, 'transaction 1 to be durable');
    const syncsBefore = journal.stats.syncs;
    const b = track(events, 'b', commitRecords(journal, [{ b: 2 }]));
    // Transaction 2 reaches the log (written and synced) while transaction 1 is still being applied.
    await until(() => journal.stats.syncs === syncsBefore + 1, 'transaction 2 to be synced');
    expect(applied).toEqual([]);
    expect(events).toEqual([]);
    first.open();
    await Promise.all([a, b]);
    expect(applied).toEqual([1, 2]);
    expect(events).toEqual(['resolved a 1', 'resolved b 2']);
    await journal.close();
  });

  it('bounded: while one apply runs, one more transaction is written, not a third', async () => {
    const { journal, first, applied } = await gatedJournal();
    const a = commitRecords(journal, [{ a: 1 }]);
    await until(() => journal.stats.commits === 1, 'transaction 1 to be durable');
    const b = commitRecords(journal, [{ b: 2 }]);
    await until(() => journal.stats.commits === 2, 'transaction 2 to be durable');
    const c = commitRecords(journal, [{ c: 3 }]);
    // However long it waits, the third transaction is not written before the first is applied.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(journal.stats.commits).toBe(2);
    first.open();
    expect(await Promise.all([a, b, c])).toEqual([1, 2, 3]);
    expect(applied).toEqual([1, 2, 3]);
    await journal.close();
  });

  it('a failed apply: the transaction after it, durable too, fails with JOURNAL_APPLY_FAILED naming its own sequence, and recovery replays both', async () => {
    const log = await fresh();
    const first = gate();
    const { journal } = await Journal.open(log, {
      replay: async () => undefined,
      apply: async (tx) => {
        if (tx.sequence === 1) {
          await first.opened;
          throw new Error('home is full');
        }
      },
    });
    const events: string[] = [];
    const a = track(events, 'a', commitRecords(journal, [{ a: 1 }]));
    await until(() => journal.stats.commits === 1, 'transaction 1 to be durable');
    const b = track(events, 'b', commitRecords(journal, [{ b: 2 }]));
    await until(() => journal.stats.commits === 2, 'transaction 2 to be durable');
    first.open();
    await Promise.all([a, b]);
    expect(events).toEqual(['rejected a JOURNAL_APPLY_FAILED 1', 'rejected b JOURNAL_APPLY_FAILED 2']);
    expect(journal.aborted).toBe(true);
    await expect(journal.start(1)).rejects.toMatchObject({ code: 'JOURNAL_ABORTED' });
    const replayed: unknown[][] = [];
    await Journal.open(
      log.crash(() => 'drop'),
      { replay: async (tx) => void replayed.push(tx.records) },
    );
    expect(replayed).toEqual([[{ a: 1 }], [{ b: 2 }]]);
  });

  it('a start waiting for log space behind a failed apply wakes with JOURNAL_ABORTED, not at close', async () => {
    const first = gate();
    const { journal } = await Journal.open(await fresh(), {
      replay: async () => undefined,
      checkpointFill: 1,
      apply: async (tx) => {
        if (tx.sequence !== 1) return;
        await first.opened;
        throw new Error('home is full');
      },
    });
    // Handles of 25 records of nearly a block each: each reserves 28 of the log's 126 data blocks, about what it writes.
    const group = async (ns: number[]): Promise<Array<Promise<unknown>>> => {
      const handles = await Promise.all(ns.map(() => journal.start(25)));
      handles.forEach((h, k) => {
        for (let i = 0; i < 25; i++) h.log({ n: ns[k], i, pad: 'x'.repeat(480) });
      });
      // Stopped, then one commit request: one transaction of all of them.
      return handles.map((h, k) => (k < handles.length - 1 ? h.stop() : h.commit()).catch((err: unknown) => err));
    };
    // Transactions 1 and 2 durable, neither applied (the first one's apply waits), nothing queued.
    const settled = await group([1, 2]);
    await until(() => journal.stats.commits === 1, 'transaction 1 to be durable');
    settled.push(...(await group([3, 4])));
    await until(() => journal.stats.commits === 2, 'transaction 2 to be durable');
    const waitsBefore = journal.stats.spaceWaits;
    const waiting = journal.start(25).then(
      () => 'started',
      (err: unknown) => (err as { code?: string }).code,
    );
    await until(() => journal.stats.spaceWaits > waitsBefore, 'a start to wait for log space');
    first.open();
    expect(await waiting).toBe('JOURNAL_ABORTED');
    for (const err of await Promise.all(settled)) expect(err).toMatchObject({ code: 'JOURNAL_APPLY_FAILED' });
    await journal.close();
  }, 5000);

  it('a commit requested while the last apply runs is not left to the commit interval', async () => {
    const log = await fresh();
    const first = gate();
    const { journal } = await Journal.open(log, {
      replay: async () => undefined,
      // Far beyond the test's timeout: a commit left to the interval times the test out.
      commitIntervalMs: 600_000,
      apply: async (tx) => {
        if (tx.sequence === 1) await first.opened;
      },
    });
    const a = commitRecords(journal, [{ a: 1 }]);
    await until(() => journal.stats.commits === 1, 'transaction 1 to be durable');
    const b = commitRecords(journal, [{ b: 2 }]);
    // Let b's request find the writer busy with the apply, then end the apply.
    await new Promise((resolve) => setTimeout(resolve, 5));
    first.open();
    expect(await a).toBe(1);
    expect(await b).toBe(2);
    await journal.close();
  }, 4000);
});
