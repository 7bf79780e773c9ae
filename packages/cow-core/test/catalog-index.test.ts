import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_FINDINGS, Volume, volumeLayout } from '../src/index.js';
import { compareIndex, indexMatches } from '../src/catalog-index.js';
import { SCHEMA_VERSION, decodeValue, encodeValue, keys, type SnapshotRecord } from '../src/metadata.js';
import { MetadataDb } from '../src/metadata-db.js';
import { withDb } from './meta-db.js';
import { mulberry32 } from './prng.js';
import { forgetChangeStamp } from '../../../test/helpers.js';

/**
 * The catalog index (catalog-index.ts, docs/FORMAT.md §6.13) and the lazy
 * open it allows (docs/ARCHITECTURE.md §4.4, "A create that does not read
 * the catalog"): the index follows every catalog change, committed or
 * replayed; a lazy open's create is checked against it and reads no
 * catalog; anything else reads the catalog first; `check` finds a damaged
 * index and `check --repair` rebuilds it.
 *
 * Knob: COWVOL_INDEX_OPS (default 240) — operations of the seeded run.
 */
const BS = 4096;
const OPS = Number(process.env.COWVOL_INDEX_OPS ?? 240);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-catalog-index-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Every snapshot record of a closed volume, as LevelDB holds it. */
async function records(vol: string): Promise<SnapshotRecord[]> {
  return withDb(vol, async (db) => {
    const out: SnapshotRecord[] = [];
    for await (const [k, v] of db.iterator({ gt: keys.snapshotPrefix, lt: `${keys.snapshotPrefix}\xff` })) out.push(decodeValue.snapshot(k, v));
    return out;
  });
}

/** The stored index of a closed volume against its own catalog. */
async function indexOf(vol: string): Promise<ReturnType<typeof compareIndex>> {
  const catalog = await records(vol);
  const db = await MetadataDb.open(volumeLayout(vol).metaPath, false);
  try {
    return await compareIndex(db, catalog);
  } finally {
    await db.close();
  }
}

/** A power-loss copy of the open volume `vol` at `copy`: its files as they are, LevelDB as `checkpointed` kept it. */
async function powerLossCopy(vol: string, copy: string, checkpointed: string): Promise<void> {
  await cp(vol, copy);
  await cp(`${vol}.cowvol`, `${copy}.cowvol`, { recursive: true, filter: (p) => !p.endsWith('/lock') && !p.endsWith('/owner') && !p.includes('/meta') });
  await cp(checkpointed, volumeLayout(copy).metaPath, { recursive: true });
  await forgetChangeStamp(copy); // a copy is a new file: not a write made outside cowvol
}

async function volumeWith(name: string, snapshots: number): Promise<string> {
  const vol = join(dir, name);
  const v = await Volume.create(vol, { sizeBytes: 64 * BS, blockSizeBytes: BS });
  for (let i = 0; i < snapshots; i++) {
    await v.write((i % 64) * BS, Buffer.alloc(BS, i + 1));
    await v.createSnapshot(`s${i}`);
  }
  await v.close();
  return vol;
}

