import { describe, expect, it } from 'vitest';
import { type BlockDevice } from '@cowvol/base';
import { Journal, SUPERBLOCK_AREA_BYTES, decodeSuperblock, replayJournal, scanJournal } from '../src/index.js';
import { MemoryDevice } from './memory-device.js';
import { commitRecords } from './commit-records.js';

/**
 * Recovery through a bounded read window (recovery.ts, log-reader.ts): a
 * journal many times larger than the window recovers exactly as with a
 * window larger than the log; the device never returns more than one window
 * per read, the window buffer is reused, the replay pass streams (it hands
 * transactions on while reading, not after reading the log), and the scan
 * keeps no records or images. Memory is measured as bytes the device hands
 * out and buffers it is given, not as wall-clock or RSS.
 */
const BS = 512;
const LENGTH = 400;
const HOME_BLOCKS = 24;

/** Counts every read of an inner device. */
class CountingDevice implements BlockDevice {
  /** Reads in order: bytes, and for `readInto` the buffer read into. */
  readonly reads: Array<{ offsetBytes: number; lengthBytes: number; into?: ArrayBufferLike }> = [];

  constructor(private readonly inner: MemoryDevice) {}

  async readInto(offsetBytes: number, into: Uint8Array): Promise<void> {
    this.reads.push({ offsetBytes, lengthBytes: into.length, into: into.buffer });
    await this.inner.readInto(offsetBytes, into);
  }

  get name(): string {
    return this.inner.name;
  }

  get bytesRead(): number {
    return this.reads.reduce((n, r) => n + r.lengthBytes, 0);
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.reads.push({ offsetBytes, lengthBytes });
    return this.inner.read(offsetBytes, lengthBytes);
  }

  write(offsetBytes: number, data: Uint8Array): Promise<void> {
    return this.inner.write(offsetBytes, data);
  }

  sync(): Promise<void> {
    return this.inner.sync();
  }

  sizeBytes(): Promise<number> {
    return this.inner.sizeBytes();
  }

