import { createConnection, type Socket } from 'node:net';
import { assert, CowvolError, IoError, NoSpaceError, type ErrorCode } from '@cowvol/base';
import { InvalidArgumentError, OutOfRangeError } from '@cowvol/cow-core';
import { ByteQueue } from './byte-queue.js';
import {
  MAX_PAYLOAD_BYTES,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_READ_ONLY,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_OPT_GO,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  MAX_OPTION_BYTES,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
} from './constants.js';
import { NotServedError } from './errors.js';

/** Requests in flight at once on one connection (the bound of {@link NbdClient}). */
export const CLIENT_MAX_IN_FLIGHT = 8;

/**
 * How long connect() waits for the connection and the whole handshake (greeting
 * to NBD_OPT_GO's ACK) before giving up with IO_ERROR; the server's own bound
 * on the option phase is 30 s as well (docs/ARCHITECTURE.md §14.6).
 */
export const CLIENT_HANDSHAKE_TIMEOUT_MS = 30_000;

/** How long close() waits for the server to close the connection after NBD_CMD_DISC before closing it itself. */
const CLOSE_WAIT_MS = 2000;

/** What NBD_OPT_GO told about the export ("NBD_INFO_EXPORT", "NBD_INFO_BLOCK_SIZE"). */
export interface NbdExportInfo {
  exportName: string;
  sizeBytes: number;
  transmissionFlags: number;
  readOnly: boolean;
  /** Largest READ/WRITE payload the client sends: min(server's maximum block size, 32 MiB). */
  maxRequestBytes: number;
}

/**
 * An error reply of an NBD server, or a refused option, with the code the
 * same failure has offline (docs/ARCHITECTURE.md §14.4 maps codes to errnos;
 * this maps them back): EINVAL → INVALID_ARGUMENT, ENOSPC → NO_SPACE,
 * EPERM → VOLUME_READ_ONLY, ESHUTDOWN → NOT_SERVED, anything else → IO_ERROR;
 * of refused options, NBD_REP_ERR_SHUTDOWN (the server is stopping) → NOT_SERVED.
 */
export class NbdReplyError extends CowvolError {
  constructor(code: ErrorCode, message: string, details: Record<string, unknown>) {
    super(code, message, { details });
  }
}

/** The offline error for an NBD errno reply to `what`. */
function errorForErrno(errno: number, what: string): CowvolError {
  const details = { errno, request: what };
  if (errno === NBD_EINVAL) return new InvalidArgumentError(`the server refused ${what} (EINVAL)`, { details });
  if (errno === NBD_ENOSPC) return new NoSpaceError(`the server ran out of space for ${what} (ENOSPC)`, { details });
  if (errno === NBD_EPERM) return new NbdReplyError('VOLUME_READ_ONLY', `the export is read-only: ${what} refused (EPERM)`, details);
  if (errno === NBD_ESHUTDOWN) return new NbdReplyError('NOT_SERVED', `the server is stopping: ${what} refused (ESHUTDOWN)`, details);
  return new IoError(`the server failed ${what} (${errno === NBD_EIO ? 'EIO' : `errno ${errno}`})`, { details });
}

interface Pending {
  readLengthBytes: number;
  what: string;
  resolve: (data: Buffer) => void;
  reject: (err: CowvolError) => void;
}

/**
 * A minimal NBD client (NBD spec doc/proto.md: fixed newstyle handshake
 * with NO_ZEROES, NBD_OPT_GO, simple replies only; READ, WRITE, FLUSH,
 * DISC), used by the CLI on a served volume (docs/ARCHITECTURE.md §14.10).
 * Up to {@link CLIENT_MAX_IN_FLIGHT} requests are in flight, matched to
 * replies by cookie; a read or write larger than `maxRequestBytes` is split.
 * Ranges are checked against the export size before sending (OUT_OF_RANGE,
 * as offline).
 */
export class NbdClient {
  private readonly queue = new ByteQueue();
  private waiters: Array<() => void> = [];
  private closed = false;
  private lost: CowvolError | undefined;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private inFlight = 0;
  private slotWaiters: Array<() => void> = [];

