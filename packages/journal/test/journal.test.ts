import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  COMMIT_BYTES,
  FileBlockDevice,
  Journal,
  SUPERBLOCK_BYTES,
  TX_HEADER_BYTES,
  type RecoveredTransaction,
} from '../src/index.js';

let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-journal-'));
  path = join(dir, 'journal');
  const device = await FileBlockDevice.open(path, { create: true });
  await Journal.format(device);
  await device.close();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Opens the journal, collecting what recovery replays. */
async function openCollect(): Promise<{ journal: Journal; replayed: RecoveredTransaction[]; recovery: Awaited<ReturnType<typeof Journal.open>>['recovery'] }> {
  const replayed: RecoveredTransaction[] = [];
  const { journal, recovery } = await Journal.open(await FileBlockDevice.open(path), {
    replay: async (tx) => {
      replayed.push(tx);
    },
  });
  return { journal, replayed, recovery };
}

describe('journal commit and recovery', () => {
  it('replays committed transactions in order after reopen', async () => {
    const { journal } = await openCollect();
    const s1 = await journal.commit([{ a: 1 }, { b: Buffer.from('xy') }]);
    const s2 = await journal.commit([{ c: 'three' }]);
    expect([s1, s2]).toEqual([1, 2]);
    await journal.close();
    const { journal: j2, replayed, recovery } = await openCollect();
    expect(replayed.map((t) => t.sequence)).toEqual([1, 2]);
    expect(replayed[0]!.records).toEqual([{ a: 1 }, { b: Buffer.from('xy') }]);
    expect(replayed[1]!.records).toEqual([{ c: 'three' }]);
    expect(recovery.discardedBytes).toBe(0);
    // New commits continue the sequence.
    expect(await j2.commit([{ d: 4 }])).toBe(3);
    await j2.close();
  });

  it('recovery is idempotent: reopening without a checkpoint replays the same transactions again', async () => {
    const { journal } = await openCollect();
    await journal.commit([{ k: 1 }]);
    await journal.close();
    const first = await openCollect();
    await first.journal.close();
    const second = await openCollect();
    expect(second.replayed).toEqual(first.replayed);
    await second.journal.close();
  });

  it('handle refuses records beyond its credits (JOURNAL_CREDITS_EXCEEDED)', async () => {
    const { journal } = await openCollect();
    const handle = journal.start(2);
    handle.log({ x: 1 });
    handle.log({ x: 2 });
    expect(() => handle.log({ x: 3 })).toThrowError(expect.objectContaining({ code: 'JOURNAL_CREDITS_EXCEEDED' }));
    await handle.commit();
    await journal.close();
  });

  it('refuses a journal of another volume (uuid mismatch → JOURNAL_CORRUPT)', async () => {
    const device = await FileBlockDevice.open(path);
    await expect(Journal.open(device, { expectedUuid: Buffer.alloc(16, 7), replay: async () => undefined })).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
    await device.close();
  });

  it('refuses a file that is not a journal (JOURNAL_CORRUPT)', async () => {
    await writeFile(path, Buffer.alloc(SUPERBLOCK_BYTES, 0x41));
    const device = await FileBlockDevice.open(path);
    await expect(Journal.open(device, { replay: async () => undefined })).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
    await device.close();
  });
});

describe('guarantee 5: atomic commits — a torn or corrupt tail is discarded, never replayed', () => {
  async function threeTransactions(): Promise<number[]> {
    const { journal } = await openCollect();
    const ends: number[] = [];
    for (let i = 1; i <= 3; i++) {
      await journal.commit([{ i, pad: Buffer.alloc(100 * i, i) }]);
      ends.push((await stat(path)).size);
    }
    await journal.close();
    return ends;
  }

  it('truncating mid-transaction drops only that transaction, and the next commit follows the last valid one', async () => {
    const ends = await threeTransactions();
    await truncate(path, ends[2]! - 7); // tear the commit block of transaction 3
    const { journal, replayed, recovery } = await openCollect();
    expect(replayed.map((t) => t.sequence)).toEqual([1, 2]);
    expect(recovery.discardedBytes).toBe(ends[2]! - 7 - ends[1]!);
    expect((await stat(path)).size).toBe(ends[1]);
    expect(await journal.commit([{ after: true }])).toBe(3);
    await journal.close();
    const again = await openCollect();
    expect(again.replayed.map((t) => t.records)).toEqual([[{ i: 1, pad: Buffer.alloc(100, 1) }], [{ i: 2, pad: Buffer.alloc(200, 2) }], [{ after: true }]]);
    await again.journal.close();
  });

  it('truncating inside a header drops the transaction', async () => {
    const ends = await threeTransactions();
    await truncate(path, ends[1]! + TX_HEADER_BYTES - 3);
    const { journal, replayed } = await openCollect();
    expect(replayed.map((t) => t.sequence)).toEqual([1, 2]);
    await journal.close();
  });

  for (const where of ['header', 'payload', 'commit block'] as const) {
    it(`a flipped byte in the ${where} of the middle transaction stops replay before it`, async () => {
      const ends = await threeTransactions();
      const start = ends[0]!;
      const offset = where === 'header' ? start + 10 : where === 'payload' ? start + TX_HEADER_BYTES + 50 : ends[1]! - COMMIT_BYTES + 18;
      const bytes = await readFile(path);
      bytes[offset]! ^= 0x01;
      await writeFile(path, bytes);
      const { journal, replayed, recovery } = await openCollect();
      expect(replayed.map((t) => t.sequence)).toEqual([1]);
      expect(recovery.stopReason).not.toBe('end of journal');
      await journal.close();
    });
  }

  it('a transaction copied from another journal does not validate (checksums seeded with the uuid)', async () => {
    const { journal } = await openCollect();
    await journal.commit([{ mine: 1 }]);
    await journal.close();
    const otherPath = join(dir, 'other');
    const other = await FileBlockDevice.open(otherPath, { create: true });
    await Journal.format(other);
    const { journal: oj } = await Journal.open(other, { replay: async () => undefined });
    await oj.commit([{ theirs: 1 }]);
    const firstEnd = (await stat(otherPath)).size;
    await oj.commit([{ theirs: 2 }]);
    await oj.close();
    // Their sequence-2 transaction has the sequence ours expects next: only the uuid seed tells it apart.
    const theirs = (await readFile(otherPath)).subarray(firstEnd);
    await writeFile(path, Buffer.concat([await readFile(path), theirs]));
    const { journal: j2, replayed } = await openCollect();
    expect(replayed.map((t) => t.records)).toEqual([[{ mine: 1 }]]);
    await j2.close();
  });
});

