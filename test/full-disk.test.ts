import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CowvolError } from '@cowvol/base';
import { Volume, type CreateVolumeOptions } from '@cowvol/cow-core';
import { cowvol, jsonOf, prng, forgetChangeStamp } from './helpers.js';
import { IS_ROOT, filesOf, fillTo, mountTmpfs, requireRootUnderCi, unmount } from './tmpfs.js';

/**
 * A full disk and a read-only mount, for real (docs/ARCHITECTURE.md, "A full
 * disk" and "Read-only opens"): each volume lives on a small tmpfs filled
 * to an exact number of free bytes. Mounting needs root: under CI=true not
 * being root fails the run; elsewhere these tests are skipped, saying why.
 * (The outcomes of changes on a full disk: full-disk-outcomes.test.ts.)
 */
const BS = 4096;
const VOLUME_BYTES = 64 * BS;

it('runs as root under CI (mounting a tmpfs needs it)', () => requireRootUnderCi());

/** Content of the template volume: s1 holds A, s2 holds B, live holds C. */
const seed = 20261202;
const rnd = prng(seed);
const content = (): Buffer => Buffer.from(Array.from({ length: VOLUME_BYTES }, () => Math.floor(rnd() * 256)));
const A = content();
const B = content();
const C = content();

let root: string;
let mnt: string;

/** The template: volume v.img with snapshots s1 (A), s2 (B) and live C, made through the API. */
async function makeTemplate(dir: string): Promise<string> {
  const path = join(dir, 'v.img');
  const v = await Volume.create(path, { sizeBytes: VOLUME_BYTES, journalSizeBytes: 256 * BS });
  await v.write(0, A);
  await v.createSnapshot('s1');
  await v.write(0, B);
  await v.createSnapshot('s2');
  await v.write(0, C);
  await v.close();
  return path;
}

beforeAll(async () => {
  if (!IS_ROOT) return;
  root = await mkdtemp(join(tmpdir(), 'cowvol-fulldisk-'));
  mnt = join(root, 'mnt');
  execFileSync('mkdir', [mnt]);
  mountTmpfs(mnt, 32 * 1024 * 1024);
});