  private constructor(
    private readonly socket: Socket,
    private readonly where: string,
  ) {
    socket.on('data', (d: Buffer) => {
      this.queue.push(d);
      this.wake();
    });
    socket.on('close', () => this.onLost(new IoError(`the NBD connection to ${where} was lost`, { details: { endpoint: where } })));
    socket.on('error', (err) => this.onLost(new IoError(`the NBD connection to ${where} failed: ${err.message}`, { cause: err, details: { endpoint: where } })));
  }

  /** The export negotiated (set by connect). */
  info!: NbdExportInfo;

  /**
   * Connects to the unix socket `socketPath`, negotiates and attaches `exportName`,
   * within `options.handshakeTimeoutMs` (default {@link CLIENT_HANDSHAKE_TIMEOUT_MS}).
   * @throws NOT_SERVED when nothing listens, or when the server answers NBD_REP_ERR_SHUTDOWN (it is stopping);
   *   `options.unknownExport()` for NBD_REP_ERR_UNKNOWN (else IO_ERROR); VOLUME_BUSY for NBD_REP_ERR_POLICY (the server's
   *   connections are all taken, its text says so); IO_ERROR for a server that breaks the
   *   protocol, refuses the export, or does not finish the handshake in time (details.handshakeTimeoutMs)
   */
  static async connect(socketPath: string, exportName: string, options: { unknownExport?: () => CowvolError; handshakeTimeoutMs?: number } = {}): Promise<NbdClient> {
    const timeoutMs = options.handshakeTimeoutMs ?? CLIENT_HANDSHAKE_TIMEOUT_MS;
    assert(Number.isSafeInteger(timeoutMs) && timeoutMs > 0 && timeoutMs < 2 ** 31, 'handshakeTimeoutMs is a positive integer');
    const socket = createConnection(socketPath);
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        reject(new IoError(`${socketPath} did not finish the NBD handshake within ${timeoutMs} ms`, { details: { endpoint: socketPath, handshakeTimeoutMs: timeoutMs } }));
      }, timeoutMs);
    });
    try {
      return await Promise.race([NbdClient.attach(socket, socketPath, exportName, options.unknownExport), expired]);
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** connect() without its time bound: waits for the connection, then negotiates. */
  private static async attach(socket: Socket, socketPath: string, exportName: string, unknownExport: (() => CowvolError) | undefined): Promise<NbdClient> {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (err) => {
        reject(new NotServedError(socketPath, { cause: err }));
      });
    });
    const client = new NbdClient(socket, socketPath);
    await client.handshake(exportName, unknownExport);
    void client.replyLoop();
    return client;
  }

  private onLost(err: CowvolError): void {
    if (this.closed) return;
    this.closed = true;
    this.lost ??= err;
    for (const p of this.pending.values()) p.reject(this.lost);
    this.pending.clear();
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async take(n: number): Promise<Buffer> {
    while (this.queue.length < n) {
      if (this.closed) throw this.lost ?? new IoError(`the NBD connection to ${this.where} closed`);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    return Buffer.from(this.queue.take(n));
  }

  private async handshake(exportName: string, unknownExport?: () => CowvolError): Promise<void> {
    const greeting = await this.take(18);
    if (greeting.readBigUInt64BE(0) !== NBD_INIT_MAGIC || greeting.readBigUInt64BE(8) !== NBD_OPTS_MAGIC) throw new IoError(`${this.where} is not a newstyle NBD server`);
    if ((greeting.readUInt16BE(16) & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new IoError(`${this.where} does not speak fixed newstyle NBD`);
    const name = Buffer.from(exportName, 'utf8');
    const data = Buffer.alloc(4 + name.length + 2 + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(1, 4 + name.length);
    data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 6 + name.length);
    const option = Buffer.alloc(4 + 16);
    option.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, 0);
    option.writeBigUInt64BE(NBD_OPTS_MAGIC, 4);
    option.writeUInt32BE(NBD_OPT_GO, 12);
    option.writeUInt32BE(data.length, 16);
    this.socket.write(Buffer.concat([option, data]));
    let sizeBytes: number | undefined;
    let transmissionFlags = 0;
    let maxRequestBytes = MAX_PAYLOAD_BYTES;
    for (;;) {
      const header = await this.take(20);
      const length = header.readUInt32BE(16);
      if (header.readBigUInt64BE(0) !== NBD_REP_MAGIC || header.readUInt32BE(8) !== NBD_OPT_GO || length > MAX_OPTION_BYTES) {
        throw new IoError(`${this.where} answered NBD_OPT_GO with a malformed reply`);
      }
      const type = header.readUInt32BE(12);
      const payload = await this.take(length);
      if (type === NBD_REP_ACK) break;
      if (type === NBD_REP_INFO && length >= 2) {
        const info = payload.readUInt16BE(0);
        if (info === NBD_INFO_EXPORT && length === 12) {
          sizeBytes = Number(payload.readBigUInt64BE(2));
          transmissionFlags = payload.readUInt16BE(10);
        } else if (info === NBD_INFO_BLOCK_SIZE && length === 14) {
          maxRequestBytes = Math.min(MAX_PAYLOAD_BYTES, payload.readUInt32BE(10));
        }
        continue;
      }
      if (type === NBD_REP_ERR_UNKNOWN && unknownExport) throw unknownExport();
      if (type === NBD_REP_ERR_SHUTDOWN) {
        throw new NbdReplyError('NOT_SERVED', `${this.where} is stopping: it refused export ${JSON.stringify(exportName)} (NBD_REP_ERR_SHUTDOWN)`, { exportName, replyType: type });
      }
      if (type === NBD_REP_ERR_POLICY) {
        // This server's answer past --max-connections (docs/ARCHITECTURE.md §14.6): busy, worth a retry.
        const text = payload.toString('utf8');
        throw new NbdReplyError('VOLUME_BUSY', `${this.where} refused export ${JSON.stringify(exportName)}${text ? `: ${text}` : ' (NBD_REP_ERR_POLICY)'}`, { exportName, replyType: type });
      }
      if (type >= 2 ** 31) {
        const text = payload.toString('utf8');
        throw new NbdReplyError('IO_ERROR', `${this.where} refused export ${JSON.stringify(exportName)} (reply type ${type - 2 ** 31}${text ? `: ${text}` : ''})`, { exportName, replyType: type });
      }
    }
    if (sizeBytes === undefined || !Number.isSafeInteger(sizeBytes)) throw new IoError(`${this.where} sent no export size for ${JSON.stringify(exportName)}`);
    this.info = { exportName, sizeBytes, transmissionFlags, readOnly: (transmissionFlags & NBD_FLAG_READ_ONLY) !== 0, maxRequestBytes: Math.max(512, maxRequestBytes) };
  }

  /** Reads simple replies until the connection ends, settling requests by cookie. */
  private async replyLoop(): Promise<void> {
    try {
      while (!this.closed) {
        const header = await this.take(SIMPLE_REPLY_BYTES);
        if (header.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new IoError(`${this.where} sent a reply that is not a simple reply`);
        const cookie = header.readBigUInt64BE(8);
        const request = this.pending.get(cookie);
        if (request === undefined) throw new IoError(`${this.where} replied to cookie ${cookie}, which is not in flight`);
        const errno = header.readUInt32BE(4);
        this.pending.delete(cookie);
        if (errno !== 0) {
          request.reject(errorForErrno(errno, request.what));
          continue;
        }
        const data = request.readLengthBytes > 0 ? await this.take(request.readLengthBytes) : Buffer.alloc(0);
        assert(data.length === request.readLengthBytes, 'read reply length');
        request.resolve(data);
      }
    } catch (err) {
      this.onLost(err instanceof CowvolError ? err : new IoError(`the NBD connection to ${this.where} failed`, { cause: err }));
      this.socket.destroy();
    }
  }

  private async slot(): Promise<void> {
    while (this.inFlight >= CLIENT_MAX_IN_FLIGHT) await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    this.inFlight += 1;
  }

  private release(): void {
    this.inFlight -= 1;
    this.slotWaiters.shift()?.();
  }

  /** Sends one request and resolves with its reply's data. */
  private async request(type: number, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | undefined, what: string): Promise<Buffer> {
    await this.slot();
    try {
      if (this.closed) throw this.lost ?? new IoError(`the NBD connection to ${this.where} is closed`);
      const cookie = this.nextCookie++;
      const header = Buffer.alloc(REQUEST_HEADER_BYTES);
      header.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
      header.writeUInt16BE(flags, 4);
      header.writeUInt16BE(type, 6);
      header.writeBigUInt64BE(cookie, 8);
      header.writeBigUInt64BE(BigInt(offsetBytes), 16);
      header.writeUInt32BE(lengthBytes, 24);
      const reply = new Promise<Buffer>((resolve, reject) => {
        this.pending.set(cookie, { readLengthBytes: type === NBD_CMD_READ ? lengthBytes : 0, what, resolve, reject });
      });
      this.socket.write(payload ? Buffer.concat([header, payload]) : header);
      return await reply;
    } finally {
      this.release();
    }
  }

  private checkRange(offsetBytes: number, lengthBytes: number): void {
    if (!Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) || offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > this.info.sizeBytes) {
      throw new OutOfRangeError(offsetBytes, lengthBytes, this.info.sizeBytes);
    }
  }

  /**
   * Reads `lengthBytes` at `offsetBytes` (split into requests of at most maxRequestBytes, in flight together).
   * @throws OUT_OF_RANGE before sending; the mapped error of a reply; IO_ERROR when the connection is lost
   */
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.checkRange(offsetBytes, lengthBytes);
    const parts: Array<Promise<Buffer>> = [];
    for (let pos = 0; pos < lengthBytes; pos += this.info.maxRequestBytes) {
      const n = Math.min(this.info.maxRequestBytes, lengthBytes - pos);
      parts.push(this.request(NBD_CMD_READ, 0, offsetBytes + pos, n, undefined, `READ of ${n} bytes at ${offsetBytes + pos}`));
    }
    return Buffer.concat(await Promise.all(parts));
  }

  /**
   * Writes `data` at `offsetBytes` (split as read is); with `fua`, each request is durable when answered.
   * @throws OUT_OF_RANGE before sending; VOLUME_READ_ONLY on a read-only export; the mapped error of a reply
   */
  async write(offsetBytes: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    this.checkRange(offsetBytes, data.length);
    if (this.info.readOnly) throw new NbdReplyError('VOLUME_READ_ONLY', `export ${JSON.stringify(this.info.exportName)} is read-only`, { exportName: this.info.exportName });
    const flags = options.fua === true ? NBD_CMD_FLAG_FUA : 0;
    const parts: Array<Promise<Buffer>> = [];
    for (let pos = 0; pos < data.length; pos += this.info.maxRequestBytes) {
      const piece = data.subarray(pos, pos + this.info.maxRequestBytes);
      parts.push(this.request(NBD_CMD_WRITE, flags, offsetBytes + pos, piece.length, piece, `WRITE of ${piece.length} bytes at ${offsetBytes + pos}`));
    }
    await Promise.all(parts);
  }

  /** NBD_CMD_FLUSH: every write answered before it is durable when it resolves. */
  async flush(): Promise<void> {
    await this.request(NBD_CMD_FLUSH, 0, 0, 0, undefined, 'FLUSH');
  }

  /** Sends NBD_CMD_DISC (no reply) and resolves once the server closed the connection (or after {@link CLOSE_WAIT_MS}, closing it). */
  async close(): Promise<void> {
    if (this.closed) return;
    const header = Buffer.alloc(REQUEST_HEADER_BYTES);
    header.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    header.writeUInt16BE(NBD_CMD_DISC, 6);
    header.writeBigUInt64BE(this.nextCookie++, 8);
    this.closed = true;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => this.socket.destroy(), CLOSE_WAIT_MS);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.socket.end(header);
    });
  }
}
