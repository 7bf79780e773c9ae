import { chmod, lstat, stat, unlink } from 'node:fs/promises';
import { createConnection, createServer, isIP, type Server, type Socket } from 'node:net';
import { dirname, resolve as resolvePath } from 'node:path';
import { CowvolError, IoError } from '@cowvol/base';
import { InvalidArgumentError } from '@cowvol/cow-core';
import type { ExportCatalog } from './block-export.js';
import { Connection, DEFAULT_HANDSHAKE, DEFAULT_LIMITS, type ConnectionCounters, type ConnectionLimits, type HandshakeOptions } from './connection.js';
import { EndpointInUseError } from './errors.js';
import { SILENT_LOGGER, type NbdLogger } from './logger.js';
import type { PskKeys } from './tls-psk.js';

/** Where to listen: a unix socket (created with mode 0600) or a TCP address. */
export type Endpoint = { socketPath: string } | { host: string; port: number };

export interface NbdServerOptions {
  catalog: ExportCatalog;
  logger?: NbdLogger;
  /** Connections served at once; one more is greeted and its options refused with NBD_REP_ERR_POLICY naming the limit (MAX_REFUSED_CONNECTIONS). Default 16. */
  maxConnections?: number;
  limits?: ConnectionLimits;
  /** TLS-PSK keys (loadPskKeys): every connection must then start TLS before any other option (docs/ARCHITECTURE.md §14.6). */
  tlsPsk?: PskKeys;
  /** Milliseconds a connection may spend before transmission (TLS handshake included); then it is closed. Default 30 000. */
  handshakeTimeoutMs?: number;
  /** Exports whose closed connections' totals are kept (`status`); beyond, the least recently closed are dropped. Default MAX_EXPORT_TOTALS. */
  maxExportTotals?: number;
}

export const DEFAULT_MAX_CONNECTIONS = 16;
/**
 * Bound on the exports whose totals a server keeps (docs/ARCHITECTURE.md
 * §16): twice the snapshots a volume may hold (2 × MAX_SNAPSHOTS), plus
 * `live`. A server that
 * runs for months while snapshots are created, attached and deleted would
 * otherwise keep an entry per name it ever served.
 */
export const MAX_EXPORT_TOTALS = 131_073;

/**
 * An NBD server (fixed newstyle; docs/ARCHITECTURE.md §14) over the
 * exports of a catalog, on any number of endpoints.
 */
export class NbdServer {
  private readonly listeners: Server[] = [];
  private readonly connections = new Set<Connection>();
  /** Connections over maxConnections, told so in the option phase (at most MAX_REFUSED_CONNECTIONS; Negotiation). */
  private readonly refused = new Set<Connection>();
  private readonly log: NbdLogger;
  private readonly maxConnections: number;
  private readonly handshake: HandshakeOptions;
  private nextId = 1;
  private stopping: Promise<void> | undefined;
  /** The URIs listen() resolved with, in order. */
  private readonly uris: string[] = [];
  /** Counters of the connections that closed, per export name, least recently closed first; at most maxExportTotals of them. */
  private readonly closedTotals = new Map<string, ExportTotals>();
  private readonly maxExportTotals: number;

