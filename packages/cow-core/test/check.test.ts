import { copyFile, cp, mkdtemp, rm, stat, truncate } from 'node:fs/promises';
import { randomInt } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Volume, volumeLayout, type CheckFinding, type CheckReport } from '../src/index.js';
import { withDb, type Db } from './meta-db.js';
import { cowvol, forgetChangeStamp } from '../../../test/helpers.js';
import { mulberry32 } from './prng.js';

/**
 * `check` finds what it should (docs/ARCHITECTURE.md, guarantee 6 and the
 * `check` section): a clean volume is clean — never corrupt — and each kind
 * of metadata damage, made by editing LevelDB or the store file directly on
 * a fresh copy of a clean volume, is reported as exactly that kind.
 *
 * Knobs: COWVOL_CHECK_SEED (seed; random by default, printed at the start
 * and in every failure message), COWVOL_CHECK_ROUNDS (seeded victims per
 * kind of damage, default 4), COWVOL_CHECK_WORKLOADS (clean random
 * workloads, default 8).
 */
const BS = 4096;
const BLOCKS = 64;
const SIZE = BLOCKS * BS;
const SEED = process.env.COWVOL_CHECK_SEED !== undefined ? Number(process.env.COWVOL_CHECK_SEED) >>> 0 : randomInt(2 ** 32);
const ROUNDS = Number(process.env.COWVOL_CHECK_ROUNDS ?? 4);
const WORKLOADS = Number(process.env.COWVOL_CHECK_WORKLOADS ?? 8);
const REPLAY = `seed ${SEED} (replay: COWVOL_CHECK_SEED=${SEED})`;

function randomBuffer(r: () => number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = Math.floor(r() * 256);
  return buf;
}

// ------------------------------------------------ direct metadata access
// Values are encoded exactly as metadata.ts encodes them.
const packr = new Packr({ useRecords: false, mapsAsObjects: true });
const hex = (n: number, width: number): string => n.toString(16).padStart(width, '0');
const mapKey = (id: number, block: number): string => `map:${hex(id, 8)}:${hex(block, 12)}`;
const snapKey = (id: number): string => `snap:${hex(id, 8)}`;
const freeKey = (start: number): string => `free:${hex(start, 12)}`;

interface MapEntry {
  key: string;
  id: number;
  block: number;
  storeBlock: number;
  crc: number;
}
interface SnapRec {
  v: number;
  id: number;
  name: string;
  createdAt: string;
  state: 'live' | 'deleting';
  ownedBlocks: number;
}
interface Meta {
  maps: MapEntry[];
  snaps: Map<number, SnapRec>;
  free: Array<{ start: number; length: number }>;
  highWater: number;
}

async function readMeta(db: Db): Promise<Meta> {
  const meta: Meta = { maps: [], snaps: new Map(), free: [], highWater: -1 };
  for await (const [key, value] of db.iterator()) {
    const rec = packr.unpack(value) as Record<string, unknown>;
    if (key.startsWith('map:')) {
      meta.maps.push({ key, id: Number.parseInt(key.slice(4, 12), 16), block: Number.parseInt(key.slice(13), 16), storeBlock: rec.storeBlock as number, crc: rec.crc as number });
    } else if (key.startsWith('snap:')) {
      meta.snaps.set(rec.id as number, rec as unknown as SnapRec);
    } else if (key.startsWith('free:')) {
      meta.free.push({ start: Number.parseInt(key.slice(5), 16), length: rec.lengthBlocks as number });
    } else if (key === 'alloc') {
      meta.highWater = rec.highWaterBlocks as number;
    }
  }
  return meta;
}

const put = (db: Db, key: string, value: object): Promise<void> => db.put(key, packr.pack(value));

/**
 * Sets every snapshot's `sharedBlocks` to what the maps now give (the
 * count the engine keeps, docs/ARCHITECTURE.md §15.3), so that a fault
 * injected by adding or removing a `map:` key is the only thing wrong.
 */
