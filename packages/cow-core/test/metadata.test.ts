import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { decodeValue, delOp, encodeMapValue, encodeValue, keys, putMapOp, putOp } from '../src/metadata.js';
import { MetadataDb } from '../src/metadata-db.js';

/**
 * `MetadataDb.makeDurable()` (checkpoint's `beforeTailMove`): after it,
 * nothing depends on LevelDB's unsynced log — the log LevelDB writes to is
 * empty and every key is in its table files, which LevelDB syncs — and
 * LevelDB reads back every write.
 */
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-metadata-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function bytesOf(path: string, suffix: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(path)) if (f.endsWith(suffix)) n += (await stat(join(path, f))).size;
  return n;
}

describe('MetadataDb', () => {
  it("makeDurable leaves nothing in LevelDB's unsynced log: every write is in a table file", async () => {
    const db = await MetadataDb.open(dir, true);
    const ops = Array.from({ length: 5000 }, (_, i) => putOp(keys.map(1, i), { v: 1, storeBlock: i, crc: i }));
    await db.apply(ops);
    await db.apply([delOp(keys.map(1, 7)), putOp(keys.checkpoint, { v: 1, sequence: 9 })]);
    expect(await bytesOf(dir, '.log')).toBeGreaterThan(0);
    await db.makeDurable();
    expect(await bytesOf(dir, '.log'), 'the log LevelDB would replay after a crash').toBe(0);
    expect(await bytesOf(dir, '.ldb')).toBeGreaterThan(0);
    let count = 0;
    for await (const [k] of db.scan(keys.mapPrefix(1))) {
      expect(k).not.toBe(keys.map(1, 7));
      count += 1;
    }
    expect(count).toBe(4999);
    expect(await db.get(keys.checkpoint)).toBeDefined();
    await db.close();
  });
});

describe('MetadataDb.scanBatches (one batch read ahead)', () => {
  it('returns every key of the range once, in order, when LevelDB answers with batches shorter than asked', async () => {
    const db = await MetadataDb.open(dir, true);
    try {
      // Values of 300 bytes: LevelDB's byte bound cuts a batch of 1,024 entries short long before the end.
      const value = Buffer.alloc(300, 7);
      await db.apply(Array.from({ length: 5000 }, (_, i) => ({ o: 'p' as const, k: keys.snapshot(i), v: value })));
      await db.apply([putOp(keys.map(1, 0), { v: 1, storeBlock: 0, crc: 0 })]); // outside the range
      const seen: string[] = [];
      let shortBatches = 0;
      for await (const batch of db.scanBatches(keys.snapshotPrefix)) {
        if (batch.length < 1024) shortBatches += 1;
        for (const [k] of batch) seen.push(k);
      }
      expect(seen).toEqual(Array.from({ length: 5000 }, (_, i) => keys.snapshot(i)));
      expect(shortBatches, 'the case this test is about happened').toBeGreaterThan(1);
      // A caller that stops after the first batch leaves nothing running: the database still closes and reopens.
      for await (const batch of db.scanBatches(keys.snapshotPrefix)) {
        expect(batch.length).toBeGreaterThan(0);
        break;
      }
    } finally {
      await db.close();
    }
    const again = await MetadataDb.open(dir, false);
    await again.close();
  });

  it('a read ahead that fails while the caller is busy between batches surfaces at the next batch, coded, not as an unhandled rejection', async () => {
    const db = await MetadataDb.open(dir, true);
    try {
      await db.apply(Array.from({ length: 3000 }, (_, i) => putOp(keys.map(1, i), { v: 1, storeBlock: i, crc: i })));
      // The seam: LevelDB's iterator, whose second read fails (a damaged table, a disk error).
      const level = db.db as unknown as { iterator: (o: object) => { nextv: (n: number) => Promise<unknown[]>; close: () => Promise<void> } };
      const real = level.iterator.bind(level);
      let reads = 0;
      level.iterator = (options: object) => {
        const it = real(options);
        const nextv = it.nextv.bind(it);
        it.nextv = (n: number) => (++reads === 2 ? Promise.reject(Object.assign(new Error('Corruption: injected read failure'), { code: 'LEVEL_CORRUPTION' })) : nextv(n));
        return it;
      };
      const batches: number[] = [];
      const scan = (async () => {
        for await (const batch of db.scanBatches(keys.mapPrefix(1))) {
          batches.push(batch.length);
          // Busy between batches (check awaits store reads here): the read ahead fails meanwhile.
          await new Promise<void>((resolve) => setTimeout(resolve, 50));
        }
      })();
      await expect(scan).rejects.toMatchObject({ code: 'CORRUPT_METADATA', message: expect.stringContaining('injected read failure') as unknown });
      expect(batches).toHaveLength(1);
      expect(reads).toBe(2);
    } finally {
      await db.close();
    }
  });
});

describe('map value encoding (a COW commit encodes one per block)', () => {
  it('encodeMapValue writes exactly the bytes msgpackr writes for {v: 1, storeBlock, crc}, at every integer width', () => {
    const edges = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 31, 2 ** 32 - 1];
    for (const storeBlock of [...edges, 2 ** 32, 2 ** 40, 2 ** 48 - 1]) {
      for (const crc of edges) expect(encodeMapValue(storeBlock, crc).equals(encodeValue({ v: 1, storeBlock, crc })), `storeBlock ${storeBlock} crc ${crc}`).toBe(true);
    }
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 32 - 1 }), fc.integer({ min: 0, max: 2 ** 32 - 1 }), (storeBlock, crc) => {
        const bytes = encodeMapValue(storeBlock, crc);
        expect(bytes.equals(encodeValue({ v: 1, storeBlock, crc }))).toBe(true);
        expect(decodeValue.map('map:x', bytes)).toEqual({ v: 1, storeBlock, crc });
      }),
      { numRuns: 2000 },
    );
    expect(putMapOp(3, 9, 70_000, 5)).toEqual({ o: 'p', k: keys.map(3, 9), v: encodeValue({ v: 1, storeBlock: 70_000, crc: 5 }) });
  });
});

describe('import marker values are checked on read (docs/FORMAT.md §6.10)', () => {
  const identity = { volumeUuid: 'ab'.repeat(16), snapshotId: 1, createdAt: '2026-01-01T00:00:00.000Z', name: 's' };
  const marker = (headerCrc: number): Uint8Array =>
    encodeValue({ v: 1, kind: 'full', source: identity, base: null, headerCrc, extentCount: 2, nextExtent: 1, appliedBytes: 4096, startedAt: '2026-01-01T00:00:00.000Z' });
  it('a headerCrc is a 32-bit value: 0 and 2^32 − 1 decode, 2^32 is CORRUPT_METADATA', () => {
    expect(decodeValue.importState('import', marker(0)).headerCrc).toBe(0);
    expect(decodeValue.importState('import', marker(0xffffffff)).headerCrc).toBe(0xffffffff);
    expect(() => decodeValue.importState('import', marker(2 ** 32))).toThrow(expect.objectContaining({ code: 'CORRUPT_METADATA' }));
  });
});
