import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBlockDevice, Journal, SUPERBLOCK_SENTINEL, type BlockDevice } from './support.js';
import { MemoryDevice } from './memory-device.js';
import { commitRecords } from './commit-records.js';

const BS = 512;
let home: MemoryDevice;
let log: MemoryDevice;

async function fresh(lengthBlocks = 128): Promise<void> {
  log = new MemoryDevice('journal');
  home = new MemoryDevice('home', Buffer.alloc(16 * BS));
  await Journal.format(log, { blockSizeBytes: BS, lengthBlocks });
}

async function open(device: BlockDevice = log, extra: Partial<Parameters<typeof Journal.open>[1]> = {}) {
  const replayed: Array<{ sequence: number; records: unknown[] }> = [];
  /** `tx.last` of each replay call, in order. */
  const lasts: boolean[] = [];
  const applied: Array<{ sequence: number; records: unknown[] }> = [];
  const { journal, recovery } = await Journal.open(device, {
    targets: new Map([[0, home]]),
    replay: async (tx) => {
      replayed.push({ sequence: tx.sequence, records: tx.records });
      lasts.push(tx.last);
    },
    apply: async (tx) => {
      applied.push(tx);
    },
    ...extra,
  });
  return { journal, recovery, replayed, lasts, applied };
}

const image = (byte: number) => Buffer.alloc(BS, byte);

beforeEach(async () => {
  await fresh();
});

describe('journal: commit and recovery', () => {
  it('replays committed records and writes committed images home, in order', async () => {
    const { journal } = await open();
    const h1 = await journal.start(3);
    h1.log({ a: 1 });
    h1.logImage(0, 2, image(7));
    h1.log({ b: Buffer.from('xy') });
    expect(await h1.commit()).toBe(1);
    const h2 = await journal.start(1);
    h2.logImage(0, 2, image(8)); // the latest image of a home block wins
    expect(await h2.commit()).toBe(2);
    // Not yet home: the image cache serves reads until a checkpoint.
    expect((await home.read(2 * BS, BS)).equals(image(0))).toBe(true);
    expect(journal.readImage(0, 2)!.equals(image(8))).toBe(true);
    const recovered = await open(log.crash(() => 'drop'));
    expect(recovered.replayed).toEqual([
      { sequence: 1, records: [{ a: 1 }, { b: Buffer.from('xy') }] },
      { sequence: 2, records: [] },
    ]);
    expect(recovered.recovery).toMatchObject({ replayedTransactions: 2, replayedImages: 2 });
    expect(recovered.lasts).toEqual([false, true]); // the owner learns which replay call is the last
    expect((await home.read(2 * BS, BS)).equals(image(8))).toBe(true);
    expect(await (await recovered.journal.start(1)).commit()).toBe(3);
  });

  it('recovery is idempotent: a second recovery replays the same transactions to the same state', async () => {
    const { journal } = await open();
    await commitRecords(journal, [{ k: 1 }]);
    const h = await journal.start(1);
    h.logImage(0, 3, image(3));
    await h.commit();
    const disk = log.crash(() => 'drop');
    const first = await open(disk.clone());
    const homeAfterFirst = home.snapshot();
    const second = await open(disk.clone());
    expect(second.replayed).toEqual(first.replayed);
    expect(home.snapshot().equals(homeAfterFirst)).toBe(true);
  });

  it('a handle refuses items beyond its credits (JOURNAL_CREDITS_EXCEEDED), and huge handles are refused at start', async () => {
    const { journal } = await open();
    const h = await journal.start(2);
    h.log({ x: 1 });
    h.logImage(0, 1, image(1));
    expect(() => h.revoke(0, 1)).toThrow(expect.objectContaining({ code: 'JOURNAL_CREDITS_EXCEEDED' }));
    await h.commit();
    await expect(journal.start(10_000)).rejects.toMatchObject({ code: 'JOURNAL_CREDITS_EXCEEDED' });
  });

  it('refuses a journal of another volume and a file that is not a journal (JOURNAL_CORRUPT)', async () => {
    await expect(Journal.open(log, { expectedUuid: Buffer.alloc(16, 7), replay: async () => undefined })).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
    await expect(Journal.open(new MemoryDevice('x', Buffer.alloc(4096, 0x41)), { replay: async () => undefined })).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
  });

  it('refuses a journal of another block size than its owner expects (JOURNAL_CORRUPT) before writing any image home', async () => {
    const { journal } = await open();
    const h = await journal.start(1);
    h.logImage(0, 2, image(5));
    await h.commit();
    const disk = log.crash(() => 'drop');
    const homeBefore = home.snapshot();
    await expect(open(disk.clone(), { expectedBlockSizeBytes: 2 * BS })).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
    expect(home.snapshot().equals(homeBefore), 'nothing replayed').toBe(true);
    await open(disk.clone(), { expectedBlockSizeBytes: BS });
    expect((await home.read(2 * BS, BS)).equals(image(5)), 'the right block size replays').toBe(true);
  });

  it('an image for a target the owner does not know is corruption, not silently dropped', async () => {
    const { journal } = await open();
    const h = await journal.start(1);
    h.logImage(5, 1, image(1));
    await h.commit();
    await expect(
      Journal.open(
        log.crash(() => 'drop'),
        { targets: new Map([[0, home]]), replay: async () => undefined },
      ),
    ).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
  });
});

