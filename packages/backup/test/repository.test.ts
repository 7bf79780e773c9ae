/**
 * Repository on a FileObjectStore (docs/ARCHITECTURE.md §17): init refuses
 * an existing repository, open refuses a missing one and a wrong key before
 * anything is written, putChunk deduplicates by content (head, then
 * conditional put) also under concurrent puts, getChunk authenticates and
 * calls a missing chunk damage, manifests are put once and listed by volume.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chunkObjectKey, encodeLock, FileObjectStore, LOCK_CLOCK_SKEW_MS, LOCK_LEASE_MS, manifestObjectKey, pruneRepository, Repository, type Manifest, type ObjectStore } from '@cowvol/backup';
import { hasCode, IoError } from '@cowvol/base';

let dir: string;
let store: FileObjectStore;
beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'cowvol-repo-'));
  store = new FileObjectStore(pathToFileURL(join(dir, 'repo')).href);
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return hasCode(err, 'REPOSITORY_EXISTS', 'REPOSITORY_NOT_FOUND', 'BAD_KEY', 'BACKUP_CORRUPT', 'OBJECT_EXISTS', 'OBJECT_NOT_FOUND', 'INVALID_ARGUMENT') ? err.code : `uncoded: ${String(err)}`;
  }
  return 'resolved';
}

async function objectKeys(): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list('')) keys.push(info.key);
  return keys;
}

function manifestOf(volumeUuid: string, snapshotName: string, chunks: Map<number, string>): Manifest {
  const now = new Date().toISOString();
  return {
    volumeUuid,
    sizeBytes: 4 * 65536,
    blockSizeBytes: 4096,
    chunkSizeBytes: 65536,
    snapshotName,
    identity: { volumeUuid, snapshotId: 1, createdAt: now, name: snapshotName },
    labels: {},
    createdAt: now,
    pushedAt: now,
    parent: null,
    chunks,
    bytesNew: 0,
    logicalBytes: chunks.size * 65536,
  };
}

describe('Repository', () => {
  it('init writes one config and refuses a second init; open refuses a missing repository and a wrong key', async () => {
    const key = randomBytes(32);
    expect(await codeOf(Repository.open(store, key))).toBe('REPOSITORY_NOT_FOUND');
    const repo = await Repository.init(store, key, 65536);
    expect(repo.chunkSizeBytes).toBe(65536);
    expect(await objectKeys()).toEqual(['config']);
    expect(await codeOf(Repository.init(store, key))).toBe('REPOSITORY_EXISTS');
    expect(await codeOf(Repository.init(store, randomBytes(32)))).toBe('REPOSITORY_EXISTS');
    const config = await store.get('config');
    expect(await codeOf(Repository.open(store, randomBytes(32)))).toBe('BAD_KEY');
    expect((await store.get('config')).equals(config)).toBe(true);
    expect(await objectKeys()).toEqual(['config']);
    const again = await Repository.open(store, key);
    expect(again.config.repositoryId.equals(repo.config.repositoryId)).toBe(true);
  });

  it('stores a chunk once (also under 8 concurrent puts of it), gets it back authenticated, and calls a damaged or missing chunk BACKUP_CORRUPT', async () => {
    const repo = await Repository.init(store, randomBytes(32), 65536);
    const data = randomBytes(65536);
    const results = await Promise.all(Array.from({ length: 8 }, () => repo.putChunk(data)));
    expect(results.filter((r) => r.uploaded)).toHaveLength(1);
    expect(new Set(results.map((r) => r.id)).size).toBe(1);
    const id = results[0]?.id ?? '';
    expect(await repo.hasChunk(id)).toBe(true);
    expect((await repo.putChunk(data)).uploaded).toBe(false);
    expect((await repo.getChunk(id, 65536)).equals(data)).toBe(true);
    expect(await codeOf(repo.getChunk(id, 4096))).toBe('BACKUP_CORRUPT');
    const path = join(dir, 'repo', chunkObjectKey(id));
    const body = await fsp.readFile(path);
    expect(body.includes(data.subarray(0, 64))).toBe(false);
    body[100] = (body[100] ?? 0) ^ 1;
    await fsp.writeFile(path, body);
    expect(await codeOf(repo.getChunk(id))).toBe('BACKUP_CORRUPT');
    await fsp.unlink(path);
    expect(await codeOf(repo.getChunk(id))).toBe('BACKUP_CORRUPT');
    expect(await repo.hasChunk(id)).toBe(false);
  });

  it('puts a manifest once, reads it back, lists manifests by volume in key order', async () => {
    const repo = await Repository.init(store, randomBytes(32), 65536);
    const a = 'aa'.repeat(16);
    const b = 'bb'.repeat(16);
    const { id } = await repo.putChunk(randomBytes(65536));
    const m = manifestOf(a, 's2', new Map([[1, id]]));
    expect(await repo.putManifest(m)).toBe(manifestObjectKey(a, 's2'));
    expect(await codeOf(repo.putManifest(m))).toBe('OBJECT_EXISTS');
    await repo.putManifest(manifestOf(a, '.hidden', new Map()));
    await repo.putManifest(manifestOf(b, 's1', new Map()));
    expect(await repo.getManifest(a, 's2')).toEqual(m);
    expect(await repo.getManifest(manifestObjectKey(a, 's2'))).toEqual(m);
    expect(await repo.hasManifest(a, 's2')).toBe(true);
    expect(await repo.hasManifest(a, 's3')).toBe(false);
    expect(await codeOf(repo.getManifest(a, 's3'))).toBe('OBJECT_NOT_FOUND');
    const names = async (uuid?: string): Promise<string[]> => {
      const out: string[] = [];
      for await (const ref of repo.listManifests(uuid)) out.push(`${ref.volumeUuid.slice(0, 2)}/${ref.snapshotName}`);
      return out;
    };
    expect(await names()).toEqual(['aa/.hidden', 'aa/s2', 'bb/s1']);
    expect(await names(b)).toEqual(['bb/s1']);
    expect(await codeOf(names('nope'))).toBe('INVALID_ARGUMENT');
    // A manifest body copied under another key does not open.
    const body = await store.get(manifestObjectKey(a, 's2'));
    await store.put(manifestObjectKey(b, 's2'), body);
    expect(await codeOf(repo.getManifest(b, 's2'))).toBe('BACKUP_CORRUPT');
  });

  it('a lock that cannot be deleted at release does not replace the outcome: a prune that worked says so with a warning, one stopped by a damaged manifest still says BACKUP_CORRUPT', async () => {
    const key = randomBytes(32);
    // The store refuses to delete lock objects (a read-only folder, an object-lock policy), as a store can: a seam production has.
    const refusing: ObjectStore = {
      url: store.url,
      put: (k, body, options) => store.put(k, body, options),
      get: (k) => store.get(k),
      head: (k) => store.head(k),
      list: (prefix) => store.list(prefix),
      delete: (k) => (k.startsWith('locks/') ? Promise.reject(new IoError(`delete ${k}: EPERM`)) : store.delete(k)),
    };
    const repo = await Repository.init(refusing, key, 64 * 1024);
    const warnings: string[] = [];
    repo.onWarning = (message) => warnings.push(message);
    const report = await pruneRepository(repo);
    expect(report).toMatchObject({ dryRun: false, chunksDeleted: 0 });
    expect(warnings).toEqual([
      expect.stringMatching(/exclusive lock locks\/[0-9a-f]{32} .* could not be deleted \(IO_ERROR: delete locks\/.*EPERM\); it is stale once the store has not seen it written for its lease/),
    ]);
    // The lock left behind is prune's own: clear it, then damage a manifest.
    for await (const o of store.list('locks/')) await store.delete(o.key);
    await store.put(manifestObjectKey('0123456789abcdef0123456789abcdef', 'x'), randomBytes(200));
    expect(await codeOf(pruneRepository(repo))).toBe('BACKUP_CORRUPT');
    expect(warnings).toHaveLength(2);
  });

  it('a repository whose config was lost: open says so (BACKUP_CORRUPT, not "run init"), and init refuses (REPOSITORY_EXISTS) rather than write a config none of its backups opens under', async () => {
    const key = randomBytes(32);
    const repo = await Repository.init(store, key, 64 * 1024);
    await repo.putChunk(randomBytes(1000));
    await store.delete('config');
    const opened = await Repository.open(store, key).catch((e: unknown) => e);
    expect(opened).toMatchObject({ code: 'BACKUP_CORRUPT', message: expect.stringContaining('its config object is missing') as unknown });
    const again = await Repository.init(store, key, 64 * 1024).catch((e: unknown) => e);
    expect(again).toMatchObject({ code: 'REPOSITORY_EXISTS', details: { configMissing: true } });
    expect(await store.head('config')).toBeUndefined();
    // An empty place is still "no repository", and init makes one there.
    const empty = new FileObjectStore(pathToFileURL(join(dir, 'empty')).href);
    expect(await codeOf(Repository.open(empty, key))).toBe('REPOSITORY_NOT_FOUND');
    await Repository.init(empty, key, 64 * 1024);
  });

  it("prune keeps what a stale lock's holder may have uploaded, its start taken by the store's clock even when the holder's clock ran 30 days ahead", async () => {
    const key = randomBytes(32);
    const repo = await Repository.init(store, key, 64 * 1024);
    const root = join(dir, 'repo');
    const dayMs = 86_400_000;
    const lastWriteMs = Date.now() - (LOCK_LEASE_MS + LOCK_CLOCK_SKEW_MS + 5000); // stale by the store's clock
    const startMs = lastWriteMs - 10_000;
    // The holder's lease, in its own clock 30 days ahead: taken at startMs, last renewed at lastWriteMs.
    const lockKey = `locks/${randomBytes(16).toString('hex')}`;
    const lease = {
      kind: 'shared' as const,
      createdAt: new Date(startMs + 30 * dayMs).toISOString(),
      expiresAt: new Date(lastWriteMs + 30 * dayMs + LOCK_LEASE_MS).toISOString(),
      host: 'ahead',
      pid: 1,
      command: 'push',
    };
    await store.put(lockKey, encodeLock(repo, lockKey, lease), { ifNoneMatch: true });
    await fsp.utimes(join(root, lockKey), new Date(lastWriteMs), new Date(lastWriteMs));
    // Two unreferenced chunks: one stored before that push began, one it uploaded (after its start).
    const before = await repo.putChunk(randomBytes(1000));
    const during = await repo.putChunk(randomBytes(1000));
    await fsp.utimes(join(root, chunkObjectKey(before.id)), new Date(startMs - 10 * 60_000), new Date(startMs - 10 * 60_000));
    await fsp.utimes(join(root, chunkObjectKey(during.id)), new Date(startMs + 5000), new Date(startMs + 5000));
    const report = await pruneRepository(repo);
    expect(report).toMatchObject({ staleLocks: 1, chunksDeleted: 1, chunksKeptRecent: 1 });
    expect(await repo.hasChunk(before.id)).toBe(false);
    expect(await repo.hasChunk(during.id), 'what the stale push uploaded stays for the next prune').toBe(true);
  });
});
