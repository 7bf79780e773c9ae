/**
 * Removal of cowvol's temporary files when a command is interrupted
 * (README "Interrupting a command"). SIGINT, SIGTERM and SIGHUP run every
 * registered cleanup (synchronous: a signal may arrive at any await), print
 * one line on stderr and exit with the shell's convention, 128 + the signal
 * number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP) — or 9 (OUTCOME_UNKNOWN)
 * once the command's change is under way (noteCommitting). The volume itself needs
 * no cleanup: an interrupted command is recovered like a crash (the journal
 * replays on the next open).
 */
const SIGNAL_EXIT: ReadonlyArray<[NodeJS.Signals, number]> = [
  ['SIGINT', 130],
  ['SIGTERM', 143],
  ['SIGHUP', 129],
];

const cleanups = new Set<() => void>();
const asyncCleanups = new Set<() => Promise<string | undefined>>();
let installed = false;
/** The signal being handled, once one came: the process is on its way out. */
let interruptedBy: NodeJS.Signals | undefined;
/** The running command's change to the volume is under way: it may be made (noteCommitting). */
let committing = false;
/** Exit code of OUTCOME_UNKNOWN (exit-codes.ts; not imported: this module loads first, with no dependency). */
const OUTCOME_UNKNOWN_EXIT = 9;

/**
 * Marks the running command's change to the volume as under way: called
 * right before the call that commits it (a metadata change, a delete, a
 * restore, an import's final snapshot, a request to the server that does
 * one), since the commit is durable before that call returns. From then on
 * an interruption — or a failure to write the command's report (io.ts) —
 * exits 9, OUTCOME_UNKNOWN ("look before retrying"), never a code that
 * says the change was not made (README "Exit codes": any non-zero exit but
 * 9 means it was not).
 */
export function noteCommitting(): void {
  committing = true;
}

/** True once {@link noteCommitting} was called: the change may have been made. */
export function mayHaveCommitted(): boolean {
  return committing;
}

/** True once a signal began the exit: the command's own errors are not reported any more (it is being stopped). */
export function interrupting(): boolean {
  return interruptedBy !== undefined;
}
/** How long the asynchronous cleanups (a repository lock's release over the network) may take before the process exits anyway. */
export const ASYNC_CLEANUP_MS = 3000;

/** Installs the handlers (once per process). Called by every command at start. */
export function installSignalHandlers(): void {
  if (installed) return;
  installed = true;
  for (const [signal, exitCode] of SIGNAL_EXIT) {
    process.on(signal, () => {
      // A change under way is reported as such: exit 9, not 128 + n, which would say it was not made.
      const code = (): number => (committing ? OUTCOME_UNKNOWN_EXIT : exitCode);
      if (interruptedBy !== undefined) process.exit(code()); // a second signal, of any kind, does not wait for the cleanups
      interruptedBy = signal;
      runCleanups();
      const notes: string[] = [];
      const done = (): void => {
        // The command ran on while the asynchronous cleanups waited: what it wrote meanwhile goes too (each file is registered before it is created).
        runCleanups();
        const what = committing ? `error [OUTCOME_UNKNOWN]: interrupted by ${signal} once its change was under way (it may have been made: look before retrying)` : `interrupted by ${signal}`;
        process.stderr.write(`cowvol: ${what}; temporary files removed${notes.map((n) => `, ${n}`).join('')}\n`);
        process.exit(code());
      };
      if (asyncCleanups.size === 0) {
        done();
        return;
      }
      // Each cleanup bounds itself; the timer bounds them all, and keeps the process alive meanwhile.
      const timer = setTimeout(() => {
        notes.push('some cleanup did not finish in time');
        done();
      }, ASYNC_CLEANUP_MS);
      void Promise.allSettled([...asyncCleanups].map((c) => c())).then((outcomes) => {
        for (const o of outcomes) if (o.status === 'fulfilled' && o.value !== undefined) notes.push(o.value);
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
 * ones, for at most ASYNC_CLEANUP_MS in all; what it resolves with, if
 * anything, ends the "interrupted" line. Kept for the life of the process.
 */
export function onInterruptAsync(cleanup: () => Promise<string | undefined>): void {
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
