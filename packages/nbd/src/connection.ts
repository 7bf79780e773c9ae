import type { Socket } from 'node:net';
import type { ExportCatalog } from './block-export.js';
import { ByteQueue } from './byte-queue.js';
import { MAX_PAYLOAD_BYTES, NBD_CMD_DISC, NBD_CMD_READ, NBD_EINVAL, NBD_EPERM, NBD_FLAG_C_NO_ZEROES, REQUEST_HEADER_BYTES } from './constants.js';
import { NbdFramingError } from './errors.js';
import { parseClientFlags, parseOption, parseRequest, type RequestMessage } from './framing.js';
import type { NbdLogger } from './logger.js';
import { Negotiation, type Agreement } from './negotiation.js';
import { greeting } from './replies.js';
import { errnoFor, errorReply, runRequest, validateRequest } from './request-handler.js';

/** Bounds of one connection's requests in flight (docs/ARCHITECTURE.md §14.2). */
export interface ConnectionLimits {
  /** Request, payload and reply bytes held between reading a request and handing its reply to the kernel. Default 64 MiB. */
  maxInFlightBytes: number;
  /** Requests between read and reply. Default 128. */
  maxInFlightRequests: number;
}

/** How long a finished connection waits for the client to close its side before the socket is destroyed. */
const CLOSE_GRACE_MS = 2000;

export const DEFAULT_LIMITS: ConnectionLimits = { maxInFlightBytes: 64 * 1024 * 1024, maxInFlightRequests: 128 };

type Phase = 'flags' | 'options' | 'transmission' | 'closing';

/**
 * One client connection: the handshake, the option phase, then requests
 * run concurrently and answered out of order. Reading stops while the
 * requests in flight hold too many bytes or while an option is being
 * answered, so memory stays bounded whatever the client sends or fails to
 * read. A framing violation closes this connection only.
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
  private readonly counters = { requests: 0, errors: 0, readBytes: 0, writtenBytes: 0 };

  constructor(
    private readonly socket: Socket,
    private readonly catalog: ExportCatalog,
    private readonly log: NbdLogger,
    readonly id: number,
    private readonly limits: ConnectionLimits = DEFAULT_LIMITS,
  ) {
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => {
      if (this.phase === 'closing') return;
      this.queue.push(chunk);
      this.pump();
    });
    socket.on('end', () => void this.finish('client closed the connection'));
    socket.on('error', (err) => this.log.debug({ conn: id, err: err.message }, 'socket error'));
    this.done = closed.then(() => this.finish('connection lost'));
    socket.write(greeting());
  }

  /** Refuses new requests (ESHUTDOWN), finishes those in flight, flushes, closes. */
  stop(): Promise<void> {
    this.stopping = true;
    if (this.phase !== 'transmission') {
      this.phase = 'closing';
      this.queue.clear();
      this.closeSocket();
    } else {
      // Requests that arrive meanwhile are still read, and answered ESHUTDOWN.
      void this.idle().then(() => this.finish('server stopping'));
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
          this.negotiation = new Negotiation(this.catalog, (flags & NBD_FLAG_C_NO_ZEROES) !== 0);
          this.phase = 'options';
        } else if (this.phase === 'options') {
          if (this.optionBusy) return;
          const option = parseOption(this.queue);
          if (!option) return;
          this.optionBusy = true;
          this.setPaused(true);
          void this.negotiation!.handle(option).then(
            (step) => {
              if (step.next === 'options') this.logRefusal(option.option, step.replies.at(-1));
              this.afterOption(step.replies, step.next === 'transmission' ? step.agreement : step.next);
            },
            (err: unknown) => this.fail(err, `option ${option.option} failed`),
          );
          return;
        } else if (this.phase === 'transmission') {
          if (this.full()) return this.setPaused(true);
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
    if (next === 'close' || this.stopping) {
      this.phase = 'closing';
      this.closeSocket();
      return;
    }
    if (next !== 'options') {
      this.agreement = next;
      this.phase = 'transmission';
      this.log.info({ conn: this.id, export: next.export.name, structured: next.structured, baseAllocation: next.baseAllocation }, 'client attached');
    }
    this.setPaused(false);
    this.pump();
  }

  /** Logs an option answered with an error reply (bit 31 of the reply type; docs/FORMAT.md §10.2). */
  private logRefusal(option: number, last: Buffer | undefined): void {
    const replyType = last && last.length >= 20 ? last.readUInt32BE(12) : 0;
    if (replyType < 2 ** 31) return;
    this.log.info({ conn: this.id, option, replyType: `0x${replyType.toString(16)}`, err: last!.subarray(20).toString('utf8') }, 'option refused');
  }

  private dispatch(request: RequestMessage): void {
    const agreement = this.agreement!;
    const heldBytes = REQUEST_HEADER_BYTES + (request.payload?.length ?? 0) + (request.type === NBD_CMD_READ ? Math.min(request.lengthBytes, MAX_PAYLOAD_BYTES) : 0);
    this.inFlightRequests++;
    this.inFlightBytes += heldBytes;
    this.counters.requests++;
    const run = async (): Promise<Buffer[]> => {
      try {
        validateRequest(agreement, request, this.stopping);
        const replies = await runRequest(agreement, request);
        if (request.type === NBD_CMD_READ) this.counters.readBytes += request.lengthBytes;
        this.counters.writtenBytes += request.payload?.length ?? 0;
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
    };
    void run().then((replies) => this.send(replies, () => this.release(heldBytes)));
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

  /** Writes `buffers` as one message; `written` runs once they left (or can no longer leave) the process. */
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
