import { createServer, type Server, type Socket } from 'node:net';
import { CowvolError, IoError } from '@cowvol/base';
import { VolumeBusyError } from '@cowvol/cow-core';
import { SILENT_LOGGER, type NbdLogger } from '../logger.js';
import { listenUnix } from '../server.js';
import {
  CONTROL_CLOSE_GRACE_MS,
  CONTROL_IDLE_MS,
  MAX_CONTROL_CONNECTIONS,
  MAX_CONTROL_IN_FLIGHT,
  MAX_CONTROL_LINE_BYTES,
  encodeControlResponse,
  parseControlRequest,
  takeLines,
  type ControlRequest,
  type ControlResponse,
  type ParsedRequest,
} from './protocol.js';

/** One control method: takes the request's params, resolves with its JSON result; a CowvolError becomes an error response with its code. */
export type ControlMethod = (params: Record<string, unknown>) => Promise<unknown>;

/**
 * The control channel of `cowvol serve` (docs/ARCHITECTURE.md §14.8): a
 * unix socket (mode 0600) speaking the line protocol of ./protocol.ts
 * (docs/FORMAT.md §11). Each connection runs at most
 * MAX_CONTROL_IN_FLIGHT requests at once; a bad line gets an error
 * response, an over-long line an error response and the end of that
 * connection; nothing a client sends stops the server.
 */
export class ControlServer {
  private readonly sockets = new Set<Socket>();
  /** Requests being answered, with their method names. */
  private readonly running = new Map<Promise<void>, string>();
  private draining = false;

  private constructor(
    private readonly server: Server,
    private readonly methods: Readonly<Record<string, ControlMethod>>,
    private readonly volumePath: string,
    private readonly log: NbdLogger,
  ) {}

