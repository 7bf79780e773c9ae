import { describe, expect, it } from 'vitest';
import { storeBlockCrc } from '../src/store-crc.js';
import { IoError } from '@cowvol/base';
import { BlockSources, LIVE_GAP_BLOCKS, SnapshotReader, type ReadThroughIo } from '../src/index.js';
import { MAP_REGION_BLOCKS, SnapshotMap } from '../src/snapshot-map.js';
import { decodeMapFast, decodeValue, encodeValue } from '../src/metadata.js';
import { mappingOf } from './map-lookup.js';
import { mulberry32 } from './prng.js';

/**
 * Read-through planning (read-through.ts, snapshot-map.ts): the range index
 * of a snapshot map, the per-request resolution of a chain, and the reads
 * a SnapshotReader issues — each against a brute-force model. Seeded:
 * COWVOL_SEED replays a printed seed.
 */
const SEED = process.env.COWVOL_SEED === undefined ? (Date.now() >>> 0) % 1_000_000 : Number(process.env.COWVOL_SEED);

function seeded(what: string): () => number {
  console.log(`${what}: seed ${SEED} (COWVOL_SEED=${SEED} replays it)`);
  return mulberry32(SEED);
}

const int = (rnd: () => number, n: number): number => Math.floor(rnd() * n);

describe('SnapshotMap range index', () => {
  it('forEachInRange visits exactly the mapped blocks of the range, ascending, through random sets and deletes', () => {
    const rnd = seeded('range index');
    const span = 5 * MAP_REGION_BLOCKS;
    const map = new SnapshotMap(1);
    const model = new Map<number, [number, number]>();
    let version = map.version;
    for (let step = 0; step < 4000; step++) {
      const block = int(rnd, span);
      if (model.has(block) && rnd() < 0.4) {
        map.delete(block);
        model.delete(block);
      } else if (!model.has(block)) {
        const entry: [number, number] = [int(rnd, 1e6), int(rnd, 2 ** 32)];
        map.set(block, entry[0], entry[1]);
        model.set(block, entry);
      } else continue;
      expect(map.version, 'every change bumps the version').toBe(version + 1);
      version = map.version;
      if (step % 50 !== 0) continue;
      const first = int(rnd, span);
      const last = Math.min(span - 1, first + int(rnd, 3 * MAP_REGION_BLOCKS));
      const seen: Array<[number, number, number]> = [];
      map.forEachInRange(first, last, (b, p, crc) => seen.push([b, p, crc]));
      const want = [...model]
        .filter(([b]) => b >= first && b <= last)
        .sort((a, b) => a[0] - b[0])
        .map(([b, [p, crc]]) => [b, p, crc]);
      expect(seen, `range ${first}..${last} at step ${step}`).toEqual(want);
    }
    expect(map.size).toBe(model.size);
  });

  it('a delete of an unmapped block is an assertion failure, and the index stays intact', () => {
    const map = new SnapshotMap(1);
    map.set(10, 100, 1);
    expect(() => map.delete(11)).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
    const seen: number[] = [];
    map.forEachInRange(0, 20, (b) => seen.push(b));
    expect(seen).toEqual([10]);
  });
});

