import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { assert, CowvolError, holderGone, processSpace, errorMessage, hasCode, isCowvolError, type CowvolErrorOptions } from '@cowvol/base';
import { isInterrupted, trackLock } from './interrupt-cleanup.js';
import { decodeLock, encodeLock, type LockKind, type LockLease, type LockSealing } from './lock-object.js';
import { LOCKS_PREFIX } from './object-keys.js';
import type { ObjectInfo, ObjectStore } from './object-store.js';

/** How long a lock lives without a renewal: 5 minutes; renewed every quarter of it. */
export const LOCK_LEASE_MS = 5 * 60_000;
/**
 * The margin beyond a lease before a lock is stale: a lock is stale once
 * the store's time of its last write is a lease and this much older than
 * the store's time of the taker's own lock (docs/ARCHITECTURE.md §17 "The
 * repository lock"): store latency and a holder's last slow renewal fit in it.
 */
export const LOCK_CLOCK_SKEW_MS = 60_000;

const LOCK_ID = /^[0-9a-f]{32}$/;

/** One lock found in a repository. `lease` is undefined for a lock object that does not open (damaged, or another key). */
export interface LockInfo {
  key: string;
  lease: LockLease | undefined;
  /** The store's time of its last write. */
  lastModified: Date;
  /** Expired (beyond the clock-skew margin), or its holder is gone. */
  stale: boolean;
  /** A shared lock whose holder ran in this process's space and is no longer a process (killed: nothing released the lock). */
  holderGone: boolean;
}

/** What a lock needs of a repository: its store, and the config and keys that seal its objects (a Repository has them). */
export interface LockableRepository extends LockSealing {
  readonly store: ObjectStore;
  /** Told when a lock could not be deleted at release (Repository.onWarning). */
  readonly onWarning?: ((message: string) => void) | undefined;
}

/** Options of acquireLock; `now` and `leaseMs` are for tests. */
export interface LockOptions {
  command?: string;
  leaseMs?: number;
  now?: () => number;
}

/**
 * `REPOSITORY_LOCKED`: another live lock of the repository conflicts with
 * the one asked for (an exclusive one with anything, a shared one with an
 * exclusive one). Nothing was changed. `details.locks` lists the holders.
 */
export class RepositoryLockedError extends CowvolError {
  constructor(message: string, options?: CowvolErrorOptions) {
    super('REPOSITORY_LOCKED', message, options);
  }
}

/**
 * A lock held on a repository (docs/ARCHITECTURE.md §17 "The repository
 * lock"). Renewed in the background every quarter of the lease; `assertHeld`
 * fails once the lease may have run out, so a holder never writes what a
 * pruner may no longer expect.
 */
export class RepositoryLock {
  private renewal: NodeJS.Timeout | undefined;
  private renewing: Promise<void> = Promise.resolve();
  private renewInFlight = false;
  private failure: unknown;
  private released = false;
  private readonly untrack: () => void;

  constructor(
    private readonly repo: LockableRepository,
    readonly key: string,
    private lease: LockLease,
    private readonly leaseMs: number,
    private readonly now: () => number,
    /** The stale locks an exclusive taker found and deleted (prune keeps what their holders may have uploaded). */
    readonly removedStale: readonly LockInfo[] = [],
  ) {
    this.renewal = setInterval(() => {
      // One renewal at a time: a put still in flight (a slow store, its retries) must not be overtaken, nor land after a release's delete.
      if (!this.renewInFlight) this.renewing = this.renew();
    }, leaseMs / 4);
    this.renewal.unref();
    this.untrack = trackLock(() => this.repo.store.delete(this.key)); // deleted by the command line's signal handler too (interrupt-cleanup.ts)
  }

  get kind(): LockKind {
    return this.lease.kind;
  }

  /** The lease as last written. */
  get current(): LockLease {
    return { ...this.lease };
  }