afterAll(async () => {
  if (!IS_ROOT || !root) return;
  try {
    unmount(mnt);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

interface SnapshotsDoc {
  snapshots: Array<{ name: string }>;
}

/** Read-only commands and what each must print or produce. */
function readOnlyCommands(path: string, out: string): Array<{ args: string[]; check?: (stdout: Buffer) => void }> {
  return [
    { args: ['info', path, '--json'], check: (o) => expect((JSON.parse(o.toString()) as SnapshotsDoc).snapshots.map((s) => s.name)).toEqual(['s1', 's2']) },
    { args: ['snapshot', 'list', path, '--json'], check: (o) => expect((JSON.parse(o.toString()) as SnapshotsDoc).snapshots).toHaveLength(2) },
    { args: ['snapshot', 'info', path, 's1', '--json'] },
    { args: ['snapshot', 'read', path, 's1'], check: (o) => expect(o.equals(A)).toBe(true) },
    { args: ['snapshot', 'read', path, 's2'], check: (o) => expect(o.equals(B)).toBe(true) },
    { args: ['read', path], check: (o) => expect(o.equals(C)).toBe(true) },
    { args: ['snapshot', 'diff', path, 's1', 's2', '--json'] },
    { args: ['snapshot', 'export', path, 's2', '--output', join(out, 's2.cvs')] },
    { args: ['check', path] },
    { args: ['snapshot', 'delete', path, 's1', '--dry-run', '--json'] },
  ];
}

describe.skipIf(!IS_ROOT)(`read-only commands on a full disk and on a read-only mount (content seed ${seed})`, () => {
  it('work with 0 bytes free and write nothing to the volume or its sidecar', async () => {
    const dir = await mkdtemp(join(mnt, 'ro-full-'));
    const out = await mkdtemp(join(tmpdir(), 'cowvol-fulldisk-out-'));
    try {
      const path = await makeTemplate(dir);
      await fillTo(dir, 0);
      const before = await filesOf(dir);
      for (const c of readOnlyCommands(path, out)) {
        const r = await cowvol(c.args);
        expect(r.stderr, c.args.join(' ')).toBe('');
        expect(r.code, c.args.join(' ')).toBe(0);
        c.check?.(r.stdout);
      }
      expect(await filesOf(dir)).toEqual(before);
      // A new volume on the full disk: NO_SPACE, and nothing left behind.
      const r = await cowvol(['create', join(dir, 'new.img'), '--size', '1M', '--json']);
      expect(r.code).toBe(7);
      expect(jsonOf<{ error: { code: string } }>(r).error.code).toBe('NO_SPACE');
      expect(await filesOf(dir)).toEqual(before);
    } finally {
      await rm(dir, { recursive: true, force: true });
      await rm(out, { recursive: true, force: true });
    }
  });

  it('a backup push into a file repository on the full disk: NO_SPACE, with the hint about the repository (not "delete snapshots"), and the volume unchanged', async () => {
    const work = await mkdtemp(join(tmpdir(), 'cowvol-fulldisk-backup-'));
    const dir = await mkdtemp(join(mnt, 'repo-full-'));
    try {
      const path = await makeTemplate(work);
      const key = join(work, 'key');
      expect((await cowvol(['backup', 'key-gen', key])).code).toBe(0);
      const url = `file://${join(dir, 'repo')}`;
      expect((await cowvol(['backup', 'init', url, '--key-file', key, '--chunk-size', '64K'])).code).toBe(0);
      await fillTo(dir, 0);
      const before = await filesOf(work);
      const r = await cowvol(['backup', 'push', path, 's2', '--to', url, '--key-file', key]);
      expect(r.code, r.stderr).toBe(7);
      expect(r.stderr).toContain('cowvol: error [NO_SPACE]');
      expect(r.stderr).toContain("the disk is full (the repository's, or $TMPDIR's)");
      expect(r.stderr).not.toContain('delete snapshots');
      expect(await filesOf(work)).toEqual(before);
    } finally {
      await rm(dir, { recursive: true, force: true });
      await rm(work, { recursive: true, force: true });
    }
  });

  it('work on a read-only mount; a change is refused with IO_ERROR, never INTERNAL', async () => {
    const dir = await mkdtemp(join(mnt, 'ro-mount-'));
    const out = await mkdtemp(join(tmpdir(), 'cowvol-fulldisk-out-'));
    const ro = join(root, `ro-${Date.now()}`);
    execFileSync('mkdir', [ro]);
    let mounted = false;
    try {
      await makeTemplate(dir);
      // A read-only bind mount of the folder: a backup disk mounted ro.
      execFileSync('mount', ['--bind', '-o', 'ro', dir, ro]);
      mounted = true;
      const roPath = join(ro, 'v.img');
      // A sample (each CLI run costs a process start): listing, reading, exporting, checking.
      const sample = new Set(['snapshot list', 'snapshot read', 'snapshot export', 'check']);
      for (const c of readOnlyCommands(roPath, out).filter((x) => sample.has(x.args.slice(0, x.args[0] === 'snapshot' ? 2 : 1).join(' ')))) {
        const r = await cowvol(c.args);
        expect(r.stderr, c.args.join(' ')).toBe('');
        expect(r.code, c.args.join(' ')).toBe(0);
        c.check?.(r.stdout);
      }
      for (const args of [['snapshot', 'delete', roPath, 's1']]) {
        const r = await cowvol([...args, '--json']);
        expect(r.code, args.join(' ')).toBe(7);
        expect(jsonOf<{ error: { code: string } }>(r).error.code).toBe('IO_ERROR');
      }
    } finally {
      if (mounted) unmount(ro);
      await rm(ro, { recursive: true, force: true });
      await rm(dir, { recursive: true, force: true });
      await rm(out, { recursive: true, force: true });
    }
  });
});

/**
 * A crash image taken while `change` runs on an open volume: the metadata
 * database as it was before (LevelDB's unsynced writes lost), the journal,
 * store and volume file as they are after the change committed. The owner
 * lock is not copied. Returns the image's volume path, in `into`.
 */
async function crashImage(dir: string, into: string, options: CreateVolumeOptions, change: (v: Volume) => Promise<void>): Promise<string> {
  const path = join(dir, 'v.img');
  const v0 = await Volume.create(path, { sizeBytes: VOLUME_BYTES, journalSizeBytes: 256 * BS, ...options });
  await v0.write(0, A);
  await v0.createSnapshot('s1');
  await v0.close();
  execFileSync('cp', ['-a', `${path}.cowvol/meta`, join(dir, 'meta-before')]);
  const v = await Volume.open(path);
  await change(v);
  execFileSync('mkdir', [`${join(into, 'v.img')}.cowvol`]);
  for (const f of ['store', 'journal', 'reserve']) execFileSync('cp', ['-a', '--sparse=always', `${path}.cowvol/${f}`, `${join(into, 'v.img')}.cowvol/${f}`]);
  execFileSync('cp', ['-a', path, join(into, 'v.img')]);
  execFileSync('cp', ['-a', join(dir, 'meta-before'), `${join(into, 'v.img')}.cowvol/meta`]);
  // The copied metadata predates this session's `open` change stamp (a real crash keeps it): drop the stamp.
  await forgetChangeStamp(join(into, 'v.img'));
  await v.close();
  return join(into, 'v.img');
}

describe.skipIf(!IS_ROOT)('journal recovery and read-only opens', () => {
  /** Runs `fn` with `dir` bind-mounted read-only at a fresh folder. */
  async function withReadOnlyMount<T>(dir: string, fn: (ro: string) => Promise<T>): Promise<T> {
    const ro = await mkdtemp(join(root, 'ro-'));
    execFileSync('mount', ['--bind', '-o', 'ro', dir, ro]);
    try {
      return await fn(ro);
    } finally {
      unmount(ro);
      await rm(ro, { recursive: true, force: true });
    }
  }

  it('committed records still in the journal are applied to the private copy: a read-only mount shows them', async () => {
    const dir = await mkdtemp(join(mnt, 'rec-'));
    const img = await mkdtemp(join(mnt, 'img-'));
    try {
      await crashImage(dir, img, {}, async (v) => {
        await v.write(0, B);
        await v.createSnapshot('s2');
      });
      await withReadOnlyMount(img, async (ro) => {
        const v = await Volume.open(join(ro, 'v.img'), { readOnly: true });
        try {
          expect(v.readOnly).toBe(true);
          expect(v.warnings).toEqual([]);
          expect((await v.listSnapshots()).map((s) => s.name)).toEqual(['s1', 's2']);
          expect((await v.readSnapshot('s1', 0, VOLUME_BYTES)).equals(A)).toBe(true);
          expect((await v.readSnapshot('s2', 0, VOLUME_BYTES)).equals(B)).toBe(true);
          await expect(v.createSnapshot('s3')).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
          await expect(v.write(0, A)).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
        } finally {
          await v.close();
        }
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
      await rm(img, { recursive: true, force: true });
    }
  });

  it('block images to write home refuse a read-only mount with JOURNAL_NEEDS_RECOVERY; a writable one recovers them', async () => {
    const dir = await mkdtemp(join(mnt, 'rec-'));
    const img = await mkdtemp(join(mnt, 'img-'));
    try {
      const path = await crashImage(dir, img, { dataMode: 'journal' }, (v) => v.write(0, B));
      const before = await filesOf(img);
      await withReadOnlyMount(img, async (ro) => {
        await expect(Volume.open(join(ro, 'v.img'), { readOnly: true })).rejects.toMatchObject({ code: 'JOURNAL_NEEDS_RECOVERY' });
        const err = await Volume.openForReading(join(ro, 'v.img')).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(CowvolError);
        expect((err as CowvolError).code).toBe('JOURNAL_NEEDS_RECOVERY');
        expect((err as Error).message).toMatch(/recovery could not write/);
      });
      expect(await filesOf(img)).toEqual(before);
      const v = await Volume.openForReading(path); // writable here: recovers
      try {
        expect(v.readOnly).toBe(false);
        expect((await v.read(0, VOLUME_BYTES)).equals(B)).toBe(true);
        expect((await v.readSnapshot('s1', 0, VOLUME_BYTES)).equals(A)).toBe(true);
      } finally {
        await v.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
      await rm(img, { recursive: true, force: true });
    }
  });
});