describe('map record decoding (a map load decodes one per mapped block)', () => {
  it('the fast path decodes exactly what msgpackr does, and leaves every other encoding to it', () => {
    const rnd = seeded('map record decoding');
    const edges = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 31, 2 ** 32 - 1];
    const values = [...edges, ...Array.from({ length: 40 }, () => int(rnd, 2 ** 32))];
    let fast = 0;
    for (const storeBlock of [...values, 2 ** 32, 2 ** 40, 2 ** 48 - 1]) {
      for (const crc of values) {
        const bytes = encodeValue({ v: 1, storeBlock, crc });
        const general = decodeValue.map('map:x', bytes);
        expect(general).toEqual({ v: 1, storeBlock, crc });
        const quick = decodeMapFast(bytes);
        if (storeBlock < 2 ** 32) {
          expect(quick, `storeBlock ${storeBlock} crc ${crc}`).toEqual(general);
          fast++;
        } else expect(quick, 'a storeBlock of 2^32 or more is msgpackr float64: the general path').toBeUndefined();
      }
    }
    expect(fast).toBeGreaterThan(0);
    // Other shapes, truncations and trailing bytes go to the general path, which checks them.
    const ok = encodeValue({ v: 1, storeBlock: 7, crc: 9 });
    for (let n = 0; n < ok.length; n++) expect(decodeMapFast(ok.subarray(0, n)), `truncated to ${n}`).toBeUndefined();
    expect(decodeMapFast(Buffer.concat([ok, Buffer.from([0])]))).toBeUndefined();
    expect(decodeMapFast(encodeValue({ v: 2, storeBlock: 7, crc: 9 }))).toBeUndefined();
    expect(decodeMapFast(encodeValue({ v: 1, crc: 9, storeBlock: 7 }))).toBeUndefined();
    expect(decodeMapFast(encodeValue({ v: 1, storeBlock: 7, crc: -1 }))).toBeUndefined();
    expect(decodeMapFast(encodeValue({ v: 1, storeBlock: 7, crc: 9, extra: 1 }))).toBeUndefined();
    expect(() => decodeValue.map('map:x', encodeValue({ v: 1, storeBlock: -3, crc: 9 }))).toThrow(expect.objectContaining({ code: 'CORRUPT_METADATA' }));
  });
});

describe('BlockSources.resolve', () => {
  it('names, for every block, the copy of the first map of the chain that holds it (else live), like a per-block chain walk', () => {
    const rnd = seeded('resolve');
    for (let round = 0; round < 12; round++) {
      const span = 3000;
      const chain = Array.from({ length: 1 + int(rnd, 12) }, (_, k) => new SnapshotMap(k + 1));
      let nextStore = 0;
      for (const map of chain) {
        const density = rnd() * 0.3;
        for (let b = 0; b < span; b++) if (rnd() < density) map.set(b, nextStore++, int(rnd, 2 ** 32));
      }
      for (let q = 0; q < 20; q++) {
        const first = int(rnd, span);
        const count = 1 + int(rnd, Math.min(600, span - first));
        const sources = BlockSources.resolve(chain, first, count, 4096);
        const storeIndexes: number[] = [];
        for (let i = 0; i < count; i++) {
          const holder = chain.find((m) => m.has(first + i));
          if (holder) {
            storeIndexes.push(i);
            expect(sources.storeBlocks[i], `block ${first + i}`).toBe(mappingOf(holder, first + i)?.[0]);
            expect(sources.crcs[i]).toBe(mappingOf(holder, first + i)?.[1]);
          } else expect(sources.isLive(i), `block ${first + i} reads live`).toBe(true);
        }
        expect([...sources.storeIndexes]).toEqual(storeIndexes);
        expect(sources.liveBlocks).toBe(count - storeIndexes.length);
      }
    }
  });
});

/** A fake ReadThroughIo: live block b holds byte (b % 251), store block p holds byte (p % 253) + 1; records every read. */
function fakeIo(bs: number, hooks: { store?: (p: number) => Promise<void> } = {}) {
  const log: Array<{ kind: 'live' | 'store' | 'reread'; at: number; blocks: number }> = [];
  let inFlight = 0;
  const io: ReadThroughIo = {
    async readLiveInto(offsetBytes, into) {
      log.push({ kind: 'live', at: offsetBytes / bs, blocks: into.length / bs });
      for (let k = 0; k < into.length / bs; k++) into.fill((offsetBytes / bs + k) % 251, k * bs, (k + 1) * bs);
    },
    async readStoreInto(storeBlock, into) {
      log.push({ kind: 'store', at: storeBlock, blocks: into.length / bs });
      inFlight += 1;
      try {
        await hooks.store?.(storeBlock);
        for (let k = 0; k < into.length / bs; k++) into.fill(((storeBlock + k) % 253) + 1, k * bs, (k + 1) * bs);
      } finally {
        inFlight -= 1;
      }
    },
    async rereadStoreInto(storeBlock, into) {
      log.push({ kind: 'reread', at: storeBlock, blocks: into.length / bs });
      for (let k = 0; k < into.length / bs; k++) into.fill(((storeBlock + k) % 253) + 1, k * bs, (k + 1) * bs);
    },
  };
  return { io, log, inFlight: () => inFlight };
}

