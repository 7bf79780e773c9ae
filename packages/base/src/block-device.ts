import { open, type FileHandle } from 'node:fs/promises';
import { constants, read as readCallback, readSync, write as writeCallback, writeSync } from 'node:fs';
import { IoError, NoSpaceError } from './errors.js';

/**
 * The block-device seam: every byte cowvol reads or writes — volume file,
 * snapshot store, journal — goes through this interface. Production uses
 * {@link FileBlockDevice} over `node:fs`; tests wrap it to drop unsynced
 * writes, tear a write or fail an I/O (docs/ARCHITECTURE.md §1 "packages/base",
 * the block-device contract: fault injection through the same interface
 * production uses).
 *
 * Offsets and lengths are in bytes. Reads past the end of the device return
 * zeros (a sparse file reads as zeros). Errors: `IO_ERROR`, `NO_SPACE`, each
 * with `details.offsetBytes` / `details.lengthBytes` naming the failed range.
 * `close()` waits for the reads and writes in flight; a second `close()` is
 * harmless; every other call after `close()` rejects with `IO_ERROR`. Every
 * implementation, test doubles included, runs the shared conformance suite
 * (`@cowvol/base/conformance`, docs/ARCHITECTURE.md §1 "packages/base").
 */
export interface BlockDevice {
  /** Path or label, for messages. */
  readonly name: string;
  /** Reads `lengthBytes` at `offsetBytes` into a new Buffer (zero-filled past EOF). */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /**
   * Reads `into.length` bytes at `offsetBytes` into `into` (zero-filled past
   * EOF): the same bytes as `read`, without a new buffer and a copy. The
   * caller must not touch `into` until the promise settles.
   */
  readInto(offsetBytes: number, into: Uint8Array): Promise<void>;
  /**
   * Optional: the same bytes as `readInto`, read synchronously on the
   * calling thread (a `pread` that blocks it until the kernel answers). For
   * callers that expect page-cache hits and time each call, falling back to
   * `readInto` when one is slow (the snapshot reader's scattered store reads,
   * docs/ARCHITECTURE.md §4.3): it saves the thread-pool hand-off of a small
   * read. A device that cannot read synchronously leaves it out.
   * @throws IO_ERROR (also after `close()`)
   */
  readIntoSync?(offsetBytes: number, into: Uint8Array): void;
  /** Writes all of `data` at `offsetBytes`. Not durable until `sync()` resolves. */
  write(offsetBytes: number, data: Uint8Array): Promise<void>;
  /**
   * Optional: the same as `write`, synchronously on the calling thread (a
   * `pwrite` that blocks it until the kernel took the bytes, usually into
   * the page cache). For callers that time each call and fall back to
   * `write` when calls are slow (dirty-page throttling, a stalled disk;
   * docs/ARCHITECTURE.md §4.14): it saves the thread-pool hand-off of a
   * small write. Not durable until `sync()` resolves. A device that cannot
   * write synchronously leaves it out.
   * @throws IO_ERROR, NO_SPACE (as `write`; IO_ERROR also after `close()`)
   */
  writeSync?(offsetBytes: number, data: Uint8Array): void;
  /** Makes every completed write durable (`fdatasync`). */
  sync(): Promise<void>;
  /** Current size in bytes. */
  sizeBytes(): Promise<number>;
  /** Sets the size (sparse extend or shrink). Not durable until `sync()`. */
  truncate(sizeBytes: number): Promise<void>;
  /** Resolves once every read and write in flight has settled and the device is released; idempotent. */
  close(): Promise<void>;
}

/** Opens device files; tests substitute one that injects faults. */
export interface DeviceOpener {
  /**
   * `readOnly`: open for reading only (O_RDONLY), for a volume opened
   * read-only: on a read-only mount nothing may be opened for writing;
   * `write`, `sync` and `truncate` of such a device fail with `IO_ERROR`.
   */
  open(path: string, options: { create: boolean; readOnly?: boolean }): Promise<BlockDevice>;
}

function wrapError(err: unknown, name: string, op: string, offsetBytes: number, lengthBytes: number): IoError | NoSpaceError {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const details = { device: name, op, offsetBytes, lengthBytes, errno: code };
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new NoSpaceError(`no space left writing ${lengthBytes} bytes at offset ${offsetBytes} of ${name}`, { cause: err, details });
  }
  return new IoError(`${op} failed on ${name} at offset ${offsetBytes} (+${lengthBytes} bytes): ${(err as Error | undefined)?.message ?? String(err)}`, { cause: err, details });
}

/** `IO_ERROR` for a call on a device already closed (or closing). */
function closedError(name: string, op: string, offsetBytes: number, lengthBytes: number): IoError {
  return new IoError(`${op} on ${name} after close`, { details: { device: name, op, offsetBytes, lengthBytes } });
}

/** Production block device: a file opened with `node:fs/promises`. */
export class FileBlockDevice implements BlockDevice {
  /** Reads and writes issued through the descriptor and not yet settled (`close()` waits for them). */
  private opsInFlight = 0;
  private opsDrained: (() => void) | undefined;
  private closed: Promise<void> | undefined;

  private constructor(
    readonly name: string,
    private readonly handle: FileHandle,
  ) {}

  /**
   * Opens `path` read-write, or with `readOnly` read-only; with `create`,
   * creates it (failing if it exists: `IO_ERROR` with errno EEXIST).
   */
  static async open(path: string, options: { create: boolean; readOnly?: boolean } = { create: false }): Promise<FileBlockDevice> {
    const flags = options.readOnly ? constants.O_RDONLY : options.create ? constants.O_RDWR | constants.O_CREAT | constants.O_EXCL : constants.O_RDWR;
    try {
      return new FileBlockDevice(path, await open(path, flags, 0o644));
    } catch (err) {
      throw wrapError(err, path, 'open', 0, 0);
    }
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(lengthBytes); // every byte is read or zero-filled below
    await this.readInto(offsetBytes, buffer);
    return buffer;
  }

