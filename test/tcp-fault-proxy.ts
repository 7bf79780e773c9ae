/**
 * A TCP proxy for tests (node:net) between a client and a server (the
 * RADOS Gateway of the S3 tests), that injects network faults driven by a
 * seeded PRNG (mulberry32), so a printed seed replays the same decisions
 * (README "Tests"; docs/ARCHITECTURE.md §17 for what the S3 client makes of them):
 *
 * - a cut: with probability `cutProbability` per accepted connection, the
 *   connection is doomed to be cut after a random number of bytes (uniform
 *   in [0, cutWithinBytes)) in one direction — client to server (mid-request)
 *   or server to client (mid-response), picked at random; the bytes up to
 *   that offset are forwarded, then both sockets are destroyed (an RST, as
 *   when a middlebox or the server dies);
 * - a delay: with probability `delayProbability` per chunk of data from the
 *   server, the reply is held for a random time in [0, maxDelayMs) before
 *   it is forwarded (the source is paused meanwhile, so order is kept).
 *
 * `setFaulting(false)` stops both for new data and new connections (a
 * doomed connection is spared), so a test can let a retry finish.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { mulberry32 } from '@cowvol/test-support';

export interface FaultProxyOptions {
  /** Where connections are forwarded. */
  targetHost: string;
  targetPort: number;
  /** The PRNG seed; printed by startFaultProxy. */
  seed: number;
  /** Chance that an accepted connection is cut (0..1); default 0.3. */
  cutProbability?: number;
  /** A doomed connection is cut within this many bytes of its chosen direction; default 8 MiB. */
  cutWithinBytes?: number;
  /** Chance that one chunk of a reply is delayed (0..1); default 0.05. */
  delayProbability?: number;
  /** Longest delay of a chunk; default 200 ms. */
  maxDelayMs?: number;
  /**
   * Cut the first connection accepted after faulting is turned on (and at
   * start) mid-request, within its first {@link FIRST_CUT_WITHIN_BYTES}
   * bytes — every request is longer — so a run injects at least one cut
   * whatever the seed and however few connections the client opens (an
   * S3 client keeps a handful alive). Default false.
   */
  cutFirstConnection?: boolean;
  /** Where the seed line goes; default console.log. */
  log?: (line: string) => void;
}

/** What the proxy did so far. */
export interface FaultProxyStats {
  connections: number;
  /** Connections cut client to server (mid-request) and server to client (mid-response). */
  cutsUp: number;
  cutsDown: number;
  delays: number;
  bytesUp: number;
  bytesDown: number;
}

export interface FaultProxy {
  /** The proxy's loopback port. */
  readonly port: number;
  /** `http://127.0.0.1:<port>`: an S3 endpoint to give the client instead of the server's. */
  readonly endpoint: string;
  readonly seed: number;
  readonly stats: FaultProxyStats;
  /** Turns fault injection on or off (on at start). */
  setFaulting(on: boolean): void;
  /** Stops listening and destroys every open connection. */
  close(): Promise<void>;
}

type Direction = 'up' | 'down';

/** A forced first cut lands within this many request bytes: less than any HTTP request line and headers. */
export const FIRST_CUT_WITHIN_BYTES = 128;