  /** Writes a new expiry (a plain put of the holder's own object: the one object of a repository that is replaced). */
  async renew(): Promise<void> {
    if (this.released) return;
    this.renewInFlight = true;
    try {
      this.assertHeld();
      const next = { ...this.lease, expiresAt: new Date(this.now() + this.leaseMs).toISOString() };
      await this.repo.store.put(this.key, encodeLock(this.repo, this.key, next));
      this.lease = next;
    } catch (err) {
      this.failure ??= err;
    } finally {
      this.renewInFlight = false;
    }
  }

  /**
   * @throws LOCK_LOST when the lease has less than a quarter of its time
   *   left (renewals failed), or after release
   */
  assertHeld(): void {
    const left = Date.parse(this.lease.expiresAt) - this.now();
    if (this.released || left < this.leaseMs / 4) {
      const why = this.released ? 'it was released' : `its lease ${left < 0 ? 'ran out' : 'is about to run out'} (renewals failed: ${errorText(this.failure)})`;
      throw new CowvolError('LOCK_LOST', `the ${this.lease.kind} lock ${this.key} of ${this.repo.store.url} is no longer held: ${why}`, {
        details: { lock: this.key, repository: this.repo.store.url },
      });
    }
  }

  /**
   * {@link assertHeld}, and the lock object is still in the store: a lock
   * deleted by someone else (by hand, or a prune that judged it stale) is
   * lost whatever its lease says. One `head`; for the write a pruner must
   * never miss (push's manifest).
   * @throws LOCK_LOST · STORE_UNAVAILABLE · STORE_ACCESS_DENIED
   */
  async confirmHeld(): Promise<void> {
    this.assertHeld();
    if ((await this.repo.store.head(this.key)) !== undefined) return;
    throw new CowvolError(
      'LOCK_LOST',
      `the ${this.lease.kind} lock ${this.key} of ${this.repo.store.url} is no longer held: its object is gone (deleted by hand, or by a prune that took it for stale)`,
      {
        details: { lock: this.key, repository: this.repo.store.url },
      },
    );
  }

  /**
   * Stops renewing and deletes the lock object. Idempotent. Never throws:
   * it runs after the command's work, whose outcome (done, or its own
   * error) a failed delete must not replace — the object then lapses with
   * its lease, and `repo.onWarning` says so.
   */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.renewal);
    this.renewal = undefined;
    // A renewal that began after an interruption never starts its put (interrupt-cleanup.ts): nothing to wait for.
    if (!isInterrupted()) await this.renewing;
    try {
      await this.repo.store.delete(this.key);
    } catch (err) {
      // Still tracked: an interruption's cleanup tries the delete again.
      this.repo.onWarning?.(
        `the ${this.lease.kind} lock ${this.key} of ${this.repo.store.url} could not be deleted (${errorText(err)}); it is stale once the store has not seen it written for its lease and ${String(LOCK_CLOCK_SKEW_MS / 1000)} s more (about ${String(Math.round((this.leaseMs + LOCK_CLOCK_SKEW_MS) / 60_000))} minutes), meanwhile ${this.lease.kind === 'exclusive' ? 'every other backup command' : 'prune'} is refused (REPOSITORY_LOCKED)`,
      );
      return;
    }
    this.untrack(); // only now: until the delete landed, an interruption's cleanup deletes it (again)
  }
}

/**
 * Takes a lock on `repo` (docs/ARCHITECTURE.md §17 "The repository lock"):
 * writes `locks/<random id>` with a conditional put, then lists `locks/`;
 * when another live lock conflicts — any other for `exclusive`, an exclusive
 * one for `shared` — deletes its own and refuses. Both sides write before
 * they look, so of two conflicting takers at least one sees the other.
 * Stale locks (expired over LOCK_CLOCK_SKEW_MS ago, or not opening and not
 * written for a lease and that margin, or whose holder ran in this process
 * space and is gone: process-space.ts) are ignored, and an exclusive taker
 * deletes them.
 *
 * @throws REPOSITORY_LOCKED (details.locks) · STORE_UNAVAILABLE · STORE_ACCESS_DENIED
 */