  /**
   * Listens on `socketPath` (a stale socket is replaced; created 0600).
   * @param methods the methods by name (docs/FORMAT.md §11.2)
   * @param volumePath the served volume, named in VOLUME_BUSY while stopping
   * @throws ENDPOINT_IN_USE, INVALID_ARGUMENT, IO_ERROR as NbdServer.listen
   */
  static async listen(socketPath: string, methods: Readonly<Record<string, ControlMethod>>, volumePath: string, logger: NbdLogger = SILENT_LOGGER): Promise<ControlServer> {
    const server = createServer();
    const control = new ControlServer(server, methods, volumePath, logger);
    server.on('connection', (socket: Socket) => control.accept(socket));
    await listenUnix(server, socketPath).catch((err: unknown) => {
      server.close();
      if (err instanceof CowvolError) throw err;
      throw new IoError(`cannot listen on ${socketPath}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    });
    return control;
  }

  /**
   * Refuses new requests (VOLUME_BUSY: the server is stopping) and
   * resolves once every request in flight finished, except those of the
   * methods in `exempt` (`stop`, which waits for the volume to close).
   * Used before the volume is closed.
   */
  async drain(exempt: readonly string[] = []): Promise<void> {
    this.draining = true;
    const waited = (): Array<Promise<void>> => [...this.running].filter(([, method]) => !exempt.includes(method)).map(([done]) => done);
    for (let left = waited(); left.length > 0; left = waited()) await Promise.allSettled(left);
  }

  /**
   * Closes the listener and every connection: their responses are written,
   * then each is ended, and destroyed after CONTROL_CLOSE_GRACE_MS if its
   * client has not closed its side (an idle client must not keep a stopped
   * server's process alive). Idempotent.
   */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.sockets) {
      socket.end();
      setTimeout(() => socket.destroy(), CONTROL_CLOSE_GRACE_MS).unref();
    }
    await closed;
  }

  private accept(socket: Socket): void {
    if (this.sockets.size >= MAX_CONTROL_CONNECTIONS) {
      this.log.warn({ maxConnections: MAX_CONTROL_CONNECTIONS }, 'refused a control connection: too many');
      // Answered before the request is read (id null), so the command says why: VOLUME_BUSY, not a broken connection (docs/FORMAT.md §11.1).
      const busy = new VolumeBusyError(this.volumePath, process.pid);
      const message = `${busy.message}: its server has ${String(MAX_CONTROL_CONNECTIONS)} control connections open, its limit (an idle one is closed after ${String(CONTROL_IDLE_MS / 1000)} s); try again in a moment`;
      socket.on('error', () => undefined);
      socket.end(encodeControlResponse({ id: null, error: { code: 'VOLUME_BUSY', message, details: { ...busy.details, served: true, controlConnections: MAX_CONTROL_CONNECTIONS } } }));
      setTimeout(() => socket.destroy(), CONTROL_CLOSE_GRACE_MS).unref();
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'control socket error'));
    let pending: Buffer = Buffer.alloc(0);
    const queued: Buffer[] = [];
    let inFlight = 0;
    // Idle: no request running or queued. A connection idle for CONTROL_IDLE_MS is closed (a request running is never cut short).
    let idleTimer: NodeJS.Timeout | undefined;
    const watchIdle = (): void => {
      clearTimeout(idleTimer);
      if (inFlight > 0 || queued.length > 0) return;
      idleTimer = setTimeout(() => {
        this.log.debug({ idleMs: CONTROL_IDLE_MS }, 'control connection idle: closing it');
        socket.destroy();
      }, CONTROL_IDLE_MS);
      idleTimer.unref();
    };
    socket.once('close', () => clearTimeout(idleTimer));
    watchIdle();
    const next = (): void => {
      while (inFlight < MAX_CONTROL_IN_FLIGHT && queued.length > 0) {
        inFlight++;
        const parsed = parseControlRequest(queued.shift() ?? Buffer.alloc(0));
        const done = this.answer(socket, parsed).finally(() => {
          inFlight--;
          this.running.delete(done);
          next();
          watchIdle();
        });
        this.running.set(done, parsed.ok ? parsed.request.method : '');
      }
      if (queued.length === 0 && socket.isPaused()) socket.resume();
    };
    socket.on('data', (chunk: Buffer) => {
      const taken = takeLines(pending, chunk, MAX_CONTROL_LINE_BYTES);
      pending = taken.rest;
      queued.push(...taken.lines);
      if (taken.overflow) {
        this.log.warn({ maxLineBytes: MAX_CONTROL_LINE_BYTES }, 'control line too long: closing the connection');
        socket.end(encodeControlResponse({ id: null, error: { code: 'INVALID_ARGUMENT', message: `a control line is longer than ${MAX_CONTROL_LINE_BYTES} bytes` } }));
        queued.length = 0;
        socket.removeAllListeners('data');
        return;
      }
      if (queued.length > 0) socket.pause();
      next();
      if (taken.lines.length > 0) watchIdle(); // bytes of no complete line do not keep a connection: only requests do
    });
  }

  /** Runs one parsed request line and writes its response. Never rejects. */
  private async answer(socket: Socket, parsed: ParsedRequest): Promise<void> {
    const response = parsed.ok ? await this.run(parsed.request) : parsed.response;
    if (!socket.destroyed && socket.writable) socket.write(encodeControlResponse(response));
  }

  private async run(request: ControlRequest): Promise<ControlResponse> {
    const method = Object.hasOwn(this.methods, request.method) ? this.methods[request.method] : undefined;
    try {
      if (method === undefined) return { id: request.id, error: { code: 'INVALID_ARGUMENT', message: `unknown control method ${JSON.stringify(request.method)}` } };
      if (this.draining) throw new VolumeBusyError(this.volumePath, process.pid);
      return { id: request.id, result: (await method(request.params)) ?? null };
    } catch (err) {
      if (err instanceof CowvolError) return { id: request.id, error: { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) } };
      this.log.error({ method: request.method, err: err instanceof Error ? err.message : String(err) }, 'control request failed');
      return { id: request.id, error: { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) } };
    }
  }
}
