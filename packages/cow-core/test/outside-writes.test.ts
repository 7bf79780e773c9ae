import { execFileSync } from 'node:child_process';
import { chmod, copyFile, mkdtemp, open, readdir, readFile, rename, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DATA_MODES } from './modes.js';
import { CrashController } from './crash-device.js';
import { mulberry32 } from './prng.js';
import { exportToBuffer, memorySource } from './backup-helpers.js';
import { CowvolError } from '@cowvol/base';
import { Volume, importStream, volumeLayout } from '../src/index.js';
import { MetadataDb } from '../src/metadata-db.js';

/**
 * Writes made outside cowvol (docs/ARCHITECTURE.md, "Writes made outside
 * cowvol"): the volume file's identity and change stamps are kept at every
 * clean close; an open finds a file changed behind cowvol's back and refuses
 * it (VOLUME_MODIFIED_OUTSIDE), naming what changed and the snapshots that
 * read through to the live volume; acceptOutsideChanges takes the file as it
 * is and marks those snapshots suspect. Reading the file, and a crash, do not
 * count as outside writes.
 */
const BS = 4096;
const BLOCKS = 8;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-outside-'));
  path = join(dir, 'vol.img');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes `data` at `offsetBytes` of the volume file the way another program would (no cowvol). */
async function writeOutside(offsetBytes: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offsetBytes);
  } finally {
    await fh.close();
  }
}

/** The open's refusal (fails the test if the open succeeds). */
async function refusal(): Promise<CowvolError> {
  const err = await Volume.open(path).then(
    async (v) => {
      await v.close();
      return undefined;
    },
    (e: unknown) => e,
  );
  if (err === undefined) throw new Error('the open was not refused');
  if (err instanceof CowvolError) return err;
  throw new Error('the open was refused with an error that is not a CowvolError', { cause: err });
}