/** Starts a proxy on a free loopback port. */
export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const random = mulberry32(options.seed);
  const cutProbability = options.cutProbability ?? 0.3;
  const cutWithinBytes = options.cutWithinBytes ?? 8 * 1024 * 1024;
  const delayProbability = options.delayProbability ?? 0.05;
  const maxDelayMs = options.maxDelayMs ?? 200;
  const stats: FaultProxyStats = { connections: 0, cutsUp: 0, cutsDown: 0, delays: 0, bytesUp: 0, bytesDown: 0 };
  const open = new Set<Socket>();
  let faulting = true;
  /** The next connection accepted while faulting is cut for sure (`cutFirstConnection`). */
  let forceCut = options.cutFirstConnection === true;

  const onConnection = (client: Socket): void => {
    stats.connections++;
    // Half-open both ways: a client that ends its request still gets the reply.
    const server = createConnection({ host: options.targetHost, port: options.targetPort, allowHalfOpen: true });
    open.add(client);
    open.add(server);
    let cut = false;
    const kill = (): void => {
      cut = true;
      client.resetAndDestroy();
      server.resetAndDestroy();
    };
    client.on('error', kill);
    server.on('error', kill);
    // A clean close has already been passed on as an end (which flushes what is queued); a broken one breaks the other side.
    client.on('close', (hadError) => {
      open.delete(client);
      if (hadError) server.destroy();
    });
    server.on('close', (hadError) => {
      open.delete(server);
      if (hadError) client.destroy();
    });
    // Drawn for every connection, faulting or not, so the fate of the n-th connection depends only on the seed;
    // per-chunk draws come from the connection's own generator, since chunk boundaries vary from run to run.
    let doomed = random() < cutProbability;
    let cutDirection: Direction = random() < 0.5 ? 'up' : 'down';
    let cutAtBytes = Math.floor(random() * cutWithinBytes);
    const chunkRandom = mulberry32(Math.floor(random() * 2 ** 32));
    if (faulting && forceCut) {
      // The same draws were taken, so the seed still decides every later connection.
      forceCut = false;
      doomed = true;
      cutDirection = 'up';
      cutAtBytes %= FIRST_CUT_WITHIN_BYTES;
    }
    const forwarded = { up: 0, down: 0 };
    const pipe = (from: Socket, to: Socket, direction: Direction): void => {
      // Every chunk, delayed or not, and the end go through one chain per direction, so a delay never reorders the bytes.
      let tail: Promise<void> = Promise.resolve();
      const forward = (chunk: Buffer): void => {
        if (cut) return;
        const cutHere = faulting && doomed && direction === cutDirection && forwarded[direction] + chunk.length > cutAtBytes;
        if (cutHere) {
          cut = true;
          const head = chunk.subarray(0, cutAtBytes - forwarded[direction]);
          forwarded[direction] += head.length;
          if (direction === 'up') stats.cutsUp++;
          else stats.cutsDown++;
          if (head.length > 0) to.write(head);
          // Let the head leave before the reset, so the cut lands mid-message.
          setImmediate(kill);
          return;
        }
        if (to.destroyed) return;
        forwarded[direction] += chunk.length;
        if (direction === 'up') stats.bytesUp += chunk.length;
        else stats.bytesDown += chunk.length;
        to.write(chunk);
      };
      from.on('data', (chunk: Buffer) => {
        if (cut) return;
        const delayMs = faulting && direction === 'down' && chunkRandom() < delayProbability ? Math.floor(chunkRandom() * maxDelayMs) : -1;
        if (delayMs >= 0) {
          stats.delays++;
          from.pause(); // bounds what waits in the chain; chunks already on their way still queue behind this one
        }
        tail = tail.then(async () => {
          if (delayMs >= 0) {
            await new Promise((resolve) => setTimeout(resolve, delayMs));
            from.resume();
          }
          forward(chunk);
        });
      });
      from.on('end', () => {
        tail = tail.then(() => {
          to.end();
        });
      });
    };
    pipe(client, server, 'up');
    pipe(server, client, 'down');
  };

  const listener: Server = createServer({ allowHalfOpen: true }, onConnection);
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(0, '127.0.0.1', resolve);
  });
  const address = listener.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  (options.log ?? console.log)(
    `tcp fault proxy 127.0.0.1:${String(port)} -> ${options.targetHost}:${String(options.targetPort)} seed ${String(options.seed)} (cut ${String(cutProbability)} per connection within ${String(cutWithinBytes)} bytes, delay ${String(delayProbability)} per reply chunk up to ${String(maxDelayMs)} ms)`,
  );
  return {
    port,
    endpoint: `http://127.0.0.1:${String(port)}`,
    seed: options.seed,
    stats,
    setFaulting(on: boolean): void {
      if (on && !faulting && options.cutFirstConnection === true) forceCut = true;
      faulting = on;
    },
    close(): Promise<void> {
      for (const s of open) s.destroy();
      return new Promise<void>((resolve) =>
        listener.close(() => {
          resolve();
        }),
      );
    },
  };
}