async function keepSharedInStep(db: Db): Promise<void> {
  const meta = await readMeta(db);
  const ids = [...meta.snaps.keys()].sort((a, b) => a - b);
  const blocksOf = (id: number | undefined): Set<number> => new Set(meta.maps.filter((m) => m.id === id).map((m) => m.block));
  for (const [i, id] of ids.entries()) {
    const older = i > 0 ? blocksOf(ids[i - 1]) : new Set<number>();
    const shared = [...blocksOf(id)].filter((b) => older.has(b)).length;
    const rec: Record<string, unknown> = { ...meta.snaps.get(id) };
    delete rec.sharedBlocks;
    await put(db, snapKey(id), shared === 0 ? rec : { ...rec, sharedBlocks: shared });
  }
}

function pick<T>(r: () => number, items: readonly T[]): T {
  expect(items.length, `${REPLAY}: nothing to pick from`).toBeGreaterThan(0);
  return items[Math.floor(r() * items.length)]!;
}

async function checkOf(vol: string, options: { repair?: boolean } = {}): Promise<CheckReport> {
  let v: Volume;
  try {
    v = await Volume.open(vol);
  } catch (err) {
    throw new Error(`${REPLAY}: opening ${vol} failed: ${(err as Error).message}`, { cause: err });
  }
  try {
    return await v.check(options);
  } finally {
    await v.close();
  }
}

function kinds(report: CheckReport): Array<CheckFinding['kind']> {
  return [...new Set(report.corruptions.map((c) => c.kind))].sort();
}

/** The report as text for failure messages. */
function show(report: CheckReport): string {
  return JSON.stringify({ ...report, corruptions: report.corruptions.slice(0, 5) });
}

// ------------------------------------------------------------ fixtures
let dir: string;
/** A clean volume with several snapshots, COWed blocks, handed-over blocks and free extents (two snapshots deleted). */
let base: string;
let copies = 0;

/** A fresh copy of the base volume (volume file and sidecar). */
async function freshCopy(): Promise<string> {
  const vol = join(dir, `copy${++copies}.img`);
  await copyFile(base, vol);
  await cp(`${base}.cowvol`, `${vol}.cowvol`, { recursive: true });
  await forgetChangeStamp(vol); // a copy is a new file: not a write made outside cowvol here
  return vol;
}

async function buildBase(path: string, r: () => number): Promise<void> {
  const v = await Volume.create(path, { sizeBytes: SIZE, blockSizeBytes: BS });
  await v.write(0, randomBuffer(r, SIZE));
  const writeSome = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      if (r() < 0.5) {
        await v.write(Math.floor(r() * BLOCKS) * BS, randomBuffer(r, BS)); // one whole block
      } else {
        const offset = Math.floor(r() * (SIZE - 3 * BS));
        await v.write(offset, randomBuffer(r, 1 + Math.floor(r() * 3 * BS)));
      }
    }
  };
  for (const name of ['s1', 's2', 's3', 's4']) {
    await v.createSnapshot(name);
    await writeSome(10);
  }
  // Deleting a middle snapshot hands some of its blocks over and frees others.
  await v.deleteSnapshot('s2');
  await v.createSnapshot('s5');
  await writeSome(8);
  // Deleting the oldest frees every block it owns (nothing older reads through
  // to them); nothing is written after, so the free extents stay.
  await v.deleteSnapshot('s1');
  await v.flush();
  await v.close();
}

