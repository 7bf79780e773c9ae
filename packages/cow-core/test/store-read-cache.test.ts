import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBlockDevice, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { StoreReadCache, Volume, volumeLayout } from '../src/index.js';
import { DATA_MODES } from './modes.js';
import { MemDevice } from './mem-device.js';
import { mulberry32 } from './prng.js';

/**
 * The snapshot reads' store cache (store-read-cache.ts): bounded, never
 * stale (writes through its device drop what they touch, fills overtaken
 * by a write are not kept), adaptive readahead; and, through a volume,
 * correct across store block reuse, snapshot deletes, checkpoints (journal
 * mode) and corrupt cached copies. Seeded: COWVOL_SEED replays a printed seed.
 */
const SEED = process.env.COWVOL_SEED === undefined ? (Date.now() >>> 0) % 1_000_000 : Number(process.env.COWVOL_SEED);

function seeded(what: string): () => number {
  console.log(`${what}: seed ${SEED} (COWVOL_SEED=${SEED} replays it)`);
  return mulberry32(SEED);
}

const int = (rnd: () => number, n: number): number => Math.floor(rnd() * n);

const BS = 4096;
const WINDOW = 4 * BS;
const CAPACITY = 4 * WINDOW;

function patterned(blocks: number, rnd: () => number): Buffer {
  const b = Buffer.alloc(blocks * BS);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(int(rnd, 2 ** 32), i);
  return b;
}

async function cachedRead(cache: StoreReadCache, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const out = Buffer.alloc(lengthBytes);
  await cache.readInto(offsetBytes, out);
  return out;
}

/** Reads block `block` again and again until its window is cached (readahead starts off and turns on for a window read that often). */
async function warm(cache: StoreReadCache, block: number): Promise<void> {
  for (let i = 0; i < 1000 && !cache.stats.readahead; i++) await cachedRead(cache, block * BS, BS);
  expect(cache.stats.readahead, 'readahead turned on for a window read again and again').toBe(true);
  await cachedRead(cache, block * BS, BS);
}

