/**
 * Removal of cowvol's temporary files when a command is interrupted
 * (README "Interrupting a command"). SIGINT, SIGTERM and SIGHUP run every
 * registered cleanup (synchronous: a signal may arrive at any await), print
 * one line on stderr and exit with the shell's convention, 128 + the signal
 * number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP). The volume itself needs
 * no cleanup: an interrupted command is recovered like a crash (the journal
 * replays on the next open).
 */
const SIGNAL_EXIT: ReadonlyArray<[NodeJS.Signals, number]> = [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
];

const cleanups = new Set<() => void>();
const asyncCleanups = new Set<() => Promise<void>>();
let installed = false;
/** How long the asynchronous cleanups (a repository lock's release over the network) may take before the process exits anyway. */
export const ASYNC_CLEANUP_MS = 3000;

/** Installs the handlers (once per process). Called by every command at start. */
export function installSignalHandlers(): void {
  if (installed) return;
  installed = true;
  for (const [signal, exitCode] of SIGNAL_EXIT) {
    let interrupted = false;
    process.on(signal, () => {
      if (interrupted) process.exit(exitCode); // a second signal does not wait for the cleanups
      interrupted = true;
      runCleanups();
      const done = (): void => {
        // The command ran on while the asynchronous cleanups waited: what it wrote meanwhile goes too (each file is registered before it is created).
        runCleanups();
        process.stderr.write(`cowvol: interrupted by ${signal}; temporary files removed${asyncCleanups.size > 0 ? ', repository locks released' : ''}\n`);
        process.exit(exitCode);
      };
      if (asyncCleanups.size === 0) {
        done();
        return;
      }
      // Each cleanup bounds itself; the timer bounds them all, and keeps the process alive meanwhile.
      const timer = setTimeout(done, ASYNC_CLEANUP_MS);
      void Promise.allSettled([...asyncCleanups].map((c) => c())).then(() => {
        clearTimeout(timer);
        done();
      });
    });
  }
}

/**
 * Registers `cleanup` (synchronous, must not throw on a missing file) to run
 * if the process is interrupted by a signal; returns the function that
 * unregisters it once the file is gone or renamed into place.
 */
export function onInterrupt(cleanup: () => void): () => void {
  cleanups.add(cleanup);
  return () => {
    cleanups.delete(cleanup);
  };
}

/**
 * Registers an asynchronous cleanup (a backup command's repository locks:
 * deleting an object of the store) run on a signal after the synchronous
 * ones, for at most ASYNC_CLEANUP_MS in all. Kept for the life of the process.
 */
export function onInterruptAsync(cleanup: () => Promise<void>): void {
  asyncCleanups.add(cleanup);
}

function runCleanups(): void {
  for (const cleanup of cleanups) {
    try {
      cleanup();
    } catch {
      // best effort: the next cleanup still runs
    }
  }
}
