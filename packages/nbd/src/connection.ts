import type { Socket } from 'node:net';
import { assert } from '@cowvol/base';
import type { ExportCatalog } from './block-export.js';
import { ByteQueue } from './byte-queue.js';
import { MAX_PAYLOAD_BYTES, NBD_CMD_BLOCK_STATUS, NBD_CMD_DISC, NBD_CMD_READ, NBD_EINVAL, NBD_EPERM, NBD_FLAG_C_NO_ZEROES, REQUEST_HEADER_BYTES } from './constants.js';
import { NbdFramingError } from './errors.js';
import { parseClientFlags, parseOption, parseRequest, type RequestMessage } from './framing.js';
import type { NbdLogger } from './logger.js';
import { dirtySnapshotsOf, Negotiation, type Agreement } from './negotiation.js';
import { SNAPSHOT_EXPORT_PREFIX } from './volume-exports.js';
import { statusReplyBytes } from './meta-context.js';
import { greeting } from './replies.js';
import { ReplyWriter } from './reply-writer.js';
import { errnoFor, errorReply, runRequest, validateRequest } from './request-handler.js';
import { startTlsPsk, type PskKeys } from './tls-psk.js';

/** Bounds of one connection's requests in flight (docs/ARCHITECTURE.md §14.2). */
export interface ConnectionLimits {
  /** Request, payload and reply bytes held between reading a request and handing its reply to the kernel. Default 64 MiB. */
  maxInFlightBytes: number;
  /** Requests between read and reply. Default 128. */
  maxInFlightRequests: number;
}

/** How long a finished connection waits for the client to close its side before the socket is destroyed. */
const CLOSE_GRACE_MS = 2000;
/**
 * How long a stopping server waits for a connection's requests in flight
 * to hand their replies to the kernel: a client that stops reading its
 * replies (a stopped process, a stuck peer) is then disconnected, so it
 * cannot keep a stopping server — and the volume's lock — forever.
 */
export const STOP_DRAIN_MS = 10_000;

export const DEFAULT_LIMITS: ConnectionLimits = { maxInFlightBytes: 64 * 1024 * 1024, maxInFlightRequests: 128 };

/** How a connection's handshake goes (docs/ARCHITECTURE.md §14.6). */
export interface HandshakeOptions {
  /** TLS-PSK keys: TLS is then required (NBD_OPT_STARTTLS first). `undefined`: no TLS. */
  tlsPsk: PskKeys | undefined;
  /** Milliseconds from accept to the end of the option phase (TLS handshake included); past it the connection is closed. Default 30 000. */
  handshakeTimeoutMs: number;
}

export const DEFAULT_HANDSHAKE: HandshakeOptions = { tlsPsk: undefined, handshakeTimeoutMs: 30_000 };

/** What one connection did: requests read, requests answered with an error, bytes read and written. */
export interface ConnectionCounters {
  requests: number;
  errors: number;
  readBytes: number;
  writtenBytes: number;
}

type Phase = 'flags' | 'options' | 'transmission' | 'closing';

/**
 * One client connection: the handshake, the option phase, then requests
 * run concurrently and answered out of order. Reading stops while the
 * requests in flight hold too many bytes or while an option is being
 * answered, so memory stays bounded whatever the client sends or fails to
 * read. A framing violation closes this connection only, and so does a
 * handshake not finished within its time: a client cannot hold a
 * connection slot without entering transmission.
 */
export class Connection {
  /** Settles once the socket closed, every request in flight finished and the final flush ran. */
  readonly done: Promise<void>;
  private readonly queue = new ByteQueue();
  private phase: Phase = 'flags';
  private negotiation: Negotiation | undefined;
  private agreement: Agreement | undefined;
  private optionBusy = false;
  private paused = false;
  private stopping = false;
  private inFlightRequests = 0;
  private inFlightBytes = 0;
  private idleWaiters: Array<() => void> = [];
  private finishing: Promise<void> | undefined;
  private readonly counters: ConnectionCounters = { requests: 0, errors: 0, readBytes: 0, writtenBytes: 0 };
  /** The socket NBD is spoken on: the accepted one, then its TLS session after NBD_OPT_STARTTLS. */
  private socket: Socket;
  /** Transmission replies, gathered per event-loop turn into one socket write. */
  private readonly replies = new ReplyWriter(() => this.socket);
  private readonly handshakeTimer: NodeJS.Timeout;
  private markClosed: () => void = () => undefined;
  private readonly onData = (chunk: Buffer): void => {
    if (this.phase === 'closing') return;
    this.queue.push(chunk);
    this.pump();
  };
  private readonly onEnd = (): void => void this.finish('client closed the connection');
  private readonly onError = (err: Error): void => this.log.debug({ conn: this.id, err: err.message }, 'socket error');
  /** A TLS error in the option phase is the handshake failing (a wrong key): worth a warning. */
  private readonly onTlsError = (err: Error): void => {
    if (this.phase === 'options') this.log.warn({ conn: this.id, err: err.message }, 'TLS handshake failed: closing the connection');
    else this.onError(err);
  };
  private readonly onClose = (): void => this.markClosed();

