/**
 * The repository lock (docs/ARCHITECTURE.md §17 "The repository lock",
 * docs/FORMAT.md §12.5) on a FileObjectStore: shared locks coexist, an
 * exclusive one excludes everything (REPOSITORY_LOCKED, its own object
 * removed), stale leases are ignored and removed by an exclusive taker, a
 * lock object is sealed (no plaintext host name, another key or key does not
 * open it), and a lease that ran out is LOCK_LOST.
 */
import { promises as fsp } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  acquireLock,
  decodeLock,
  encodeLock,
  FileObjectStore,
  listLocks,
  LOCK_CLOCK_SKEW_MS,
  LOCK_LEASE_MS,
  newRepositoryConfig,
  processSpace,
  type LockableRepository,
  type LockLease,
  type ObjectStore,
} from '@cowvol/backup';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

let dir: string;
let repo: LockableRepository;
beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'cowvol-lock-'));
  const { config, keys } = newRepositoryConfig(randomBytes(32));
  repo = { store: new FileObjectStore(pathToFileURL(join(dir, 'repo')).href), config, keys };
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function lockKeys(): Promise<string[]> {
  const out: string[] = [];
  for await (const o of repo.store.list('locks/')) out.push(o.key);
  return out;
}

describe('repository lock', () => {
  it('shared locks coexist; an exclusive one is refused while they live, and taken once they are released', async () => {
    const a = await acquireLock(repo, 'shared', { command: 'push' });
    const b = await acquireLock(repo, 'shared', { command: 'push' });
    await expect(acquireLock(repo, 'exclusive', { command: 'prune' })).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
    expect((await lockKeys()).sort()).toEqual([a.key, b.key].sort());
    await a.release();
    await expect(acquireLock(repo, 'exclusive')).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
    await b.release();
    const x = await acquireLock(repo, 'exclusive', { command: 'prune' });
    await expect(acquireLock(repo, 'shared', { command: 'push' })).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED', details: { locks: [{ kind: 'exclusive', command: 'prune' }] } });
    await expect(acquireLock(repo, 'exclusive')).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
    expect(await lockKeys()).toEqual([x.key]);
    await x.release();
    expect(await lockKeys()).toEqual([]);
  });

  it('of two exclusive takers racing, at most one wins', async () => {
    for (let round = 0; round < 10; round++) {
      const results = await Promise.allSettled([acquireLock(repo, 'exclusive'), acquireLock(repo, 'exclusive'), acquireLock(repo, 'shared')]);
      const won = results.filter((r) => r.status === 'fulfilled');
      const exclusiveWon = results.slice(0, 2).filter((r) => r.status === 'fulfilled').length;
      expect(exclusiveWon).toBeLessThanOrEqual(1);
      if (exclusiveWon === 1) expect(won.length).toBe(1);
      for (const r of won) await r.value.release();
      for (const r of results) if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'REPOSITORY_LOCKED' });
      expect(await lockKeys()).toEqual([]);
    }
  });

  /** Sets the store's time of lock object `key` (a file store's: the file's mtime) to `ageMs` ago. */
  const age = async (key: string, ageMs: number): Promise<void> => {
    const t = new Date(Date.now() - ageMs);
    await fsp.utimes(join(dir, 'repo', key), t, t);
  };

  it("a lock not written for a lease and the skew margin by the store's clock is stale: ignored, and removed by an exclusive taker", async () => {
    let clock = Date.now();
    const now = (): number => clock;
    const old = await acquireLock(repo, 'shared', { now, command: 'push' });
    await age(old.key, LOCK_LEASE_MS + LOCK_CLOCK_SKEW_MS - 5000);
    await expect(acquireLock(repo, 'exclusive')).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
    await age(old.key, LOCK_LEASE_MS + LOCK_CLOCK_SKEW_MS + 5000);
    // Without a lock of its own (no store time to read), a reader finds it stale only when its lease has run out too: here it has not.
    expect((await listLocks(repo)).map((l) => l.stale)).toEqual([false]);
    const x = await acquireLock(repo, 'exclusive');
    expect(x.removedStale.map((l) => l.key)).toEqual([old.key]);
    expect(await lockKeys()).toEqual([x.key]);
    clock += LOCK_LEASE_MS;
    expect(() => {
      old.assertHeld();
    }).toThrow(expect.objectContaining({ code: 'LOCK_LOST' }) as Error);
    await x.release();
    await old.release(); // its object is gone already: not an error
  });

  it("staleness follows the store's clock, not the holder's: a holder whose clock runs 10 minutes behind is live while it writes, one whose clock runs 30 days ahead is stale once it stops", async () => {
    const writeAt = async (skewMs: number): Promise<string> => {
      const key = `locks/${randomBytes(16).toString('hex')}`;
      const t = Date.now() + skewMs;
      const lease: LockLease = { kind: 'shared', createdAt: new Date(t).toISOString(), expiresAt: new Date(t + LOCK_LEASE_MS).toISOString(), host: 'elsewhere', pid: 1, command: 'push' };
      await repo.store.put(key, encodeLock(repo, key, lease), { ifNoneMatch: true });
      return key;
    };
    const behind = await writeAt(-10 * 60_000); // its lease "expired" 5 minutes ago by every other clock, yet it was just written
    await expect(acquireLock(repo, 'exclusive')).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
    await repo.store.delete(behind);
    const ahead = await writeAt(30 * 86_400_000);
    await expect(acquireLock(repo, 'exclusive')).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
    await age(ahead, LOCK_LEASE_MS + LOCK_CLOCK_SKEW_MS + 5000); // its holder stopped renewing (killed)
    const x = await acquireLock(repo, 'exclusive');
    expect(x.removedStale.map((l) => l.key)).toEqual([ahead]);
    await x.release();
    expect(await lockKeys()).toEqual([]);
  });

  it('a renewal moves the expiry; assertHeld fails once less than a quarter of the lease is left', async () => {
    let clock = Date.now();
    const now = (): number => clock;
    const l = await acquireLock(repo, 'shared', { now, leaseMs: 60_000 });
    const first = l.current.expiresAt;
    clock += 40_000;
    l.assertHeld();
    await l.renew();
    expect(Date.parse(l.current.expiresAt) - Date.parse(first)).toBe(40_000);
    expect((await listLocks(repo, { now }))[0]?.lease?.expiresAt).toBe(l.current.expiresAt);
    clock += 46_000;
    expect(() => {
      l.assertHeld();
    }).toThrow(expect.objectContaining({ code: 'LOCK_LOST' }) as Error);
    await l.release();
  });

  it('a lock object is sealed: no plaintext, bound to its key and to the repository key', async () => {
    const l = await acquireLock(repo, 'exclusive', { command: 'prune' });
    const body = await repo.store.get(l.key);
    // The lease's JSON fields, which random ciphertext cannot hold by chance (a short host name such as `vm` alone can, about once in 250 runs).
    expect(body.includes(Buffer.from(`"host":${JSON.stringify(hostname())}`))).toBe(false);
    expect(body.includes(Buffer.from('"command":"prune"'))).toBe(false);
    expect(body.includes(Buffer.from('"kind":'))).toBe(false);
    expect(decodeLock(repo, l.key, body)).toMatchObject({ kind: 'exclusive', command: 'prune', pid: process.pid });
    expect(decodeLock(repo, 'locks/00000000000000000000000000000000', body)).toBeUndefined();
    const other = { ...repo, ...newRepositoryConfig(randomBytes(32)) };
    expect(decodeLock(other, l.key, body)).toBeUndefined();
    const flipped = Buffer.from(body);
    flipped[20] = (flipped[20] ?? 0) ^ 1;
    expect(decodeLock(repo, l.key, flipped)).toBeUndefined();
    expect(decodeLock(repo, l.key, encodeLock(repo, l.key, l.current))).toEqual(l.current);
    await l.release();
  });

  it('a lock object that does not open counts as live until it is a lease and the skew margin old', async () => {
    const key = 'locks/0123456789abcdef0123456789abcdef';
    await repo.store.put(key, Buffer.from('not a lock'));
    const found = await listLocks(repo);
    expect(found).toMatchObject([{ lease: undefined, stale: false }]);
    await expect(acquireLock(repo, 'exclusive')).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
    await age(key, LOCK_LEASE_MS + LOCK_CLOCK_SKEW_MS + 5000);
    const x = await acquireLock(repo, 'exclusive');
    expect(await lockKeys()).toEqual([x.key]);
    await x.release();
  });

  describe('a holder that is gone', () => {
    /** A pid that was a process of this space and is not any more: a child that has exited and been reaped. */
    const deadPid = (): number => {
      const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
      return Number(child.stdout);
    };
    /** Writes a lease as another process would, with `space` and `pid`, fresh (far from expiry). */
    const writeLease = async (space: string | undefined, pid: number, kind: 'shared' | 'exclusive' = 'exclusive'): Promise<string> => {
      const key = `locks/${randomBytes(16).toString('hex')}`;
      const t = Date.now();
      const lease: LockLease = {
        kind,
        createdAt: new Date(t).toISOString(),
        expiresAt: new Date(t + LOCK_LEASE_MS).toISOString(),
        host: hostname(),
        pid,
        command: kind === 'shared' ? 'push' : 'prune',
      };
      if (space !== undefined) lease.space = space;
      await repo.store.put(key, encodeLock(repo, key, lease), { ifNoneMatch: true });
      return key;
    };

    it('this process space is known here (Linux /proc), and a lease carries it', async () => {
      expect(processSpace()).toMatch(/^[0-9a-f]{16}$/);
      const held = await acquireLock(repo, 'shared', { command: 'push' });
      expect(held.current.space).toBe(processSpace());
      const [found] = await listLocks(repo);
      expect(found).toMatchObject({ key: held.key, stale: false, holderGone: false, lease: { space: processSpace() } });
      await held.release();
    });

    it('a shared lock of a dead pid of this process space is stale at once: the next taker is not refused, and an exclusive one deletes it', async () => {
      const gone = await writeLease(processSpace(), deadPid(), 'shared');
      expect(await listLocks(repo)).toEqual([expect.objectContaining({ key: gone, stale: true, holderGone: true })]);
      const x = await acquireLock(repo, 'exclusive', { command: 'prune' });
      expect(await lockKeys()).toEqual([x.key]);
      await x.release();
    });

    it('a lock of another process space, of no space, of a live pid, or an exclusive (prune) one of a dead pid stays live until its lease runs out', async () => {
      const dead = deadPid();
      const other = (processSpace() ?? '').replace(/^./, (c) => (c === '0' ? '1' : '0'));
      const keys = [
        await writeLease(other, dead, 'shared'),
        await writeLease(undefined, dead, 'shared'),
        await writeLease(processSpace(), process.ppid, 'shared'),
        await writeLease(processSpace(), dead, 'exclusive'), // a killed prune: its deletes sent may still land
      ];
      const found = await listLocks(repo);
      expect(found.map((l) => l.key).sort()).toEqual([...keys].sort());
      for (const l of found) expect(l).toMatchObject({ stale: false, holderGone: false });
      await expect(acquireLock(repo, 'shared', { command: 'push' })).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
    });

    it('over a store whose requests can outlive their process (S3, through a proxy), a dead holder keeps its shared lock until the lease runs out', async () => {
      const gone = await writeLease(processSpace(), deadPid(), 'shared');
      const file = repo.store;
      // The same objects seen as a network store sees them: no promise that a dead process's requests have all landed.
      const network: ObjectStore = { url: file.url, put: (k, b, o) => file.put(k, b, o), get: (k) => file.get(k), head: (k) => file.head(k), list: (p) => file.list(p), delete: (k) => file.delete(k) };
      const remote: LockableRepository = { ...repo, store: network };
      expect(await listLocks(remote)).toEqual([expect.objectContaining({ key: gone, stale: false, holderGone: false })]);
      await expect(acquireLock(remote, 'exclusive', { command: 'prune' })).rejects.toMatchObject({ code: 'REPOSITORY_LOCKED' });
      expect(await listLocks(repo)).toEqual([expect.objectContaining({ key: gone, stale: true, holderGone: true })]); // the local store: gone
    });

    it('a space that is not 16 hex digits makes the lease not valid', () => {
      const key = `locks/${randomBytes(16).toString('hex')}`;
      const t = Date.now();
      const bad = { kind: 'shared', createdAt: new Date(t).toISOString(), expiresAt: new Date(t + 1000).toISOString(), host: 'h', pid: 1, command: 'push', space: 'not-a-space' } as LockLease;
      expect(decodeLock(repo, key, encodeLock(repo, key, bad))).toBeUndefined();
    });
  });
});