export async function acquireLock(repo: LockableRepository, kind: LockKind, options: LockOptions = {}): Promise<RepositoryLock> {
  const now = options.now ?? Date.now;
  const leaseMs = options.leaseMs ?? LOCK_LEASE_MS;
  assert(leaseMs >= 1000, 'a lease is at least a second');
  const key = `${LOCKS_PREFIX}${randomBytes(16).toString('hex')}`;
  const t = now();
  const lease: LockLease = {
    kind,
    createdAt: new Date(t).toISOString(),
    expiresAt: new Date(t + leaseMs).toISOString(),
    host: hostname(),
    pid: process.pid,
    command: options.command ?? 'cowvol',
  };
  const space = processSpace();
  if (space !== undefined) lease.space = space;
  // Known to the interruption cleanup from before its put: a signal between the put and the RepositoryLock deletes it too.
  const untrackPending = trackLock(() => repo.store.delete(key));
  try {
    await repo.store.put(key, encodeLock(repo, key, lease), { ifNoneMatch: true });
  } catch (err) {
    untrackPending();
    throw err;
  }
  let removedStale: LockInfo[] = [];
  try {
    const others = (await listLocks(repo, { now, leaseMs, ownKey: key })).filter((l) => l.key !== key);
    const conflicts = others.filter((l) => !l.stale && (kind === 'exclusive' || l.lease?.kind !== 'shared'));
    if (conflicts.length > 0) {
      const who = conflicts.map(describeLock).join('; ');
      throw new RepositoryLockedError(`${repo.store.url} is locked: ${who}`, { details: { repository: repo.store.url, locks: conflicts.map((l) => ({ key: l.key, ...l.lease })) } });
    }
    if (kind === 'exclusive') {
      removedStale = others.filter((o) => o.stale);
      for (const l of removedStale) await repo.store.delete(l.key);
    }
  } catch (err) {
    await repo.store.delete(key).catch(() => undefined);
    throw err;
  } finally {
    untrackPending();
  }
  return new RepositoryLock(repo, key, lease, leaseMs, now, removedStale);
}

/**
 * The shared lock of a command that only reads the repository (`verify`,
 * `restore`; docs/ARCHITECTURE.md §17 "The repository lock"): taken where
 * the repository can be written. Where it cannot — a read-only mount or
 * copy, read-only credentials, a full disk (IO_ERROR, STORE_ACCESS_DENIED,
 * NO_SPACE when the lock object is written) — the command runs without it,
 * and `onUnlocked` says why — after a look at `locks/`: a live exclusive
 * lock (a prune running) is REPOSITORY_LOCKED as ever. A prune by someone
 * who can write may still start meanwhile and overlap it (a restore then fails with BACKUP_CORRUPT, naming the chunk;
 * nothing wrong is ever restored: chunks are authenticated).
 *
 * @throws REPOSITORY_LOCKED (an exclusive lock is live: a prune runs) · STORE_UNAVAILABLE
 */
export async function acquireReaderLock(repo: LockableRepository, command: string, onUnlocked: (why: string) => void, options: LockOptions = {}): Promise<RepositoryLock | undefined> {
  try {
    return await acquireLock(repo, 'shared', { command, ...options });
  } catch (err) {
    if (!hasCode(err, 'IO_ERROR', 'STORE_ACCESS_DENIED', 'NO_SPACE')) throw err;
    // Unable to write, but able to look: a prune running now is still refused, as a lock would be.
    const pruning = (await listLocks(repo, options)).filter((l) => !l.stale && l.lease?.kind !== 'shared');
    if (pruning.length > 0) {
      throw new RepositoryLockedError(`${repo.store.url} is locked: ${pruning.map(describeLock).join('; ')}`, {
        details: { repository: repo.store.url, locks: pruning.map((l) => ({ key: l.key, ...l.lease })) },
      });
    }
    onUnlocked(`${command} runs without a lock of ${repo.store.url}, which it cannot write (${errorMessage(err)}); a prune meanwhile would make it fail`);
    return undefined;
  }
}

