import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crc32c } from '@cowvol/base';
import { MAX_FINDINGS, rebindStoreCrc, storeBlockCrc, storeCrcPrefix, Volume, volumeLayout, type CheckReport } from '../src/index.js';
import { cowvol } from '../../../test/helpers.js';
import { mulberry32 } from './prng.js';

/**
 * Wrong data is never returned with success (docs/ARCHITECTURE.md "Store
 * block checksums", "Metadata checksums"): a store block's CRC32C is bound to
 * its mapping, so a mapping that names another block — a flipped byte in a
 * LevelDB table, a misdirected write — fails the read; `check` verifies
 * LevelDB's own checksums; `check --read-data` finds damaged store blocks
 * and names every snapshot that reads them. Seeded: COWVOL_SEED replays.
 */
const BS = 4096;
const BLOCKS = 16;
const SEED = process.env.COWVOL_SEED === undefined ? (Date.now() >>> 0) % 1_000_000 : Number(process.env.COWVOL_SEED);
const REPLAY = `seed ${SEED} (replay: COWVOL_SEED=${SEED})`;

const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const hex = (n: number, width: number): string => n.toString(16).padStart(width, '0');
const mapKey = (id: number, block: number): string => `map:${hex(id, 8)}:${hex(block, 12)}`;

/** Block `b` of generation `g`: every byte says which block and generation it is. */
const content = (b: number, g: number): Buffer => Buffer.alloc(BS, 16 * g + b + 1);

let dir: string;
let volumes = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-integrity-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * A closed volume: every block written (generation 0), then for each
 * `[name, blocks]` a snapshot `name` followed by a write of `blocks` (the
 * next generation).
 */
async function volumeWith(steps: Array<[string, number[]]>): Promise<string> {
  const path = join(dir, `v${++volumes}.img`);
  const v = await Volume.create(path, { sizeBytes: BLOCKS * BS, blockSizeBytes: BS });
  for (let b = 0; b < BLOCKS; b++) await v.write(b * BS, content(b, 0));
  let g = 0;
  for (const [name, blocks] of steps) {
    await v.createSnapshot(name);
    g += 1;
    for (const b of blocks) await v.write(b * BS, content(b, g));
  }
  await v.close();
  return path;
}

async function withDb<T>(vol: string, fn: (db: Level<string, Buffer>) => Promise<T>, options: { compression?: boolean } = {}): Promise<T> {
  const db = new Level<string, Buffer>(volumeLayout(vol).metaPath, { keyEncoding: 'utf8', valueEncoding: 'buffer', ...options });
  await db.open();
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}

async function withVolume<T>(vol: string, fn: (v: Volume) => Promise<T>): Promise<T> {
  const v = await Volume.open(vol);
  try {
    return await fn(v);
  } finally {
    await v.close();
  }
}

/**
 * Rewrites every LevelDB table uncompressed (a full manual compaction with
 * compression off), so the test can find a key's bytes in a table file.
 */
async function uncompressTables(vol: string): Promise<void> {
  await withDb(vol, (db) => (db as unknown as { compactRange(a: string, b: string): Promise<void> }).compactRange('\x00', '\xff'), { compression: false });
}

/** Every offset of `needle` in the table files of the volume's LevelDB. */
async function findInTables(vol: string, needle: Buffer): Promise<Array<{ file: string; offset: number }>> {
  const meta = volumeLayout(vol).metaPath;
  const hits: Array<{ file: string; offset: number }> = [];
  for (const name of await readdir(meta)) {
    if (!name.endsWith('.ldb') && !name.endsWith('.sst')) continue;
    const bytes = await readFile(join(meta, name));
    for (let at = bytes.indexOf(needle); at >= 0; at = bytes.indexOf(needle, at + 1)) hits.push({ file: join(meta, name), offset: at });
  }
  return hits;
}

