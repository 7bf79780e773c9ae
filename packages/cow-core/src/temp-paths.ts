/**
 * Temporary paths cow-core makes outside a volume — a read-only open's
 * private metadata copy (read-only.ts) — and how the host process removes
 * them when it is stopped by a signal before they are removed normally
 * (docs/ARCHITECTURE.md, "Read-only opens"). The library cannot catch a
 * signal for its host; the command line installs a tracker at start, and
 * its signal handler runs the removals synchronously (README
 * "Interrupting a command"). Without a tracker, nothing is tracked.
 */

/** Registers `path` (a file or folder to remove on a signal) and returns the function that unregisters it. */
export type TemporaryPathTracker = (path: string) => () => void;

let tracker: TemporaryPathTracker | undefined;

/** Installs (or, with undefined, removes) the host's tracker. */
export function setTemporaryPathTracker(next: TemporaryPathTracker | undefined): void {
  tracker = next;
}

/** Registers `path` with the host's tracker, before the path is created; returns its unregistration (a no-op without a tracker). */
export function trackTemporaryPath(path: string): () => void {
  return tracker ? tracker(path) : () => undefined;
}
