import { constants, fstatSync, rmSync, type BigIntStats } from 'node:fs';
import { lstat, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { IoError, NoSpaceError, processAlive, type CowvolError } from '@cowvol/base';
import { exitCodeFor } from './exit-codes.js';
import { userPathError } from './os-errors.js';
import { assertNotProtected, checkOutputPath, protectedFilesOf, type ProtectedFiles } from './output-guard.js';
import { mayHaveCommitted, onInterrupt } from './signals.js';

import { STDIO_PATH, STREAM_CHUNK_BYTES } from './input.js';

export { InputNotFoundError } from './os-errors.js';
export { openInput, spoolInput, STREAM_CHUNK_BYTES, type SizedInput } from './input.js';

/** A destination for data: a file or stdout; honours back-pressure. */
export interface Sink {
  /** True once the process reading stdout closed the pipe: further data is dropped. */
  readonly closedByReader: boolean;
  /** @throws NO_SPACE, IO_ERROR */
  write(data: Buffer): Promise<void>;
  close(): Promise<void>;
}

/** stdout as a {@link Sink}. */
export interface StdoutSink extends Sink {
  /** Resolves once everything written so far left the process (or failed: then `closedByReader`, or `write` and `close` throw). */
  drained(): Promise<void>;
}

// stdout is watched for the whole process: a reader that stops early
// (`cowvol read vol | head`) closes the pipe (EPIPE): like cat, cowvol stops
// writing quietly and keeps its exit code. Any other failure (ENOSPC on
// `> /dev/full`, EIO) is an error: NO_SPACE or IO_ERROR, exit 7 (README
// "Exit codes"), never an uncaught exception.
let stdoutWatched = false;
let stdoutFailure: NodeJS.ErrnoException | undefined;
let stdoutFailureReported = false;
let stdoutClosedByReader = false;
const stdoutWaiters = new Set<() => void>();

function stdoutError(err: NodeJS.ErrnoException): CowvolError {
  const details = { path: '-', role: 'output', errno: err.code };
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') return new NoSpaceError(`no space left writing to stdout (${err.code})`, { cause: err, details });
  return new IoError(`cannot write to stdout: ${err.message}`, { cause: err, details });
}

/** Installs the process-wide stdout error handling described above (once per process). */
export function watchStdout(): void {
  if (stdoutWatched) return;
  stdoutWatched = true;
  // oclif's own listener rethrows every error but EPIPE, which ends the
  // process with a stack trace; this one replaces it.
  process.stdout.removeAllListeners('error');
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') stdoutClosedByReader = true;
    else stdoutFailure ??= err;
    for (const wake of stdoutWaiters) wake();
  });
  // stderr that fails (2>/dev/full) has nowhere to report to: ignored, the exit code still tells.
  process.stderr.on('error', () => undefined);
  process.on('exit', () => {
    // A failure no command reported (its say() line, its --json document).
    if (stdoutFailure === undefined || stdoutFailureReported || (process.exitCode !== undefined && process.exitCode !== 0)) return;
    const err = stdoutError(stdoutFailure);
    if (mayHaveCommitted()) {
      // The command ran to the end, its change made (or found already made); only its report is lost: 9 says "look before
      // retrying", where 7 would say the change was not made.
      process.stderr.write(`cowvol: error [OUTCOME_UNKNOWN]: the command ran to the end, but its report could not be written (${err.code}: ${err.message}); look before retrying\n`);
      process.exitCode = exitCodeFor('OUTCOME_UNKNOWN');
      return;
    }
    process.stderr.write(`cowvol: error [${err.code}]: ${err.message}\n`);
    process.exitCode = exitCodeFor(err.code);
  });
}

/**
 * Refuses, before a volume is opened, a stdout that is a regular file of
 * `volumePath` or its sidecar (`cowvol info vol.img 1<>vol.img.cowvol/store`
 * would write the report over the store's header): every command's stdout
 * is an output (README "Outputs never touch the volume"). A pipe or a
 * terminal costs one fstat; only a regular file is compared, by device and
 * inode, with the volume's files.
 * @throws INVALID_ARGUMENT
 */
export async function assertStdoutNotVolume(volumePath: string): Promise<void> {
  const st = stdoutStat();
  if (st?.isFile()) assertStdoutNotProtected(st, await protectedFilesOf(volumePath));
}

/** stdout's status (device, inode, type), or undefined when stdout is closed: nothing reaches the volume through it then. */
function stdoutStat(): BigIntStats | undefined {
  try {
    return fstatSync(1, { bigint: true });
  } catch {
    return undefined;
  }
}

/** Refuses stdout when it is a file of `guard` (the volume or its sidecar), as a named output is refused. @throws INVALID_ARGUMENT */
function assertStdoutNotProtected(st: BigIntStats, guard: ProtectedFiles): void {
  assertNotProtected('- (stdout)', st, guard);
}

