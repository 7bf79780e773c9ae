import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { IoError } from '@cowvol/base';
import { storeBlockCrc } from '../src/store-crc.js';
import { BlockSources, SnapshotReader, SYNC_BACKOFF_RUNS, Volume, type ReadThroughIo } from '../src/index.js';
import { DATA_MODES } from './modes.js';
import { SYNC_DECISION_READS, SYNC_MAX_RUN_BYTES, SYNC_SLOW_READ_MS } from '../src/snapshot-reader.js';
import { SnapshotMap } from '../src/snapshot-map.js';
import { mulberry32 } from './prng.js';

/**
 * The snapshot reader's synchronous store reads (snapshot-reader.ts,
 * docs/ARCHITECTURE.md §4.3): the same bytes as the thread-pool path, the
 * fall-back when reads are slow, the yields between slices, and failures.
 * Seeded: COWVOL_SEED replays a printed seed.
 */
const SEED = process.env.COWVOL_SEED === undefined ? (Date.now() >>> 0) % 1_000_000 : Number(process.env.COWVOL_SEED);
const BS = 512;

type Kind = 'live' | 'store' | 'sync' | 'reread';

/** Fills `into` as the fake store's blocks from `storeBlock`: block p holds byte (p % 253) + 1. */
function fillStore(storeBlock: number, into: Buffer): void {
  for (let k = 0; k < into.length / BS; k++) into.fill(((storeBlock + k) % 253) + 1, k * BS, (k + 1) * BS);
}

