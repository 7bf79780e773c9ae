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
const heldLocks = new Set<{ release(): Promise<void> }>();
/** Writes of temporary files in flight (FileObjectStore.put): awaited on interruption, so none creates its file after the last removal. */
const writesInFlight = new Set<Promise<unknown>>();
let interrupted = false;

/**
 * Runs `write` (a put that writes a temporary file) unless the command is
 * being interrupted: then it never starts — its promise stays pending while
 * the process exits — so no temporary file appears after the cleanup.
 */
export async function trackedWrite<T>(write: () => Promise<T>): Promise<T> {
  if (interrupted) await new Promise<never>(() => undefined);
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

/** Registers a lock taken (RepositoryLock); returns the function that unregisters it once released. */
export function trackLock(lock: { release(): Promise<void> }): () => void {
  heldLocks.add(lock);
  return () => {
    heldLocks.delete(lock);
  };
}

/**
 * The asynchronous half of an interruption: no new temporary-file write
 * starts, those in flight settle, every lock still held is released — at
 * most `timeoutMs` in all (a store that does not answer must not keep an
 * interrupted command alive). Never throws: a lock not released lapses after
 * its lease. Call {@link removeTempFilesSync} before and after it.
 */
export async function quiesceAndReleaseLocks(timeoutMs = 3000): Promise<void> {
  interrupted = true;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
  const work = (async () => {
    await Promise.allSettled([...writesInFlight]);
    const releases = [...heldLocks].map((l) => l.release().catch(() => undefined));
    heldLocks.clear();
    await Promise.all(releases);
  })();
  await Promise.race([work, deadline]);
  clearTimeout(timer);
}