/** stdout as a sink (see watchStdout); `write` and `close` throw NO_SPACE or IO_ERROR once stdout has failed. @throws INVALID_ARGUMENT when stdout is the volume or a file of its sidecar (`guard`) */
export function openStdoutSink(guard: ProtectedFiles): StdoutSink {
  // Checked like a named output: a shell redirect onto the volume or a sidecar file (`1<>vol.img`) is refused before anything is written.
  const st = stdoutStat();
  if (st !== undefined) assertStdoutNotProtected(st, guard);
  watchStdout();
  const check = (): void => {
    if (stdoutFailure) {
      stdoutFailureReported = true;
      throw stdoutError(stdoutFailure);
    }
  };
  return {
    get closedByReader() {
      return stdoutClosedByReader;
    },
    async write(data) {
      check();
      if (stdoutClosedByReader) return;
      if (!process.stdout.write(data)) {
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            stdoutWaiters.delete(wake);
            process.stdout.off('drain', wake);
            resolve();
          };
          stdoutWaiters.add(wake);
          process.stdout.once('drain', wake);
        });
      }
      check();
    },
    async drained() {
      if (stdoutClosedByReader || stdoutFailure) return;
      // Writes leave in order: the callback of an empty one runs once those before it are written (or failed).
      await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
    },
    async close() {
      check();
    },
  };
}

/** Writes all of `data` at the handle's current position (files, FIFOs and devices alike). */
async function writeAll(handle: FileHandle, data: Buffer, output: string): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, null).catch((err: unknown) => {
      throw userPathError(err, output, 'output');
    });
    done += bytesWritten;
  }
}

/**
 * A user-named output file (README "Paths given to --input and --output"),
 * created if missing. It is opened without truncation, checked by identity
 * against the volume and its sidecar, and only then truncated (a regular
 * file; a FIFO or a device such as /dev/null is written as it is).
 * @throws INVALID_ARGUMENT (the volume or its sidecar, a folder, a missing folder), IO_ERROR, NO_SPACE
 */
export async function openFileSink(output: string, guard: ProtectedFiles): Promise<Sink> {
  const target = await checkOutputPath(output, guard);
  const handle = await open(target, constants.O_WRONLY | constants.O_CREAT, await outputMode(guard)).catch((err: unknown) => {
    throw userPathError(err, output, 'output');
  });
  try {
    const st = await handle.stat({ bigint: true });
    assertNotProtected(output, st, guard);
    if (st.isFile()) await handle.truncate(0);
  } catch (err) {
    await handle.close();
    throw userPathError(err, output, 'output');
  }
  return {
    closedByReader: false,
    write: (data) => writeAll(handle, data, output),
    async close() {
      await handle.close().catch((err: unknown) => {
        throw userPathError(err, output, 'output');
      });
    },
  };
}

/**
 * stdout when `output` is undefined or `-` (as `snapshot export --output -`;
 * a file named `-` is `./-`), else openFileSink.
 * @throws INVALID_ARGUMENT (stdout or the output is the volume or a file of its sidecar), IO_ERROR
 */
export async function openSink(output: string | undefined, guard: ProtectedFiles): Promise<Sink> {
  return output === undefined || output === STDIO_PATH ? openStdoutSink(guard) : openFileSink(output, guard);
}

/**
 * Streams `lengthBytes` from `read(offset, length)` to the sink in bounded
 * chunks (a whole snapshot is never held in memory).
 */
export async function copyOut(
  read: (offsetBytes: number, lengthBytes: number) => Promise<Buffer>,
  offsetBytes: number,
  lengthBytes: number,
  sink: Sink,
  onProgress?: (doneBytes: number, totalBytes: number) => void,
): Promise<void> {
  let pos = 0;
  while (pos < lengthBytes) {
    const n = Math.min(STREAM_CHUNK_BYTES, lengthBytes - pos);
    if (sink.closedByReader) return;
    await sink.write(await read(offsetBytes + pos, n));
    pos += n;
    onProgress?.(pos, lengthBytes);
  }
}

/**
 * A file written under a temporary name beside its target and renamed over
 * it by `commit()` after an fdatasync, so an interrupted writer never leaves
 * a half file under the final name. The temporary file
 * `.NAME.partial-<pid>-<random>` is created exclusively (O_EXCL, O_NOFOLLOW:
 * never through a planted symlink) and removed by `abort()` or when the
 * process is interrupted by a signal. An output that exists and is not a
 * regular file (a FIFO, /dev/null) is written in place instead.
 */
export interface AtomicFileSink extends Sink {
  commit(): Promise<void>;
  abort(): Promise<void>;
}

