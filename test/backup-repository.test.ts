/**
 * Backup repositories end to end through the CLI (docs/ARCHITECTURE.md §17,
 * README "Backups off the machine"), against a file:// repository and a
 * real Ceph RADOS Gateway (requireCeph): a full push then 10 incremental
 * pushes of a volume changed between them by seeded random writes — each
 * restore byte-identical, each incremental uploading within 10 % of its
 * changed chunks; a second volume sharing content uploads only what
 * differs; a flipped bit in a chunk makes restore refuse (BACKUP_CORRUPT)
 * and leave nothing; a wrong key is BAD_KEY with nothing written; a 0644
 * key file is refused; no object holds known plaintext; a push SIGKILLed
 * mid-way (COWVOL_KILL_AT=push:chunk#n) is finished by a re-run that
 * uploads only what is missing.
 *
 * Knobs: COWVOL_SEED replays (the seed is printed), COWVOL_BACKUP_KILL_ROUNDS
 * (default 3; the 30 by hand), COWVOL_BACKUP_ROUNDS (incremental
 * pushes, default 10).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FileObjectStore, loadKeyFile, Repository, restoreFromRepository, S3ObjectStore, type ObjectStore } from '@cowvol/backup';
import { Volume } from '@cowvol/cow-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireCeph, type S3Env } from './ceph.js';
import { CLI, cowvol, jsonOf, prng, sha256, tempDir } from './helpers.js';

const seed = process.env.COWVOL_SEED === undefined ? Date.now() % 2 ** 31 : Number(process.env.COWVOL_SEED);
console.log(`backup-repository.test.ts seed ${String(seed)} (COWVOL_SEED=${String(seed)} replays)`);
const ROUNDS = Number(process.env.COWVOL_BACKUP_ROUNDS ?? '10');
const KILL_ROUNDS = Number(process.env.COWVOL_BACKUP_KILL_ROUNDS ?? '3');
const CHUNK = 64 * 1024;
const SIZE = 16 * 1024 * 1024;
const JOBS = 4;

/** One kind of store the suite runs against. */
interface StoreKind {
  name: string;
  /** A fresh repository URL and a direct handle on its store (to tamper with and to grep). */
  fresh(): { url: string; store: ObjectStore; flags: string[] };
}

const ceph = requireCeph();
const cephEnv = typeof ceph === 'string' ? undefined : ceph;
if (typeof ceph === 'string') console.warn(`skipping the Ceph half of backup-repository.test.ts: ${ceph}`);
const bucket = `cowvol-bk-${randomBytes(4).toString('hex')}`;

let work: { dir: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  work = await tempDir('cowvol-bk-');
  if (cephEnv !== undefined) {
    process.env.AWS_ACCESS_KEY_ID = cephEnv.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = cephEnv.secretAccessKey;
    process.env.AWS_REGION = cephEnv.region;
    const s = s3Store(cephEnv, '');
    await s.createContainer();
    s.close();
  }
}, 60_000);
afterAll(async () => {
  cephEnv?.stop();
  await work.cleanup();
});

function s3Store(e: S3Env, prefix: string): S3ObjectStore {
  return new S3ObjectStore({
    url: `s3://${bucket}/${prefix}`,
    endpoint: e.endpoint,
    forcePathStyle: true,
    region: e.region,
    credentials: { accessKeyId: e.accessKeyId, secretAccessKey: e.secretAccessKey },
  });
}

let repoCount = 0;
const fileKind: StoreKind = {
  name: 'file://',
  fresh: () => {
    const url = pathToFileURL(join(work.dir, `repo-${String(repoCount++)}`)).href;
    return { url, store: new FileObjectStore(url), flags: [] };
  },
};
const kinds: StoreKind[] = [fileKind];
if (cephEnv !== undefined) {
  const e = cephEnv;
  kinds.push({
    name: 'Ceph RGW',
    fresh: () => {
      const prefix = `repo-${String(repoCount++)}`;
      return { url: `s3://${bucket}/${prefix}`, store: s3Store(e, prefix), flags: ['--endpoint', e.endpoint, '--path-style'] };
    },
  });
}

async function keyFile(): Promise<string> {
  const path = join(work.dir, `key-${randomBytes(4).toString('hex')}`);
  const r = await cowvol(['backup', 'key-gen', path]);
  expect(r.code, r.stderr).toBe(0);
  return path;
}

