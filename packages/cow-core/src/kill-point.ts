/**
 * Crash seam of the multi-step operations (create, import), compiled into
 * production so that the steps a test kills at are the ones users run
 * (docs/ARCHITECTURE.md §15.6). With `COWVOL_KILL_AT=<step>` or
 * `<step>#<n>` in the environment, the process SIGKILLs itself the first
 * (or n-th) time it reaches `<step>` — a kill at that boundary, with no
 * cleanup, no `finally`, no flush. With `COWVOL_KILL_SIGNAL=SIGSTOP` it
 * stops itself there instead, so that a test can send it another signal
 * (SIGTERM, SIGINT) at that boundary and then SIGCONT: the command's own
 * interrupt handling runs (README "Interrupting a command"). Without the
 * variables it costs one comparison per step.
 */
const target = parseTarget(process.env.COWVOL_KILL_AT);
const signal: NodeJS.Signals = process.env.COWVOL_KILL_SIGNAL === 'SIGSTOP' ? 'SIGSTOP' : 'SIGKILL';
const arrivals = new Map<string, number>();

function parseTarget(spec: string | undefined): { step: string; nth: number } | undefined {
  if (!spec) return undefined;
  const [step, nth] = spec.split('#');
  const n = nth === undefined ? 1 : Number(nth);
  return step && Number.isSafeInteger(n) && n >= 1 ? { step, nth: n } : undefined;
}

/** Marks the boundary named `step` (e.g. `import:extent`); see the module comment. */
export function killPoint(step: string): void {
  if (target?.step !== step) return;
  const n = (arrivals.get(step) ?? 0) + 1;
  arrivals.set(step, n);
  if (n === target.nth) process.kill(process.pid, signal);
}
