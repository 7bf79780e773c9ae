/**
 * `cowvol backup verify`, `forget` and `prune` through the real CLI, on a
 * file:// repository and on a real Ceph RADOS Gateway (README "Backups off
 * the machine", docs/ARCHITECTURE.md §17): verify's exit codes (0 clean, 2
 * damaged naming each chunk and every snapshot needing it, 1 could not
 * check), restic's retention rules on snapshots with controlled creation
 * times, prune deleting exactly the unreferenced chunks and refusing while a
 * live lock exists, and a push racing a prune (COWVOL_BACKUP_RACE_ROUNDS
 * rounds) never losing a chunk its manifest names. Snapshots are written through the Repository API (chunks,
 * then a manifest, as push writes them) so their times can be chosen.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, stat, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock, chunkObjectKey, FileObjectStore, generateKeyFile, manifestObjectKey, Repository, S3ObjectStore, type Manifest, type ObjectStore } from '@cowvol/backup';
import { cowvol, cowvolOk, jsonOf, tempDir } from './helpers.js';
import { requireCeph, type S3Env } from './ceph.js';

const CHUNK = 64 * 1024;
/** Rounds of the push-and-prune race (COWVOL_BACKUP_RACE_ROUNDS; each is about ten CLI runs). */
const RACE_ROUNDS = Number(process.env.COWVOL_BACKUP_RACE_ROUNDS ?? 2);
const ceph = requireCeph();
if (typeof ceph === 'string') console.warn(`skipping the S3 half of the backup maintenance tests: ${ceph}`);
const s3 = typeof ceph === 'string' ? undefined : ceph;

let dir: string;
let cleanup: () => Promise<void>;
let keyFile: string;
let otherKeyFile: string;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-backup-maint-'));
  keyFile = join(dir, 'backup.key');
  otherKeyFile = join(dir, 'other.key');
  await generateKeyFile(keyFile);
  await generateKeyFile(otherKeyFile);
  if (s3 !== undefined) {
    process.env.AWS_ACCESS_KEY_ID = s3.accessKeyId;
    process.env.AWS_SECRET_ACCESS_KEY = s3.secretAccessKey;
    process.env.AWS_REGION = s3.region;
  }
}, 60_000);
afterAll(async () => {
  await cleanup();
  s3?.stop();
});

interface Backend {
  name: string;
  /** A fresh, empty store and the URL and flags the CLI reaches it with. */
  fresh: () => Promise<{ store: ObjectStore; url: string; flags: string[] }>;
}

let n = 0;
const bucket = `cowvol-maint-${randomBytes(4).toString('hex')}`;
const backends: Backend[] = [
  {
    name: 'file://',
    fresh: async () => {
      const path = join(dir, `repo-${String(n++)}`);
      await mkdir(path);
      const url = pathToFileURL(path).href;
      return { store: new FileObjectStore(url), url, flags: [] };
    },
  },
];
if (s3 !== undefined) {
  const e: S3Env = s3;
  let created = false;
  backends.push({
    name: 'Ceph RGW',
    fresh: async () => {
      const url = `s3://${bucket}/repo-${String(n++)}`;
      const store = new S3ObjectStore({ url, endpoint: e.endpoint, forcePathStyle: true, region: e.region, credentials: { accessKeyId: e.accessKeyId, secretAccessKey: e.secretAccessKey } });
      if (!created) await store.createContainer();
      created = true;
      return { store, url, flags: ['--endpoint', e.endpoint, '--path-style'] };
    },
  });
}

const VOL_A = 'a'.repeat(32);
const VOL_B = 'b'.repeat(32);

/** Stores a snapshot as push does: its chunks, then its manifest (created at `createdAt`). */
async function addSnapshot(repo: Repository, volumeUuid: string, name: string, createdAt: string, chunks: Buffer[]): Promise<Manifest> {
  const map = new Map<number, string>();
  let bytesNew = 0;
  for (const [i, c] of chunks.entries()) {
    const r = await repo.putChunk(c);
    map.set(i, r.id);
    if (r.uploaded) bytesNew += r.sealedBytes;
  }
  const m: Manifest = {
    volumeUuid,
    sizeBytes: chunks.length * CHUNK,
    blockSizeBytes: 4096,
    chunkSizeBytes: CHUNK,
    snapshotName: name,
    identity: { volumeUuid, snapshotId: 1 + (n % 1000), createdAt, name },
    labels: {},
    createdAt,
    pushedAt: createdAt,
    parent: null,
    chunks: map,
    bytesNew,
    logicalBytes: chunks.length * CHUNK,
  };
  await repo.putManifest(m);
  return m;
}