/**
 * Every lock object of `repo`, decoded, with whether it is stale.
 *
 * @throws STORE_UNAVAILABLE · STORE_ACCESS_DENIED
 */
export async function listLocks(repo: LockableRepository, options: { now?: () => number; leaseMs?: number; ownKey?: string } = {}): Promise<LockInfo[]> {
  const now = (options.now ?? Date.now)();
  const leaseMs = options.leaseMs ?? LOCK_LEASE_MS;
  const listed: ObjectInfo[] = [];
  for await (const info of repo.store.list(LOCKS_PREFIX)) {
    if (LOCK_ID.test(info.key.slice(LOCKS_PREFIX.length))) listed.push(info);
  }
  // The store's clock, read off the caller's own lock object just written: every holder renews by a put, so a lock whose store time
  // is a lease (and the skew margin) older than that has not been renewed — whatever the holder's or this machine's clock says.
  const own = listed.find((info) => info.key === options.ownKey);
  // A caller whose own lock is not in the listing yet (a store slow to list what it just wrote) judges nothing stale by time.
  if (options.ownKey !== undefined && own === undefined) return decodeAll(repo, listed, () => false);
  const storeNowMs = own?.lastModified.getTime();
  return decodeAll(repo, listed, (info, lease) => {
    const unrenewed = (nowMs: number): boolean => info.lastModified.getTime() + leaseMs + LOCK_CLOCK_SKEW_MS < nowMs;
    // Without the store's time (no lock of the caller's own: a dry run, a reader that cannot write), stale only when this machine's
    // clock finds both the lease run out and no write for a lease: such a caller deletes nothing on the strength of it.
    return storeNowMs !== undefined ? unrenewed(storeNowMs) : unrenewed(now) && (lease === undefined || Date.parse(lease.expiresAt) + LOCK_CLOCK_SKEW_MS < now);
  });
}

/** Reads and decodes each listed lock object; `expired` judges it by time; a killed holder of this process space makes it stale too. */
async function decodeAll(repo: LockableRepository, listed: readonly ObjectInfo[], expired: (info: ObjectInfo, lease: LockLease | undefined) => boolean): Promise<LockInfo[]> {
  const out: LockInfo[] = [];
  for (const info of listed) {
    let body: Buffer;
    try {
      body = await repo.store.get(info.key);
    } catch (err) {
      if (hasCode(err, 'OBJECT_NOT_FOUND')) continue; // released meanwhile
      throw err;
    }
    const lease = decodeLock(repo, info.key, body);
    // A holder killed in this process space (SIGKILL, a crash) released nothing: its shared lock is stale now, not once its lease
    // runs out — where its requests cannot land after its death (a local store). Not an exclusive one (a killed prune's deletes),
    // and not over a network: a push's manifest PUT held by a proxy may land after prune deleted the old chunks it names.
    const gone = repo.store.writesEndWithProcess === true && lease?.kind === 'shared' && holderGone(lease.space, lease.pid);
    out.push({ key: info.key, lease, lastModified: info.lastModified, stale: expired(info, lease) || gone, holderGone: gone });
  }
  return out;
}

/** "shared lock of push, pid 12 on host h, taken 2026-…, expires …", for messages. */
export function describeLock(l: LockInfo): string {
  if (l.lease === undefined) return `${l.key}: a lock object that does not open (written ${l.lastModified.toISOString()})`;
  const s = l.lease;
  return `${s.kind} lock of ${s.command} (pid ${String(s.pid)} on ${s.host}, taken ${s.createdAt}, expires ${s.expiresAt}${l.holderGone ? ', stale: its process is gone' : l.stale ? ', stale' : ''})`;
}

function errorText(err: unknown): string {
  if (err === undefined) return 'none recorded';
  return isCowvolError(err) ? `${err.code}: ${err.message}` : errorMessage(err);
}
