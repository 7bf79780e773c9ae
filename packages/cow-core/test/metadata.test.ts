import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { delOp, keys, putOp } from '../src/metadata.js';
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
