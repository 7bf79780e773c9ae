import { constants, createReadStream, mkdtempSync, rmSync } from 'node:fs';
import { open, rm, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { IoError, NoSpaceError } from '@cowvol/base';
import { InvalidArgumentError } from '@cowvol/cow-core';
import { InputNotFoundError, userPathError } from './os-errors.js';
import { onInterrupt } from './signals.js';

/** Bytes moved per read/write step when streaming (bounds memory). */
export const STREAM_CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * A readable input of known length (README "Paths given to --input and
 * --output"). A stream input is first spooled to a temporary file, so its
 * length is known before the volume is touched: an input that would run
 * past the end is refused with nothing written.
 */
export interface SizedInput {
  /** The path read from: the input itself, or the spool file of a stream. */
  path: string;
  lengthBytes: number;
  /** True when the input was a stream (spooled). */
  spooled: boolean;
  /** Reads up to `lengthBytes` at `offsetBytes` of the input; shorter only at its end. @throws IO_ERROR */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /**
   * Reads up to `into.length` bytes at `offsetBytes` into `into` (no new
   * buffer); resolves with the bytes read, fewer only at the input's end.
   * @throws IO_ERROR
   */
  readInto(offsetBytes: number, into: Buffer): Promise<number>;
  close(): Promise<void>;
}

export interface OpenInputOptions {
  /** A stream longer than this is refused with `tooLong()` as soon as spooling passes it (default: no bound). */
  maxBytes?: number;
  tooLong?: (seenBytes: number) => Error;
  /**
   * A stream is handed its first `startBytes` bytes (fewer only when it ends
   * sooner) as soon as they are spooled; what `checkStart` throws ends the
   * spool there (an input that is not what the command reads is refused
   * before it fills `$TMPDIR`).
   */
  start?: { startBytes: number; checkStart: (head: Buffer) => void };
}

/** The path that means stdin for `--input` and stdout for `--output`, in every command (README "Paths given to `--input` and `--output`"). */
export const STDIO_PATH = '-';

/**
 * Opens `--input <path>` (stdin when `path` is undefined or `-`; a file named `-` is `./-`):
 * - a regular file with a size: read in place;
 * - a block device: read in place, its length found by probing reads
 *   (stat() reports 0 for it);
 * - anything else is a stream — a pipe, a FIFO, `<(…)`, `/dev/stdin`, a
 *   socket, a character device, a regular file whose stat() size is 0
 *   (/proc): read to its end into `$TMPDIR/cowvol-stdin-XXXXXX/input`
 *   (a fresh private folder; removed by close() and on SIGINT/SIGTERM).
 * @throws INPUT_NOT_FOUND, INVALID_ARGUMENT (a directory), IO_ERROR, NO_SPACE (spool), and `tooLong()`
 */
export async function openInput(givenPath: string | undefined, options: OpenInputOptions = {}): Promise<SizedInput> {
  const path = givenPath === STDIO_PATH ? undefined : givenPath;
  const source = path ?? '/dev/stdin';
  const st = await stat(source).catch((err: unknown) => {
    throw userPathError(err, source, 'input');
  });
  if (st.isDirectory()) throw userPathError(Object.assign(new Error('is a directory'), { code: 'EISDIR' }), source, 'input');
  if ((st.isFile() && st.size > 0) || st.isBlockDevice()) {
    const handle = await open(source, constants.O_RDONLY).catch((err: unknown) => {
      throw userPathError(err, source, 'input');
    });
    try {
      const lengthBytes = st.isFile() ? st.size : await probeLengthBytes(handle);
      return positionalInput(handle, source, lengthBytes, async () => undefined);
    } catch (err) {
      await handle.close();
      throw userPathError(err, source, 'input');
    }
  }
  return spoolStream(path === undefined ? process.stdin : createReadStream(source), source, options);
}

function positionalInput(handle: FileHandle, path: string, lengthBytes: number, after: () => Promise<void>, spooled = false): SizedInput {
  const readInto = async (offsetBytes: number, into: Buffer): Promise<number> => {
    let done = 0;
    while (done < into.length) {
      const { bytesRead } = await handle.read(into, done, into.length - done, offsetBytes + done).catch((err: unknown) => {
        throw userPathError(err, path, 'input');
      });
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  };
  return {
    path,
    lengthBytes,
    spooled,
    async read(offsetBytes, length) {
      const buf = Buffer.allocUnsafe(length); // only the bytes read are returned
      return buf.subarray(0, await readInto(offsetBytes, buf));
    },
    readInto,
    async close() {
      await handle.close();
      await after();
    },
  };
}

/**
 * Length of a seekable input whose stat() size says nothing (a block
 * device): the first offset where a 1-byte read returns nothing, by
 * doubling then bisection (about 2·log2(length) reads).
 */
export async function probeLengthBytes(handle: FileHandle): Promise<number> {
  const one = Buffer.alloc(1);
  const hasByteAt = async (pos: number): Promise<boolean> => (await handle.read(one, 0, 1, pos)).bytesRead === 1;
  if (!(await hasByteAt(0))) return 0;
  let lo = 0; // a byte exists at lo
  let hi = 1; // a byte exists at hi?
  while (await hasByteAt(hi)) {
    lo = hi;
    hi *= 2;
    if (hi > Number.MAX_SAFE_INTEGER) throw new InvalidArgumentError('--input has no end');
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await hasByteAt(mid)) lo = mid;
    else hi = mid;
  }
  return lo + 1;
}

/**
 * Reads the file at `path` (a block device, a FIFO) to its end into a fresh
 * private spool file, as openInput does with a stream.
 * @throws INVALID_ARGUMENT, IO_ERROR, NO_SPACE (spool)
 */
export function spoolInput(path: string, options: OpenInputOptions = {}): Promise<SizedInput> {
  return spoolStream(createReadStream(path), path, options);
}

/** Reads `stream` to its end into a fresh private spool file; at most `maxBytes`. */
async function spoolStream(stream: Readable, source: string, options: OpenInputOptions): Promise<SizedInput> {
  // Synchronous, so no signal handler runs between the folder's creation
  // and the registration of its removal.
  let folder: string;
  try {
    folder = mkdtempSync(join(tmpdir(), 'cowvol-stdin-'));
  } catch (err) {
    throw spoolError(err);
  }
  const forget = onInterrupt(() => rmSync(folder, { recursive: true, force: true }));
  const remove = async (): Promise<void> => {
    await rm(folder, { recursive: true, force: true });
    forget();
  };
  const spool = join(folder, 'input');
  let handle: FileHandle | undefined;
  try {
    handle = await open(spool, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    let lengthBytes = 0;
    const start = options.start;
    let head: Buffer[] | undefined = start ? [] : undefined;
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        lengthBytes += chunk.length;
        if (head && start) {
          head.push(chunk);
          if (lengthBytes >= start.startBytes) {
            const first = Buffer.concat(head).subarray(0, start.startBytes);
            head = undefined;
            try {
              start.checkStart(first);
            } catch (err) {
              stream.destroy();
              throw err;
            }
          }
        }
        if (options.maxBytes !== undefined && lengthBytes > options.maxBytes) {
          stream.destroy();
          throw options.tooLong?.(lengthBytes) ?? new InvalidArgumentError(`--input is longer than ${options.maxBytes} bytes`);
        }
        await writeSpool(handle, chunk);
      }
      if (head && start) start.checkStart(Buffer.concat(head));
    } catch (err) {
      throw userPathError(err, source, 'input');
    }
    return positionalInput(handle, spool, lengthBytes, remove, true);
  } catch (err) {
    await handle?.close().catch(() => undefined);
    await remove();
    throw err;
  }
}

async function writeSpool(handle: FileHandle, chunk: Buffer): Promise<void> {
  let done = 0;
  while (done < chunk.length) {
    const { bytesWritten } = await handle.write(chunk, done, chunk.length - done, null).catch((err: unknown) => {
      throw spoolError(err);
    });
    done += bytesWritten;
  }
}

function spoolError(err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code;
  const details = { path: tmpdir(), role: 'input', errno: code };
  if (code === 'ENOSPC' || code === 'EDQUOT') return new NoSpaceError(`no space left in ${tmpdir()} to spool the input (set TMPDIR to a folder with room)`, { cause: err, details });
  return new IoError(`cannot spool the input in ${tmpdir()}: ${(err as Error).message}`, { cause: err, details });
}

export { InputNotFoundError };
