import { createServer, type Server } from 'node:net';
import { readFile, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { IoError } from '@cowvol/base';
import { VolumeBusyError, VolumeNotFoundError } from './errors.js';
import { errnoCode, errorMessage } from './files.js';

/** The identity of a volume file: its device and inode numbers (exact, as bigints). */
export interface FileIdentity {
  dev: bigint;
  ino: bigint;
}

/**
 * Size of `sun_path` on Linux. Every name is padded with NULs to this many
 * bytes so the socket address is the same whether Node.js binds the whole
 * `sun_path` (Node 20) or exactly the string's length (later versions).
 */
const SUN_PATH_BYTES = 108;
/**
 * How long a refused process keeps looking for the holder's pid (the holder
 * binds its pid name just after the lock, and removes it just before the
 * release), retrying the lock meanwhile, before it reports VOLUME_BUSY
 * without a pid.
 */
const HOLDER_LOOKUP_MS = 2000;
const HOLDER_RETRY_MS = 10;

/** The abstract socket name that is the lock of the file `id` (docs/ARCHITECTURE.md §9 "The owner lock"). */
export function lockSocketName(id: FileIdentity): string {
  return `\0cowvol-lock-${id.dev}-${id.ino}`.padEnd(SUN_PATH_BYTES, '\0');
}

/** The abstract socket name that says which process holds the lock of `id`. */
function holderSocketName(id: FileIdentity, pid: number): string {
  return `\0cowvol-holder-${id.dev}-${id.ino}-${pid}`.padEnd(SUN_PATH_BYTES, '\0');
}

/**
 * The identity of the file at `path`, following symbolic links (the file a
 * volume open reads and writes).
 * @throws VolumeNotFoundError `VOLUME_NOT_FOUND` when there is no such file; IoError `IO_ERROR` otherwise.
 */
export async function fileIdentity(path: string): Promise<FileIdentity> {
  const st = await stat(path, { bigint: true }).catch((err: unknown) => {
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new VolumeNotFoundError(path, { cause: err });
    throw new IoError(`cannot stat ${path}: ${errorMessage(err)}`, { cause: err, details: { path } });
  });
  return { dev: st.dev, ino: st.ino };
}

/**
 * One process at a time owns a volume (docs/ARCHITECTURE.md §9 "The owner lock").
 * The lock is a listening unix socket in the Linux abstract namespace named
 * after the volume file's device and inode: binding a name that is bound
 * fails (EADDRINUSE), and the kernel unbinds it when the socket is closed,
 * which it does itself when the holder dies, however it dies. It is never
 * handed to another process while the holder lives (stopped, swapped out or
 * busy), needs no file write (full disks, read-only mounts), and every name
 * of the file (symlink, hard link, bind mount) maps to the same lock. The
 * holder also binds `cowvol-holder-<dev>-<ino>-<pid>`, which a refused
 * process finds in `/proc/net/unix` to name the holder.
 *
 * Linux only (abstract sockets); local to one host and one network namespace.
 */
export class OwnerLock {
  private constructor(
    private readonly lock: Server,
    private readonly holder: Server,
  ) {}

  /**
   * Takes the lock of the file `id` (reached as `volumePath`, for messages).
   * @throws VolumeBusyError `VOLUME_BUSY` when another process (or another
   *   open in this process) holds it; `details.pid` names the holder when it
   *   could be found. IoError `IO_ERROR` when the platform has no abstract
   *   unix sockets (not Linux) or the socket cannot be made.
   */
  static async acquire(volumePath: string, id: FileIdentity): Promise<OwnerLock> {
    if (process.platform !== 'linux') {
      throw new IoError(`cannot lock ${volumePath}: the owner lock needs Linux (abstract unix sockets), this is ${process.platform}`, { details: { path: volumePath } });
    }
    const deadline = Date.now() + HOLDER_LOOKUP_MS;
    for (;;) {
      const lock = await listen(volumePath, lockSocketName(id));
      if (lock !== undefined) {
        const holder = await listen(volumePath, holderSocketName(id, process.pid)).catch(async (err: unknown) => {
          await closeServer(lock);
          throw err;
        });
        if (holder === undefined) {
          await closeServer(lock);
          throw new IoError(`cannot lock ${volumePath}: the holder name of process ${process.pid} is already bound`, { details: { path: volumePath } });
        }
        return new OwnerLock(lock, holder);
      }
      const pid = await findHolderPid(id);
      if (pid !== undefined || Date.now() >= deadline) throw new VolumeBusyError(volumePath, pid);
      // Between the holder's two binds, or its release: look again (and retry the lock).
      await sleep(HOLDER_RETRY_MS);
    }
  }

  /** Releases the lock (the holder name first, so it never names a process that no longer holds). Idempotent. */
  async unlock(): Promise<void> {
    await closeServer(this.holder);
    await closeServer(this.lock);
  }
}

/**
 * Listens on the abstract socket `name`. Resolves with the server (unref'd:
 * it never keeps the process alive), or undefined when the name is bound.
 * @throws IoError `IO_ERROR` on any other failure.
 */
function listen(volumePath: string, name: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    // Nobody needs to talk to the holder: a connection is closed at once.
    const server = createServer((socket) => socket.destroy());
    const onError = (err: NodeJS.ErrnoException): void => {
      if (err.code === 'EADDRINUSE') resolve(undefined);
      else reject(new IoError(`cannot lock ${volumePath}: ${err.message}`, { cause: err, details: { path: volumePath } }));
    };
    server.once('error', onError);
    server.listen(name, () => {
      server.off('error', onError);
      // A listening socket reports nothing the lock depends on; keep errors from crashing the process.
      server.on('error', () => undefined);
      server.unref();
      resolve(server);
    });
  });
}

function closeServer(server: Server): Promise<void> {
  if (!server.listening) return Promise.resolve();
  return new Promise((resolve) => server.close(() => resolve()));
}

/**
 * The pid in the holder name of `id`, from `/proc/net/unix` (abstract names
 * are shown there with `@` for each NUL). Undefined when there is not
 * exactly one such name (none yet, none any more, or unreadable).
 */
async function findHolderPid(id: FileIdentity): Promise<number | undefined> {
  const table = await readFile('/proc/net/unix', 'latin1').catch(() => '');
  const prefix = `@cowvol-holder-${id.dev}-${id.ino}-`;
  const pids = new Set<number>();
  for (const line of table.split('\n')) {
    const at = line.indexOf(prefix);
    if (at < 0) continue;
    const m = /^(\d+)@*$/.exec(line.slice(at + prefix.length).trimEnd());
    if (m) pids.add(Number(m[1]));
  }
  return pids.size === 1 ? [...pids][0] : undefined;
}