  /**
   * Uses the callback `fs.read` on the handle's descriptor: about half the
   * per-call cost of `FileHandle.read`, which matters for the many 4 KiB
   * store reads of a snapshot read. Reads in flight are counted so that
   * `close()` waits for them: the descriptor is never closed (and its number
   * reused) under a read (likewise writes).
   */
  async readInto(offsetBytes: number, into: Uint8Array): Promise<void> {
    const lengthBytes = into.length;
    if (this.closed !== undefined) throw closedError(this.name, 'read', offsetBytes, lengthBytes);
    this.opsInFlight += 1;
    let done = 0;
    try {
      while (done < lengthBytes) {
        const bytesRead = await preadOnce(this.handle.fd, into, done, lengthBytes - done, offsetBytes + done);
        if (bytesRead === 0) {
          into.fill(0, done); // EOF: the rest reads as zeros, like a sparse tail.
          break;
        }
        done += bytesRead;
      }
    } catch (err) {
      throw wrapError(err, this.name, 'read', offsetBytes, lengthBytes);
    } finally {
      this.opEnded();
    }
  }

  /**
   * `readSync` on the descriptor, looping over short reads, zeros past EOF.
   * Nothing is in flight afterwards, so `close()` needs no wait for it.
   */
  readIntoSync(offsetBytes: number, into: Uint8Array): void {
    const lengthBytes = into.length;
    if (this.closed !== undefined) throw closedError(this.name, 'read', offsetBytes, lengthBytes);
    let done = 0;
    try {
      while (done < lengthBytes) {
        const bytesRead = readSync(this.handle.fd, into, done, lengthBytes - done, offsetBytes + done);
        if (bytesRead === 0) {
          into.fill(0, done); // EOF: the rest reads as zeros, like a sparse tail.
          break;
        }
        done += bytesRead;
      }
    } catch (err) {
      throw wrapError(err, this.name, 'read', offsetBytes, lengthBytes);
    }
  }

  /** The callback `fs.write` on the descriptor, like reads: a COW is three 4 KiB I/O calls, their per-call cost counts. */
  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    if (this.closed !== undefined) throw closedError(this.name, 'write', offsetBytes, data.length);
    this.opsInFlight += 1;
    let done = 0;
    try {
      while (done < data.length) {
        done += await pwriteOnce(this.handle.fd, data, done, data.length - done, offsetBytes + done);
      }
    } catch (err) {
      throw wrapError(err, this.name, 'write', offsetBytes, data.length);
    } finally {
      this.opEnded();
    }
  }

  /**
   * `writeSync` on the descriptor, looping over short writes; errors as
   * {@link write}. Nothing is in flight afterwards, so `close()` needs no
   * wait for it.
   */
  writeSync(offsetBytes: number, data: Uint8Array): void {
    if (this.closed !== undefined) throw closedError(this.name, 'write', offsetBytes, data.length);
    let done = 0;
    try {
      while (done < data.length) done += writeSync(this.handle.fd, data, done, data.length - done, offsetBytes + done);
    } catch (err) {
      throw wrapError(err, this.name, 'write', offsetBytes, data.length);
    }
  }

  private opEnded(): void {
    this.opsInFlight -= 1;
    if (this.opsInFlight === 0) this.opsDrained?.();
  }

  async sync(): Promise<void> {
    if (this.closed !== undefined) throw closedError(this.name, 'sync', 0, 0);
    try {
      await this.handle.datasync();
    } catch (err) {
      throw wrapError(err, this.name, 'sync', 0, 0);
    }
  }

  async sizeBytes(): Promise<number> {
    if (this.closed !== undefined) throw closedError(this.name, 'stat', 0, 0);
    try {
      return (await this.handle.stat()).size;
    } catch (err) {
      throw wrapError(err, this.name, 'stat', 0, 0);
    }
  }

  async truncate(sizeBytes: number): Promise<void> {
    if (this.closed !== undefined) throw closedError(this.name, 'truncate', sizeBytes, 0);
    try {
      await this.handle.truncate(sizeBytes);
    } catch (err) {
      throw wrapError(err, this.name, 'truncate', sizeBytes, 0);
    }
  }

  /** Waits for the reads and writes in flight, then closes the descriptor; a second call waits for the first. */
  close(): Promise<void> {
    this.closed ??= this.drainAndClose();
    return this.closed;
  }

  private async drainAndClose(): Promise<void> {
    if (this.opsInFlight > 0) await new Promise<void>((resolve) => (this.opsDrained = resolve));
    await this.handle.close();
  }
}

/** One `pread` through libuv's thread pool; resolves with the bytes read (0 at EOF). */
function preadOnce(fd: number, into: Uint8Array, at: number, lengthBytes: number, positionBytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    readCallback(fd, into, at, lengthBytes, positionBytes, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead)));
  });
}

/** One `pwrite` through libuv's thread pool; resolves with the bytes written. */
function pwriteOnce(fd: number, data: Uint8Array, at: number, lengthBytes: number, positionBytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    writeCallback(fd, data, at, lengthBytes, positionBytes, (err, bytesWritten) => (err ? reject(err) : resolve(bytesWritten)));
  });
}

/** The production opener: plain files via {@link FileBlockDevice}. */
export const fileDeviceOpener: DeviceOpener = {
  open: (path, options) => FileBlockDevice.open(path, options),
};