describe('StoreReadCache', () => {
  it('returns the file bytes for random reads over working sets of every size, and holds at most its bound', async () => {
    const rnd = seeded('cache reads');
    const dev = new MemDevice(patterned(256, rnd));
    const cache = new StoreReadCache(dev, BS, CAPACITY, WINDOW);
    for (let phase = 0; phase < 8; phase++) {
      const span = 4 + int(rnd, 252); // blocks: from one window to 64 (the cache holds 4)
      for (let i = 0; i < 500; i++) {
        const block = int(rnd, span);
        const blocks = 1 + int(rnd, Math.min(6, 256 - block));
        const got = await cachedRead(cache, block * BS, blocks * BS);
        expect(got.equals(dev.bytes.subarray(block * BS, (block + blocks) * BS)), `phase ${phase} read ${block}+${blocks} (step ${i})`).toBe(true);
        expect(cache.stats.cachedWindows).toBeLessThanOrEqual(CAPACITY / WINDOW);
      }
    }
  });

  it('synchronous reads keep the policy and are never stale: the file bytes, windows filled once readahead is on, dropped by writes', async () => {
    const rnd = seeded('cache sync reads');
    const dir = await mkdtemp(join(tmpdir(), 'cowvol-cache-sync-'));
    try {
      const content = patterned(64, rnd);
      await writeFile(join(dir, 'store'), content);
      const file = await FileBlockDevice.open(join(dir, 'store'));
      const cache = new StoreReadCache(file, BS, CAPACITY, WINDOW);
      expect(cache.syncReads).toBe(true);
      const syncRead = (block: number, blocks = 1): Buffer => {
        const out = Buffer.alloc(blocks * BS);
        cache.readIntoSync(block * BS, out);
        return out;
      };
      for (let i = 0; i < 1000 && !cache.stats.readahead; i++) expect(syncRead(9).equals(content.subarray(9 * BS, 10 * BS))).toBe(true);
      expect(cache.stats.readahead, 'synchronous misses feed the ghost list like the others').toBe(true);
      syncRead(9); // fills the window of blocks 8..11
      const fills = cache.stats.fills;
      expect(fills).toBeGreaterThan(0);
      expect(syncRead(10).equals(content.subarray(10 * BS, 11 * BS)), 'a block of the filled window').toBe(true);
      expect(cache.stats.fills, 'served from the window').toBe(fills);
      const fresh = patterned(1, rnd);
      await cache.device.write(10 * BS, fresh);
      expect(syncRead(10).equals(fresh), 'the write dropped the window: the new bytes').toBe(true);
      expect(syncRead(58, 4).equals(content.subarray(58 * BS, 62 * BS)), 'a read across windows').toBe(true);
      expect(syncRead(62, 4).equals(Buffer.concat([content.subarray(62 * BS), Buffer.alloc(2 * BS)])), 'zeros past the end of the file').toBe(true);
      await file.close();
      expect(() => syncRead(1)).toThrow(expect.objectContaining({ code: 'IO_ERROR' }) as Error);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('serves a window read again and again from memory', async () => {
    const rnd = seeded('cache hits');
    const dev = new MemDevice(patterned(16, rnd));
    const cache = new StoreReadCache(dev, BS, CAPACITY, WINDOW);
    await warm(cache, 5);
    const reads = dev.reads;
    for (let i = 0; i < 100; i++) expect((await cachedRead(cache, (4 + (i % 4)) * BS, BS)).equals(dev.bytes.subarray((4 + (i % 4)) * BS, (5 + (i % 4)) * BS))).toBe(true);
    expect(dev.reads, 'no file read for a cached window').toBe(reads);
    expect(cache.stats.hits).toBeGreaterThanOrEqual(100);
  });

  it('a write through its device drops the windows it touches: the next read returns the new bytes', async () => {
    const rnd = seeded('cache write');
    const dev = new MemDevice(patterned(16, rnd));
    const cache = new StoreReadCache(dev, BS, CAPACITY, WINDOW);
    await warm(cache, 5); // window 1 (blocks 4-7) cached
    expect(cache.stats.cachedWindows).toBe(1);
    const fresh = patterned(1, rnd);
    await cache.device.write(6 * BS, fresh);
    expect((await cachedRead(cache, 6 * BS, BS)).equals(fresh)).toBe(true);
    expect(cache.stats.invalidations).toBeGreaterThanOrEqual(1);
    await cache.device.truncate(4 * BS);
    expect(cache.stats.cachedWindows).toBe(0);
    expect((await cachedRead(cache, 6 * BS, BS)).equals(Buffer.alloc(BS))).toBe(true);
  });

  it('a fill overtaken by a write to its window is not cached (naive: later reads get the bytes from before the write)', async () => {
    const rnd = seeded('cache overtaken fill');
    const dev = new MemDevice(patterned(16, rnd));
    const cache = new StoreReadCache(dev, BS, CAPACITY, WINDOW);
    await warm(cache, 0); // readahead on: the next miss fills its window
    const before = Buffer.from(dev.bytes);
    // The next read takes its bytes at once, then stops until released: a slow read overtaken by a write.
    let release!: () => void;
    let reached!: () => void;
    const atRead = new Promise<void>((r) => (reached = r));
    dev.holdNextRead = async () => {
      reached();
      await new Promise<void>((r) => (release = r));
    };
    const first = cachedRead(cache, 4 * BS, BS); // fills window 1 (blocks 4-7)
    await atRead;
    const fresh = patterned(1, rnd);
    await cache.device.write(7 * BS, fresh);
    release();
    expect((await first).equals(before.subarray(4 * BS, 5 * BS))).toBe(true);
    expect((await cachedRead(cache, 7 * BS, BS)).equals(fresh), 'block 7 read after the write').toBe(true);
  });

  it('readahead starts off, turns on for a small working set, off when windows are evicted unused (random reads over a large store), and on again', async () => {
    const rnd = seeded('cache adaptive');
    const dev = new MemDevice(patterned(4096, rnd));
    const cache = new StoreReadCache(dev, BS, CAPACITY, WINDOW);
    const random = async (): Promise<void> => {
      for (let i = 0; i < 500; i++) await cachedRead(cache, int(rnd, 4096) * BS, BS);
    };
    const workingSet = async (): Promise<void> => {
      for (let i = 0; i < 500; i++) {
        const block = 8 * int(rnd, 2) + int(rnd, 4); // two windows, read again and again
        expect((await cachedRead(cache, block * BS, BS)).equals(dev.bytes.subarray(block * BS, (block + 1) * BS))).toBe(true);
      }
    };
    expect(cache.stats.readahead).toBe(false);
    await random();
    expect(cache.stats.readahead, 'random single blocks over 1024 windows: no readahead').toBe(false);
    expect(cache.stats.fills).toBe(0);
    await workingSet();
    expect(cache.stats.readahead, 'a working set of two windows: readahead on').toBe(true);
    expect(cache.stats.fills).toBeGreaterThan(0);
    await random();
    expect(cache.stats.readahead, 'random again: windows evicted unused, readahead off').toBe(false);
    const fills = cache.stats.fills;
    await random();
    expect(cache.stats.fills, 'no fills while off').toBe(fills);
    await workingSet();
    expect(cache.stats.readahead, 'and on again').toBe(true);
  });

  it('readFresh reads the file and drops the cached window', async () => {
    const rnd = seeded('cache readFresh');
    const dev = new MemDevice(patterned(16, rnd));
    const cache = new StoreReadCache(dev, BS, CAPACITY, WINDOW);
    await warm(cache, 0);
    dev.bytes.fill(0x5a, 0, BS); // behind the cache's back
    expect((await cachedRead(cache, 0, BS)).equals(Buffer.alloc(BS, 0x5a))).toBe(false);
    const fresh = Buffer.alloc(BS);
    await cache.readFresh(0, fresh);
    expect(fresh.equals(Buffer.alloc(BS, 0x5a))).toBe(true);
    expect((await cachedRead(cache, 0, BS)).equals(Buffer.alloc(BS, 0x5a))).toBe(true);
    expect(cache.stats.rereads).toBe(1);
  });
});

/** Corrupts, once, the bytes of store block `storeBlock` in the next store read that covers it (a bad cached copy). */
class FlakyStoreOpener implements DeviceOpener {
  corruptNext: number | undefined;
  async open(path: string, options: { create: boolean }): Promise<BlockDevice> {
    const inner = await FileBlockDevice.open(path, options);
    const isStore = basename(path) === 'store';
    const maybeCorrupt = (offsetBytes: number, into: Uint8Array): void => {
      if (!isStore || this.corruptNext === undefined) return;
      const at = (this.corruptNext + 1) * BS - offsetBytes;
      if (at < 0 || at >= into.length) return;
      into[at + 17]! ^= 0xff;
      this.corruptNext = undefined;
    };
    return {
      name: inner.name,
      read: async (o, l) => {
        const b = await inner.read(o, l);
        maybeCorrupt(o, b);
        return b;
      },
      readInto: async (o, into) => {
        await inner.readInto(o, into);
        maybeCorrupt(o, into);
      },
      write: (o, d) => inner.write(o, d),
      sync: () => inner.sync(),
      sizeBytes: () => inner.sizeBytes(),
      truncate: (s) => inner.truncate(s),
      close: () => inner.close(),
    };
  }
}

describe('store cache through a volume', () => {
  let dir: string;
  let path: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowvol-cache-'));
    path = join(dir, 'vol.img');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  describe.each(DATA_MODES)('data mode %s', (dataMode) => {
    it('a store block freed by a delete and reused by a new COW is read with its new content, without leaning on the checksum re-read', async () => {
      const v = await Volume.create(path, { dataMode, sizeBytes: 64 * BS });
      const a = Buffer.alloc(8 * BS, 0xa1);
      const b = Buffer.alloc(8 * BS, 0xb2);
      await v.write(0, a);
      await v.createSnapshot('s1');
      await v.write(0, b); // A's blocks 0-7 copied to store blocks 0-7
      // Read them until readahead is on and their window is cached.
      for (let i = 0; i < 200; i++) expect((await v.readSnapshot('s1', (i % 8) * BS, BS)).equals(a.subarray(0, BS))).toBe(true);
      expect(v.storeCacheStats).toMatchObject({ readahead: true });
      expect(v.storeCacheStats.hits).toBeGreaterThan(0);
      await v.deleteSnapshot('s1'); // frees store blocks 0-7
      await v.createSnapshot('s2');
      await v.write(0, Buffer.alloc(8 * BS, 0xc3)); // B copied into the freed store blocks
      expect((await v.info()).store.highWaterBlocks, 'the freed store blocks were reused').toBe(8);
      expect((await v.readSnapshot('s2', 0, 8 * BS)).equals(b)).toBe(true);
      await v.check(); // checkpoint: in journal mode the copies of B go home now
      expect((await v.readSnapshot('s2', 0, 8 * BS)).equals(b)).toBe(true);
      expect(v.storeCacheStats.invalidations, 'the writes into the reused blocks (the COW; in journal mode the checkpoint) dropped their cached window').toBeGreaterThan(0);
      expect(v.storeCacheStats.rereads, 'no stale cached copy was ever served and caught by its checksum').toBe(0);
      await v.close();
    });

    it('reads through the cache return the model content across random writes, snapshot creates and deletes, and checkpoints', async () => {
      const rnd = seeded(`cache model ${dataMode}`);
      const blocks = 96;
      const v = await Volume.create(path, { dataMode, sizeBytes: blocks * BS });
      let live = patterned(blocks, rnd);
      await v.write(0, live);
      const snaps = new Map<string, Buffer>();
      let n = 0;
      for (let step = 0; step < 150; step++) {
        const r = rnd();
        if (r < 0.45) {
          const first = int(rnd, blocks);
          const count = 1 + int(rnd, Math.min(12, blocks - first));
          const data = patterned(count, rnd);
          await v.write(first * BS, data);
          live = Buffer.from(live);
          data.copy(live, first * BS);
        } else if (r < 0.6 && snaps.size < 8) {
          const name = `s${n++}`;
          await v.createSnapshot(name);
          snaps.set(name, live);
        } else if (r < 0.7 && snaps.size > 0) {
          const name = [...snaps.keys()][int(rnd, snaps.size)]!;
          await v.deleteSnapshot(name);
          snaps.delete(name);
        } else if (r < 0.73) {
          await v.check();
        } else if (snaps.size > 0) {
          for (let k = 0; k < 6; k++) {
            const name = [...snaps.keys()][int(rnd, snaps.size)]!;
            const offset = int(rnd, blocks * BS);
            const length = 1 + int(rnd, Math.min(20 * BS, blocks * BS - offset));
            const got = await v.readSnapshot(name, offset, length);
            expect(got.equals(snaps.get(name)!.subarray(offset, offset + length)), `step ${step}: ${name} at ${offset}+${length}`).toBe(true);
          }
        }
      }
      for (const [name, content] of snaps) expect((await v.readSnapshot(name, 0, blocks * BS)).equals(content), name).toBe(true);
      // Whatever the seed did, end with the pattern the cache exists for: a
      // snapshot whose every block was copied, read block by block in order.
      await v.createSnapshot('sequential');
      const copied = live;
      await v.write(0, patterned(blocks, rnd));
      for (let b = 0; b < blocks; b++) expect((await v.readSnapshot('sequential', b * BS, BS)).equals(copied.subarray(b * BS, (b + 1) * BS)), `sequential block ${b}`).toBe(true);
      const stats = v.storeCacheStats;
      expect(stats.fills > 0 && stats.hits > 0, `the reads went through cached windows: ${JSON.stringify(stats)}`).toBe(true);
      expect(stats.rereads).toBe(0);
      await v.close();
    });

    it('a corrupt cached copy is read again from the file and the read succeeds; a corrupt file is STORE_CORRUPT', async () => {
      const v0 = await Volume.create(path, { dataMode, sizeBytes: 16 * BS });
      await v0.write(0, Buffer.alloc(16 * BS, 0x31));
      await v0.createSnapshot('s');
      await v0.write(0, Buffer.alloc(4 * BS, 0x32)); // store blocks 0-3
      await v0.close(); // journal mode: the copies go home
      const flaky = new FlakyStoreOpener();
      const v = await Volume.open(path, { opener: flaky });
      flaky.corruptNext = 2; // the window fill of the first read gets a bad copy of store block 2
      expect((await v.readSnapshot('s', 0, 4 * BS)).equals(Buffer.alloc(4 * BS, 0x31))).toBe(true);
      expect(flaky.corruptNext, 'the corruption was injected').toBeUndefined();
      expect(v.storeCacheStats.rereads).toBe(1);
      await v.close();
      const storePath = volumeLayout(path).storePath;
      const store = await readFile(storePath);
      store[3 * BS + 9]! ^= 0xff; // store block 2, on disk
      await writeFile(storePath, store);
      const r = await Volume.open(path);
      await expect(r.readSnapshot('s', 0, 4 * BS)).rejects.toMatchObject({ code: 'STORE_CORRUPT', details: { storeBlock: 2, offsetBytes: 2 * BS, lengthBytes: BS } });
      await r.close();
    });
  });
});
