import { AsyncLocalStorage } from 'node:async_hooks';
import { rmSync } from 'node:fs';

/**
 * What an interrupted backup command leaves to undo (README "Interrupting a
 * command"): the temporary files it is writing (a restore's spool, a file
 * repository's objects not yet renamed into place) and the repository locks
 * it holds. The package does not handle signals itself: the command line's
 * SIGINT/SIGTERM/SIGHUP handler calls {@link removeTempFilesSync}, then
 * {@link quiesceAndReleaseLocks}, then {@link removeTempFilesSync} again
 * before it exits. A SIGKILL leaves both: a spool
 * is removed by the next restore to that target once its process is gone,
 * a lock lapses after its lease (§17, "The repository lock").
 */
const tempFiles = new Set<string>();
/** The delete of each lock object this process put and has not deleted yet (registered before the put, dropped once the delete landed). */
const heldLocks = new Set<() => Promise<void>>();
/** Store mutations in flight (puts and deletes of both stores): awaited on interruption, before any lock is released. */
const writesInFlight = new Set<Promise<unknown>>();
let interrupted = false;
/** Marks the cleanup's own mutations (the locks' deletes), which pass the gate of {@link trackedWrite}. */
const cleanupContext = new AsyncLocalStorage<true>();

/** True once an interruption began: no new store mutation starts but the cleanup's. */
export function isInterrupted(): boolean {
  return interrupted;
}

/**
 * Runs `write` (a put or delete of an object store) unless the command is
 * being interrupted: then it never starts — its promise stays pending while
 * the process exits — so no temporary file appears after the cleanup, and
 * no delete of a prune lands after its lock is released.
 */
export async function trackedWrite<T>(write: () => Promise<T>): Promise<T> {
  if (interrupted && cleanupContext.getStore() !== true) await new Promise<never>(() => undefined);
  const running = write();
  writesInFlight.add(running);
  try {
    return await running;
  } finally {
    writesInFlight.delete(running);
  }
}

/** Registers `path` (absolute) for removal on interruption; returns the function that unregisters it once the file is gone or renamed into place. */
export function trackTempFile(path: string): () => void {
  tempFiles.add(path);
  return () => {
    tempFiles.delete(path);
  };
}

/**
 * Removes every registered temporary file (synchronous: a signal may come at
 * any await); a missing one is fine. The paths stay registered until their
 * writers unregister them: a write still in flight may create its file
 * again, and a second call (the signal handler calls it again just before
 * the process exits) removes it then.
 */
export function removeTempFilesSync(): void {
  for (const path of tempFiles) rmSync(path, { force: true });
}

/**
 * Registers the delete of a lock object (`deleteLock`: the store's delete of
 * its key), from before the object is put; returns the function that
 * unregisters it, to call once that delete has landed.
 */
export function trackLock(deleteLock: () => Promise<void>): () => void {
  heldLocks.add(deleteLock);
  return () => {
    heldLocks.delete(deleteLock);
  };
}

/**
 * The asynchronous half of an interruption: no new store mutation starts,
 * those in flight settle, then every lock still held is released (not when
 * the mutations did not settle in time: then the locks lapse) — at most
 * `timeoutMs` in all (a store that does not answer must not keep an
 * interrupted command alive). Never throws: a lock not released lapses after
 * its lease. Call {@link removeTempFilesSync} before and after it.
 */
export async function quiesceAndReleaseLocks(timeoutMs = 3000): Promise<'none' | 'released' | 'left'> {
  interrupted = true;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
  try {
    // Every mutation already sent must have landed before a lock goes: a prune's delete landing after its
    // lock is released could remove a chunk a push, seeing it there, has just named in a manifest.
    const settled = await Promise.race([Promise.allSettled([...writesInFlight]).then(() => true), deadline]);
    // Read after the wait: a lock the command itself released meanwhile stays here until its delete landed
    // (which, begun after the interruption, never starts): deleting it again is harmless.
    const locks = [...heldLocks];
    if (locks.length === 0) return 'none';
    if (!settled) return 'left'; // the locks stay, to lapse with their leases
    const deletes = locks.map((deleteLock) =>
      cleanupContext
        .run(true, deleteLock)
        .then(() => heldLocks.delete(deleteLock))
        .catch(() => undefined),
    );
    const done = await Promise.race([Promise.all(deletes).then(() => true), deadline]);
    return done && heldLocks.size === 0 ? 'released' : 'left';
  } finally {
    clearTimeout(timer);
  }
}