  truncate(sizeBytes: number): Promise<void> {
    return this.inner.truncate(sizeBytes);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

const imageOf = (sequence: number, block: number): Buffer => {
  const b = Buffer.alloc(BS, (sequence * 7 + block) & 0xff);
  b.writeUInt32BE(sequence, 8);
  return b;
};

interface Written {
  log: MemoryDevice;
  /** Records committed after the last checkpoint, by sequence. */
  records: Map<number, unknown[]>;
  /** Home content the recovery must leave: the latest un-revoked image of each block, or the content written outside the journal. */
  home: Buffer;
  /** Blocks revoked after the checkpoint. */
  revoked: Set<number>;
}

/**
 * A journal whose un-checkpointed part wraps around the end of the log and
 * holds ~250 blocks of transactions with records (some with binary values),
 * images and revokes: far more than a window of a few blocks.
 */
async function writeJournal(): Promise<Written> {
  const log = new MemoryDevice('journal');
  const home = new MemoryDevice('home', Buffer.alloc(HOME_BLOCKS * BS));
  await Journal.format(log, { blockSizeBytes: BS, lengthBlocks: LENGTH });
  const { journal } = await Journal.open(log, { targets: new Map([[0, home]]), replay: async () => undefined, checkpointFill: 1 });
  // Phase 1, checkpointed: moves the tail to the back half of the log.
  for (let i = 0; i < 30; i++) await commitRecords(journal, [{ phase: 1, i, pad: 'x'.repeat(300) }]);
  await journal.checkpoint();
  const records = new Map<number, unknown[]>();
  const revoked = new Set<number>();
  for (let i = 0; i < 60; i++) {
    const recs = [
      { i, bin: Buffer.from([i, i + 1, i + 2]) },
      { i, text: `transaction ${i} `.repeat(1 + (i % 25)) },
    ];
    const blocks = [i % HOME_BLOCKS, (i * 5 + 3) % HOME_BLOCKS];
    const h = await journal.start(recs.length + blocks.length + 1);
    for (const r of recs) h.log(r);
    if (i % 9 === 4) {
      const b = (i * 11) % HOME_BLOCKS;
      h.revoke(0, b);
      revoked.add(b);
    }
    const seq = journal.lastCommittedSequence + 1;
    for (const b of blocks) if (!(i % 9 === 4 && b === (i * 11) % HOME_BLOCKS)) h.logImage(0, b, imageOf(seq, b));
    expect(await h.commit()).toBe(seq);
    records.set(seq, recs);
  }
  const tail = decodeSuperblock(await log.read(0, SUPERBLOCK_AREA_BYTES), log.name);
  expect(tail.tailBlock + journal.uncheckpointedBlocks).toBeGreaterThan(LENGTH); // the live part wraps
  expect(journal.uncheckpointedBlocks).toBeGreaterThan(200);
  return { log: log.crash(() => 'apply'), records, home: home.snapshot(), revoked };
}

async function recover(log: BlockDevice, home: MemoryDevice, recoveryWindowBytes?: number) {
  const replayed: Array<{ sequence: number; records: unknown[]; last: boolean }> = [];
  const { journal, recovery } = await Journal.open(log, {
    targets: new Map([[0, home]]),
    replay: async (tx) => void replayed.push({ sequence: tx.sequence, records: tx.records, last: tx.last }),
    ...(recoveryWindowBytes === undefined ? {} : { recoveryWindowBytes }),
  });
  await journal.close();
  return { replayed, recovery, home: home.snapshot() };
}

describe('recovery through a bounded read window', () => {
  it('a journal much larger than the window (wrapping around) recovers exactly as with a window larger than the log', async () => {
    const w = await writeJournal();
    const reference = await recover(w.log.clone(), new MemoryDevice('home', Buffer.alloc(HOME_BLOCKS * BS)));
    expect(reference.replayed.map((t) => t.sequence)).toEqual([...w.records.keys()]);
    expect(reference.replayed.map((t) => t.records)).toEqual([...w.records.values()]);
    expect(reference.replayed.map((t) => t.last)).toEqual([...w.records.keys()].map((_, i, a) => i === a.length - 1));
    expect(reference.recovery.revokedImages).toBeGreaterThan(0);
    for (const windowBytes of [BS, 2 * BS, 3 * BS, 64 * BS]) {
      const got = await recover(new CountingDevice(w.log.clone()), new MemoryDevice('home', Buffer.alloc(HOME_BLOCKS * BS)), windowBytes);
      expect(got.replayed, `window ${windowBytes}`).toEqual(reference.replayed);
      expect(got.recovery).toEqual(reference.recovery);
      expect(got.home.equals(reference.home), `window ${windowBytes}: home content`).toBe(true);
    }
    // And the home holds what was committed: each block's latest image (never a revoked one).
    for (let b = 0; b < HOME_BLOCKS; b++) {
      let latest: number | undefined;
      for (const [seq] of w.records) {
        const i = seq - [...w.records.keys()][0]!;
        const revokedHere = i % 9 === 4 && b === (i * 11) % HOME_BLOCKS;
        if (!revokedHere && (b === i % HOME_BLOCKS || b === (i * 5 + 3) % HOME_BLOCKS)) latest = seq;
        if (revokedHere) latest = undefined;
      }
      const got = reference.home.subarray(b * BS, (b + 1) * BS);
      if (latest !== undefined) expect(got.equals(imageOf(latest, b)), `block ${b}`).toBe(true);
      else expect(got.equals(Buffer.alloc(BS)), `block ${b}: revoked image must not come back`).toBe(true);
    }
  });

  it('never reads more than one window at a time, refills one buffer, and keeps no record or image after the scan', async () => {
    const w = await writeJournal();
    const window = 4 * BS;
    const dev = new CountingDevice(w.log.clone());
    const sb = decodeSuperblock(await dev.read(0, 1024), dev.name);
    const scan = await scanJournal(dev, sb, { windowBytes: window });
    // The scan keeps positions and counts only: numbers, no payload, no image.
    expect(scan.transactions).toHaveLength(w.records.size);
    for (const tx of scan.transactions) for (const v of Object.values(tx)) expect(typeof v).toBe('number');
    expect([...scan.revoked.keys()].sort()).toEqual([...w.revoked].map((b) => `0:${b}`).sort());
    const logReads = dev.reads.slice(1);
    expect(Math.max(...logReads.map((r) => r.lengthBytes))).toBeLessThanOrEqual(window);
    expect(new Set(logReads.map((r) => r.into)).size, 'one window buffer for the whole pass').toBe(1);
    // The scan reads the live part of the log about once (plus read-ahead), not block by block.
    const usedBytes = scan.transactions.reduce((n, t) => n + t.blocks, 0) * BS;
    expect(dev.bytesRead - 1024).toBeLessThanOrEqual(usedBytes + 2 * window);
    expect(logReads.length).toBeLessThanOrEqual(Math.ceil(usedBytes / window) + 3);
  });

  it('the replay pass streams: each transaction is handed on after at most one window more of the log is read', async () => {
    const w = await writeJournal();
    const window = 4 * BS;
    const dev = new CountingDevice(w.log.clone());
    const sb = decodeSuperblock(await dev.read(0, 1024), dev.name);
    const scan = await scanJournal(dev, sb, { windowBytes: window });
    const readBeforeReplay = dev.bytesRead;
    const first = scan.transactions[0]!;
    let replayedBlocks = 0;
    const held: number[] = [];
    await replayJournal(
      dev,
      sb,
      scan,
      {
        image: async () => undefined,
        transaction: async (tx) => {
          const t = scan.transactions.find((s) => s.sequence === tx.sequence)!;
          replayedBlocks += t.blocks;
          // Bytes the replay pass has read so far: what this and the earlier transactions occupy, plus at most one window ahead.
          held.push(dev.bytesRead - readBeforeReplay - replayedBlocks * BS);
          expect(dev.bytesRead - readBeforeReplay).toBeLessThanOrEqual(replayedBlocks * BS + window);
        },
      },
      { windowBytes: window },
    );
    expect(held).toHaveLength(scan.transactions.length);
    expect(Math.max(...held)).toBeLessThanOrEqual(window);
    expect(first.blocks).toBeGreaterThan(0);
  });

  it('binary record values stay intact after the payload buffer is reused; a first read after the call is refused', async () => {
    const w = await writeJournal();
    const kept: Array<{ sequence: number; records: unknown[] }> = [];
    let late: { readonly records: unknown[] } | undefined;
    await Journal.open(w.log.clone(), {
      targets: new Map([[0, new MemoryDevice('home', Buffer.alloc(HOME_BLOCKS * BS))]]),
      replay: async (tx) => {
        if (late === undefined)
          late = tx; // never read during its call
        else kept.push({ sequence: tx.sequence, records: tx.records });
      },
    });
    // Every later transaction's records, read during their calls, still hold their own bytes.
    for (const { sequence, records } of kept) expect(records).toEqual(w.records.get(sequence));
    expect(() => late!.records).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
  });

  it('a transaction that no longer validates in the replay pass (log changed after the scan) is JOURNAL_CORRUPT', async () => {
    const w = await writeJournal();
    const dev = w.log.clone();
    const sb = decodeSuperblock(await dev.read(0, 1024), dev.name);
    const scan = await scanJournal(dev, sb, { windowBytes: 2 * BS });
    const victim = scan.transactions[3]!;
    const block = await dev.read(victim.startBlock * BS, BS);
    block[100]! ^= 0xff;
    await dev.write(victim.startBlock * BS, block);
    const seen: number[] = [];
    await expect(replayJournal(dev, sb, scan, { image: async () => undefined, transaction: async (tx) => void seen.push(tx.sequence) }, { windowBytes: 2 * BS })).rejects.toMatchObject({
      code: 'JOURNAL_CORRUPT',
    });
    expect(seen).toEqual(scan.transactions.slice(0, 3).map((t) => t.sequence));
  });
});