describe('stable buffers: what a commit writes cannot change after the log call', () => {
  it("mutating the caller's record and image buffers after logging changes nothing in the journal", async () => {
    const { journal } = await open();
    const data = Buffer.alloc(64, 0xaa);
    const img = image(0x11);
    const h = await journal.start(2);
    h.log({ data });
    h.logImage(0, 4, img);
    data.fill(0x55);
    img.fill(0x22);
    const committed = h.commit();
    data.fill(0x66);
    img.fill(0x33);
    await committed;
    const recovered = await open(log.crash(() => 'drop'));
    expect(recovered.replayed[0]!.records[0]).toEqual({ data: Buffer.alloc(64, 0xaa) });
    expect((await home.read(4 * BS, BS)).equals(image(0x11))).toBe(true);
  });
});

describe('group commit', () => {
  it('concurrent handles share transactions (fewer journal syncs than handles); apply runs once per transaction, in order, before commit resolves', async () => {
    const { journal, applied } = await open();
    const sequences = await Promise.all(
      Array.from({ length: 64 }, async (_, i) => {
        const h = await journal.start(2);
        h.log({ handle: i, part: 0 });
        h.log({ handle: i, part: 1 });
        const seq = await h.commit();
        expect(applied.map((t) => t.sequence)).toContain(seq);
        return seq;
      }),
    );
    expect(journal.stats.handles).toBe(64);
    expect(journal.stats.commits).toBeLessThan(64);
    expect(applied.map((t) => t.sequence)).toEqual([...new Set(sequences)].sort((a, b) => a - b));
    const records = applied.flatMap((t) => t.records) as Array<{ handle: number; part: number }>;
    for (let i = 0; i < 64; i++) {
      const at = records.findIndex((r) => r.handle === i);
      expect(records[at + 1]).toEqual({ handle: i, part: 1 }); // a handle's records stay together
    }
  });

  it('ordered data is synced before the transaction is written (ext4 data=ordered)', async () => {
    const data = new MemoryDevice('data');
    const order: string[] = [];
    data.before = async (op) => void order.push(`data:${op}`);
    log.before = async (op, offset) => {
      if (offset > 0 || op === 'sync') order.push(`journal:${op}`);
    };
    const { journal } = await open();
    await data.write(0, Buffer.alloc(100, 1));
    const h = await journal.start(1);
    h.log({ points: 'at data' });
    h.orderedData(data);
    await h.commit();
    expect(order.slice(order.indexOf('data:sync'))).toEqual(['data:sync', 'journal:write', 'journal:sync']);
    expect(journal.stats.orderedSyncs).toBe(1);
  });

  it('an ordered-data sync failure fails the batch but leaves the journal usable (nothing was written)', async () => {
    const data = new MemoryDevice('data');
    data.failSyncs = true;
    const { journal } = await open();
    const h = await journal.start(1);
    h.log({ x: 1 });
    h.orderedData(data);
    await expect(h.commit()).rejects.toMatchObject({ code: 'IO_ERROR' });
    expect(journal.aborted).toBe(false);
    expect(await commitRecords(journal, [{ y: 2 }])).toBe(1);
  });

  it('a failed apply aborts the journal (JOURNAL_ABORTED afterwards)', async () => {
    const { journal } = await open(log, { apply: async () => Promise.reject(new Error('home unavailable')) });
    await expect(commitRecords(journal, [{ x: 1 }])).rejects.toThrow('home unavailable');
    await expect(journal.start(1)).rejects.toMatchObject({ code: 'JOURNAL_ABORTED' });
  });
});