  /** @throws INVALID_ARGUMENT when maxConnections, maxExportTotals or handshakeTimeoutMs is not a positive integer */
  constructor(private readonly options: NbdServerOptions) {
    this.log = options.logger ?? SILENT_LOGGER;
    this.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    if (!Number.isSafeInteger(this.maxConnections) || this.maxConnections < 1) throw new InvalidArgumentError(`maxConnections must be a positive integer, got ${this.maxConnections}`);
    this.maxExportTotals = options.maxExportTotals ?? MAX_EXPORT_TOTALS;
    if (!Number.isSafeInteger(this.maxExportTotals) || this.maxExportTotals < 1) throw new InvalidArgumentError(`maxExportTotals must be a positive integer, got ${this.maxExportTotals}`);
    this.handshake = { tlsPsk: options.tlsPsk, handshakeTimeoutMs: options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE.handshakeTimeoutMs };
    const timeoutMs = this.handshake.handshakeTimeoutMs;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 2 ** 31 - 1)
      throw new InvalidArgumentError(`handshakeTimeoutMs must be a positive integer (at most 2^31-1), got ${timeoutMs}`);
  }

  /**
   * Starts listening on `endpoint` and resolves with its NBD URI
   * (`nbd+unix:///?socket=<absolute path>` or `nbd://<host>:<port>/`;
   * `nbds+unix` and `nbds` when TLS is required).
   * A stale unix socket (nothing accepts on it) is replaced.
   * @throws ENDPOINT_IN_USE (address taken, a server on the socket, a file that is not a socket), INVALID_ARGUMENT (cannot listen there: no such directory, no permission, unknown host), IO_ERROR (a stale socket cannot be removed, or its mode set)
   */
  async listen(endpoint: Endpoint): Promise<string> {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => this.accept(socket));
    if ('socketPath' in endpoint) {
      const path = resolvePath(endpoint.socketPath);
      await listenUnix(server, path).catch((err: unknown) => {
        server.close();
        if (err instanceof CowvolError) throw err;
        throw new IoError(`cannot listen on ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
      });
      this.listeners.push(server);
      return this.endpoint(`${this.scheme()}+unix:///?socket=${encodeURI(path).replace(/[?#&=]/g, encodeURIComponent)}`);
    }
    await listenOn(server, `${endpoint.host}:${endpoint.port}`, () => server.listen(endpoint.port, endpoint.host));
    this.listeners.push(server);
    const address = server.address();
    const port = typeof address === 'object' && address ? address.port : endpoint.port;
    return this.endpoint(`${this.scheme()}://${isIP(endpoint.host) === 6 ? `[${endpoint.host}]` : endpoint.host}:${port}/`);
  }

  /**
   * What the server serves now (`cowvol status`; docs/ARCHITECTURE.md
   * §14.8): its endpoints, the connections open, and per export name the
   * connections attached, requests, bytes read and written and requests
   * answered with an error, since the server started.
   */
  status(): NbdServerStatus {
    const exports = new Map<string, ExportTotals>();
    for (const [name, totals] of this.closedTotals) exports.set(name, { ...totals });
    for (const connection of this.connections) {
      const { exportName, counters } = connection.stats();
      if (exportName === undefined) continue;
      const totals = exports.get(exportName) ?? emptyTotals();
      totals.connections++;
      addCounters(totals, counters);
      exports.set(exportName, totals);
    }
    return { endpoints: [...this.uris], connections: this.connections.size, exports: [...exports].map(([name, totals]) => ({ name, ...totals })) };
  }

  /** Connections over maxConnections being told so now (at most MAX_REFUSED_CONNECTIONS). */
  get refusing(): number {
    return this.refused.size;
  }

  /** How many open connections are attached to `exportName` or are attaching to it (Connection.claims; docs/ARCHITECTURE.md §14.8). */
  connectionsTo(exportName: string): number {
    let count = 0;
    for (const connection of this.connections) if (connection.claims(exportName)) count++;
    return count;
  }

  private endpoint(uri: string): string {
    this.uris.push(uri);
    return uri;
  }

  /**
   * Stops: accepts no new connection, answers new requests ESHUTDOWN,
   * finishes the requests in flight, flushes each writable export, closes
   * every connection. Idempotent. The caller closes the volume afterwards.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const closed = this.listeners.map((l) => new Promise<void>((resolve) => l.close(() => resolve())));
      await Promise.all([...this.connections, ...this.refused].map((c) => c.stop()));
      await Promise.all(closed);
    })();
    return this.stopping;
  }

  private scheme(): 'nbd' | 'nbds' {
    return this.handshake.tlsPsk ? 'nbds' : 'nbd';
  }

  /** Greets a connection over maxConnections and refuses its every option with a text naming the limit (docs/ARCHITECTURE.md §14.6). */
  private refuse(socket: Socket): void {
    const text = `too many connections: this server serves at most ${this.maxConnections} at once; try again once one closes`;
    const handshake = { ...this.handshake, handshakeTimeoutMs: Math.min(this.handshake.handshakeTimeoutMs, REFUSAL_TIMEOUT_MS) };
    const connection = new Connection(socket, this.options.catalog, this.log, this.nextId++, this.options.limits ?? DEFAULT_LIMITS, handshake, text);
    this.refused.add(connection);
    void connection.done.finally(() => this.refused.delete(connection));
  }

  private accept(socket: Socket): void {
    if (this.stopping || this.connections.size >= this.maxConnections) {
      this.log.warn({ connections: this.connections.size, maxConnections: this.maxConnections }, this.stopping ? 'refused a connection: stopping' : 'refused a connection: too many');
      if (this.stopping || this.refused.size >= MAX_REFUSED_CONNECTIONS) socket.destroy();
      else this.refuse(socket);
      return;
    }
    socket.setNoDelay(true);
    const connection = new Connection(socket, this.options.catalog, this.log, this.nextId++, this.options.limits ?? DEFAULT_LIMITS, this.handshake);
    this.connections.add(connection);
    this.log.info({ conn: connection.id, remote: socket.remoteAddress ?? 'unix' }, 'connection opened');
    void connection.done.finally(() => {
      this.connections.delete(connection);
      const { exportName, counters } = connection.stats();
      if (exportName === undefined) return;
      const totals = this.closedTotals.get(exportName) ?? emptyTotals();
      addCounters(totals, counters);
      // Most recently closed last (a Map keeps insertion order): the first entries are the ones to drop.
      this.closedTotals.delete(exportName);
      this.closedTotals.set(exportName, totals);
      for (const name of this.closedTotals.keys()) {
        if (this.closedTotals.size <= this.maxExportTotals) break;
        this.closedTotals.delete(name);
      }
    });
  }
}

/**
 * Connections over the limit that are answered in the option phase (the
 * greeting, then NBD_REP_ERR_POLICY naming the limit) instead of being
 * closed unanswered; past this many at once, the next are closed at accept.
 * Each lives at most REFUSAL_TIMEOUT_MS and MAX_REFUSED_OPTIONS options.
 */
export const MAX_REFUSED_CONNECTIONS = 16;
/** How long a refused connection may take to read its refusal (or the handshake timeout, when shorter). */
export const REFUSAL_TIMEOUT_MS = 5000;

/** Per export: connections attached now, and what every connection to it did since the server started. */
export interface ExportTotals {
  connections: number;
  requests: number;
  readBytes: number;
  writtenBytes: number;
  /** Requests answered with an NBD error. */
  errors: number;
}

/** NbdServer.status(): `endpoints` are NBD URIs; `connections` counts every open connection, attached to an export or not. */
export interface NbdServerStatus {
  endpoints: string[];
  connections: number;
  exports: Array<{ name: string } & ExportTotals>;
}

function emptyTotals(): ExportTotals {
  return { connections: 0, requests: 0, readBytes: 0, writtenBytes: 0, errors: 0 };
}

function addCounters(totals: ExportTotals, counters: ConnectionCounters): void {
  totals.requests += counters.requests;
  totals.readBytes += counters.readBytes;
  totals.writtenBytes += counters.writtenBytes;
  totals.errors += counters.errors;
}

/** Longest unix socket path Linux binds (sockaddr_un's sun_path, 108 bytes, less its NUL). */
export const MAX_UNIX_SOCKET_PATH_BYTES = 107;

/** Listens on a unix socket created with mode 0600, replacing a stale socket file (also the control channel's, ./control/control-server.ts). */
export async function listenUnix(server: Server, path: string): Promise<void> {
  // sun_path holds 108 bytes with its NUL: Node binds a longer path cut short (another file, left behind), so refuse it first.
  if (Buffer.byteLength(path, 'utf8') > MAX_UNIX_SOCKET_PATH_BYTES) {
    throw new InvalidArgumentError(
      `cannot listen on ${path}: a unix socket path is at most ${String(MAX_UNIX_SOCKET_PATH_BYTES)} bytes (this one is ${String(Buffer.byteLength(path, 'utf8'))}); give --socket a shorter path, or move the volume to a shorter one`,
      { details: { path, maxBytes: MAX_UNIX_SOCKET_PATH_BYTES } },
    );
  }
  const folder = await stat(dirname(path)).catch(() => undefined);
  if (folder?.isDirectory() !== true) throw new InvalidArgumentError(`cannot listen on ${path}: its folder ${dirname(path)} does not exist (or is not a folder)`, { details: { path } });
  await clearStaleSocket(path);
  const umask = process.umask(0o177); // the socket is created 0600 (bind happens inside listen)
  try {
    await listenOn(server, path, () => server.listen(path));
  } finally {
    process.umask(umask);
  }
  await chmod(path, 0o600);
}

/** Runs `start` and resolves once `server` listens. @throws ENDPOINT_IN_USE (address in use), INVALID_ARGUMENT (any other refusal: no such directory, permission, bad host) */
function listenOn(server: Server, what: string, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      reject(err.code === 'EADDRINUSE' ? new EndpointInUseError(what, { cause: err }) : new InvalidArgumentError(`cannot listen on ${what}: ${err.message}`, { cause: err }));
    };
    server.once('error', onError);
    server.once('listening', () => {
      server.off('error', onError);
      resolve();
    });
    start();
  });
}

/** Removes a socket file nothing listens on; refuses a live socket or any other kind of file. */
async function clearStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket()) throw new EndpointInUseError(path);
  const live = await new Promise<boolean>((resolve) => {
    const probe = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new EndpointInUseError(path);
  await unlink(path);
}