beforeAll(async () => {
  console.log(`check tests: ${REPLAY}`);
  dir = await mkdtemp(join(tmpdir(), 'cowvol-check-'));
  base = join(dir, 'base.img');
  await buildBase(base, mulberry32(SEED));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

// --------------------------------------------------------------- tests
describe('check finds what it should: clean volumes are clean', () => {
  it('a volume with several snapshots and COWed blocks is clean, in process and through the CLI (exit 0)', async () => {
    const meta = await withDb(base, readMeta);
    // The fixture is what the damage tests need: maps in several snapshots, free extents.
    expect(new Set(meta.maps.map((m) => m.id)).size, REPLAY).toBeGreaterThanOrEqual(2);
    expect(meta.free.length, `${REPLAY}: the deleted snapshot left free store blocks`).toBeGreaterThan(0);

    const report = await checkOf(base);
    expect(report.status, `${REPLAY}: ${show(report)}`).toBe('clean');
    expect(report.corruptions).toEqual([]);
    expect(report.leakedBlocks).toBe(0);
    expect(report.snapshots).toBe(meta.snaps.size);
    expect(report.mappedBlocks).toBe(meta.maps.length);
    expect(report.storeHighWaterBlocks).toBe(meta.highWater);
    expect(report.freeBlocks).toBe(meta.free.reduce((n, e) => n + e.length, 0));
    // Every block below the high-water mark is mapped or free.
    expect(report.mappedBlocks + report.freeBlocks, REPLAY).toBe(report.storeHighWaterBlocks);

    const cli = await cowvol(['check', base, '--json']);
    expect(cli.code, `${REPLAY}: ${cli.stderr}`).toBe(0);
    expect(JSON.parse(cli.stdout.toString('utf8'))).toMatchObject({ status: 'clean', corruptions: [], leakedBlocks: 0, mappedBlocks: meta.maps.length });
  });

  it(`clean volumes from ${WORKLOADS} random workloads (writes, snapshot creates and deletes, reopens) are never reported corrupt or leaky`, async () => {
    for (let w = 0; w < WORKLOADS; w++) {
      const seed = (SEED + 1000 + w) >>> 0;
      const where = `workload seed ${seed} (${REPLAY})`;
      const r = mulberry32(seed);
      const vol = join(dir, `workload${w}.img`);
      let v = await Volume.create(vol, { sizeBytes: SIZE, blockSizeBytes: BS });
      await v.write(0, randomBuffer(r, SIZE));
      const names: string[] = [];
      let checks = 0;
      try {
        for (let step = 0; step < 80; step++) {
          const x = r();
          if (x < 0.6) {
            const offset = Math.floor(r() * (SIZE - 1));
            await v.write(offset, randomBuffer(r, Math.min(SIZE - offset, 1 + Math.floor(r() * 4 * BS))));
          } else if (x < 0.75) {
            const name = `w${step}`;
            await v.createSnapshot(name);
            names.push(name);
          } else if (x < 0.87 && names.length > 0) {
            const [name] = names.splice(Math.floor(r() * names.length), 1);
            await v.deleteSnapshot(name!);
          } else if (x < 0.94) {
            const report = await v.check();
            expect(report.status, `${where}, step ${step}: ${show(report)}`).toBe('clean');
            checks += 1;
          } else {
            await v.close();
            v = await Volume.open(vol);
          }
        }
        const report = await v.check();
        expect(report.status, `${where}, at the end: ${show(report)}`).toBe('clean');
        expect(report.snapshots, where).toBe(names.length);
        expect(report.mappedBlocks + report.freeBlocks, where).toBe(report.storeHighWaterBlocks);
        checks += 1;
      } finally {
        await v.close();
      }
      const reopened = await checkOf(vol);
      expect(reopened.status, `${where}, after reopen: ${show(reopened)}`).toBe('clean');
      expect(checks).toBeGreaterThan(0);
    }
  });
});

describe('check finds what it should: each kind of damage is detected as that kind', () => {
  const rounds = Array.from({ length: ROUNDS }, (_, i) => i);

  it('(a) a store block mapped twice (in another snapshot, or at another block of the same one) → corrupt, double-mapping', async () => {
    for (const round of rounds) {
      const r = mulberry32(SEED + round);
      const vol = await freshCopy();
      const expected = await withDb(vol, async (db) => {
        const meta = await readMeta(db);
        const victim = pick(r, meta.maps);
        // Odd rounds: another block of the same snapshot; even rounds: another snapshot.
        const others = [...meta.snaps.keys()].filter((id) => id !== victim.id);
        const id = round % 2 === 1 || others.length === 0 ? victim.id : pick(r, others);
        const taken = new Set(meta.maps.filter((m) => m.id === id).map((m) => m.block));
        const block = pick(
          r,
          Array.from({ length: BLOCKS }, (_, b) => b).filter((b) => !taken.has(b)),
        );
        await put(db, mapKey(id, block), { v: 1, storeBlock: victim.storeBlock, crc: victim.crc });
        // Keep the owned count in step so that only the double mapping is wrong.
        const snap = meta.snaps.get(id)!;
        await put(db, snapKey(id), { ...snap, ownedBlocks: snap.ownedBlocks + 1 });
        await keepSharedInStep(db);
        return { storeBlock: victim.storeBlock, mappedBlocks: meta.maps.length + 1 };
      });
      const report = await checkOf(vol);
      const where = `round ${round}, ${REPLAY}: ${show(report)}`;
      expect(report.status, where).toBe('corrupt');
      expect(kinds(report), where).toEqual(['double-mapping']);
      expect(report.corruptions.length, where).toBe(1);
      expect(report.corruptions[0]!.message, where).toContain(`store block ${expected.storeBlock} `);
      expect(report.mappedBlocks, where).toBe(expected.mappedBlocks);
      expect(report.leakedBlocks, where).toBe(0);
    }
  });

  it('(b) a mapped store block inside a free extent → corrupt, mapped-free-block', async () => {
    for (const round of rounds) {
      const r = mulberry32(SEED + 100 + round);
      const vol = await freshCopy();
      const storeBlock = await withDb(vol, async (db) => {
        const meta = await readMeta(db);
        const p = pick(r, meta.maps).storeBlock;
        // Free extents must neither overlap nor touch, so merge with a free neighbour on either side.
        let start = p;
        let end = p + 1;
        for (const e of meta.free) {
          if (e.start + e.length === p) {
            start = e.start;
            await db.del(freeKey(e.start));
          } else if (e.start === p + 1) {
            end = e.start + e.length;
            await db.del(freeKey(e.start));
          }
        }
        await put(db, freeKey(start), { v: 1, lengthBlocks: end - start });
        return p;
      });
      const report = await checkOf(vol);
      const where = `round ${round}, ${REPLAY}: ${show(report)}`;
      expect(report.status, where).toBe('corrupt');
      expect(kinds(report), where).toEqual(['mapped-free-block']);
      expect(report.corruptions.length, where).toBe(1);
      expect(report.corruptions[0]!.message, where).toContain(`store block ${storeBlock},`);
    }
  });

  it('(c) maps of a snapshot missing from the catalog → corrupt, map-of-unknown-snapshot (one finding per map; the volume still opens)', async () => {
    for (const round of rounds) {
      const r = mulberry32(SEED + 200 + round);
      const vol = await freshCopy();
      const expected = await withDb(vol, async (db) => {
        const meta = await readMeta(db);
        const id = pick(r, [...new Set(meta.maps.map((m) => m.id))]);
        await db.del(snapKey(id));
        return { id, maps: meta.maps.filter((m) => m.id === id).length, snapshots: meta.snaps.size - 1 };
      });
      const report = await checkOf(vol);
      const where = `round ${round}, snapshot ${expected.id}, ${REPLAY}: ${show(report)}`;
      expect(report.status, where).toBe('corrupt');
      // The newer neighbour's shared count now names another neighbour: at most one shared-count-mismatch more.
      expect(
        // Derived state follows the lost record: shared counts, and the catalog index (a name and a count of no record).
        kinds(report).filter((k) => k !== 'shared-count-mismatch' && k !== 'catalog-index'),
        where,
      ).toEqual(['map-of-unknown-snapshot']);
      const unknown = report.corruptions.filter((c) => c.kind === 'map-of-unknown-snapshot').length;
      expect(unknown, where).toBe(expected.maps);
      const index = report.corruptions.filter((c) => c.kind === 'catalog-index').length;
      expect(index, `${where}: its name and the count`).toBe(2);
      expect(report.corruptions.length - unknown - index, where).toBeLessThanOrEqual(1);
      expect(report.snapshots, where).toBe(expected.snapshots);
    }
  });

  it('(d) a store file truncated below mapped blocks → corrupt, map-beyond-store-file (one finding per cut-off map)', async () => {
    for (const round of rounds) {
      const r = mulberry32(SEED + 300 + round);
      const vol = await freshCopy();
      const meta = await withDb(vol, readMeta);
      const { storePath } = volumeLayout(vol);
      expect((await stat(storePath)).size, REPLAY).toBe((1 + meta.highWater) * BS); // header block, then the store blocks
      // Keep the header and store blocks [0, cut); cut through the middle of block `cut` on odd rounds.
      const cut = pick(r, [...new Set(meta.maps.map((m) => m.storeBlock))]);
      const partial = round % 2 === 1 ? 1 + Math.floor(r() * (BS - 1)) : 0;
      await truncate(storePath, (1 + cut) * BS + partial);
      const cutOff = meta.maps.filter((m) => m.storeBlock >= cut).length;
      const report = await checkOf(vol);
      const where = `round ${round}, cut at store block ${cut}+${partial}, ${REPLAY}: ${show(report)}`;
      expect(report.status, where).toBe('corrupt');
      expect(kinds(report), where).toEqual(['map-beyond-store-file']);
      expect(report.corruptions.length, where).toBe(cutOff);
    }
  });

  it('(e) a mapping removed (owned count adjusted) → leaks only, 1 block; repair frees it and the volume is clean again', async () => {
    for (const round of rounds) {
      const r = mulberry32(SEED + 400 + round);
      const vol = await freshCopy();
      const storeBlock = await withDb(vol, async (db) => {
        const meta = await readMeta(db);
        const victim = pick(r, meta.maps);
        await db.del(victim.key);
        const snap = meta.snaps.get(victim.id)!;
        await put(db, snapKey(victim.id), { ...snap, ownedBlocks: snap.ownedBlocks - 1 });
        await keepSharedInStep(db);
        return victim.storeBlock;
      });
      const where = `round ${round}, store block ${storeBlock}, ${REPLAY}`;
      const v = await Volume.open(vol);
      try {
        const report = await v.check();
        expect(report.status, `${where}: ${show(report)}`).toBe('leaks');
        expect(report.corruptions, where).toEqual([]);
        expect(report.leakedBlocks, where).toBe(1);
        expect(report.leaks, where).toEqual([{ startBlock: storeBlock, lengthBlocks: 1 }]);
        expect(report.repairedBlocks, where).toBe(0); // no repair without asking

        const repaired = await v.check({ repair: true });
        expect(repaired.repairedBlocks, where).toBe(1);
        const after = await v.check();
        expect(after.status, `${where}: ${show(after)}`).toBe('clean');
        expect(after.freeBlocks, where).toBe(report.freeBlocks + 1);
      } finally {
        await v.close();
      }
      // The repair was committed: still clean after a reopen.
      const reopened = await checkOf(vol);
      expect(reopened.status, `${where}, after reopen: ${show(reopened)}`).toBe('clean');
    }
  });

  it('an owned-block count that disagrees with the map → corrupt, owned-count-mismatch', async () => {
    for (const round of rounds) {
      const r = mulberry32(SEED + 500 + round);
      const vol = await freshCopy();
      await withDb(vol, async (db) => {
        const meta = await readMeta(db);
        const snap = pick(r, [...meta.snaps.values()]);
        await put(db, snapKey(snap.id), { ...snap, ownedBlocks: snap.ownedBlocks + 1 + Math.floor(r() * 3) });
      });
      const report = await checkOf(vol);
      const where = `round ${round}, ${REPLAY}: ${show(report)}`;
      expect(report.status, where).toBe('corrupt');
      expect(kinds(report), where).toEqual(['owned-count-mismatch']);
      expect(report.corruptions.length, where).toBe(1);
    }
  });

  it('a mapping of a block beyond the end of the volume → corrupt, map-beyond-volume', async () => {
    for (const round of rounds) {
      const r = mulberry32(SEED + 600 + round);
      const vol = await freshCopy();
      await withDb(vol, async (db) => {
        const meta = await readMeta(db);
        // Move one mapping (same store block, same owner) past the volume's last block.
        const victim = pick(r, meta.maps);
        await db.del(victim.key);
        await put(db, mapKey(victim.id, BLOCKS + Math.floor(r() * 1000)), { v: 1, storeBlock: victim.storeBlock, crc: victim.crc });
        await keepSharedInStep(db);
      });
      const report = await checkOf(vol);
      const where = `round ${round}, ${REPLAY}: ${show(report)}`;
      expect(report.status, where).toBe('corrupt');
      expect(kinds(report), where).toEqual(['map-beyond-volume']);
      expect(report.corruptions.length, where).toBe(1);
      expect(report.leakedBlocks, where).toBe(0);
    }
  });

  it('a mapping to a store block beyond the high-water mark → corrupt, map-beyond-store (its old block then leaks too)', async () => {
    for (const round of rounds) {
      const r = mulberry32(SEED + 700 + round);
      const vol = await freshCopy();
      const old = await withDb(vol, async (db) => {
        const meta = await readMeta(db);
        const victim = pick(r, meta.maps);
        await put(db, victim.key, { v: 1, storeBlock: meta.highWater + Math.floor(r() * 10), crc: victim.crc });
        return victim.storeBlock;
      });
      const report = await checkOf(vol);
      const where = `round ${round}, ${REPLAY}: ${show(report)}`;
      expect(report.status, where).toBe('corrupt');
      expect(kinds(report), where).toEqual(['map-beyond-store']);
      expect(report.leaks, where).toEqual([{ startBlock: old, lengthBlocks: 1 }]);
    }
  });

  it('repair never touches a corrupt volume', async () => {
    const r = mulberry32(SEED + 800);
    const vol = await freshCopy();
    await withDb(vol, async (db) => {
      const meta = await readMeta(db);
      // A leak and a double mapping at once.
      const [a, b] = [pick(r, meta.maps), pick(r, meta.maps)];
      await db.del(a.key);
      const snapA = meta.snaps.get(a.id)!;
      await put(db, snapKey(a.id), { ...snapA, ownedBlocks: snapA.ownedBlocks - 1 });
      if (b.key !== a.key) {
        const taken = new Set(meta.maps.filter((m) => m.id === b.id).map((m) => m.block));
        const block = pick(
          r,
          Array.from({ length: BLOCKS }, (_, x) => x).filter((x) => !taken.has(x)),
        );
        await put(db, mapKey(b.id, block), { v: 1, storeBlock: b.storeBlock, crc: b.crc });
        const snapB = (await readMeta(db)).snaps.get(b.id)!;
        await put(db, snapKey(b.id), { ...snapB, ownedBlocks: snapB.ownedBlocks + 1 });
      } else {
        await put(db, snapKey(a.id), { ...snapA, ownedBlocks: snapA.ownedBlocks + 5 }); // owned-count-mismatch instead
      }
    });
    const report = await checkOf(vol, { repair: true });
    expect(report.status, `${REPLAY}: ${show(report)}`).toBe('corrupt');
    expect(report.leakedBlocks, REPLAY).toBe(1);
    expect(report.repairedBlocks, REPLAY).toBe(0);
    const again = await checkOf(vol);
    expect(again.leakedBlocks, `${REPLAY}: the leak is still there`).toBe(1);
  });
});

describe('cowvol check: exit codes 0 clean, 2 corruption, 3 leaks only', () => {
  it('exits 2 with a double mapping, 3 with a leak (0 after --repair), 2 when metadata is too damaged to open', async () => {
    const r = mulberry32(SEED + 900);

    const corrupt = await freshCopy();
    await withDb(corrupt, async (db) => {
      const meta = await readMeta(db);
      const victim = pick(r, meta.maps);
      const taken = new Set(meta.maps.filter((m) => m.id === victim.id).map((m) => m.block));
      const block = pick(
        r,
        Array.from({ length: BLOCKS }, (_, b) => b).filter((b) => !taken.has(b)),
      );
      await put(db, mapKey(victim.id, block), { v: 1, storeBlock: victim.storeBlock, crc: victim.crc });
      const snap = meta.snaps.get(victim.id)!;
      await put(db, snapKey(victim.id), { ...snap, ownedBlocks: snap.ownedBlocks + 1 });
      await keepSharedInStep(db);
    });
    const c = await cowvol(['check', corrupt, '--json']);
    expect(c.code, `${REPLAY}: ${c.stderr}`).toBe(2);
    const cr = JSON.parse(c.stdout.toString('utf8')) as CheckReport;
    expect(cr.status).toBe('corrupt');
    expect(kinds(cr)).toEqual(['double-mapping']);
    // --repair refuses to act on a corrupt volume: still exit 2.
    expect((await cowvol(['check', corrupt, '--repair', '--json'])).code, REPLAY).toBe(2);

    const leaky = await freshCopy();
    const leaked = await withDb(leaky, async (db) => {
      const meta = await readMeta(db);
      const victim = pick(r, meta.maps);
      await db.del(victim.key);
      const snap = meta.snaps.get(victim.id)!;
      await put(db, snapKey(victim.id), { ...snap, ownedBlocks: snap.ownedBlocks - 1 });
      await keepSharedInStep(db);
      return victim.storeBlock;
    });
    const l = await cowvol(['check', leaky, '--json']);
    expect(l.code, `${REPLAY}: ${l.stderr}`).toBe(3);
    expect(JSON.parse(l.stdout.toString('utf8'))).toMatchObject({ status: 'leaks', leakedBlocks: 1, leaks: [{ startBlock: leaked, lengthBlocks: 1 }], corruptions: [] });
    const repaired = await cowvol(['check', leaky, '--repair', '--json']);
    expect(repaired.code, `${REPLAY}: ${repaired.stderr}`).toBe(0);
    // The document reports what was found (the leak) and what --repair did; the exit code says the volume is clean now.
    expect(JSON.parse(repaired.stdout.toString('utf8'))).toMatchObject({ leakedBlocks: 1, repairedBlocks: 1, corruptions: [] });
    const after = await cowvol(['check', leaky, '--json']);
    expect(after.code, `${REPLAY}: ${after.stderr}`).toBe(0);
    expect(JSON.parse(after.stdout.toString('utf8'))).toMatchObject({ status: 'clean', leakedBlocks: 0 });

    // Overlapping free extents: the allocator cannot even be loaded, so open
    // refuses with CORRUPT_METADATA — for check that is corruption found (2).
    const unopenable = await freshCopy();
    await withDb(unopenable, async (db) => {
      const meta = await readMeta(db);
      const e = pick(r, meta.free);
      await put(db, freeKey(e.start), { v: 1, lengthBlocks: meta.highWater - e.start + 1 }); // runs past the high-water mark
    });
    await expect(Volume.open(unopenable)).rejects.toMatchObject({ code: 'CORRUPT_METADATA' });
    const u = await cowvol(['check', unopenable, '--json']);
    expect(u.code, `${REPLAY}: ${u.stdout.toString()} ${u.stderr}`).toBe(2);
    expect(u.stderr).toContain('CORRUPT_METADATA');

    // A check that cannot run at all (another process owns the volume) exits 1, not 0.
    const busy = await freshCopy();
    const holder = await Volume.open(busy);
    try {
      const b = await cowvol(['check', busy, '--json']);
      expect(b.code, `${REPLAY}: ${b.stdout.toString()} ${b.stderr}`).toBe(1);
      expect(b.stderr).toContain('VOLUME_BUSY');
    } finally {
      await holder.close();
    }
  });
});