async function flipByte(path: string, offsetBytes: number, to?: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, offsetBytes);
    one[0] = to ?? one[0]! ^ 0xff;
    await fh.write(one, 0, 1, offsetBytes);
  } finally {
    await fh.close();
  }
}

describe('store block checksums are bound to their mapping', () => {
  it('the CRC binds snapshot, volume block and store block; a rebind without the data equals a fresh CRC', () => {
    console.log(`rebind: ${REPLAY}`);
    const r = mulberry32(SEED);
    const int = (n: number): number => Math.floor(r() * n);
    for (let round = 0; round < 200; round++) {
      const bs = 512 << int(8);
      const data = Buffer.alloc(bs);
      for (let i = 0; i < bs; i++) data[i] = int(256);
      const from = { snapshotId: 1 + int(2 ** 32 - 1), volumeBlock: int(2 ** 40), storeBlock: int(2 ** 40) };
      const to = { ...from, snapshotId: 1 + int(2 ** 32 - 1) };
      const crc = storeBlockCrc(from, data);
      expect(crc, `${REPLAY} round ${round}: CRC32C of prefix ‖ data`).toBe(crc32c(Buffer.concat([storeCrcPrefix(from), data])));
      expect(rebindStoreCrc(crc, from, to, bs), `${REPLAY} round ${round}`).toBe(storeBlockCrc(to, data));
      for (const other of [to, { ...from, volumeBlock: from.volumeBlock + 1 }, { ...from, storeBlock: from.storeBlock + 1 }]) {
        expect(storeBlockCrc(other, data), `${REPLAY} round ${round}: another identity, another CRC`).not.toBe(crc);
      }
    }
  });

  it('a flipped block number in a map key inside a LevelDB table: snapshot read fails, check exits 2', async () => {
    // s1 owns copies of blocks 2 and 7; block 5 reads through to live.
    const vol = await volumeWith([['s1', [2, 7]]]);
    await uncompressTables(vol);
    const key = Buffer.from(mapKey(1, 2));
    const hits = await findInTables(vol, key);
    expect(hits, 'the key is stored whole exactly once in the tables').toHaveLength(1);
    // "…002" → "…005": s1 now claims its copy of block 2 is block 5's.
    await flipByte(hits[0]!.file, hits[0]!.offset + key.length - 1, '5'.charCodeAt(0));
    await withDb(vol, async (db) => {
      const keys = await db.keys({ gte: mapKey(1, 0), lt: `${mapKey(1, 0).slice(0, 13)}\xff` }).all();
      expect(keys, 'LevelDB (no checksum verification on reads) scans the damaged key').toEqual([mapKey(1, 5), mapKey(1, 7)]);
    });

    const out = join(dir, 'flipped-s1.img');
    const read = await cowvol(['snapshot', 'read', vol, 's1', '--output', out]);
    expect(read.code, `snapshot read of a misdirected mapping: ${read.stderr}`).toBe(6);
    expect(read.stderr).toContain('STORE_CORRUPT');
    const check = await cowvol(['check', vol, '--json']);
    expect(check.code, check.stderr).toBe(2);
    const report = JSON.parse(check.stdout.toString('utf8')) as CheckReport;
    expect(report.corruptions.map((c) => c.kind)).toContain('metadata-checksum');
  });

  it('two mappings whose store blocks were exchanged (a misdirected write) fail the read of either block', async () => {
    const vol = await volumeWith([['s1', [3, 9]]]);
    await withDb(vol, async (db) => {
      const a = await db.get(mapKey(1, 3));
      const b = await db.get(mapKey(1, 9));
      expect((packr.unpack(a) as { storeBlock: number }).storeBlock).not.toBe((packr.unpack(b) as { storeBlock: number }).storeBlock);
      await db.batch([
        { type: 'put', key: mapKey(1, 3), value: b },
        { type: 'put', key: mapKey(1, 9), value: a },
      ]);
    });
    await withVolume(vol, async (v) => {
      for (const block of [3, 9]) {
        await expect(v.readSnapshot('s1', block * BS, BS), `block ${block}`).rejects.toMatchObject({ code: 'STORE_CORRUPT', details: { snapshot: 's1', offsetBytes: block * BS } });
      }
      expect(await v.readSnapshot('s1', 4 * BS, BS), 'an intact block still reads').toEqual(content(4, 0));
      const plain = await v.check();
      expect(plain.status, 'plain check reads no store data: the exchange is seen only with readData').toBe('clean');
      const withData = await v.check({ readData: true });
      expect(withData).toMatchObject({ status: 'corrupt', dataChecked: true, damagedBlocks: 2, affectedSnapshots: ['s1'] });
    });
  });

  it('a hand-over rebinds the CRC without reading the data: the older snapshot reads its copy, check --read-data is clean', async () => {
    // s1 writes nothing, so s1 reads block 6 through to s2's copy; deleting s2 hands that copy to s1.
    const vol = await volumeWith([
      ['s1', []],
      ['s2', [6]],
      ['s3', [6, 1]],
    ]);
    await withVolume(vol, async (v) => {
      const del = await v.deleteSnapshot('s2');
      expect(del.handedOverBlocks).toBe(1);
      expect(await v.readSnapshot('s1', 0, BLOCKS * BS)).toEqual(Buffer.concat(Array.from({ length: BLOCKS }, (_, b) => content(b, 0))));
      expect(await v.check({ readData: true })).toMatchObject({ status: 'clean', damagedBlocks: 0 });
    });
  });

  it('a volume of format version 1 (unbound checksums) is refused with UNSUPPORTED_VERSION', async () => {
    const vol = await volumeWith([['s1', [0]]]);
    await withDb(vol, async (db) => {
      const sb = packr.unpack(await db.get('sb')) as Record<string, unknown>;
      await db.put('sb', packr.pack({ ...sb, formatVersion: 1 }));
    });
    await expect(Volume.open(vol)).rejects.toMatchObject({ code: 'UNSUPPORTED_VERSION', details: { version: 1 } });
  });
});

