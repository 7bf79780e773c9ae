import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';

/**
 * Where a process id means one process (docs/ARCHITECTURE.md §17 "The
 * repository lock"): this boot of this machine, in this pid namespace.
 * Two processes that share a process space can tell whether the other's
 * pid is still a process (`kill(pid, 0)`); two in different containers
 * that share a host name, or on two machines, cannot. A lock's lease and a
 * restore's spool name carry it, so a holder that was killed (SIGKILL, a
 * crash: nothing released its lock or removed its spool) is known to be
 * gone at once by the next command in the same space, instead of after
 * its lease runs out.
 */

/** Hex digits of a process space tag: 64 bits of SHA-256, enough to never confuse two spaces by chance. */
export const PROCESS_SPACE_HEX = 16;
const PROCESS_SPACE = new RegExp(`^[0-9a-f]{${String(PROCESS_SPACE_HEX)}}$`);

let cached: string | null | undefined;

/**
 * This process's space: the first {@link PROCESS_SPACE_HEX} hex digits of
 * SHA-256 over the kernel's boot id (`/proc/sys/kernel/random/boot_id`),
 * the pid namespace (`/proc/self/ns/pid`, e.g. `pid:[4026531836]`) and the
 * host name, NUL-separated. Undefined where either /proc file cannot be
 * read (not Linux, /proc not mounted): no liveness is ever inferred there.
 */
export function processSpace(): string | undefined {
  if (cached === undefined) {
    try {
      const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
      const ns = readlinkSync('/proc/self/ns/pid');
      cached = boot === '' ? null : createHash('sha256').update(`${boot}\0${ns}\0${hostname()}`).digest('hex').slice(0, PROCESS_SPACE_HEX);
    } catch {
      cached = null;
    }
  }
  return cached ?? undefined;
}

/** Whether `x` has the form of a process space tag. */
export function isProcessSpace(x: unknown): x is string {
  return typeof x === 'string' && PROCESS_SPACE.test(x);
}

/**
 * Whether `pid` may be a live process: false only when `kill(pid, 0)`
 * fails with ESRCH (no such process). EPERM (another user's), EACCES (a
 * security module such as SELinux or AppArmor denying the probe) or any
 * other answer counts as alive: a live holder must never be judged gone.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * True only when `space` is this process's space and `pid` (not this
 * process) is no process in it: the holder that wrote them is gone. False
 * whenever that cannot be known — another space, no space, a pid that is
 * alive (maybe reused by another process since: then the caller waits, as
 * it would without this check).
 */
export function holderGone(space: string | undefined, pid: number): boolean {
  const here = processSpace();
  if (here === undefined || space !== here) return false;
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return false;
  return !processAlive(pid);
}