/** The bound CRC32C (store-crc.ts) of the fake store's block `p`, mapped at `block` of snapshot 1. */
const storeCrc = (block: number, p: number, bs: number): number => storeBlockCrc({ snapshotId: 1, volumeBlock: block, storeBlock: p }, Buffer.alloc(bs, (p % 253) + 1));

describe('SnapshotReader', () => {
  const BS = 512;

  it('fills every block from its source: live runs across short store gaps in one read, store runs over them afterwards', async () => {
    const rnd = seeded('reader plan');
    for (let round = 0; round < 200; round++) {
      const first = int(rnd, 1000);
      const count = 1 + int(rnd, 300);
      const map = new SnapshotMap(1);
      let p = int(rnd, 50);
      const density = rnd();
      for (let i = 0; i < count; i++) {
        if (rnd() >= density) continue;
        if (rnd() < 0.3) p += 1 + int(rnd, 5); // break store contiguity now and then
        map.set(first + i, p, storeCrc(first + i, p, BS));
        p++;
      }
      const sources = BlockSources.resolve([map], first, count, BS);
      const { io, log } = fakeIo(BS);
      const out = Buffer.alloc(count * BS, 0xee);
      await new SnapshotReader(io).read('s', sources, out);
      for (let i = 0; i < count; i++) {
        const want = sources.isLive(i) ? (first + i) % 251 : (sources.storeBlocks[i]! % 253) + 1;
        expect(out.subarray(i * BS, (i + 1) * BS).equals(Buffer.alloc(BS, want)), `round ${round} block ${first + i}`).toBe(true);
      }
      // Live reads: one per run of live blocks after merging across gaps of at most LIVE_GAP_BLOCKS.
      let spans = 0;
      let lastLive = -Infinity;
      for (let i = 0; i < count; i++) {
        if (!sources.isLive(i)) continue;
        if (i - lastLive - 1 > LIVE_GAP_BLOCKS || lastLive === -Infinity) spans++;
        lastLive = i;
      }
      expect(log.filter((e) => e.kind === 'live').length, `round ${round}: live reads`).toBe(spans);
      // Store reads: one per run consecutive in the request and in the store.
      let runs = 0;
      for (let i = 0; i < count; i++) if (!sources.isLive(i) && (i === 0 || sources.isLive(i - 1) || sources.storeBlocks[i] !== sources.storeBlocks[i - 1]! + 1)) runs++;
      expect(log.filter((e) => e.kind === 'store').length, `round ${round}: store reads`).toBe(runs);
      expect(log.filter((e) => e.kind === 'reread')).toEqual([]);
    }
  });

  it('a block failing its checksum is read again from the file; still failing, it is STORE_CORRUPT naming the block', async () => {
    const map = new SnapshotMap(1);
    map.set(3, 7, storeCrc(3, 7, BS));
    map.set(4, 8, storeCrc(4, 8, BS) ^ 1); // the recorded CRC matches neither read
    const sources = BlockSources.resolve([map], 0, 6, BS);
    const { io, log } = fakeIo(BS);
    const err = await new SnapshotReader(io).read('snap', sources, Buffer.alloc(6 * BS)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'STORE_CORRUPT', details: { snapshot: 'snap', storeBlock: 8, offsetBytes: 4 * BS, lengthBytes: BS } });
    expect(log.filter((e) => e.kind === 'reread')).toEqual([{ kind: 'reread', at: 7, blocks: 2 }]);
  });

  it('a failed read fails the request only after every read it started has ended', async () => {
    const map = new SnapshotMap(1);
    for (let i = 0; i < 40; i++) map.set(2 * i, 10 * i, storeCrc(2 * i, 10 * i, BS)); // 40 one-block store runs
    const sources = BlockSources.resolve([map], 0, 80, BS);
    const { io, inFlight } = fakeIo(BS, {
      store: async (p) => {
        await new Promise((r) => setTimeout(r, p === 30 ? 1 : 20));
        if (p === 30) throw new IoError('injected store read failure');
      },
    });
    const err = await new SnapshotReader(io).read('s', sources, Buffer.alloc(80 * BS)).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'IO_ERROR' });
    expect(inFlight(), 'no read left running after the request failed').toBe(0);
  });
});