describe('the catalog index', () => {
  it(`follows every catalog change (seeded: ${OPS} creates, renames, deletes of one and several, labels, holds; names freed and taken again)`, async () => {
    const seed = Number(process.env.COWVOL_SEED ?? 7301);
    const rnd = mulberry32(seed);
    const vol = join(dir, 'follow.img');
    let v = await Volume.create(vol, { sizeBytes: 64 * BS, blockSizeBytes: BS });
    const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    const names = Array.from({ length: 12 }, (_, i) => `n${i}`);
    try {
      for (let op = 0; op < OPS; op++) {
        const live = (await v.listSnapshots()).map((s) => s.name);
        const free = names.filter((n) => !live.includes(n));
        const r = rnd();
        await v.write(Math.floor(rnd() * 64) * BS, Buffer.alloc(BS, op & 0xff));
        if (live.length === 0 || (r < 0.35 && free.length > 0)) await v.createSnapshot(pick(free), rnd() < 0.3 ? { labels: { op: String(op) } } : {});
        else if (r < 0.5 && free.length > 0) await v.renameSnapshot(pick(live), pick(free));
        else if (r < 0.65) await v.deleteSnapshot(pick(live)).catch((err: unknown) => expect(err).toMatchObject({ code: 'SNAPSHOT_HELD' }));
        else if (r < 0.72) await v.deleteSnapshots([...new Set([pick(live), pick(live)])]).catch((err: unknown) => expect(err).toMatchObject({ code: 'SNAPSHOT_HELD' }));
        else if (r < 0.85) await v.holdSnapshot(pick(live), rnd() < 0.5);
        else await v.setSnapshotLabels(pick(live), { k: String(op) });
        if (op % 40 === 39) {
          await v.close(); // the index as LevelDB holds it, against the catalog as LevelDB holds it
          const diff = await indexOf(vol);
          expect(indexMatches(diff), `seed ${seed} op ${op}: ${JSON.stringify(diff)}`).toBe(true);
          v = await Volume.open(vol);
          expect((await v.check()).status, `seed ${seed} op ${op}`).toBe('clean');
        }
      }
    } finally {
      await v.close();
    }
    expect(indexMatches(await indexOf(vol)), `seed ${seed}`).toBe(true);
  });

  it('is replayed with the transactions it follows: a lazy open of a volume whose LevelDB lost them (a power loss) reads the catalog before it replays a rename or a delete', async () => {
    const vol = await volumeWith('replay.img', 5);
    const checkpointed = join(dir, 'replay-meta');
    await cp(volumeLayout(vol).metaPath, checkpointed, { recursive: true });
    const v = await Volume.open(vol);
    await v.renameSnapshot('s0', 'renamed');
    await v.deleteSnapshot('s1');
    await v.createSnapshot('s1'); // the name freed by the delete, taken again
    await v.write(0, Buffer.alloc(BS, 0xaa));
    await v.flush();
    // The power-loss copy: the journal holds every transaction, LevelDB is as of the last checkpoint.
    const copy = join(dir, 'replay-copy.img');
    await powerLossCopy(vol, copy, checkpointed);
    const expected = (await v.listSnapshots()).map((s) => s.name);
    await v.close();
    const lazy = await Volume.open(copy, { catalog: 'lazy' });
    try {
      expect(lazy.stats.catalogReads, 'the replay of a rename and a delete needs the catalog').toBe(1);
      await lazy.createSnapshot('after');
      expect((await lazy.listSnapshots()).map((s) => s.name)).toEqual([...expected, 'after']);
    } finally {
      await lazy.close();
    }
    expect(indexMatches(await indexOf(copy))).toBe(true);
  });

  it('a lazy open replaying a create and then a write after a power loss writes the replayed create before it reads the catalog', async () => {
    const vol = await volumeWith('replay-create.img', 1);
    const checkpointed = join(dir, 'replay-create-meta');
    await cp(volumeLayout(vol).metaPath, checkpointed, { recursive: true });
    const v = await Volume.open(vol);
    await v.createSnapshot('x'); // a transaction a lazy load applies as is: it joins the replay batch
    await v.write(0, Buffer.alloc(BS, 0x77)); // a COW into x: needs the catalog, which must hold x
    await v.flush();
    const copy = join(dir, 'replay-create-copy.img');
    await powerLossCopy(vol, copy, checkpointed);
    const before = await v.readSnapshot('x', 0, BS);
    await v.close();
    const lazy = await Volume.open(copy, { catalog: 'lazy' });
    try {
      expect(lazy.stats.catalogReads).toBe(1);
      expect((await lazy.listSnapshots()).map((s) => [s.name, s.ownedBlocks])).toEqual([
        ['s0', 0],
        ['x', 1],
      ]);
      expect((await lazy.readSnapshot('x', 0, BS)).equals(before)).toBe(true);
      await lazy.createSnapshot('y');
      expect((await lazy.check()).status).toBe('clean');
    } finally {
      await lazy.close();
    }
    expect(indexMatches(await indexOf(copy))).toBe(true);
  });
});