describe('checkpoint', () => {
  it('moves the tail: checkpointed transactions are not replayed; the file is trimmed when empty', async () => {
    const { journal } = await openCollect();
    await journal.commit([{ n: 1 }]);
    await journal.commit([{ n: 2 }]);
    await journal.commit([{ n: 3 }]);
    await journal.checkpoint(2);
    expect(journal.uncheckpointedBytes).toBeGreaterThan(0);
    await journal.close();
    const partial = await openCollect();
    expect(partial.replayed.map((t) => t.sequence)).toEqual([3]);
    await partial.journal.checkpoint(3);
    expect((await stat(path)).size).toBe(SUPERBLOCK_BYTES);
    expect(await partial.journal.commit([{ n: 4 }])).toBe(4);
    await partial.journal.close();
    const after = await openCollect();
    expect(after.replayed.map((t) => [t.sequence, t.records])).toEqual([[4, [{ n: 4 }]]]);
    await after.journal.close();
  });

  it('a crash between the superblock write and the trim replays nothing stale (sequence check)', async () => {
    const { journal } = await openCollect();
    await journal.commit([{ n: 1 }]);
    await journal.commit([{ n: 2 }]);
    await journal.close();
    const before = await readFile(path);
    const opened = await openCollect();
    await opened.journal.checkpoint(2);
    await opened.journal.close();
    // Simulate the crash: the new superblock reached the disk, the truncate did not.
    const sb = (await readFile(path)).subarray(0, SUPERBLOCK_BYTES);
    await writeFile(path, Buffer.concat([sb, before.subarray(SUPERBLOCK_BYTES)]));
    const { journal: j2, replayed } = await openCollect();
    expect(replayed).toEqual([]);
    expect(await j2.commit([{ n: 3 }])).toBe(3);
    await j2.close();
  });
});

describe('stable buffers (seed 000): what a commit writes cannot change after log()', () => {
  it('mutating the caller\'s Buffer after log() does not change the committed record', async () => {
    const { journal } = await openCollect();
    const data = Buffer.alloc(64, 0xaa);
    const handle = journal.start(1);
    handle.log({ data });
    data.fill(0x55); // the caller reuses its buffer before the commit runs
    const committed = handle.commit();
    data.fill(0x11); // … and while it runs
    await committed;
    await journal.close();
    const { journal: j2, replayed } = await openCollect();
    expect(replayed[0]!.records[0]).toEqual({ data: Buffer.alloc(64, 0xaa) });
    await j2.close();
  });
});

describe('group commit', () => {
  it('handles committed concurrently share transactions (fewer syncs than handles); apply sees every transaction once, in order, before commit() resolves', async () => {
    const applied: number[] = [];
    const appliedRecords: unknown[] = [];
    const { journal } = await Journal.open(await FileBlockDevice.open(path), {
      replay: async () => undefined,
      apply: async (tx) => {
        applied.push(tx.sequence);
        appliedRecords.push(...tx.records);
      },
    });
    const commits = Array.from({ length: 64 }, (_, i) => {
      const h = journal.start(2);
      h.log({ handle: i, part: 0 });
      h.log({ handle: i, part: 1 });
      return h.commit().then((sequence) => {
        // Applied before the handle's commit resolves.
        expect(applied).toContain(sequence);
        return sequence;
      });
    });
    const sequences = await Promise.all(commits);
    expect(journal.stats.handles).toBe(64);
    expect(journal.stats.commits).toBeLessThan(64);
    expect(journal.stats.syncs).toBe(journal.stats.commits);
    expect(applied).toEqual([...applied].sort((a, b) => a - b));
    expect(new Set(applied).size).toBe(applied.length);
    // A handle's records stay together and in order inside its transaction.
    for (let i = 0; i < 64; i++) {
      const at = appliedRecords.findIndex((r) => (r as { handle: number }).handle === i);
      expect(appliedRecords[at + 1]).toEqual({ handle: i, part: 1 });
    }
    expect(Math.max(...sequences)).toBe(journal.lastCommittedSequence);
    await journal.close();
    const { replayed, journal: j2 } = await openCollect();
    expect(replayed.flatMap((t) => t.records)).toHaveLength(128);
    await j2.close();
  });

  it('a failed apply aborts the journal (JOURNAL_ABORTED afterwards)', async () => {
    let fail = true;
    const { journal } = await Journal.open(await FileBlockDevice.open(path), {
      replay: async () => undefined,
      apply: async () => {
        if (fail) throw new Error('home unavailable');
      },
    });
    await expect(journal.commit([{ x: 1 }])).rejects.toThrow('home unavailable');
    fail = false;
    expect(() => journal.start(1)).toThrowError(expect.objectContaining({ code: 'JOURNAL_ABORTED' }));
    await journal.close();
  });
});
