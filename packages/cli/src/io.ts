import { createWriteStream } from 'node:fs';
import { mkdtemp, open, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { CowvolError } from '@cowvol/cow-core';

/** `INPUT_NOT_FOUND`: the --input file does not exist. */
export class InputNotFoundError extends CowvolError {
  constructor(path: string) {
    super('INPUT_NOT_FOUND', `input file ${path} does not exist`, { details: { path } });
  }
}

/** Bytes moved per read/write step when streaming (bounds memory). */
export const STREAM_CHUNK_BYTES = 4 * 1024 * 1024;

/**
 * A readable input of known length. stdin that is not a regular file (a
 * pipe) is first spooled to a temporary file, so its length is known before
 * the volume is touched: an input that would run past the end is refused
 * with nothing written.
 */
export interface SizedInput {
  path: string;
  lengthBytes: number;
  /** Reads up to `lengthBytes` at `offsetBytes` of the input. */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  close(): Promise<void>;
}

export async function openInput(path: string | undefined): Promise<SizedInput> {
  let spool: string | undefined;
  let source = path;
  if (source === undefined) {
    const st = await stat('/dev/stdin').catch(() => undefined);
    if (st?.isFile()) {
      source = '/dev/stdin';
    } else {
      spool = await mkdtemp(join(tmpdir(), 'cowvol-stdin-'));
      source = join(spool, 'input');
      await pipeline(process.stdin, createWriteStream(source));
    }
  }
  const handle = await open(source, 'r').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') throw new InputNotFoundError(source!);
    throw err;
  });
  const lengthBytes = (await handle.stat()).size;
  return {
    path: source,
    lengthBytes,
    async read(offsetBytes, length) {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(buf, done, length - done, offsetBytes + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return buf.subarray(0, done);
    },
    async close() {
      await handle.close();
      if (spool) await rm(spool, { recursive: true, force: true });
    },
  };
}

/** A destination for data: a file (created or truncated) or stdout; honours back-pressure. */
export interface Sink {
  /** True once the process reading stdout closed the pipe: further data is dropped. */
  readonly closedByReader: boolean;
  write(data: Buffer): Promise<void>;
  close(): Promise<void>;
}

export function openSink(path: string | undefined): Sink {
  const stream: Writable = path === undefined ? process.stdout : createWriteStream(path);
  // A reader that stops early (`cowvol read vol | head`) closes the pipe:
  // like cat, stop writing quietly instead of failing with EPIPE.
  let closedByReader = false;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (path === undefined && err.code === 'EPIPE') closedByReader = true;
    else failure = err;
    wake?.();
  });
  return {
    get closedByReader() {
      return closedByReader;
    },
    async write(data) {
      if (failure) throw failure;
      if (closedByReader) return;
      if (!stream.write(data)) {
        // Wait for drain, or for the error handler above (one listener each, no leak).
        await new Promise<void>((resolve) => {
          wake = resolve;
          stream.once('drain', () => resolve());
        });
        wake = undefined;
      }
      if (failure) throw failure;
    },
    async close() {
      if (failure) throw failure;
      if (path !== undefined) {
        stream.end();
        await once(stream, 'finish');
      }
    },
  };
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
 * A file written under a temporary name beside `path` and renamed into place
 * by `commit()` after an fdatasync, so an interrupted writer never leaves a
 * half file under the final name. `abort()` removes the temporary file.
 */
export interface AtomicFileSink extends Sink {
  commit(): Promise<void>;
  abort(): Promise<void>;
}

export async function openAtomicFileSink(path: string): Promise<AtomicFileSink> {
  const tmp = join(dirname(resolve(path)), `.${basename(path)}.partial-${process.pid}`);
  const handle = await open(tmp, 'w');
  let position = 0;
  let closed = false;
  const close = async (): Promise<void> => {
    if (!closed) {
      closed = true;
      await handle.close();
    }
  };
  return {
    closedByReader: false,
    async write(data) {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await handle.write(data, done, data.length - done, position);
        done += bytesWritten;
        position += bytesWritten;
      }
    },
    async close() {
      await close();
    },
    async commit() {
      await handle.datasync();
      await close();
      await rename(tmp, path);
    },
    async abort() {
      await close().catch(() => undefined);
      await rm(tmp, { force: true });
    },
  };
}