describe('a lazy open (catalog: lazy)', () => {
  it('takes a snapshot without reading the catalog, checked against the index; every other operation reads it first', async () => {
    const vol = await volumeWith('lazy.img', 40);
    const v = await Volume.open(vol, { catalog: 'lazy' });
    try {
      expect(v.stats.catalogReads).toBe(0);
      await expect(v.createSnapshot('s7')).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
      const info = await v.createSnapshot('new', { labels: { k: 'v' } });
      expect(info).toMatchObject({ name: 'new', active: true, labels: { k: 'v' }, ownedBlocks: 0 });
      await expect(v.createSnapshot('new')).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
      expect(v.stats.catalogReads, 'creates alone read no catalog').toBe(0);
      // The first other operation reads the catalog, and sees the snapshots created before it.
      const before = await v.read(0, BS);
      await v.write(0, Buffer.alloc(BS, 0x5a)); // COWs into `new`, the active snapshot
      expect(v.stats.catalogReads).toBe(1);
      expect((await v.readSnapshot('new', 0, BS)).equals(before)).toBe(true);
      const list = await v.listSnapshots();
      expect(list).toHaveLength(41);
      expect(list.at(-1)).toMatchObject({ name: 'new', active: true, ownedBlocks: 1 });
      await v.deleteSnapshot('s3');
      await v.createSnapshot('s3');
      expect((await v.check()).status).toBe('clean');
      expect(v.stats.catalogReads).toBe(1);
    } finally {
      await v.close();
    }
    expect(indexMatches(await indexOf(vol))).toBe(true);
  });

  it('a delete as the first operation reads the catalog (it finishes interrupted deletes before it enters the gate: none, after a lazy open)', async () => {
    const vol = await volumeWith('lazy-delete.img', 3);
    const v = await Volume.open(vol, { catalog: 'lazy' });
    try {
      await v.deleteSnapshots(['s0', 's1']);
      expect(v.stats.catalogReads).toBe(1);
      expect((await v.listSnapshots()).map((s) => s.name)).toEqual(['s2']);
    } finally {
      await v.close();
    }
  });

  it('reads the catalog at open when a delete waits to be finished (snapcount counts a deleting record), and finishes it', async () => {
    const vol = await volumeWith('lazy-deleting.img', 3);
    // As a delete interrupted right after its mark leaves it: the record `deleting`, its name given up, the count saying so.
    await withDb(vol, async (db) => {
      const key = keys.snapshot(2);
      const rec = decodeValue.snapshot(key, await db.get(key));
      await db.batch([
        { type: 'put', key, value: encodeValue({ ...rec, state: 'deleting' }) },
        { type: 'del', key: keys.name(rec.name) },
        { type: 'put', key: keys.snapshotCount, value: encodeValue({ v: SCHEMA_VERSION, snapshots: 3, deleting: 1 }) },
      ]);
    });
    const v = await Volume.open(vol, { catalog: 'lazy' });
    try {
      expect(v.stats.catalogReads).toBe(1);
      expect((await v.listSnapshots()).map((s) => s.name)).toEqual(['s0', 's2']);
      expect((await v.check()).status).toBe('clean');
    } finally {
      await v.close();
    }
    expect(indexMatches(await indexOf(vol))).toBe(true);
  });
});