/** Spins for `ms` (a synchronous read that takes that long). */
function spin(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

/** A fake ReadThroughIo with a synchronous store read: live block b holds byte (b % 251); records every read. */
function fakeIo(hooks: { sync?: (p: number, n: number) => void; syncBad?: (p: number) => boolean; asyncDelayMs?: number; asyncGate?: Promise<void> } = {}) {
  const log: Array<{ kind: Kind; at: number; blocks: number }> = [];
  let inFlight = 0;
  let syncReads = 0;
  const io: ReadThroughIo = {
    async readLiveInto(offsetBytes, into) {
      log.push({ kind: 'live', at: offsetBytes / BS, blocks: into.length / BS });
      inFlight += 1;
      await new Promise((r) => setTimeout(r, hooks.asyncDelayMs ?? 0));
      inFlight -= 1;
      for (let k = 0; k < into.length / BS; k++) into.fill((offsetBytes / BS + k) % 251, k * BS, (k + 1) * BS);
    },
    async readStoreInto(storeBlock, into) {
      log.push({ kind: 'store', at: storeBlock, blocks: into.length / BS });
      inFlight += 1;
      await new Promise((r) => setTimeout(r, hooks.asyncDelayMs ?? 0));
      await hooks.asyncGate;
      inFlight -= 1;
      fillStore(storeBlock, into);
    },
    async rereadStoreInto(storeBlock, into) {
      log.push({ kind: 'reread', at: storeBlock, blocks: into.length / BS });
      await Promise.resolve();
      fillStore(storeBlock, into);
    },
    readStoreIntoSync(storeBlock, into) {
      log.push({ kind: 'sync', at: storeBlock, blocks: into.length / BS });
      hooks.sync?.(storeBlock, syncReads++);
      fillStore(storeBlock, into);
      if (hooks.syncBad?.(storeBlock) === true) into[0] = into[0]! ^ 0xff;
    },
  };
  return { io, log, inFlight: () => inFlight, count: (kind: Kind) => log.filter((e) => e.kind === kind).length };
}

const crcOf = (block: number, p: number): number => storeBlockCrc({ snapshotId: 1, volumeBlock: block, storeBlock: p }, Buffer.alloc(BS, (p % 253) + 1));

/** Blocks 0..count-1, block i mapped to store block `storeOf(i)` when it is not undefined. */
function sourcesOf(count: number, storeOf: (i: number) => number | undefined): BlockSources {
  const map = new SnapshotMap(1);
  for (let i = 0; i < count; i++) {
    const p = storeOf(i);
    if (p !== undefined) map.set(i, p, crcOf(i, p));
  }
  return BlockSources.resolve([map], 0, count, BS);
}

/** Expects every block of `out` to hold what its source holds. */
function expectContent(sources: BlockSources, out: Buffer, what: string): void {
  for (let i = 0; i < sources.count; i++) {
    const want = sources.isLive(i) ? (sources.first + i) % 251 : (sources.storeBlocks[i]! % 253) + 1;
    expect(out.subarray(i * BS, (i + 1) * BS).equals(Buffer.alloc(BS, want)), `${what}: block ${sources.first + i}`).toBe(true);
  }
}

describe('SnapshotReader: synchronous store reads', () => {
  it('fill every block as the thread pool would: short runs from both ends, long runs only through the pool', async () => {
    console.log(`sync reader plan: seed ${SEED} (COWVOL_SEED=${SEED} replays it)`);
    const rnd = mulberry32(SEED);
    const { io, log, count: kinds } = fakeIo();
    const reader = new SnapshotReader(io); // one reader across rounds, as a volume has
    for (let round = 0; round < 100; round++) {
      const count = 1 + Math.floor(rnd() * 400);
      const density = rnd();
      let p = Math.floor(rnd() * 50);
      const sources = sourcesOf(count, () => (rnd() < density ? (rnd() < 0.3 ? ((p += 2 + Math.floor(rnd() * 200)), p++) : p++) : undefined));
      log.length = 0;
      const out = Buffer.alloc(count * BS, 0xee);
      await reader.read('s', sources, out);
      expectContent(sources, out, `round ${round}`);
      for (const run of log.filter((e) => e.kind === 'sync'))
        expect(run.blocks * BS, `round ${round}: only runs up to SYNC_MAX_RUN_BYTES are read synchronously`).toBeLessThanOrEqual(SYNC_MAX_RUN_BYTES);
      const storeRuns = log.filter((e) => e.kind === 'store' || e.kind === 'sync').map((e) => e.at);
      expect(new Set(storeRuns).size, `round ${round}: each store run read once`).toBe(storeRuns.length);
      expect(kinds('reread')).toBe(0);
    }
    expect(reader.stats.syncRuns).toBeGreaterThan(0);
    expect(reader.stats.syncBackoffs, 'a store that answers at once is never left').toBe(0);
  });

  it('slow synchronous reads send the reader back to the thread pool: the rest of the request and the next SYNC_BACKOFF_RUNS runs', async () => {
    let release = (): void => undefined;
    const asyncGate = new Promise<void>((r) => (release = r)); // the pool's reads end only once the back end has decided
    const sync = (_p: number, n: number): void => {
      spin(SYNC_SLOW_READ_MS * 4);
      if (n + 1 === SYNC_DECISION_READS) release();
    };
    const { io, count } = fakeIo({ sync, asyncGate });
    const reader = new SnapshotReader(io);
    const runs = 2 * SYNC_DECISION_READS;
    const sources = sourcesOf(2 * runs, (i) => (i % 2 === 0 ? 1000 + 7 * i : undefined)); // one-block store runs between live blocks
    const out = Buffer.alloc(2 * runs * BS);
    await reader.read('s', sources, out);
    expectContent(sources, out, 'request 1');
    expect(count('sync'), 'one decision window of synchronous reads').toBe(SYNC_DECISION_READS);
    expect(count('store'), 'the rest through the pool (from the front, at once and after the back-off)').toBe(runs - SYNC_DECISION_READS);
    expect(reader.stats.syncBackoffs).toBe(1);
    const again = Buffer.alloc(2 * runs * BS);
    await reader.read('s', sources, again);
    expectContent(sources, again, 'request 2');
    expect(count('sync'), 'backed off: no synchronous read in the next request').toBe(SYNC_DECISION_READS);
    expect(SYNC_BACKOFF_RUNS).toBeGreaterThan(runs);
  });

  it('yield to the event loop between slices: a callback queued before the read runs before its last store read', async () => {
    const runs = 400;
    let syncDone = 0;
    let firedAt = -1;
    const { io } = fakeIo({ sync: (_p, n) => (spin(0.01), (syncDone = n + 1)) });
    const reader = new SnapshotReader(io);
    const sources = sourcesOf(runs, (i) => 10 * i); // every block a one-block store run
    setImmediate(() => (firedAt = syncDone));
    const out = Buffer.alloc(runs * BS);
    await reader.read('s', sources, out);
    expectContent(sources, out, 'sliced request');
    expect(firedAt, 'the event loop ran during the request').toBeGreaterThanOrEqual(0);
    expect(firedAt, 'the event loop ran before the synchronous reads ended').toBeLessThan(reader.stats.syncRuns);
    expect(reader.stats.syncYields).toBeGreaterThan(0);
  });

  it('a synchronous copy failing its checksum is read again through the pool, then from the file; still failing, it is STORE_CORRUPT', async () => {
    // 40 one-block store runs: the pool takes the first READS_IN_FLIGHT from the front, the main thread the last ones from the back.
    const storeOf = (i: number): number => 1000 + 10 * i;
    const { io, log } = fakeIo({ syncBad: (p) => p === storeOf(39) }); // only the synchronous read of the last run is bad
    const sources = sourcesOf(40, storeOf);
    const out = Buffer.alloc(40 * BS);
    await new SnapshotReader(io).read('snap', sources, out);
    expectContent(sources, out, 'bad synchronous copy, good pool copy');
    expect(log.filter((e) => e.at === storeOf(39)).map((e) => e.kind)).toEqual(['sync', 'store']);
    const map = new SnapshotMap(1);
    for (let i = 0; i < 40; i++) map.set(i, storeOf(i), crcOf(i, storeOf(i)) ^ (i === 39 ? 1 : 0)); // 39's recorded CRC matches no read
    const second = fakeIo();
    const err = await new SnapshotReader(second.io).read('snap', BlockSources.resolve([map], 0, 40, BS), Buffer.alloc(40 * BS)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'STORE_CORRUPT', details: { snapshot: 'snap', storeBlock: storeOf(39), offsetBytes: 39 * BS, lengthBytes: BS } });
    expect(second.log.filter((e) => e.at === storeOf(39)).map((e) => e.kind)).toEqual(['sync', 'store', 'reread']);
  });

  it('a failing synchronous read fails the request after every read it started has ended', async () => {
    const { io, inFlight } = fakeIo({
      sync: (p) => {
        if (p === 460 || p === 470) throw new IoError(`injected failure of store block ${p}`);
      },
      asyncDelayMs: 5,
    });
    const sources = sourcesOf(48, (i) => (i >= 3 ? 10 * i : undefined)); // live 0..2, store blocks 30..470: the last ones read synchronously
    const err = await new SnapshotReader(io).read('s', sources, Buffer.alloc(48 * BS)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'IO_ERROR', message: 'injected failure of store block 470' }); // the back end reads 470 first and stops there
    expect(inFlight(), 'no read left running after the request failed').toBe(0);
  });
});