async function ok<T = Record<string, unknown>>(args: string[]): Promise<T> {
  const r = await cowvol([...args, '--json']);
  if (r.code !== 0) throw new Error(`cowvol ${args.join(' ')} exited ${String(r.code)}: ${r.stderr}`);
  return jsonOf<T>(r);
}

interface PushJson {
  parent: string | null;
  alreadyPushed: boolean;
  chunksRead: number;
  chunksUploaded: number;
  chunksDeduplicated: number;
  bytesUploaded: number;
  volumeUuid: string;
}

/** Random writes (seeded) into an open volume; returns the chunk indexes they touched. */
async function scribble(volume: Volume, random: () => number, writes: number): Promise<Set<number>> {
  const touched = new Set<number>();
  for (let w = 0; w < writes; w++) {
    const length = 4096 * (1 + Math.floor(random() * 24));
    const offset = 4096 * Math.floor(random() * ((SIZE - length) / 4096));
    await volume.write(offset, randomBytes(length));
    for (let i = Math.floor(offset / CHUNK); i <= Math.floor((offset + length - 1) / CHUNK); i++) touched.add(i);
  }
  return touched;
}

/** Takes snapshot `name` of the volume at `path` after `fn`, returns the snapshot's sha256 and what `fn` returned. */
async function change<T>(path: string, name: string, fn: (v: Volume) => Promise<T>): Promise<{ sha: string; out: T }> {
  const v = await Volume.open(path);
  try {
    const out = await fn(v);
    await v.createSnapshot(name, { labels: { round: name } });
    return { sha: sha256(await v.readSnapshot(name, 0, SIZE)), out };
  } finally {
    await v.close();
  }
}

async function restoredSha(path: string, name: string): Promise<{ snapshot: string; live: string }> {
  const v = await Volume.openForReading(path);
  try {
    return { snapshot: sha256(await v.readSnapshot(name, 0, SIZE)), live: sha256(await v.read(0, SIZE)) };
  } finally {
    await v.close();
  }
}

async function objects(store: ObjectStore): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list('')) keys.push(info.key);
  return keys;
}