describe('revoke', () => {
  it('a revoke in transaction n suppresses replay of images of that block in transactions ≤ n; a later image is replayed', async () => {
    const { journal } = await open();
    const h1 = await journal.start(2);
    h1.logImage(0, 5, image(1));
    h1.logImage(0, 6, image(1));
    await h1.commit();
    const h2 = await journal.start(1);
    h2.revoke(0, 5);
    await h2.commit();
    expect(journal.readImage(0, 5)).toBeUndefined(); // the cache forgets the revoked image
    // The block is reused outside the journal.
    await home.write(5 * BS, image(9));
    await home.sync();
    const h3 = await journal.start(1);
    h3.logImage(0, 6, image(2));
    await h3.commit();
    const recovered = await open(log.crash(() => 'drop'));
    expect(recovered.recovery.revokedImages).toBe(1);
    expect((await home.read(5 * BS, BS)).equals(image(9)), 'revoked image resurrected').toBe(true);
    expect((await home.read(6 * BS, BS)).equals(image(2))).toBe(true);
  });

  it('journaling a block again after revoking it in the same transaction cancels the revoke', async () => {
    const { journal } = await open();
    const h = await journal.start(2);
    h.revoke(0, 7);
    h.logImage(0, 7, image(4));
    await h.commit();
    await open(log.crash(() => 'drop'));
    expect((await home.read(7 * BS, BS)).equals(image(4))).toBe(true);
  });
});

describe('checkpoint', () => {
  it('writes the latest images home, runs beforeTailMove, moves the tail: checkpointed transactions are not replayed', async () => {
    const moved: number[] = [];
    const { journal } = await open(log, { beforeTailMove: async (n) => void moved.push(n) });
    const h = await journal.start(1);
    h.logImage(0, 1, image(5));
    await h.commit();
    await commitRecords(journal, [{ after: 1 }]);
    await journal.checkpoint();
    expect(moved).toEqual([2]);
    expect((await home.read(BS, BS)).equals(image(5))).toBe(true);
    expect(journal.readImage(0, 1)).toBeUndefined();
    expect(journal.uncheckpointedBlocks).toBe(0);
    await commitRecords(journal, [{ n: 3 }]);
    const recovered = await open(log.crash(() => 'drop'));
    expect(recovered.replayed).toEqual([{ sequence: 3, records: [{ n: 3 }] }]);
  });

  it('wraps around the circular log: hundreds of transactions through a 64-block journal, each recoverable', async () => {
    await fresh(64);
    const { journal } = await open();
    for (let i = 1; i <= 300; i++) {
      const h = await journal.start(2);
      h.log({ i });
      h.logImage(0, i % 16, image(i % 256));
      await h.commit(); // start() checkpoints by itself when the log is full
    }
    expect(journal.stats.checkpoints).toBeGreaterThan(5);
    const recovered = await open(log.crash(() => 'drop'));
    const last = recovered.replayed.at(-1)!;
    expect(last).toEqual({ sequence: 300, records: [{ i: 300 }] });
    for (let i = 285; i <= 300; i++) expect((await home.read((i % 16) * BS, BS)).equals(image(i % 256)), `block ${i % 16}`).toBe(true);
  });

  it('start() waits for log space and gets it from a checkpoint (never deadlocks: checkpoints take no caller locks)', async () => {
    await fresh(64);
    const { journal } = await open(log, { checkpointFill: 1 }); // no background checkpoints
    let n = 0;
    while (journal.uncheckpointedBlocks < 50) await commitRecords(journal, [{ n: n++ }]);
    const before = journal.stats.checkpoints;
    const h = await journal.start(10);
    expect(journal.stats.spaceWaits).toBeGreaterThan(0);
    expect(journal.stats.checkpoints).toBeGreaterThan(before);
    h.abandon();
  });
});