describe('check --read-data', () => {
  it('a damaged store block: plain check exits 0 (it reads no data), --read-data exits 2 naming every snapshot that reads it', async () => {
    // s1 reads block 4 through to s2's copy; s3 has its own copy; s2's copy is damaged.
    const vol = await volumeWith([
      ['s1', []],
      ['s2', [4]],
      ['s3', [4]],
    ]);
    const storeBlock = await withDb(vol, async (db) => (packr.unpack(await db.get(mapKey(2, 4))) as { storeBlock: number }).storeBlock);
    await flipByte(volumeLayout(vol).storePath, (storeBlock + 1) * BS + 100);

    const plain = await cowvol(['check', vol, '--json']);
    expect(plain.code, plain.stderr).toBe(0);
    expect(JSON.parse(plain.stdout.toString('utf8'))).toMatchObject({ status: 'clean', dataChecked: false });

    const full = await cowvol(['check', vol, '--read-data', '--json', '--progress']);
    expect(full.code, full.stderr).toBe(2);
    const report = JSON.parse(full.stdout.toString('utf8')) as CheckReport;
    expect(report).toMatchObject({ status: 'corrupt', dataChecked: true, damagedBlocks: 1, affectedSnapshots: ['s2', 's1'] });
    expect(report.corruptions).toEqual([{ kind: 'store-block-checksum', message: expect.stringContaining(`store block ${storeBlock} (block 4 of snapshot 2)`) as string }]);
    const events = full.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { phase?: string; doneBlocks: number; totalBlocks: number });
    expect(
      events.some((e) => e.phase === 'data' && e.doneBlocks === 2 && e.totalBlocks === 2),
      full.stderr,
    ).toBe(true);

    const human = await cowvol(['check', vol, '--read-data']);
    expect(human.code).toBe(2);
    expect(human.stdout.toString('utf8')).toContain('snapshots affected: s2, s1');
    // Reads agree: s1 and s2 fail on block 4, s3 (its own copy) reads.
    await withVolume(vol, async (v) => {
      for (const name of ['s1', 's2']) await expect(v.readSnapshot(name, 4 * BS, BS)).rejects.toMatchObject({ code: 'STORE_CORRUPT' });
      expect(await v.readSnapshot('s3', 4 * BS, BS)).toEqual(content(4, 2));
    });
  });

  it('a store cut short: --read-data counts the blocks past its end as damaged and names the snapshots reading them (not "every mapped block verified")', async () => {
    const vol = await volumeWith([
      ['s1', []],
      ['s2', [4, 5]],
    ]);
    const store = volumeLayout(vol).storePath;
    const fh = await open(store, 'r+');
    await fh.truncate(BS); // the header alone
    await fh.close();
    const full = await cowvol(['check', vol, '--read-data', '--json']);
    expect(full.code, full.stderr).toBe(2);
    const report = JSON.parse(full.stdout.toString('utf8')) as CheckReport;
    expect(report).toMatchObject({ status: 'corrupt', dataChecked: true, damagedBlocks: 2, affectedSnapshots: ['s2', 's1'] });
    expect(report.corruptions.filter((c) => c.kind === 'store-block-checksum').map((c) => c.message)).toEqual([
      expect.stringContaining('past the end of the store file') as string,
      expect.stringContaining('past the end of the store file') as string,
    ]);
  });

  it('a wiped store: every damaged block counted, the first MAX_FINDINGS listed, every affected snapshot named', async () => {
    const bs = 512;
    const blocks = MAX_FINDINGS + 200;
    const path = join(dir, 'wiped.img');
    const v = await Volume.create(path, { sizeBytes: blocks * bs, blockSizeBytes: bs });
    try {
      await v.write(0, Buffer.alloc(blocks * bs, 1));
      await v.createSnapshot('s1');
      await v.createSnapshot('s2');
      await v.write(0, Buffer.alloc(blocks * bs, 2)); // every block copied into s2; s1 reads through to s2
      await v.flush();
      const store = await open(volumeLayout(path).storePath, 'r+');
      try {
        await store.write(Buffer.alloc(blocks * bs, 0xff), 0, blocks * bs, bs); // every store block after the header
      } finally {
        await store.close();
      }
      const report = await v.check({ readData: true });
      expect(report).toMatchObject({ status: 'corrupt', damagedBlocks: blocks, affectedSnapshots: ['s2', 's1'] });
      expect(report.corruptions).toHaveLength(MAX_FINDINGS);
      expect(report.corruptions.every((c) => c.kind === 'store-block-checksum' && c.message.endsWith('snapshots reading it: s2, s1'))).toBe(true);
    } finally {
      await v.close();
    }
  });

  it('a clean volume with copies, hand-overs and both data modes reads clean', async () => {
    for (const dataMode of ['ordered', 'journal'] as const) {
      const path = join(dir, `clean-${dataMode}.img`);
      const v = await Volume.create(path, { sizeBytes: BLOCKS * BS, blockSizeBytes: BS, dataMode });
      try {
        await v.write(0, Buffer.alloc(BLOCKS * BS, 1));
        for (let s = 1; s <= 4; s++) {
          await v.createSnapshot(`s${s}`);
          await v.write(s * BS, Buffer.alloc(3 * BS, s + 1));
        }
        await v.deleteSnapshot('s3');
        const report = await v.check({ readData: true });
        expect(report, dataMode).toMatchObject({ status: 'clean', dataChecked: true, damagedBlocks: 0, affectedSnapshots: [] });
        expect(report.mappedBlocks, dataMode).toBeGreaterThan(0);
      } finally {
        await v.close();
      }
    }
  });
});