/** @throws INVALID_ARGUMENT (the volume or its sidecar, a folder, a missing folder), IO_ERROR, NO_SPACE */
export async function openAtomicFileSink(output: string, guard: ProtectedFiles): Promise<AtomicFileSink> {
  const target = await checkOutputPath(output, guard);
  const existing = await stat(target).catch(() => undefined);
  if (existing?.isDirectory()) throw userPathError(Object.assign(new Error('is a directory'), { code: 'EISDIR' }), output, 'output');
  if (existing && !existing.isFile()) {
    const sink = await openFileSink(output, guard);
    return { ...sink, commit: () => sink.close(), abort: () => sink.close().catch(() => undefined) };
  }
  await removeDeadPartials(target);
  const { handle, tmp, forget } = await createPartial(target, output, existing ? existing.mode & 0o7777 : await outputMode(guard));
  if (existing) await keepOwnerAndMode(handle, existing, output);
  let closed = false;
  const close = async (): Promise<void> => {
    if (!closed) {
      closed = true;
      await handle.close();
    }
  };
  return {
    closedByReader: false,
    write: (data) => writeAll(handle, data, output),
    close,
    async commit() {
      try {
        await handle.datasync();
        await close();
        await rename(tmp, target);
      } catch (err) {
        throw userPathError(err, output, 'output');
      }
      forget();
    },
    async abort() {
      await close().catch(() => undefined);
      await rm(tmp, { force: true });
      forget();
    },
  };
}

/**
 * Gives the new file the mode (umask aside) and, where this process may,
 * the owner and group of the `existing` output it replaces: an existing
 * output keeps its mode (README "Paths given to --input and --output").
 * A chown this user may not make (EPERM) leaves the file this user's.
 * @throws IO_ERROR
 */
async function keepOwnerAndMode(handle: FileHandle, existing: { mode: number; uid: number; gid: number }, output: string): Promise<void> {
  try {
    await handle.chmod(existing.mode & 0o7777);
    if (existing.uid !== process.geteuid?.() || existing.gid !== process.getegid?.()) {
      await handle.chown(existing.uid, existing.gid).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code !== 'EPERM') throw err;
      });
    }
  } catch (err) {
    throw userPathError(err, output, 'output');
  }
}

/**
 * The mode a new output file is created with: no more open than the volume
 * file it copies data from (a private 0600 volume gives 0600 exports and
 * reads; README "Paths given to --input and --output"), less the umask.
 */
async function outputMode(guard: ProtectedFiles): Promise<number> {
  const volume = await stat(guard.volumePath).catch(() => undefined);
  return volume ? (volume.mode & 0o066) | 0o600 : 0o600;
}

/** A partial file untouched this long, of a process gone, was left by a killed export: removed by the next export to the same name. */
export const DEAD_PARTIAL_AGE_MS = 60 * 60 * 1000;

/**
 * Removes the `.NAME.partial-<pid>-<random>` files beside `target` that a
 * killed export left (SIGKILL runs no cleanup): those whose process is gone
 * and that nothing wrote for DEAD_PARTIAL_AGE_MS — the age also spares a
 * live export of another PID namespace sharing the folder, which writes as
 * it goes. Regular files only (lstat: never through a link). Best effort:
 * a file that cannot be removed stays.
 */
async function removeDeadPartials(target: string): Promise<void> {
  const prefix = `.${basename(target)}.partial-`;
  const names = await readdir(dirname(target)).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const match = /^(\d+)-[0-9a-f]{8}$/.exec(name.slice(prefix.length));
    if (!match) continue;
    const pid = Number(match[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    const path = join(dirname(target), name);
    const st = await lstat(path).catch(() => undefined);
    if (!st?.isFile() || Date.now() - st.mtimeMs < DEAD_PARTIAL_AGE_MS) continue;
    await unlink(path).catch(() => undefined);
  }
}

/**
 * Creates a fresh `.NAME.partial-<pid>-<random>` beside `target`, exclusively
 * and without following symlinks. Its removal on a signal is registered
 * before the open starts: the file exists as soon as the kernel creates it,
 * while the open's completion reaches JavaScript later, and a signal handled
 * in between must still remove it. A name that already exists is not ours,
 * so its registration is withdrawn before the next name is tried.
 */
async function createPartial(target: string, output: string, mode: number): Promise<{ handle: FileHandle; tmp: string; forget: () => void }> {
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  for (let attempt = 0; ; attempt++) {
    const tmp = join(dirname(target), `.${basename(target)}.partial-${process.pid}-${randomBytes(4).toString('hex')}`);
    const forget = onInterrupt(() => rmSync(tmp, { force: true }));
    try {
      return { handle: await open(tmp, flags, mode), tmp, forget };
    } catch (err) {
      forget();
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 8) throw userPathError(err, output, 'output');
    }
  }
}
