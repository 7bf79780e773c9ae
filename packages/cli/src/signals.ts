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
let installed = false;

/** Installs the handlers (once per process). Called by every command at start. */
export function installSignalHandlers(): void {
  if (installed) return;
  installed = true;
  for (const [signal, exitCode] of SIGNAL_EXIT) {
    process.on(signal, () => {
      runCleanups();
      process.stderr.write(`cowvol: interrupted by ${signal}; temporary files removed\n`);
      process.exit(exitCode);
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

function runCleanups(): void {
  for (const cleanup of cleanups) {
    try {
      cleanup();
    } catch {
      // best effort: the next cleanup still runs
    }
  }
  cleanups.clear();
}
