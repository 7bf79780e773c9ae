import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBlockDevice } from '@cowvol/base';
import { decodeSuperblock, replayJournal, scanJournal } from '@cowvol/journal';
import { Volume, volumeLayout } from '../src/index.js';
import { CommittedMetadata, REPLAY_BATCH_OPS } from '../src/committed-metadata.js';
import { MetadataDb } from '../src/metadata-db.js';
import { mulberry32 } from './prng.js';
import { forgetChangeStamp } from '../../../test/helpers.js';

/**
 * Replay after a power loss that rewound LevelDB to the last checkpoint
 * (the bench's `7-recover` power-loss case, small): every committed
 * transaction is applied again at open, grouped into LevelDB batches of at
 * least REPLAY_BATCH_OPS operations (committed-metadata.ts).
 *
 * - The power-loss copy recovers to exactly the LevelDB content and volume
 *   state of the crash copy (LevelDB kept every transaction; nothing replayed).
 * - A replay cut off in the middle leaves LevelDB at a transaction boundary
 *   (`cp`) with exactly the state one-batch-per-transaction application
 *   gives there; replaying again from that state ends in the same final
 *   state (idempotent), and batches were written along the way (the replay
 *   does not hold everything until the end).
 */
const BS = 4096;
const BLOCKS = 2048;
const ROUNDS = 3;

let dir: string;
/** Volume path of the writer (crashed: not closed before the copies were taken). */
let writer: string;
/** Copies: LevelDB with every transaction (crash) / LevelDB as of the last checkpoint (power loss). */
let crashCopy: string;
let powerCopy: string;
/** A power-loss copy never opened: its journal still holds every transaction. */
let spareCopy: string;
/** LevelDB directory as of the last checkpoint. */
let checkpointedMeta: string;

/** Records counted per block they touch (a `mapx` maps a run of blocks: one LevelDB put each). */
function blockRecords(records: unknown[]): number {
  let n = 0;
  for (const r of records as Array<{ o: string; crcs?: Uint8Array }>) n += r.o === 'mapx' ? r.crcs!.length / 4 : 1;
  return n;
}

async function copyVolume(from: string, to: string, meta?: string): Promise<void> {
  await cp(from, to);
  await cp(`${from}.cowvol`, `${to}.cowvol`, { recursive: true, filter: (p) => !p.endsWith('/lock') && !p.endsWith('/owner') && (meta === undefined || !p.includes('/meta')) });
  if (meta !== undefined) await cp(meta, volumeLayout(to).metaPath, { recursive: true });
  await forgetChangeStamp(to); // a copy is a new file: not a write made outside cowvol here
}

/** Every LevelDB key and value, in key order. */
async function dump(metaPath: string): Promise<Array<[string, string]>> {
  const db = await MetadataDb.open(metaPath, false);
  try {
    const out: Array<[string, string]> = [];
    for await (const [k, v] of db.scan('')) out.push([k, v.toString('hex')]);
    return out;
  } finally {
    await db.close();
  }
}

/** The committed transactions of a volume's journal, as replay hands them on. */
async function journalTransactions(volumePath: string): Promise<Array<{ sequence: number; records: unknown[] }>> {
  const dev = await FileBlockDevice.open(volumeLayout(volumePath).journalPath);
  try {
    const sb = decodeSuperblock(await dev.read(0, 1024), dev.name);
    const scan = await scanJournal(dev, sb);
    const out: Array<{ sequence: number; records: unknown[] }> = [];
    await replayJournal(dev, sb, scan, { image: async () => undefined, transaction: async (tx) => void out.push({ sequence: tx.sequence, records: tx.records }) });
    return out;
  } finally {
    await dev.close();
  }
}