describe('frozen copies: no waiting on blocks under commit or checkpoint I/O', () => {
  it('while a commit writing block 3 is stalled, a new handle modifying block 3 logs and stops without waiting for that I/O', async () => {
    const { journal } = await open();
    let release!: () => void;
    const stalled = new Promise<void>((r) => (release = r));
    let stall = true;
    log.before = async (op) => {
      if (op === 'write' && stall) {
        stall = false;
        await stalled; // the commit's write hangs until released
      }
    };
    const h1 = await journal.start(1);
    h1.logImage(0, 3, image(1));
    let c1Done = false;
    const c1 = h1.commit().then(() => (c1Done = true));
    await new Promise((r) => setImmediate(r));
    // Block 3 is under commit I/O now (the write is stalled).
    const h2 = await journal.start(1); // would hang here if start waited for the commit
    h2.logImage(0, 3, image(2)); // … or here, if the block were locked under I/O
    const events: string[] = [];
    const c2 = h2.stop().then(() => events.push('h2 committed'));
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- c1Done is set by the commit's callback, which TypeScript's narrowing does not see
    events.push(`h2 logged and stopped while commit 1 ${c1Done ? 'had finished' : 'was still stalled'}`);
    release();
    await c1;
    await c2;
    expect(events).toEqual(['h2 logged and stopped while commit 1 was still stalled', 'h2 committed']);
    expect(journal.readImage(0, 3)!.equals(image(2))).toBe(true);
  });

  it('a checkpoint writes the image it captured; a newer image committed meanwhile stays in the cache and wins', async () => {
    const { journal } = await open();
    const h1 = await journal.start(1);
    h1.logImage(0, 2, image(1));
    await h1.commit();
    let release!: () => void;
    const stalled = new Promise<void>((r) => (release = r));
    home.before = async (op) => {
      if (op === 'write') await stalled;
    };
    const cp = journal.checkpoint();
    await new Promise((r) => setImmediate(r));
    const h2 = await journal.start(1);
    h2.logImage(0, 2, image(2));
    await h2.commit(); // does not wait for the checkpoint's home write
    release();
    home.before = undefined;
    await cp;
    expect((await home.read(2 * BS, BS)).equals(image(1))).toBe(true);
    expect(journal.readImage(0, 2)!.equals(image(2))).toBe(true);
    await journal.checkpoint();
    expect((await home.read(2 * BS, BS)).equals(image(2))).toBe(true);
  });
});

describe('journal on a real file', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowvol-journal-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('formats sparse, commits with fdatasync, reopens and replays', async () => {
    const path = join(dir, 'journal');
    const dev = await FileBlockDevice.open(path, { create: true });
    await Journal.format(dev, { blockSizeBytes: 4096, lengthBlocks: 1024 });
    const { journal } = await Journal.open(dev, { replay: async () => undefined });
    await commitRecords(journal, [{ on: 'disk' }]);
    await journal.close();
    const replayed: unknown[] = [];
    const again = await Journal.open(await FileBlockDevice.open(path), { replay: async (tx) => void replayed.push(...tx.records) });
    expect(replayed).toEqual([{ on: 'disk' }]);
    expect(SUPERBLOCK_SENTINEL).toBe(0x43564a4c);
    await again.journal.close();
  });
});