for (const kind of kinds) {
  describe(`backup repository on ${kind.name}`, () => {
    it(`full push then ${String(ROUNDS)} incremental pushes: every restore byte-identical, each incremental uploads its changed chunks (±10 %)`, async () => {
      const random = prng(seed);
      const { url, store, flags } = kind.fresh();
      const key = await keyFile();
      const common = ['--key-file', key, '--jobs', String(JOBS), ...flags];
      await ok(['backup', 'init', url, '--chunk-size', '64K', ...common]);
      const path = join(work.dir, `vol-${String(repoCount)}.img`);
      const v = await Volume.create(path, { sizeBytes: SIZE, blockSizeBytes: 4096 });
      await v.close();
      const shas: string[] = [];
      const secret = randomBytes(4096);
      const first = await change(path, 's0', async (vol) => {
        await vol.write(0, Buffer.concat([secret, randomBytes(4 * 1024 * 1024 - 4096)]));
      });
      shas.push(first.sha);
      const full = await ok<PushJson>(['backup', 'push', path, 's0', '--to', url, ...common]);
      expect(full.parent).toBeNull();
      expect(full.chunksUploaded).toBe(64);
      for (let r = 1; r <= ROUNDS; r++) {
        const { sha, out: touched } = await change(path, `s${String(r)}`, (vol) => scribble(vol, random, 3 + Math.floor(random() * 10)));
        shas.push(sha);
        const pushed = await ok<PushJson>(['backup', 'push', path, `s${String(r)}`, '--to', url, ...common]);
        const expected = touched.size * CHUNK;
        expect(pushed.parent).toMatch(new RegExp(`/s${String(r - 1)}$`));
        expect(pushed.chunksRead, `round ${String(r)}`).toBe(touched.size);
        expect(Math.abs(pushed.bytesUploaded - expected), `round ${String(r)}: uploaded ${String(pushed.bytesUploaded)}, changed ${String(expected)}`).toBeLessThanOrEqual(expected * 0.1);
      }
      const again = await ok<PushJson>(['backup', 'push', path, `s${String(ROUNDS)}`, '--to', url, ...common]);
      expect(again.alreadyPushed).toBe(true);
      const listed = await ok<{ snapshots: Array<{ snapshot: string; labels: Record<string, string> }> }>(['backup', 'list', url, ...common]);
      expect(listed.snapshots.map((s) => s.snapshot).sort()).toEqual(shas.map((_, i) => `s${String(i)}`).sort());
      // The first and the last through the CLI, the others through the same function in this process (each CLI start costs seconds on a loaded machine).
      const repo = await Repository.open(store, await loadKeyFile(key));
      for (let r = 0; r <= ROUNDS; r++) {
        const target = join(work.dir, `restored-${String(repoCount)}-${String(r)}.img`);
        if (r === 0 || r === ROUNDS) await ok(['backup', 'restore', `${url}/${full.volumeUuid}/s${String(r)}`, target, ...common, ...(r === ROUNDS ? ['--verify'] : [])]);
        else await restoreFromRepository(repo, full.volumeUuid, `s${String(r)}`, target, { jobs: JOBS });
        expect(await restoredSha(target, `s${String(r)}`), `restore of s${String(r)}`).toEqual({ snapshot: shas[r], live: shas[r] });
      }
      // Nothing in the store holds the plaintext: the first 4 KiB written, names or labels in bodies.
      for (const k of await objects(store)) {
        const body = await store.get(k);
        for (const needle of [secret.subarray(0, 32), secret.subarray(2048, 2080), Buffer.from('round')]) expect(body.includes(needle), k).toBe(false);
      }
    }, 240_000);

    it('a second volume sharing content uploads only the chunks that differ', async () => {
      const { url, flags } = kind.fresh();
      const key = await keyFile();
      const common = ['--key-file', key, '--jobs', String(JOBS), ...flags];
      await ok(['backup', 'init', url, '--chunk-size', '64K', ...common]);
      const shared = randomBytes(2 * 1024 * 1024);
      const a = join(work.dir, `share-a-${String(repoCount)}.img`);
      const b = join(work.dir, `share-b-${String(repoCount)}.img`);
      for (const p of [a, b]) await (await Volume.create(p, { sizeBytes: SIZE, blockSizeBytes: 4096 })).close();
      await change(a, 'x', (v) => v.write(CHUNK, shared));
      await change(b, 'y', async (v) => {
        await v.write(CHUNK, shared); // 32 chunks shared
        await v.write(8 * 1024 * 1024, randomBytes(3 * CHUNK)); // 3 chunks new
        await v.write(CHUNK * 5, randomBytes(4096)); // 1 shared chunk changed
      });
      expect((await ok<PushJson>(['backup', 'push', a, 'x', '--to', url, ...common])).chunksUploaded).toBe(32);
      const second = await ok<PushJson>(['backup', 'push', b, 'y', '--to', url, ...common]);
      expect(second.chunksUploaded).toBe(4);
      expect(second.chunksDeduplicated).toBe(31);
    }, 120_000);

    it('a flipped bit in a stored chunk: restore refuses with BACKUP_CORRUPT and leaves nothing; a wrong key is BAD_KEY and writes nothing; a 0644 key file is refused', async () => {
      const { url, store, flags } = kind.fresh();
      const key = await keyFile();
      const common = ['--key-file', key, ...flags];
      await ok(['backup', 'init', url, '--chunk-size', '64K', ...common]);
      const path = join(work.dir, `flip-${String(repoCount)}.img`);
      await (await Volume.create(path, { sizeBytes: SIZE, blockSizeBytes: 4096 })).close();
      await change(path, 'f', (v) => v.write(0, randomBytes(8 * CHUNK)));
      const pushed = await ok<PushJson>(['backup', 'push', path, 'f', '--to', url, ...common]);
      const before = await objects(store);
      // A wrong key: refused before anything is written.
      const wrong = await keyFile();
      await change(path, 'g', (v) => v.write(0, randomBytes(CHUNK)));
      const bad = await cowvol(['backup', 'push', path, 'g', '--to', url, '--key-file', wrong, ...flags, '--json']);
      expect(bad.code).toBe(6);
      expect(bad.stderr).toContain('BAD_KEY');
      expect(await objects(store)).toEqual(before);
      await fsp.chmod(key, 0o644);
      const shared = await cowvol(['backup', 'list', url, ...common]);
      expect(shared.stderr).toContain('BAD_KEY');
      await fsp.chmod(key, 0o600);
      // A flipped bit in one chunk.
      const chunkKey = before.find((k) => k.startsWith('chunks/')) ?? '';
      const body = await store.get(chunkKey);
      body[body.length >> 1] = (body[body.length >> 1] ?? 0) ^ 0x10;
      await store.put(chunkKey, body);
      const target = join(work.dir, `flip-restored-${String(repoCount)}.img`);
      const r = await cowvol(['backup', 'restore', `${url}/${pushed.volumeUuid}/f`, target, ...common]);
      expect(r.code, r.stderr).toBe(6);
      expect(r.stderr).toContain('BACKUP_CORRUPT');
      const left = (await fsp.readdir(work.dir)).filter((n) => n.includes(`flip-restored-${String(repoCount)}`));
      expect(left).toEqual([]);
    }, 120_000);

    it(
      `a push SIGKILLed mid-way (${String(KILL_ROUNDS)} rounds): the re-run uploads only the missing chunks, the restore is right`,
      async () => {
        const random = prng(seed + 1);
        const { url, store, flags } = kind.fresh();
        const key = await keyFile();
        const common = ['--key-file', key, '--jobs', String(JOBS), ...flags];
        await ok(['backup', 'init', url, '--chunk-size', '64K', ...common]);
        const path = join(work.dir, `kill-${String(repoCount)}.img`);
        await (await Volume.create(path, { sizeBytes: SIZE, blockSizeBytes: 4096 })).close();
        for (let round = 0; round < KILL_ROUNDS; round++) {
          const name = `k${String(round)}`;
          const { sha } = await change(path, name, (v) => v.write(CHUNK * Math.floor(random() * 128), randomBytes(40 * CHUNK)));
          const n = 1 + Math.floor(random() * 38);
          const signal = await new Promise<NodeJS.Signals | null>((resolve) => {
            const child = spawn(process.execPath, [CLI, 'backup', 'push', path, name, '--to', url, ...common], { env: { ...process.env, COWVOL_KILL_AT: `push:chunk#${String(n)}` }, stdio: 'ignore' });
            child.on('exit', (_code, sig) => resolve(sig));
          });
          expect(signal, `round ${String(round)}: killed after ${String(n)} chunks`).toBe('SIGKILL');
          const rerun = await ok<PushJson>(['backup', 'push', path, name, '--to', url, ...common]);
          expect(rerun.alreadyPushed).toBe(false);
          // Chunks uploaded before the kill (n, and up to JOBS - 1 more in flight) are found, not uploaded again.
          expect(rerun.chunksUploaded + rerun.chunksDeduplicated).toBe(rerun.chunksRead);
          expect(rerun.chunksUploaded).toBeLessThanOrEqual(rerun.chunksRead - n);
          expect(rerun.chunksUploaded).toBeGreaterThanOrEqual(rerun.chunksRead - n - (JOBS - 1));
          const target = join(work.dir, `kill-restored-${String(repoCount)}-${String(round)}.img`);
          await restoreFromRepository(await Repository.open(store, await loadKeyFile(key)), rerun.volumeUuid, name, target, { jobs: JOBS });
          expect((await restoredSha(target, name)).snapshot).toBe(sha);
        }
      },
      Math.max(240_000, KILL_ROUNDS * 30_000),
    );
  });
}