/** LevelDB as one-batch-per-transaction application leaves it after `txs`, starting from the checkpointed copy. */
async function referenceAfter(txs: Array<{ sequence: number; records: unknown[] }>, name: string): Promise<Array<[string, string]>> {
  const meta = join(dir, name);
  await cp(checkpointedMeta, meta, { recursive: true });
  const db = await MetadataDb.open(meta, false);
  const committed = await CommittedMetadata.load(db, writer);
  for (const tx of txs) await committed.apply(tx);
  await db.close();
  return dump(meta);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-replay-'));
  writer = join(dir, 'vol.img');
  const r = mulberry32(7);
  const content = Buffer.alloc(BLOCKS * BS);
  for (let i = 0; i < content.length; i += 512) content.fill(Math.floor(r() * 256), i, i + 512);
  const v = await Volume.create(writer, { sizeBytes: BLOCKS * BS });
  await v.write(0, content);
  await v.close(); // checkpointed: LevelDB holds everything so far
  checkpointedMeta = join(dir, 'meta.checkpointed');
  await cp(volumeLayout(writer).metaPath, checkpointedMeta, { recursive: true });
  const w = await Volume.open(writer);
  for (let round = 0; round < ROUNDS; round++) {
    await w.createSnapshot(`a${round}`);
    await w.createSnapshot(`m${round}`);
    for (let off = 0; off < BLOCKS * BS; off += 64 * BS) {
      const chunk = Buffer.alloc(64 * BS, (round * 31 + off / BS) & 0xff);
      await w.write(off, chunk); // COW of every block into m<round>
    }
    await w.deleteSnapshot(`m${round}`); // hand-over: every block moves to a<round>
    if (round + 1 < ROUNDS) await w.deleteSnapshot(`a${round}`); // every block freed
  }
  await w.createSnapshot('last');
  await w.write(5 * BS, Buffer.alloc(3 * BS, 0x5a));
  await w.flush();
  expect((await w.info()).journal.checkpoints, 'the workload must not checkpoint (the power-loss image would be inconsistent)').toBe(0);
  crashCopy = join(dir, 'crash.img');
  powerCopy = join(dir, 'power.img');
  await copyVolume(writer, crashCopy);
  await copyVolume(writer, powerCopy, checkpointedMeta);
  spareCopy = join(dir, 'spare.img');
  await copyVolume(writer, spareCopy, checkpointedMeta);
  await w.close();
}, 120_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('replay after a power loss (LevelDB rewound to the last checkpoint)', () => {
  it('recovers to exactly the state of the crash copy, through several LevelDB batches', async () => {
    const txs = await journalTransactions(powerCopy);
    const records = txs.reduce((n, t) => n + blockRecords(t.records), 0);
    expect(records, 'the journal must span several replay batches').toBeGreaterThan(3 * REPLAY_BATCH_OPS);
    const states: Array<{ info: unknown; snapshots: unknown; content: Buffer[]; check: unknown }> = [];
    for (const path of [crashCopy, powerCopy]) {
      const v = await Volume.open(path);
      const info = await v.info();
      expect(info.recovery.replayedTransactions).toBe(txs.length);
      const snapshots = await v.listSnapshots();
      const content = [await v.read(0, BLOCKS * BS), ...(await Promise.all(snapshots.map((s) => v.readSnapshot(s.name, 0, BLOCKS * BS))))];
      expect((await v.checkConsistency()).problems).toEqual([]);
      const check = await v.check();
      expect(check.corruptions).toEqual([]);
      states.push({ info: { sizeBytes: info.sizeBytes, snapshots: info.snapshots }, snapshots, content, check: { status: check.status, leakedBlocks: check.leakedBlocks } });
      await v.close();
    }
    expect(states[1]!.snapshots).toEqual(states[0]!.snapshots);
    expect(states[1]!.info).toEqual(states[0]!.info);
    expect(states[1]!.check).toEqual(states[0]!.check);
    states[0]!.content.forEach((c, i) => expect(states[1]!.content[i]!.equals(c), `content ${i}`).toBe(true));
    // Every key but the change stamp, which describes each copy's own file (inode, times).
    const metadata = async (path: string) => (await dump(volumeLayout(path).metaPath)).filter(([k]) => k !== 'stamp');
    expect(await metadata(powerCopy)).toEqual(await metadata(crashCopy));
  }, 120_000);

  it('a replay cut off midway leaves whole batches (state exact at cp); replaying again ends in the same state', async () => {
    const txs = await journalTransactions(spareCopy);
    expect(txs.reduce((n, t) => n + blockRecords(t.records), 0)).toBeGreaterThan(3 * REPLAY_BATCH_OPS);
    const final = await referenceAfter(txs, 'meta.reference');
    // Cuts after at least two batches were started: the second one's start waited for the first one's write, so at least
    // one batch has landed whatever the timing (the last one started may be in flight when the power goes).
    const cutAfter = (blocks: number): number => {
      let n = 0;
      return 1 + txs.findIndex((t) => (n += blockRecords(t.records)) >= blocks);
    };
    for (const cut of [cutAfter(2 * REPLAY_BATCH_OPS + 1), cutAfter(3 * REPLAY_BATCH_OPS)]) {
      expect(cut, 'a cut inside the journal').toBeGreaterThan(0);
      const meta = join(dir, `meta.cut${cut}`);
      await cp(checkpointedMeta, meta, { recursive: true });
      let db = await MetadataDb.open(meta, false);
      let committed = await CommittedMetadata.load(db, writer);
      const start = committed.appliedSequence;
      for (const tx of txs.slice(0, cut)) await committed.apply({ ...tx, last: false });
      await db.close(); // the power goes: a batch being written lands whole or not at all
      db = await MetadataDb.open(meta, false);
      committed = await CommittedMetadata.load(db, writer);
      const cp1 = committed.appliedSequence;
      await db.close();
      expect(cp1, 'batches are written during the replay, not all at its end').toBeGreaterThan(start);
      expect(cp1).toBeLessThanOrEqual(txs[cut - 1]!.sequence);
      expect(await dump(meta), `LevelDB at cp ${cp1} after a cut at transaction ${cut}`).toEqual(
        await referenceAfter(
          txs.filter((t) => t.sequence <= cp1),
          `meta.reference${cut}`,
        ),
      );
      // Recovery again, over the whole journal: skips what LevelDB has, replays the rest.
      db = await MetadataDb.open(meta, false);
      committed = await CommittedMetadata.load(db, writer);
      for (const [i, tx] of txs.entries()) await committed.apply({ ...tx, last: i === txs.length - 1 });
      await db.close();
      expect(await dump(meta)).toEqual(final);
    }
  }, 120_000);
});
