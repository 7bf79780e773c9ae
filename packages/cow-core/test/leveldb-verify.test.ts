import { appendFile, mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { logRecords, maskedCrc, snappyDecompress, verifyLevelDb } from '../src/leveldb-verify.js';
import { mulberry32 } from './prng.js';

/**
 * `verifyLevelDb` (docs/ARCHITECTURE.md §8.4, docs/FORMAT.md §6.12) on real
 * LevelDB folders written by classic-level: clean ones verify, a flipped
 * byte anywhere in a table or a complete log record is found, a record cut
 * short at the end of a log (an append in progress) is not. Seeded:
 * COWVOL_SEED replays the byte picked.
 */
const SEED = process.env.COWVOL_SEED === undefined ? (Date.now() >>> 0) % 1_000_000 : Number(process.env.COWVOL_SEED);
const REPLAY = `seed ${SEED} (replay: COWVOL_SEED=${SEED})`;

let dir: string;
let dbs = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-ldbverify-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A closed LevelDB folder with `n` cowvol-like map records, compacted into tables (default compression: Snappy). */
async function database(n: number, compact = true): Promise<string> {
  const path = join(dir, `db${++dbs}`);
  const db = new Level<string, Buffer>(path, { keyEncoding: 'utf8', valueEncoding: 'buffer' });
  await db.open();
  const r = mulberry32(dbs);
  for (let i = 0; i < n; i += 500) {
    await db.batch(
      Array.from({ length: Math.min(500, n - i) }, (_, k) => ({
        type: 'put' as const,
        key: `map:00000001:${(i + k).toString(16).padStart(12, '0')}`,
        value: Buffer.from([0xde, 0, 3, Math.floor(r() * 256), i & 0xff]),
      })),
    );
  }
  if (compact) await (db as unknown as { compactRange(a: string, b: string): Promise<void> }).compactRange('\x00', '\xff');
  await db.close();
  return path;
}

async function filesOf(path: string, suffix: string): Promise<string[]> {
  return (await readdir(path)).filter((f) => f.endsWith(suffix)).map((f) => join(path, f));
}

async function flip(file: string, at: number): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0]! ^= 0x20;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
}

describe('verifyLevelDb', () => {
  it('a clean database verifies: tables (Snappy index blocks included), MANIFEST and logs', async () => {
    expect(await verifyLevelDb(await database(20_000))).toEqual([]);
    expect(await verifyLevelDb(await database(300, false)), 'records still only in the log').toEqual([]);
  });

  it('a flipped byte anywhere in a table is found and names the table', async () => {
    console.log(`table flip: ${REPLAY}`);
    const r = mulberry32(SEED);
    const path = await database(5_000);
    const tables = await filesOf(path, '.ldb');
    expect(tables.length).toBeGreaterThan(0);
    const table = tables[Math.floor(r() * tables.length)]!;
    const at = Math.floor(r() * (await stat(table)).size);
    await flip(table, at);
    const problems = await verifyLevelDb(path);
    expect(problems, `${REPLAY}: byte ${at} of ${table}`).toHaveLength(1);
    expect(problems[0]).toMatch(/^\d{6}\.ldb: /);
  });

  it('a flipped byte in a complete log record is found; a record cut short at the end is an append in progress', async () => {
    const path = await database(300, false);
    const [log] = await filesOf(path, '.log');
    const size = (await stat(log!)).size;
    expect(logRecords(await readFile(log!)).length).toBeGreaterThan(0);
    await appendFile(log!, Buffer.from([1, 2, 3, 4, 200, 0, 1, 9, 9])); // header says 200 bytes; 2 follow
    expect(await verifyLevelDb(path)).toEqual([]);
    await flip(log!, Math.floor(size / 2));
    expect(await verifyLevelDb(path)).toEqual([expect.stringMatching(/^\d{6}\.log: /) as string]);
  });

  it('a missing CURRENT or MANIFEST is reported', async () => {
    const path = await database(10);
    await rm(join(path, 'CURRENT'));
    expect(await verifyLevelDb(path)).toEqual(['CURRENT: does not name a MANIFEST']);
  });

  it('masked CRC and Snappy decoding follow LevelDB', () => {
    // crc32c("") = 0, masked: rotate right 15 then + 0xa282ead8.
    expect(maskedCrc(Buffer.alloc(0))).toBe(0xa282ead8);
    // "abc" literal, copy of 6 at offset 3, "X" literal.
    const snappy = Buffer.from([10, 0x08, 0x61, 0x62, 0x63, 0x09, 0x03, 0x00, 0x58]);
    expect(snappyDecompress(snappy).toString()).toBe('abcabcabcX');
    expect(() => snappyDecompress(Buffer.from([10, 0x08, 0x61, 0x62, 0x63]))).toThrow(/shorter/);
    expect(() => snappyDecompress(Buffer.from([4, 0x09, 0x05]))).toThrow(/out of range/);
    expect(() => snappyDecompress(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]))).toThrow(/claims/);
  });
});