describe.skipIf(cephEnv === undefined)('backup init and a bucket that does not exist (Ceph RGW)', () => {
  it('init creates the bucket, says so, and makes a working repository; init again is REPOSITORY_EXISTS; other commands on a missing bucket stay REPOSITORY_NOT_FOUND', async () => {
    if (cephEnv === undefined) return;
    const key = await keyFile();
    const flags = ['--key-file', key, '--endpoint', cephEnv.endpoint, '--path-style'];
    const missing = `${bucket}-new`;
    // Nothing is created by a command that only reads: a mistyped bucket is named, exit 3.
    const listed = await cowvol(['backup', 'list', `s3://${missing}/r`, ...flags]);
    expect(listed.code, listed.stderr).toBe(3);
    expect(listed.stderr).toContain(`bucket ${missing} does not exist`);
    const human = await cowvol(['backup', 'init', `s3://${missing}/r`, '--chunk-size', '64K', ...flags]);
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout.toString('utf8')).toContain(`created bucket for s3://${missing}/r`);
    expect(await ok<{ snapshots: unknown[] }>(['backup', 'list', `s3://${missing}/r`, ...flags])).toMatchObject({ snapshots: [] });
    // The bucket exists now: a second repository in it does not create it again.
    expect(await ok(['backup', 'init', `s3://${missing}/other`, ...flags])).toMatchObject({ createdBucket: false });
    const again = await cowvol(['backup', 'init', `s3://${missing}/r`, ...flags, '--json']);
    expect(again.code, again.stderr).toBe(4);
    expect(jsonOf<{ error: { code: string } }>(again).error.code).toBe('REPOSITORY_EXISTS');
  }, 120_000);
});