describe.each(DATA_MODES)('snapshot reads of a file volume behind many newer snapshots (data mode %s)', (dataMode) => {
  it('read back exactly what each snapshot held, the store runs read synchronously', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cowvol-sync-read-'));
    try {
      const rnd = mulberry32(SEED);
      console.log(`file volume ${dataMode}: seed ${SEED} (COWVOL_SEED=${SEED} replays it)`);
      const bs = 4096;
      const blocks = 256;
      const v = await Volume.create(join(dir, 'vol.img'), { dataMode, sizeBytes: blocks * bs });
      let live = Buffer.alloc(blocks * bs);
      for (let i = 0; i < blocks * bs; i += 4) live.writeUInt32LE((rnd() * 2 ** 32) >>> 0, i);
      await v.write(0, live);
      const held = new Map<string, Buffer>();
      for (let k = 0; k < 10; k++) {
        await v.createSnapshot(`s${k}`);
        held.set(`s${k}`, Buffer.from(live));
        for (let w = 0; w < 30; w++) {
          const block = Math.floor(rnd() * blocks);
          const data = Buffer.alloc(bs, 1 + Math.floor(rnd() * 255));
          await v.write(block * bs, data);
          live = Buffer.from(live);
          data.copy(live, block * bs);
        }
      }
      for (const [name, want] of held) {
        for (let off = 0; off < blocks * bs; off += 64 * bs) {
          const got = await v.readSnapshot(name, off, 64 * bs);
          expect(got.length).toBe(64 * bs);
          expect(got.equals(want.subarray(off, off + 64 * bs)), `${name} at ${off}`).toBe(true);
        }
      }
      expect(v.snapshotReadStats.syncRuns, 'the file store was read synchronously').toBeGreaterThan(0);
      await v.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