const chunk = (): Buffer => randomBytes(CHUNK);
const flipBit = async (store: ObjectStore, key: string, offset: number): Promise<void> => {
  const body = await store.get(key);
  body[offset] = (body[offset] ?? 0) ^ 0x10;
  await store.put(key, body);
};

async function chunkKeys(store: ObjectStore): Promise<string[]> {
  const out: string[] = [];
  for await (const o of store.list('chunks/')) out.push(o.key);
  return out.sort();
}

for (const backend of backends) {
  describe(`backup maintenance on ${backend.name}`, () => {
    /** A repository with snapshots a/s1, a/s2 (sharing chunk `shared`) and b/s1. */
    async function repository(): Promise<{ repo: Repository; store: ObjectStore; url: string; flags: string[]; shared: Buffer; ids: { s1: string[]; s2: string[]; b1: string[] } }> {
      const { store, url, flags } = await backend.fresh();
      const { loadKeyFile } = await import('@cowvol/backup');
      const repo = await Repository.init(store, await loadKeyFile(keyFile), CHUNK);
      const shared = chunk();
      const s1 = await addSnapshot(repo, VOL_A, 's1', '2026-11-01T10:00:00Z', [shared, chunk()]);
      const s2 = await addSnapshot(repo, VOL_A, 's2', '2026-11-02T10:00:00Z', [shared, chunk(), chunk()]);
      const b1 = await addSnapshot(repo, VOL_B, 's1', '2026-11-02T11:00:00Z', [chunk()]);
      return { repo, store, url, flags, shared, ids: { s1: [...s1.chunks.values()], s2: [...s2.chunks.values()], b1: [...b1.chunks.values()] } };
    }
    const verify = (url: string, flags: string[], ...extra: string[]): ReturnType<typeof cowvol> => cowvol(['backup', 'verify', url, '--key-file', keyFile, ...flags, '--json', ...extra]);
    interface Report {
      status: string;
      damagedChunks: Array<{ chunkId: string; problem: string; snapshots: Array<{ volumeUuid: string; snapshotName: string }> }>;
      damagedManifests: Array<{ key: string; snapshotName: string }>;
      affectedSnapshots: Array<{ volumeUuid: string; snapshotName: string }>;
      chunksReferenced: number;
      chunksRead: number;
    }

    it('verify: a clean repository exits 0, with and without --read-data', async () => {
      const { url, flags } = await repository();
      const quick = await verify(url, flags);
      expect(quick.code, quick.stderr).toBe(0);
      expect(jsonOf<Report>(quick)).toMatchObject({ status: 'clean', manifests: 3, chunksReferenced: 5, chunksRead: 0 });
      const full = await verify(url, flags, '--read-data');
      expect(full.code, full.stderr).toBe(0);
      expect(jsonOf<Report>(full)).toMatchObject({ status: 'clean', dataChecked: true, chunksRead: 5 });
    });

    it('verify --read-data: a flipped bit in a stored chunk exits 2, naming the chunk and both snapshots that need it', async () => {
      const { store, url, flags, repo, shared } = await repository();
      const id = repo.chunkIdOf(shared);
      await flipBit(store, chunkObjectKey(id), 100);
      const quick = await verify(url, flags);
      expect(quick.code, 'a flipped bit keeps the size: only reading finds it').toBe(0);
      const r = await verify(url, flags, '--read-data');
      expect(r.code, r.stderr).toBe(2);
      const report = jsonOf<Report>(r);
      expect(report.damagedChunks).toEqual([
        expect.objectContaining({
          chunkId: id,
          problem: 'corrupt',
          snapshots: [
            { volumeUuid: VOL_A, snapshotName: 's1' },
            { volumeUuid: VOL_A, snapshotName: 's2' },
          ],
        }),
      ]);
      const text = await cowvol(['backup', 'verify', url, '--key-file', keyFile, ...flags, '--read-data']);
      expect(text.code).toBe(2);
      expect(text.stdout.toString()).toContain(id);
      expect(text.stdout.toString()).toContain(`${VOL_A}/s1`);
    });

    it('verify --read-data: a flipped bit in a manifest exits 2 naming that snapshot', async () => {
      const { store, url, flags } = await repository();
      await flipBit(store, manifestObjectKey(VOL_B, 's1'), 40);
      const r = await verify(url, flags, '--read-data');
      expect(r.code, r.stderr).toBe(2);
      const report = jsonOf<Report>(r);
      expect(report.damagedManifests).toEqual([expect.objectContaining({ key: manifestObjectKey(VOL_B, 's1'), snapshotName: 's1' })]);
      expect(report.affectedSnapshots).toEqual([{ volumeUuid: VOL_B, snapshotName: 's1' }]);
      expect(report.damagedChunks).toEqual([]);
    });

    it('verify without --read-data: a deleted chunk exits 2, naming it missing and the snapshot that needs it', async () => {
      const { store, url, flags, ids } = await repository();
      const gone = ids.s2[2] ?? '';
      await store.delete(chunkObjectKey(gone));
      const r = await verify(url, flags);
      expect(r.code, r.stderr).toBe(2);
      expect(jsonOf<Report>(r).damagedChunks).toEqual([expect.objectContaining({ chunkId: gone, problem: 'missing', snapshots: [{ volumeUuid: VOL_A, snapshotName: 's2' }] })]);
    });

    it('verify: a flipped byte in the config version field is damage (exit 2, BACKUP_CORRUPT), not a newer format (exit 1)', async () => {
      const { store, url, flags } = await repository();
      await flipBit(store, 'config', 4);
      const r = await verify(url, flags);
      expect(r.code, r.stderr).toBe(2);
      const error = jsonOf<{ error: { code: string; message: string } }>(r).error;
      expect(error.code).toBe('BACKUP_CORRUPT');
      expect(error.message).toContain('CRC32C');
    });

    it('verify with the wrong key exits 1 with BAD_KEY; nothing is written', async () => {
      const { store, url, flags } = await repository();
      const before = await chunkKeys(store);
      const r = await cowvol(['backup', 'verify', url, '--key-file', otherKeyFile, ...flags, '--json']);
      expect(r.code).toBe(1);
      expect(jsonOf<{ error: { code: string } }>(r).error.code).toBe('BAD_KEY');
      expect(await chunkKeys(store)).toEqual(before);
      const locks: string[] = [];
      for await (const o of store.list('locks/')) locks.push(o.key);
      expect(locks).toEqual([]);
    });

    it('forget applies keep-last / keep-daily / keep-weekly per volume, deleting manifests only; prune then deletes exactly the unreferenced chunks', async () => {
      const { store, url, flags } = await backend.fresh();
      const { loadKeyFile } = await import('@cowvol/backup');
      const repo = await Repository.init(store, await loadKeyFile(keyFile), CHUNK);
      // Volume A: one snapshot at 06:00 and 18:00 each day from 2026-11-01 (a Sunday) to 11-10; volume B: 3 on 11-10.
      const base = chunk();
      const owned = new Map<string, string>();
      for (let day = 1; day <= 10; day++) {
        for (const hour of [6, 18]) {
          const name = `d${String(day).padStart(2, '0')}h${String(hour)}`;
          const own = chunk();
          await addSnapshot(repo, VOL_A, name, `2026-11-${String(day).padStart(2, '0')}T${String(hour).padStart(2, '0')}:00:00Z`, [base, own]);
          owned.set(name, repo.chunkIdOf(own));
        }
      }
      for (const h of [1, 2, 3]) await addSnapshot(repo, VOL_B, `b${String(h)}`, `2026-11-10T0${String(h)}:00:00Z`, [chunk()]);
      const forget = (...extra: string[]): ReturnType<typeof cowvol> => cowvol(['backup', 'forget', url, '--key-file', keyFile, ...flags, '--json', ...extra]);
      const dry = await forget('--keep-last', '1', '--keep-daily', '3', '--keep-weekly', '2', '--volume', VOL_A, '--dry-run');
      expect(dry.code, dry.stderr).toBe(0);
      const plan = jsonOf<{ kept: Array<{ snapshotName: string; reasons: string[] }>; forgotten: unknown[] }>(dry);
      // last: d10h18; daily: d10h18, d09h18, d08h18; weekly: W46 (11-09..) d10h18, W45 (11-02..11-08) d08h18.
      expect(plan.kept.map((k) => k.snapshotName).sort()).toEqual(['d08h18', 'd09h18', 'd10h18']);
      expect(plan.kept.find((k) => k.snapshotName === 'd10h18')?.reasons).toEqual(['last', 'daily 2026-11-10', 'weekly 2026-W46']);
      expect(plan.forgotten).toHaveLength(17);
      const manifests = async (): Promise<string[]> => {
        const out: string[] = [];
        for await (const r of repo.listManifests()) out.push(`${r.volumeUuid === VOL_A ? 'a' : 'b'}/${r.snapshotName}`);
        return out.sort();
      };
      expect(await manifests()).toHaveLength(23);
      const chunksBefore = await chunkKeys(store);
      const real = await forget('--keep-last', '1', '--keep-daily', '3', '--keep-weekly', '2', '--volume', VOL_A);
      expect(real.code, real.stderr).toBe(0);
      expect(await manifests()).toEqual(['a/d08h18', 'a/d09h18', 'a/d10h18', 'b/b1', 'b/b2', 'b/b3']);
      expect(await chunkKeys(store), 'forget deletes manifests only').toEqual(chunksBefore);

      const dryPrune = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json', '--dry-run']);
      expect(dryPrune.code, dryPrune.stderr).toBe(0);
      expect(jsonOf(dryPrune)).toMatchObject({ dryRun: true, chunksDeleted: 17, chunksReferenced: 1 + 3 + 3 });
      expect(await chunkKeys(store)).toEqual(chunksBefore);
      const pruned = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json']);
      expect(pruned.code, pruned.stderr).toBe(0);
      expect(jsonOf(pruned)).toMatchObject({ dryRun: false, chunksDeleted: 17, chunksKeptRecent: 0, bytesDeleted: 17 * (CHUNK + 33) });
      const kept = new Set([repo.chunkIdOf(base), ...['d08h18', 'd09h18', 'd10h18'].map((k) => owned.get(k) ?? '')]);
      const left = (await chunkKeys(store)).map((k) => k.slice(k.lastIndexOf('/') + 1));
      expect(left.filter((id) => kept.has(id)).sort()).toEqual([...kept].sort());
      expect(left).toHaveLength(kept.size + 3);
      const after = await verify(url, flags, '--read-data');
      expect(after.code, after.stderr).toBe(0);
    });

    it('prune refuses while a live lock exists (REPOSITORY_LOCKED, exit 5), and keeps chunks stored after its cutoff', async () => {
      const { repo, store, url, flags } = await repository();
      const pushing = await acquireLock(repo, 'shared', { command: 'push' });
      const r = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json']);
      expect(r.code).toBe(5);
      expect(jsonOf<{ error: { code: string } }>(r).error.code).toBe('REPOSITORY_LOCKED');
      await pushing.release();
      // An unreferenced chunk just stored is kept under a grace period, and deleted without one.
      const orphan = await repo.putChunk(chunk());
      const graced = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json', '--grace', '1h']);
      expect(graced.code, graced.stderr).toBe(0);
      expect(jsonOf(graced)).toMatchObject({ chunksDeleted: 0, chunksKeptRecent: 1 });
      const plain = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json']);
      expect(jsonOf(plain)).toMatchObject({ chunksDeleted: 1, chunksKeptRecent: 0 });
      expect(await repo.hasChunk(orphan.id)).toBe(false);
      const locks: string[] = [];
      for await (const o of store.list('locks/')) locks.push(o.key);
      expect(locks, 'prune releases its lock').toEqual([]);
    });

    it('forget --damaged removes a manifest that fails its checks (which stopped prune), keeps one of a newer version, and prune then runs', async () => {
      const { repo, store, url, flags, ids } = await repository();
      const repoFlags = ['--key-file', keyFile, ...flags, '--json'];
      await flipBit(store, manifestObjectKey(VOL_B, 's1'), 40); // damage: BACKUP_CORRUPT
      const blocked = await cowvol(['backup', 'prune', url, ...repoFlags]);
      expect(blocked.code, blocked.stderr).toBe(6);
      expect(jsonOf<{ error: { code: string } }>(blocked).error.code).toBe('BACKUP_CORRUPT');
      const noRule = await cowvol(['backup', 'forget', url, ...repoFlags]);
      expect(noRule.code, 'no rule and no --damaged is still a usage error').toBe(2);

      const dry = await cowvol(['backup', 'forget', url, ...repoFlags, '--damaged', '--dry-run']);
      expect(dry.code, dry.stderr).toBe(0);
      expect(jsonOf(dry)).toMatchObject({ dryRun: true, forgotten: [], damaged: [], damagedForgotten: [expect.objectContaining({ key: manifestObjectKey(VOL_B, 's1'), code: 'BACKUP_CORRUPT' })] });
      expect((await store.head(manifestObjectKey(VOL_B, 's1'))) !== undefined, 'a dry run deletes nothing').toBe(true);

      const real = await cowvol(['backup', 'forget', url, '--key-file', keyFile, ...flags, '--damaged']);
      expect(real.code, real.stderr).toBe(0);
      expect(real.stdout.toString()).toContain(`forgotten, damaged: ${manifestObjectKey(VOL_B, 's1')}`);
      expect((await store.head(manifestObjectKey(VOL_B, 's1'))) !== undefined).toBe(false);
      for (const name of ['s1', 's2']) expect(await repo.hasManifest(VOL_A, name), `intact ${name} stays`).toBe(true);

      const pruned = await cowvol(['backup', 'prune', url, ...repoFlags]);
      expect(pruned.code, pruned.stderr).toBe(0);
      expect(jsonOf(pruned)).toMatchObject({ manifests: 2, chunksDeleted: 1 });
      expect(await repo.hasChunk(ids.b1[0] ?? '')).toBe(false);

      // A manifest whose version byte says a newer format is not damage --damaged may remove.
      await flipBit(store, manifestObjectKey(VOL_A, 's2'), 4);
      const newer = await cowvol(['backup', 'forget', url, ...repoFlags, '--damaged']);
      expect(newer.code, newer.stderr).toBe(0);
      expect(jsonOf(newer)).toMatchObject({ damagedForgotten: [], damaged: [expect.objectContaining({ key: manifestObjectKey(VOL_A, 's2'), code: 'UNSUPPORTED_VERSION' })] });
      expect((await store.head(manifestObjectKey(VOL_A, 's2'))) !== undefined).toBe(true);
    });

    it("forget --damaged --volume X removes only X's damaged manifests; --keep-last 0 with --damaged counts as no rule", async () => {
      const { store, url, flags } = await repository();
      await flipBit(store, manifestObjectKey(VOL_B, 's1'), 40);
      await flipBit(store, manifestObjectKey(VOL_A, 's1'), 40);
      const r = await cowvol(['backup', 'forget', url, '--key-file', keyFile, ...flags, '--json', '--damaged', '--keep-last', '0', '--volume', VOL_B]);
      expect(r.code, r.stderr).toBe(0);
      expect(jsonOf(r)).toMatchObject({ forgotten: [], damagedForgotten: [expect.objectContaining({ volumeUuid: VOL_B, snapshotName: 's1' })], damaged: [] });
      expect((await store.head(manifestObjectKey(VOL_B, 's1'))) === undefined).toBe(true);
      expect((await store.head(manifestObjectKey(VOL_A, 's1'))) !== undefined, "another volume's damaged manifest stays").toBe(true);
    });

    it('prune deletes an object under chunks/ at a key no chunk has (no restore reads it), by the same cutoff; the chunk at its own key stays', async () => {
      const { repo, store, url, flags, ids } = await repository();
      const id = ids.s1[1] ?? '';
      const stray = `chunks/zz/${id}`;
      await store.put(stray, await store.get(chunkObjectKey(id)));
      const graced = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json', '--grace', '1h']);
      expect(graced.code, graced.stderr).toBe(0);
      expect(jsonOf(graced)).toMatchObject({ chunksDeleted: 0, strayObjects: 1, strayObjectsDeleted: 0 });
      const dry = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json', '--dry-run']);
      expect(jsonOf(dry)).toMatchObject({ strayObjects: 1, strayObjectsDeleted: 1 });
      expect((await store.head(stray)) !== undefined).toBe(true);
      const r = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.toString()).toContain('objects under chunks/ at a key no chunk has');
      expect((await store.head(stray)) !== undefined).toBe(false);
      expect(await repo.hasChunk(id)).toBe(true);
      const after = await verify(url, flags, '--read-data');
      expect(after.code, after.stderr).toBe(0);
    });

    // Only a file: store can hold a symbolic link: registered for it alone.
    if (backend.name === 'file://')
      it('a symbolic link in a file: repository (an alias of a chunk folder) stops prune and verify before they act on it; nothing is deleted', async () => {
        const { store, url, flags, ids } = await repository();
        const root = fileURLToPath(url);
        const id = ids.s1[0] ?? '';
        const alias = join(root, 'chunks', 'zz');
        const before = await chunkKeys(store);
        await symlink(join(root, 'chunks', id.slice(0, 2)), alias);
        const pruned = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json']);
        expect([pruned.code, jsonOf<{ error: { code: string; message: string } }>(pruned).error.code]).toEqual([2, 'INVALID_ARGUMENT']);
        expect(pruned.stderr).toContain('holds a symbolic link, chunks/zz');
        const verified = await verify(url, flags);
        expect(verified.code, 'verify could not check').toBe(1);
        await unlink(alias);
        expect(await chunkKeys(store), 'nothing deleted').toEqual(before);
        expect((await verify(url, flags, '--read-data')).code).toBe(0);
      });

    // Only a file: store has temporary objects of its own (an S3 put is atomic): registered for it alone, not skipped elsewhere.
    if (backend.name === 'file://')
      it('prune removes the temporary files a killed push left in a file: repository (older than its cutoff), which no listing shows', async () => {
        const { url, flags } = await repository();
        const root = fileURLToPath(url);
        const old = join(root, 'chunks', 'ab', '.cowvol-tmp-0123456789abcdef');
        const fresh = join(root, 'manifests', '.cowvol-tmp-fedcba9876543210');
        await mkdir(join(root, 'chunks', 'ab'), { recursive: true });
        await writeFile(old, randomBytes(5000));
        await writeFile(fresh, randomBytes(100));
        const hourAgo = new Date(Date.now() - 3_600_000);
        await utimes(old, hourAgo, hourAgo);
        const dry = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json', '--dry-run']);
        expect(jsonOf(dry)).toMatchObject({ temporaryObjectsDeleted: 0 });
        const r = await cowvol(['backup', 'prune', url, '--key-file', keyFile, ...flags, '--json', '--grace', '10m']);
        expect(r.code, r.stderr).toBe(0);
        expect(jsonOf(r)).toMatchObject({ temporaryObjectsDeleted: 1, chunksDeleted: 0 });
        await expect(stat(old)).rejects.toMatchObject({ code: 'ENOENT' });
        expect((await stat(fresh)).size, 'one written after the cutoff stays').toBe(100);
      });

    it('a push and a prune at the same time: each finishes or is refused with REPOSITORY_LOCKED, and no chunk a manifest names is deleted', async () => {
      const { url, flags } = await backend.fresh();
      const repoFlags = ['--key-file', keyFile, ...flags];
      await cowvolOk(['backup', 'init', url, ...repoFlags, '--chunk-size', '64K']);
      const vol = join(dir, `race-${String(n++)}.img`);
      await cowvolOk(['create', vol, '--size', '2M']);
      const uuid = jsonOf<{ uuid: string }>(await cowvolOk(['info', vol, '--json'])).uuid;
      const outcomes: string[] = [];
      for (let round = 0; round < RACE_ROUNDS; round++) {
        await cowvolOk(['write', vol, '--offset', String(round * 300 * 1024)], randomBytes(400 * 1024));
        const name = `r${String(round)}`;
        await cowvolOk(['snapshot', 'create', vol, name]);
        // The previous snapshot forgotten: its own chunks are garbage for this prune, while this push may find (deduplicate) some of them.
        if (round > 0) await cowvolOk(['backup', 'forget', url, ...repoFlags, '--keep-last', '1']);
        const [push, prune] = await Promise.all([cowvol(['backup', 'push', vol, name, '--to', url, ...repoFlags, '--json']), cowvol(['backup', 'prune', url, ...repoFlags, '--json'])]);
        for (const r of [push, prune]) expect([0, 5], r.stderr).toContain(r.code);
        outcomes.push(`push ${String(push.code)} prune ${String(prune.code)}`);
        if (push.code !== 0) await cowvolOk(['backup', 'push', vol, name, '--to', url, ...repoFlags]);
        const copy = join(dir, `race-copy-${String(n++)}.img`);
        await cowvolOk(['backup', 'restore', `${url}/${uuid}/${name}`, copy, ...repoFlags]);
        const restored = await cowvolOk(['snapshot', 'read', copy, name]);
        const original = await cowvolOk(['snapshot', 'read', vol, name]);
        expect(sha(restored.stdout), `round ${String(round)}`).toBe(sha(original.stdout));
        const v = await verify(url, flags, '--read-data');
        expect(v.code, v.stderr).toBe(0);
      }
      console.log(`push and prune at once on ${backend.name}: ${outcomes.join('; ')}`);
    }, 600_000);
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