  constructor(
    socket: Socket,
    private readonly catalog: ExportCatalog,
    private readonly log: NbdLogger,
    readonly id: number,
    private readonly limits: ConnectionLimits = DEFAULT_LIMITS,
    private readonly handshake: HandshakeOptions = DEFAULT_HANDSHAKE,
    /** Set on a connection over the server's limit: every option is refused with this text (Negotiation). */
    private readonly refusal?: string,
  ) {
    this.socket = socket;
    const closed = new Promise<void>((resolve) => (this.markClosed = resolve));
    this.listen(socket);
    this.done = closed.then(() => this.finish('connection lost'));
    this.handshakeTimer = setTimeout(() => this.handshakeExpired(), handshake.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    socket.write(greeting());
  }

  private listen(socket: Socket, kind: 'plain' | 'TLS' = 'plain'): void {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', kind === 'TLS' ? this.onTlsError : this.onError);
    socket.once('close', this.onClose);
  }

  /** The export this connection attached to (undefined before transmission) and what it did (`cowvol status`). */
  stats(): { exportName: string | undefined; counters: Readonly<ConnectionCounters> } {
    return { exportName: this.agreement?.export.name, counters: this.counters };
  }

  /**
   * True when this connection is attached to `exportName`, or its option in
   * progress names it (the reply may still be on its way; §14.8), or, for
   * `snapshot/<name>`, it has that snapshot's dirty bitmap selected (§14.9).
   */
  claims(exportName: string): boolean {
    if (this.agreement ? this.agreement.export.name === exportName : this.negotiation?.claimedExport === exportName) return true;
    // A selected qemu:dirty-bitmap:<name> pins snapshot <name> too (Negotiation.claimedBitmaps).
    if (!exportName.startsWith(SNAPSHOT_EXPORT_PREFIX)) return false;
    const bitmaps = this.agreement ? dirtySnapshotsOf(this.agreement.contexts) : (this.negotiation?.claimedBitmaps ?? []);
    return bitmaps.includes(exportName.slice(SNAPSHOT_EXPORT_PREFIX.length));
  }

  /** Refuses new requests (ESHUTDOWN), finishes those in flight, flushes, closes. */
  stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.handshakeTimer);
    if (this.phase !== 'transmission') {
      this.phase = 'closing';
      this.queue.clear();
      this.closeSocket();
    } else {
      // Requests that arrive meanwhile are still read, and answered ESHUTDOWN.
      const force = setTimeout(() => {
        this.log.warn({ conn: this.id, stopDrainMs: STOP_DRAIN_MS }, 'the client did not take its replies in time: closing the connection');
        this.socket.destroy(); // the replies' writes fail, their requests count as done, and finish() flushes and closes
      }, STOP_DRAIN_MS);
      void this.idle().then(() => {
        clearTimeout(force);
        return this.finish('server stopping');
      });
    }
    return this.done;
  }

  /** Parses and starts everything complete in the queue, within the limits. */
  private pump(): void {
    try {
      for (;;) {
        if (this.phase === 'flags') {
          const flags = parseClientFlags(this.queue);
          if (flags === undefined) return;
          this.negotiation = new Negotiation(this.catalog, (flags & NBD_FLAG_C_NO_ZEROES) !== 0, this.handshake.tlsPsk ? 'required' : 'off', this.refusal);
          this.phase = 'options';
        } else if (this.phase === 'options') {
          if (this.optionBusy) return;
          const option = parseOption(this.queue);
          if (!option) return;
          this.optionBusy = true;
          this.setPaused(true);
          assert(this.negotiation !== undefined, 'the flags phase made the negotiation');
          void this.negotiation.handle(option).then(
            (step) => {
              if (step.next === 'options') this.logRefusal(option.option, step.replies.at(-1));
              if (step.next === 'starttls') this.startTls(step.replies);
              else this.afterOption(step.replies, step.next === 'transmission' ? step.agreement : step.next);
            },
            (err: unknown) => this.fail(err, `option ${option.option} failed`),
          );
          return;
        } else if (this.phase === 'transmission') {
          if (this.full()) {
            this.setPaused(true);
            return;
          }
          const request = parseRequest(this.queue);
          if (!request) return;
          if (request.type === NBD_CMD_DISC) return void this.finish('client disconnected (NBD_CMD_DISC)');
          this.dispatch(request);
        } else return;
      }
    } catch (err) {
      if (!(err instanceof NbdFramingError)) throw err;
      this.log.warn({ conn: this.id, code: err.code, err: err.message }, 'framing violation: closing the connection');
      this.phase = 'closing';
      this.queue.clear();
      this.socket.destroy();
    }
  }

  private afterOption(replies: Buffer[], next: Agreement | 'options' | 'close'): void {
    // The next option is read only once these replies left the process: a
    // client that sends options without reading the replies stops being read.
    this.send(replies, () => this.optionAnswered(next));
  }

  private optionAnswered(next: Agreement | 'options' | 'close'): void {
    this.optionBusy = false;
    if (next === 'close' || this.stopping || this.phase === 'closing') {
      this.phase = 'closing';
      this.closeSocket();
      return;
    }
    if (next !== 'options') {
      clearTimeout(this.handshakeTimer);
      this.agreement = next;
      this.phase = 'transmission';
      this.log.info({ conn: this.id, export: next.export.name, structured: next.structured, baseAllocation: next.baseAllocation }, 'client attached');
    }
    this.setPaused(false);
    this.pump();
  }

  /**
   * Sends the ACK to NBD_OPT_STARTTLS in clear and, in the same tick, puts
   * a TLS session on the socket: the client's TLS handshake can only come
   * after the ACK, so no byte of it is read in clear. Bytes the client sent
   * after STARTTLS and before the ACK break the protocol and close the
   * connection. The option phase then goes on inside TLS.
   */
  private startTls(replies: Buffer[]): void {
    const keys = this.handshake.tlsPsk;
    const raw = this.socket;
    if (this.phase === 'closing') return; // stopped or timed out while the option was answered
    if (!keys) {
      this.fail(new Error('STARTTLS acknowledged without keys'), 'cannot start TLS');
      return;
    }
    if (this.queue.length > 0 || raw.readableLength > 0) {
      this.log.warn({ conn: this.id }, 'bytes after NBD_OPT_STARTTLS before its reply: closing the connection');
      this.phase = 'closing';
      raw.destroy();
      return;
    }
    this.send(replies);
    raw.off('data', this.onData).off('end', this.onEnd).off('error', this.onError).off('close', this.onClose);
    const secure = startTlsPsk(raw, keys);
    this.socket = secure;
    this.listen(secure, 'TLS');
    secure.once('secure', () => this.log.info({ conn: this.id, protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'TLS started'));
    this.optionBusy = false;
    this.paused = false; // the TLS socket flows; the paused plain one is no longer read
    this.pump();
  }

  /** The option phase outlived HandshakeOptions.handshakeTimeoutMs: the client loses its slot. */
  private handshakeExpired(): void {
    if (this.phase !== 'flags' && this.phase !== 'options') return;
    this.log.warn({ conn: this.id, handshakeTimeoutMs: this.handshake.handshakeTimeoutMs }, 'handshake not finished in time: closing the connection');
    this.phase = 'closing';
    this.queue.clear();
    this.socket.destroy();
  }

  /** Logs an option answered with an error reply (bit 31 of the reply type; docs/FORMAT.md §10.2). */
  private logRefusal(option: number, last: Buffer | undefined): void {
    if (!last || last.length < 20) return;
    const replyType = last.readUInt32BE(12);
    if (replyType < 2 ** 31) return;
    this.log.info({ conn: this.id, option, replyType: `0x${replyType.toString(16)}`, err: last.subarray(20).toString('utf8') }, 'option refused');
  }

  private dispatch(request: RequestMessage): void {
    const agreement = this.agreement;
    assert(agreement !== undefined, 'requests are parsed only in the transmission phase, after the agreement');
    const heldBytes = REQUEST_HEADER_BYTES + (request.payload?.length ?? 0) + replyBytesOf(agreement, request);
    this.inFlightRequests++;
    this.inFlightBytes += heldBytes;
    this.counters.requests++;
    void this.answer(agreement, request).then((replies) => this.replies.queue(replies, () => this.release(heldBytes)));
  }

  /** Runs one request; its reply, or its error reply (never rejects). */
  private async answer(agreement: Agreement, request: RequestMessage): Promise<Buffer[]> {
    try {
      validateRequest(agreement, request, this.stopping);
      const replies = await runRequest(agreement, request);
      if (request.type === NBD_CMD_READ) this.counters.readBytes += request.lengthBytes;
      else if (request.payload !== undefined) this.counters.writtenBytes += request.payload.length;
      return replies;
    } catch (err) {
      const errno = errnoFor(err);
      const message = err instanceof Error ? err.message : String(err);
      this.counters.errors++;
      const fields = { conn: this.id, type: request.type, offsetBytes: request.offsetBytes, lengthBytes: request.lengthBytes, errno, err: message };
      if (errno === NBD_EINVAL || errno === NBD_EPERM) this.log.debug(fields, 'request refused');
      else this.log.warn(fields, 'request failed');
      return errorReply(agreement, request, errno, message);
    }
  }

  private full(): boolean {
    return this.inFlightRequests >= this.limits.maxInFlightRequests || this.inFlightBytes >= this.limits.maxInFlightBytes;
  }

  private release(heldBytes: number): void {
    this.inFlightRequests--;
    this.inFlightBytes -= heldBytes;
    if (this.inFlightRequests === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    if (this.paused && !this.full() && this.phase === 'transmission') {
      this.setPaused(false);
      this.pump();
    }
  }

  /** Writes `buffers` (option-phase replies) as one message; `written` runs once they left (or can no longer leave) the process. */
  private send(buffers: Buffer[], written?: () => void): void {
    if (this.socket.destroyed || !this.socket.writable) return written?.();
    this.socket.cork();
    buffers.forEach((b, i) => this.socket.write(b, i === buffers.length - 1 && written ? () => written() : undefined));
    this.socket.uncork();
    if (buffers.length === 0) written?.();
  }

  private setPaused(paused: boolean): void {
    if (paused === this.paused) return;
    this.paused = paused;
    if (paused) this.socket.pause();
    else this.socket.resume();
  }

  private idle(): Promise<void> {
    return this.inFlightRequests === 0 ? Promise.resolve() : new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops reading, lets requests in flight finish, flushes a writable export, closes (once). */
  private finish(reason: string): Promise<void> {
    this.finishing ??= (async () => {
      clearTimeout(this.handshakeTimer);
      this.phase = 'closing';
      this.queue.clear();
      this.setPaused(false); // read (and drop) what still comes, so the client's end is seen
      await this.idle();
      const target = this.agreement?.export;
      if (target && !target.readOnly) await target.flush().catch((err: unknown) => this.log.error({ conn: this.id, err: String(err) }, 'flush at disconnect failed'));
      this.closeSocket();
      this.log.info({ conn: this.id, reason, ...this.counters }, 'connection closed');
    })();
    return this.finishing;
  }

  /** Ends our side; a client that never closes its side does not hold a stopping server. */
  private closeSocket(): void {
    this.setPaused(false); // read (and drop) what still comes, so the client's end is seen
    this.socket.end();
    setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS).unref();
  }

  private fail(err: unknown, message: string): void {
    this.log.error({ conn: this.id, err: err instanceof Error ? err.message : String(err) }, message);
    this.phase = 'closing';
    this.socket.destroy();
  }
}

/**
 * The memory a request may hold while it runs, beyond its header and
 * payload, charged against the connection's in-flight bytes: a READ its
 * length (at most MAX_PAYLOAD_BYTES); a BLOCK_STATUS
 * {@link STATUS_WORK_FACTOR} times the largest reply its contexts allow
 * (statusReplyBytes: about 1 MiB, so about 8 MiB: the changed ranges and
 * extents it is built from are JavaScript objects of 40–60 bytes per
 * 8-byte descriptor); anything else nothing.
 */
function replyBytesOf(agreement: Agreement, request: RequestMessage): number {
  if (request.type === NBD_CMD_READ) return Math.min(request.lengthBytes, MAX_PAYLOAD_BYTES);
  if (request.type === NBD_CMD_BLOCK_STATUS && agreement.contexts.length > 0) return STATUS_WORK_FACTOR * statusReplyBytes(agreement.contexts.length);
  return 0;
}

/**
 * Memory a BLOCK_STATUS request holds per byte of its largest reply, as
 * measured: 64 such requests of 17 contexts in flight (1 MiB of reply
 * each) grew a server by about 270 MB. With the default 64 MiB of
 * in-flight bytes a connection runs about 8 of them at a time.
 */
export const STATUS_WORK_FACTOR = 8;