/** Runs `edit` on the volume's LevelDB (the volume closed): damage, or what an older cowvol left. */
async function editMetadata(edit: (db: Level<string, Buffer>) => Promise<void>): Promise<void> {
  const db = new Level<string, Buffer>(volumeLayout(path).metaPath, { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    await edit(db);
  } finally {
    await db.close();
  }
}

/** The `stamp` metadata value, decoded, read straight from LevelDB (the volume closed). */
async function storedStamp(): Promise<Record<string, unknown> | undefined> {
  const db = new Level<string, Buffer>(volumeLayout(path).metaPath, { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    const { unpack } = await import('msgpackr');
    const bytes = await db.get('stamp');
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- level's typings say get() resolves a value, but it resolves undefined for a missing key
    return bytes ? (unpack(bytes) as Record<string, unknown>) : undefined;
  } finally {
    await db.close();
  }
}

/**
 * Snapshots: `old` owns every block (it reads nothing from live), `mid`
 * owns blocks 0–3 (reads 4–7 from live), `new` owns none. Returns the live
 * content.
 */
async function threeSnapshots(dataMode: (typeof DATA_MODES)[number]): Promise<Buffer> {
  const v = await Volume.create(path, { dataMode, sizeBytes: BLOCKS * BS });
  await v.write(0, randomBytes(BLOCKS * BS));
  await v.createSnapshot('old');
  await v.write(0, randomBytes(BLOCKS * BS));
  await v.createSnapshot('mid');
  await v.write(0, randomBytes(4 * BS));
  await v.createSnapshot('new');
  const live = await v.read(0, BLOCKS * BS);
  await v.close();
  return live;
}

describe.each(DATA_MODES)('data mode %s', (dataMode) => {
  it('a write into the volume file after a clean close is refused, naming what changed and the snapshots that read live blocks', async () => {
    await threeSnapshots(dataMode);
    const outside = randomBytes(2 * BS);
    await writeOutside(5 * BS, outside); // right after close: the stamp must still see it
    const err = await refusal();
    expect(err.code).toBe('VOLUME_MODIFIED_OUTSIDE');
    const details = err.details as { changes: Array<{ field: string }>; cleanClose: boolean; suspectSnapshots: string[] };
    expect(details.cleanClose).toBe(true);
    expect(details.changes.map((c) => c.field)).toContain('mtime');
    expect(details.suspectSnapshots).toEqual(['mid', 'new']); // `old` holds its own copy of every block
    expect(err.message).toMatch(/modification time .* → /);
    expect(err.message).toContain('mid, new');
    expect(err.message).toContain(`cowvol accept-changes ${path}`);
    // Refused every time, not just once: nothing was stamped anew.
    expect((await refusal()).code).toBe('VOLUME_MODIFIED_OUTSIDE');
  });

  it("a write after a clean close is refused even when LevelDB lost its current log (with it the close's stamp); accepting takes the file", async () => {
    await threeSnapshots(dataMode);
    const meta = volumeLayout(path).metaPath;
    const logs = (await readdir(meta)).filter((name) => name.endsWith('.log'));
    expect(logs.length).toBeGreaterThan(0);
    for (const name of logs) await rm(join(meta, name));
    await writeOutside(5 * BS, randomBytes(2 * BS)); // the same size: only the times, or the lost stamp, tell
    // A read-only open (snapshot read, info) writes no marker: it finds the lost log itself.
    await expect(Volume.open(path, { readOnly: true })).rejects.toMatchObject({ code: 'VOLUME_MODIFIED_OUTSIDE' });
    expect(await readdir(volumeLayout(path).sidecarPath)).not.toContain('meta-log-lost');
    const err = await refusal();
    expect(err.code).toBe('VOLUME_MODIFIED_OUTSIDE');
    // Something that opens LevelDB for writing before the stamp is compared (a journal repair, a kill right after the
    // open) makes a new log: the marker written before it keeps the refusal.
    const db = await MetadataDb.open(meta, false);
    await db.close();
    expect((await refusal()).code).toBe('VOLUME_MODIFIED_OUTSIDE');
    expect((await refusal()).code, 'every time until accepted').toBe('VOLUME_MODIFIED_OUTSIDE');
    const v = await Volume.open(path, { outsideChanges: 'hold' });
    try {
      expect((await v.acceptOutsideChanges()).accepted).toBe(true);
    } finally {
      await v.close();
    }
    await (await Volume.open(path)).close();
    expect(await readdir(volumeLayout(path).sidecarPath), 'accepting removed the marker').not.toContain('meta-log-lost');
  });

  it('a lost-log marker left beside a closed stamp changes nothing: the open compares exactly and removes it (a read-only open leaves it)', async () => {
    await threeSnapshots(dataMode);
    const marker = volumeLayout(path).lostLogPath;
    await writeFile(marker, '000099.log\n');
    await (await Volume.open(path, { readOnly: true })).close();
    expect(await readdir(volumeLayout(path).sidecarPath)).toContain('meta-log-lost');
    await (await Volume.open(path)).close();
    expect(await readdir(volumeLayout(path).sidecarPath)).not.toContain('meta-log-lost');
  });

  it('acceptOutsideChanges marks exactly the snapshots that read live blocks suspect, persistently; writes wait for it', async () => {
    const live = await threeSnapshots(dataMode);
    const outside = randomBytes(2 * BS);
    await writeOutside(5 * BS, outside);
    outside.copy(live, 5 * BS);
    const v = await Volume.open(path, { outsideChanges: 'hold' });
    expect(v.outsideChanges?.changes.map((c) => c.field)).toContain('mtime');
    await expect(v.write(0, Buffer.alloc(BS))).rejects.toMatchObject({ code: 'VOLUME_MODIFIED_OUTSIDE' });
    const report = await v.acceptOutsideChanges();
    expect(report).toMatchObject({ accepted: true, suspectSnapshots: ['mid', 'new'] });
    expect(v.outsideChanges).toBeUndefined();
    expect((await v.listSnapshots()).map((s) => [s.name, s.suspect])).toEqual([
      ['old', false],
      ['mid', true],
      ['new', true],
    ]);
    expect((await v.readSnapshot('new', 0, BLOCKS * BS)).equals(live)).toBe(true); // the file as it is now
    await v.write(0, Buffer.alloc(BS, 1)); // writes work again
    expect(await v.acceptOutsideChanges()).toEqual({ accepted: false, changes: [], suspectSnapshots: [], abandonedImport: false });
    await v.close();
    const r = await Volume.open(path);
    expect((await r.info()).snapshots.filter((s) => s.suspect).map((s) => s.name)).toEqual(['mid', 'new']);
    await r.close();
  });
});

describe('a volume kept open (served): acceptOutsideChanges({ recheck }) compares the file with its stamp again', () => {
  const replaced = (): CowvolError => new CowvolError('VOLUME_BUSY', 'replaced under the open volume');

  it('a write from outside before the session wrote: found and accepted as at open; after cowvol wrote, only size and identity can tell', async () => {
    const live = await threeSnapshots('ordered');
    const v = await Volume.open(path);
    try {
      expect(await v.acceptOutsideChanges({ recheck: { replaced } })).toEqual({ accepted: false, changes: [], suspectSnapshots: [], abandonedImport: false });
      const outside = randomBytes(2 * BS);
      await writeOutside(5 * BS, outside);
      outside.copy(live, 5 * BS);
      // Without recheck nothing is pending: the change happened after the open.
      expect(await v.acceptOutsideChanges()).toMatchObject({ accepted: false });
      const report = await v.acceptOutsideChanges({ recheck: { replaced } });
      expect(report).toMatchObject({ accepted: true, suspectSnapshots: ['mid', 'new'] });
      expect(report.changes.map((c) => c.field)).toEqual(expect.arrayContaining(['mtime']));
      expect((await v.listSnapshots()).map((s) => [s.name, s.suspect])).toEqual([
        ['old', false],
        ['mid', true],
        ['new', true],
      ]);
      expect((await v.read(0, BLOCKS * BS)).equals(live)).toBe(true);
      // Accepted: the stamp is the file as it is now.
      expect(await v.acceptOutsideChanges({ recheck: { replaced } })).toMatchObject({ accepted: false });
      await v.write(0, Buffer.alloc(BS, 7)); // the stamp is `open` from here
      await writeOutside(6 * BS, randomBytes(BS));
      expect(await v.acceptOutsideChanges({ recheck: { replaced } }), 'a same-size write after cowvol wrote is not seen, as after a crash').toMatchObject({ accepted: false });
      await truncate(path, BLOCKS * BS + BS);
      await expect(v.acceptOutsideChanges({ recheck: { replaced } })).rejects.toMatchObject({ code: 'VOLUME_SIZE_MISMATCH' });
      await truncate(path, BLOCKS * BS);
      await copyFile(path, `${path}.copy`);
      await rename(`${path}.copy`, path);
      await expect(v.acceptOutsideChanges({ recheck: { replaced } })).rejects.toThrow('replaced under the open volume');
    } finally {
      await v.close();
    }
  });
});

describe('what counts as a change', () => {
  it('a touch (times only) is refused, and the message says the modification time changed', async () => {
    await (await Volume.create(path, { sizeBytes: BLOCKS * BS })).close();
    const later = new Date(Date.now() + 3_600_000);
    await utimes(path, later, later);
    const err = await refusal();
    expect(err.code).toBe('VOLUME_MODIFIED_OUTSIDE');
    expect((err.details as { changes: Array<{ field: string }> }).changes.map((c) => c.field).sort()).toEqual(['ctime', 'mtime']);
    expect(err.message).toContain('its times set, e.g. by touch');
    expect(err.message).toContain('No snapshot reads the live volume');
  });

  it('a chmod (status change only) changes no byte: the volume opens and writes (making a volume private needs no accept-changes)', async () => {
    const v0 = await Volume.create(path, { sizeBytes: BLOCKS * BS });
    await v0.createSnapshot('s');
    await v0.close();
    await chmod(path, 0o600);
    const v = await Volume.open(path);
    expect(v.outsideChanges).toBeUndefined();
    await v.write(0, Buffer.alloc(BS, 9));
    await v.close();
    await utimes(path, new Date(0), new Date(0)); // mtime moved too: a change of content again
    const err = await refusal();
    expect((err.details as { changes: Array<{ field: string }> }).changes.map((c) => c.field).sort()).toEqual(['ctime', 'mtime']);
  });

  it('a truncated file is refused with the size; accepting needs the size back first', async () => {
    const v = await Volume.create(path, { sizeBytes: BLOCKS * BS });
    await v.createSnapshot('s');
    await v.close();
    const bytes = await readFile(path);
    await truncate(path, 4 * BS);
    const err = await refusal();
    expect(err.code).toBe('VOLUME_MODIFIED_OUTSIDE');
    expect((err.details as { changes: Array<{ field: string; recorded: string; found: string }> }).changes).toContainEqual({ field: 'size', recorded: String(BLOCKS * BS), found: String(4 * BS) });
    expect(err.message).toContain(`restore it to ${BLOCKS * BS} bytes`);
    await expect(Volume.open(path, { outsideChanges: 'hold' })).rejects.toMatchObject({ code: 'VOLUME_SIZE_MISMATCH' });
    await truncate(path, BLOCKS * BS);
    await writeOutside(0, bytes);
    const h = await Volume.open(path, { outsideChanges: 'hold' });
    expect((await h.acceptOutsideChanges()).suspectSnapshots).toEqual(['s']);
    await h.close();
    const r = await Volume.open(path);
    expect((await r.readSnapshot('s', 0, BLOCKS * BS)).equals(bytes)).toBe(true);
    await r.close();
  });

  it('a file replaced by a copy of itself (new inode) is refused as replaced', async () => {
    await (await Volume.create(path, { sizeBytes: BLOCKS * BS })).close();
    await copyFile(path, join(dir, 'copy.img'));
    await rename(join(dir, 'copy.img'), path);
    const err = await refusal();
    expect((err.details as { changes: Array<{ field: string }> }).changes.map((c) => c.field)).toContain('ino');
    expect(err.message).toContain('replaced by another one');
  });

  it('a copy that keeps the content (cp -a: new inode, same times) opens, and after a session that writes it an outside write is still refused', async () => {
    const v0 = await Volume.create(path, { sizeBytes: BLOCKS * BS });
    await v0.write(0, randomBytes(BLOCKS * BS));
    await v0.createSnapshot('s');
    await v0.close();
    const copy = join(dir, 'copy.img');
    execFileSync('cp', ['-a', path, copy]);
    execFileSync('cp', ['-a', `${path}.cowvol`, `${copy}.cowvol`]);
    const v = await Volume.open(copy);
    expect(v.outsideChanges).toBeUndefined();
    await v.write(2 * BS, Buffer.alloc(BS, 5));
    await v.close();
    const { ino } = await stat(copy);
    path = copy; // storedStamp() and refusal() read the copy from here on
    expect(await storedStamp()).toMatchObject({ state: 'closed', ino: String(ino) });
    await writeOutside(5 * BS, Buffer.alloc(BS, 6));
    const err = await refusal();
    expect(err.code).toBe('VOLUME_MODIFIED_OUTSIDE');
    expect((err.details as { suspectSnapshots: string[] }).suspectSnapshots).toEqual(['s']);
    const h = await Volume.open(copy, { outsideChanges: 'hold' });
    expect(h.outsideChanges).toBeDefined();
    await h.close();
  });

  it('a tar round trip: --format=posix keeps the nanoseconds and opens; the default format keeps whole seconds and is refused; a copy edited and set back to the whole second is refused', async () => {
    const v0 = await Volume.create(path, { sizeBytes: BLOCKS * BS });
    const content = randomBytes(BLOCKS * BS);
    await v0.write(0, content);
    await v0.createSnapshot('s');
    await v0.close();
    const recordedNs = BigInt((await storedStamp())!.mtimeNs as string);
    /** The volume and its sidecar through `tar -c` and `tar -x` with `format` flags, into a fresh folder; the restored volume's path. */
    const roundTrip = (name: string, format: string[]): string => {
      const tarball = join(dir, `${name}.tar`);
      execFileSync('tar', [...format, '-cf', tarball, '-C', dir, 'vol.img', 'vol.img.cowvol']);
      const restored = join(dir, name);
      execFileSync('mkdir', [restored]);
      execFileSync('tar', ['-xf', tarball, '-C', restored]);
      return join(restored, 'vol.img');
    };
    const openResult = (file: string): Promise<string> =>
      Volume.open(file).then(
        async (o) => {
          await o.close();
          return 'opened';
        },
        (e: unknown) => (e as CowvolError).code,
      );
    const posix = roundTrip('posix', ['--format=posix']);
    expect((await stat(posix, { bigint: true })).mtimeNs).toBe(recordedNs);
    const v = await Volume.open(posix);
    expect(v.outsideChanges).toBeUndefined();
    expect((await v.read(0, BLOCKS * BS)).equals(content)).toBe(true);
    await v.close();
    const gnu = roundTrip('gnu', []);
    expect((await stat(gnu, { bigint: true })).mtimeNs, 'the default format keeps whole seconds').toBe(recordedNs - (recordedNs % 1_000_000_000n));
    expect(await openResult(gnu)).toBe('VOLUME_MODIFIED_OUTSIDE');
    // A copy (cp -a: the exact time) edited in place, its time set back to the whole second (`touch -d @<seconds>`): refused.
    const copy = join(dir, 'copy.img');
    execFileSync('cp', ['-a', path, copy]);
    execFileSync('cp', ['-a', `${path}.cowvol`, `${copy}.cowvol`]);
    const fh = await open(copy, 'r+');
    await fh.write(Buffer.from('EVIL'), 0, 4, 0);
    await fh.close();
    execFileSync('touch', ['-m', '-d', `@${recordedNs / 1_000_000_000n}`, copy]);
    expect(await openResult(copy)).toBe('VOLUME_MODIFIED_OUTSIDE');
  });

  it('reading the file from outside changes nothing that counts; a read-only session leaves the stamp as it was', async () => {
    await threeSnapshots('ordered');
    const before = await storedStamp();
    expect(before).toMatchObject({ state: 'closed' });
    await readFile(path);
    const v = await Volume.open(path);
    await v.readSnapshot('mid', 0, BLOCKS * BS);
    await v.info();
    await v.close();
    expect(await storedStamp()).toEqual(before);
  });

  it('a volume without a stamp (made before stamps were kept) opens, and is stamped at its first clean close', async () => {
    await (await Volume.create(path, { sizeBytes: BLOCKS * BS })).close();
    // What an older cowvol left: no stamp, and a volume record without `stampFromCreate`.
    await editMetadata(async (db) => {
      await db.del('stamp');
      const { pack, unpack } = await import('msgpackr');
      const { stampFromCreate, ...older } = unpack(await db.get('sb')) as Record<string, unknown>;
      expect(stampFromCreate).toBe(true);
      await db.put('sb', pack(older));
    });
    await writeOutside(0, Buffer.alloc(BS, 7));
    const v = await Volume.open(path);
    expect((await v.read(0, BS)).equals(Buffer.alloc(BS, 7))).toBe(true);
    await v.close();
    await writeOutside(0, Buffer.alloc(BS, 8));
    expect((await refusal()).code).toBe('VOLUME_MODIFIED_OUTSIDE');
  });

  it('a volume created with a stamp that lost it (a damaged sidecar) is refused as changed outside, naming the lost stamp; accepting it stamps it again', async () => {
    const live = await threeSnapshots('ordered');
    await editMetadata((db) => db.del('stamp'));
    const outside = Buffer.alloc(BS, 9);
    await writeOutside(5 * BS, outside);
    outside.copy(live, 5 * BS);
    const err = await refusal();
    expect(err.code).toBe('VOLUME_MODIFIED_OUTSIDE');
    expect(err.details).toMatchObject({ changes: [{ field: 'stamp', recorded: 'present', found: 'missing' }], suspectSnapshots: ['mid', 'new'] });
    expect(err.message).toContain('was changed outside cowvol (or may have been): its change stamp is missing');
    // A read-only open refuses too: no snapshot is read as if nothing happened.
    await expect(Volume.openForReading(path)).rejects.toMatchObject({ code: 'VOLUME_MODIFIED_OUTSIDE' });
    const v = await Volume.open(path, { outsideChanges: 'hold' });
    expect(await v.acceptOutsideChanges()).toMatchObject({ accepted: true, suspectSnapshots: ['mid', 'new'] });
    expect((await v.readSnapshot('new', 0, BLOCKS * BS)).equals(live)).toBe(true);
    await v.close();
    expect(await storedStamp()).toMatchObject({ state: 'closed' });
    await (await Volume.open(path)).close();
  });
});

describe.each(DATA_MODES)('a crash is not an outside write (data mode %s)', (dataMode) => {
  /** Opens through a power-loss simulation, writes, loses power mid-write; the files are left as the disk kept them. */
  async function crashMidWrite(random: () => number): Promise<void> {
    const ctl = new CrashController(Number.MAX_SAFE_INTEGER, random, 0.5, 0.3);
    const v = await Volume.open(path, { opener: ctl });
    await v.write(0, randomBytes(3 * BS));
    await v.flush();
    ctl.crashAfter(2);
    await v.write(3 * BS, randomBytes(3 * BS)).catch(() => undefined);
    await v.close().catch(() => undefined); // the "machine" is down: the close fails
    await ctl.restore(); // rewrites the files as the disk kept them: new mtime and ctime
  }

  it('after a power loss mid-write the volume reopens (times are not compared); identity and size still are', async () => {
    const seed = Number(process.env.COWVOL_SEED ?? 1 + Math.floor(Math.random() * 1e9));
    console.log(`outside-writes crash test (${dataMode}): seed ${seed}`);
    const random = mulberry32(seed);
    const pre = await Volume.create(path, { dataMode, sizeBytes: BLOCKS * BS });
    await pre.write(0, Buffer.alloc(BLOCKS * BS, 1));
    await pre.createSnapshot('s');
    await pre.close();
    await crashMidWrite(random);
    expect(await storedStamp(), `seed ${seed}`).toMatchObject({ state: 'open' });
    const r = await Volume.open(path);
    expect((await r.readSnapshot('s', 0, BLOCKS * BS)).equals(Buffer.alloc(BLOCKS * BS, 1)), `seed ${seed}`).toBe(true);
    await r.close();
    expect(await storedStamp(), `seed ${seed}`).toMatchObject({ state: 'closed' }); // a clean close restamps
    // Crash again, then shrink the file: refused, saying the close was not clean.
    await crashMidWrite(random);
    await truncate(path, 4 * BS);
    const err = await refusal();
    expect(err.code).toBe('VOLUME_MODIFIED_OUTSIDE');
    expect(err.details).toMatchObject({ cleanClose: false, changes: [{ field: 'size' }], suspectSnapshots: ['s'] });
    expect(err.message).toContain('not closed cleanly');
  });
});

describe('backup streams and suspect snapshots', () => {
  it('an incremental export since a suspect snapshot is refused (SNAPSHOT_SUSPECT); a full stream carries the accepted bytes', async () => {
    const v = await Volume.create(path, { sizeBytes: BLOCKS * BS });
    await v.write(0, Buffer.alloc(BLOCKS * BS, 1));
    await v.createSnapshot('base');
    await v.close();
    // The copy elsewhere holds `base` as it was.
    const copy = join(dir, 'copy.img');
    await importStream(copy, memorySource(await exportFrom(path, 'base')));
    // Block 2 is changed outside cowvol and accepted: `base` now reads the new bytes.
    await writeOutside(2 * BS, Buffer.alloc(BS, 9));
    const h = await Volume.open(path, { outsideChanges: 'hold' });
    expect((await h.acceptOutsideChanges()).suspectSnapshots).toEqual(['base']);
    await h.write(5 * BS, Buffer.alloc(BS, 5));
    await h.createSnapshot('next');
    // An incremental since `base` would carry block 5 only: the copy would miss block 2.
    await expect(exportToBuffer(h, 'next', { since: 'base' })).rejects.toMatchObject({ code: 'SNAPSHOT_SUSPECT', details: { name: 'base' } });
    const full = await exportToBuffer(h, 'next');
    await h.close();
    const fresh = join(dir, 'fresh.img');
    await importStream(fresh, memorySource(full));
    const f = await Volume.open(fresh);
    expect((await f.readSnapshot('next', 2 * BS, BS)).equals(Buffer.alloc(BS, 9))).toBe(true);
    await f.close();
  });

  it('an incremental import onto a base snapshot that became suspect on the target is refused (BASE_MISMATCH)', async () => {
    const src = join(dir, 'src.img');
    const s = await Volume.create(src, { sizeBytes: BLOCKS * BS });
    await s.createSnapshot('a');
    await s.write(0, Buffer.alloc(BS, 3));
    await s.createSnapshot('b');
    const fullA = await exportToBuffer(s, 'a');
    const incrB = await exportToBuffer(s, 'b', { since: 'a' });
    await s.close();
    const dst = join(dir, 'dst.img');
    await importStream(dst, memorySource(fullA));
    const fh = await open(dst, 'r+');
    await fh.write(Buffer.alloc(BS, 4), 0, BS, 6 * BS);
    await fh.close();
    const d = await Volume.open(dst, { outsideChanges: 'hold' });
    await d.acceptOutsideChanges();
    await d.close();
    await expect(importStream(dst, memorySource(incrB))).rejects.toMatchObject({ code: 'BASE_MISMATCH', details: { snapshot: 'a', suspect: true } });
  });
});

/** A full stream of snapshot `name` of the closed volume at `volumePath`. */
async function exportFrom(volumePath: string, name: string): Promise<Buffer> {
  const v = await Volume.open(volumePath);
  try {
    return await exportToBuffer(v, name);
  } finally {
    await v.close();
  }
}