describe('commit triggers', () => {
  it('a stopped handle waits in the running transaction until a flush request, the size limit or the commit interval', async () => {
    const { journal } = await open(log, { commitIntervalMs: 60_000 });
    const h = await journal.start(1);
    h.log({ lazy: 1 });
    let committed = false;
    const p = h.stop().then(() => (committed = true));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(committed, 'stop() alone must not force a commit').toBe(false);
    expect(journal.stats.handles, 'no handle committed yet').toBe(0);
    await journal.flush(); // flush request
    await p;
    expect(committed).toBe(true);
  });

  it('the commit interval commits a stopped handle by itself', async () => {
    const { journal } = await open(log, { commitIntervalMs: 20 });
    const h = await journal.start(1);
    h.log({ lazy: 2 });
    expect(await h.stop()).toBe(1); // resolves only because the interval timer fired
  });

  it('the size limit commits without a flush request', async () => {
    const { journal } = await open(log, { commitIntervalMs: 60_000 });
    const stops: Array<Promise<number>> = [];
    while (journal.stats.commits === 0 && stops.length < 200) {
      const h = await journal.start(4);
      for (let i = 0; i < 4; i++) h.logImage(0, i, image(i));
      stops.push(h.stop());
      await new Promise((r) => setImmediate(r));
    }
    expect(journal.stats.commits).toBeGreaterThan(0);
    await journal.flush();
    await Promise.all(stops);
  });
});

describe('regressions', () => {
  it("an image and a later handle's revoke of the same block in one transaction: the revoke wins in the cache, at checkpoint and at recovery alike", async () => {
    const { journal } = await open(log, { commitIntervalMs: 60_000 });
    const h1 = await journal.start(1);
    h1.logImage(0, 3, image(0x31));
    const p1 = h1.stop();
    const h2 = await journal.start(1);
    h2.revoke(0, 3);
    const p2 = h2.stop();
    await journal.flush();
    expect(await p1).toBe(await p2); // one transaction
    expect(journal.readImage(0, 3)).toBeUndefined();
    const crashed = log.crash(() => 'drop');
    await journal.checkpoint();
    expect((await home.read(3 * BS, BS)).equals(image(0))).toBe(true);
    home = new MemoryDevice('home', Buffer.alloc(16 * BS));
    await open(crashed);
    expect((await home.read(3 * BS, BS)).equals(image(0))).toBe(true);
  });

  it('start() on a full log while the transactions in the way are still being applied waits (no spin) and then proceeds', async () => {
    await fresh(64);
    let slowApply = false;
    const { journal } = await open(log, {
      checkpointFill: 1,
      apply: async () => {
        if (slowApply) await new Promise((r) => setTimeout(r, 20));
      },
    });
    while (journal.uncheckpointedBlocks < 40) await commitRecords(journal, [{ fill: 1 }]);
    slowApply = true;
    // These commits stay in apply for 20 ms each while the log is nearly full.
    const committing = Array.from({ length: 3 }, () => commitRecords(journal, [{ slow: 1 }]));
    const h = await journal.start(10); // must wait for space, not spin the event loop
    h.abandon();
    await Promise.all(committing);
    expect(journal.stats.spaceWaits).toBeGreaterThan(0);
  });

  it('a checkpoint call covers every transaction applied before it, even when another checkpoint is running', async () => {
    const { journal } = await open();
    const h = await journal.start(1);
    h.logImage(0, 1, image(1));
    await h.commit();
    let release!: () => void;
    const stalled = new Promise<void>((r) => (release = r));
    home.before = async (op) => {
      if (op === 'write') await stalled;
    };
    const first = journal.checkpoint();
    await new Promise((r) => setImmediate(r));
    const h2 = await journal.start(1);
    h2.logImage(0, 2, image(2));
    await h2.commit();
    const second = journal.checkpoint();
    release();
    home.before = undefined;
    await first;
    await second;
    expect((await home.read(2 * BS, BS)).equals(image(2)), 'the second checkpoint must include transaction 2').toBe(true);
    expect(journal.uncheckpointedBlocks).toBe(0);
  });
});