describe('check and a damaged catalog index', () => {
  it('an unreadable snapcount makes a lazy open read the catalog (as without an index); check reports it, and the next create writes it right', async () => {
    const vol = await volumeWith('bad-count.img', 2);
    await withDb(vol, (db) => db.put(keys.snapshotCount, Buffer.from([0xc1, 0xff])));
    const v = await Volume.open(vol, { catalog: 'lazy' });
    try {
      expect(v.stats.catalogReads).toBe(1);
      expect((await v.check()).corruptions.map((f) => f.kind)).toEqual(['catalog-index']);
      // The counts in memory come from the records: the next change that moves them writes them right.
      await v.createSnapshot('s2');
      expect((await v.check()).status).toBe('clean');
    } finally {
      await v.close();
    }
    expect(indexMatches(await indexOf(vol))).toBe(true);
  });

  it('finds a missing name, a stray name and a wrong count (catalog-index), and --repair rebuilds the index', async () => {
    const vol = await volumeWith('damaged.img', 4);
    await withDb(vol, async (db) => {
      await db.batch([
        { type: 'del', key: keys.name('s1') },
        { type: 'put', key: keys.name('ghost'), value: encodeValue({ v: SCHEMA_VERSION, id: 99 }) },
        { type: 'put', key: keys.snapshotCount, value: encodeValue({ v: SCHEMA_VERSION, snapshots: 9, deleting: 0 }) },
      ]);
    });
    const v = await Volume.open(vol);
    try {
      const report = await v.check();
      expect(report.status).toBe('corrupt');
      expect(report.corruptions.map((f) => f.kind)).toEqual(['catalog-index', 'catalog-index', 'catalog-index']);
      expect(report.corruptions.map((f) => f.message).join('\n')).toMatch(/s1[\s\S]*ghost[\s\S]*counts 9/);
      const repaired = await v.check({ repair: true });
      expect(repaired).toMatchObject({ status: 'clean', repairedIndexKeys: 3, corruptions: [] });
      expect((await v.check()).status).toBe('clean');
    } finally {
      await v.close();
    }
    expect(indexMatches(await indexOf(vol))).toBe(true);
  });

  it('a name key that does not decode, for a name no snapshot has, is a finding; --repair deletes it and the name can be taken', async () => {
    const vol = await volumeWith('undecodable.img', 1);
    await withDb(vol, (db) => db.put(keys.name('c'), Buffer.from([0xc1])));
    const v = await Volume.open(vol);
    try {
      expect((await v.check()).corruptions.map((f) => f.kind)).toEqual(['catalog-index']);
      expect(await v.check({ repair: true })).toMatchObject({ status: 'clean', repairedIndexKeys: 1 });
    } finally {
      await v.close();
    }
    const lazy = await Volume.open(vol, { catalog: 'lazy' });
    try {
      await lazy.createSnapshot('c');
    } finally {
      await lazy.close();
    }
  });

  it('--repair repairs nothing when more findings exist than are listed (MAX_FINDINGS): an unlisted one may be anything', async () => {
    const vol = await volumeWith('many-findings.img', 2);
    await withDb(vol, async (db) => {
      const ops = Array.from({ length: MAX_FINDINGS + 1 }, (_, i) => ({ type: 'put' as const, key: keys.name(`ghost${i}`), value: encodeValue({ v: SCHEMA_VERSION, id: 1 }) }));
      await db.batch(ops);
      // And a real corruption, sorted after every index finding: a second mapping of a mapped store block.
      await db.put(keys.map(2, 40), encodeValue({ v: SCHEMA_VERSION, storeBlock: 0, crc: 0 }));
    });
    const v = await Volume.open(vol);
    try {
      const report = await v.check({ repair: true });
      expect(report.status).toBe('corrupt');
      expect(report.repairedIndexKeys).toBe(0);
      expect(report.corruptions).toHaveLength(MAX_FINDINGS);
    } finally {
      await v.close();
    }
  });

  it('a lazy create refuses (CORRUPT_METADATA) when the volume record would give it the id of an existing snapshot, and overwrites nothing', async () => {
    const vol = await volumeWith('low-next-id.img', 2);
    await withDb(vol, async (db) => {
      const sb = decodeValue.volume(keys.volume, await db.get(keys.volume));
      await db.put(keys.volume, encodeValue({ ...sb, nextSnapshotId: 2 }));
    });
    const lazy = await Volume.open(vol, { catalog: 'lazy' });
    try {
      await expect(lazy.createSnapshot('x')).rejects.toMatchObject({ code: 'CORRUPT_METADATA' });
    } finally {
      await lazy.close().catch(() => undefined);
    }
    expect((await records(vol)).map((r) => r.name)).toEqual(['s0', 's1']);
  });
});
