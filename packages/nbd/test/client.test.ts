/**
 * NbdClient (docs/ARCHITECTURE.md §14.9) against the in-process NbdServer
 * over memory exports, against a scripted peer that breaks the connection,
 * and against qemu-nbd serving a raw file (a real peer; under CI=true a
 * missing qemu-nbd fails). Seeded data prints its seed.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { IoError, NoSpaceError } from '@cowvol/base';
import { mulberry32 } from '@cowvol/test-support';
import {
  CLIENT_MAX_IN_FLIGHT,
  MAX_PAYLOAD_BYTES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INIT_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_MAGIC,
  NbdClient,
  NbdServer,
} from '../src/index.js';
import { MemoryCatalog, MemoryExport } from './raw-client.js';

const SEED = Number(process.env.NBD_CLIENT_SEED ?? Date.now() % 2 ** 31);
console.log(`client.test.ts seed ${SEED} (NBD_CLIENT_SEED to repeat)`);

function randomBytes(n: number, seed: number): Buffer {
  const next = mulberry32(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(next() * 2 ** 32) >>> 0, i);
  return b;
}

/** An export whose writes fail with `failure`. */
class FailingExport extends MemoryExport {
  failure: Error = new IoError('disk gone');
  override async write(): Promise<void> {
    throw this.failure;
  }
}

let dir: string;
let socketPath: string;
let server: NbdServer | undefined;
let live: MemoryExport;
let big: MemoryExport;
let frozen: MemoryExport;
let failing: FailingExport;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-nbd-client-'));
  socketPath = join(dir, 'nbd.sock');
  live = new MemoryExport('live', 1 << 20);
  big = new MemoryExport('big', 72 << 20);
  frozen = new MemoryExport('snapshot/a', 1 << 20, true);
  failing = new FailingExport('failing', 1 << 20);
  server = new NbdServer({ catalog: new MemoryCatalog([live, big, frozen, failing]) });
  await server.listen({ socketPath });
});

afterEach(async () => {
  await server?.stop();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe('NbdClient against NbdServer', () => {
  it('negotiates the export size and flags, writes, reads back and flushes', async () => {
    const client = await NbdClient.connect(socketPath, 'live');
    expect(client.info).toMatchObject({ exportName: 'live', sizeBytes: 1 << 20, readOnly: false, maxRequestBytes: MAX_PAYLOAD_BYTES });
    const data = randomBytes(65536, SEED);
    await client.write(4096, data);
    await client.flush();
    expect(live.flushes).toBe(1);
    expect(Buffer.compare(await client.read(4096, data.length), data)).toBe(0);
    expect(Buffer.compare(live.data.subarray(4096, 4096 + data.length), data)).toBe(0);
    await client.close();
  });

  it('splits reads and writes over 32 MiB into requests of at most 32 MiB, in flight together', async () => {
    const client = await NbdClient.connect(socketPath, 'big');
    const data = randomBytes(70 << 20, SEED + 1);
    await client.write(1 << 20, data);
    expect(big.writeLog.map((w) => w.lengthBytes)).toEqual([32 << 20, 32 << 20, 6 << 20]);
    const back = await client.read(1 << 20, data.length);
    expect(back.equals(data)).toBe(true);
    await client.close();
  });

  it(`keeps at most ${CLIENT_MAX_IN_FLIGHT} requests in flight and matches every reply to its request`, async () => {
    live.data.set(randomBytes(1 << 20, SEED + 2));
    let open!: () => void;
    live.gate = new Promise<void>((resolve) => (open = resolve));
    const client = await NbdClient.connect(socketPath, 'live');
    const reads = Array.from({ length: 20 }, (_, i) => client.read(i * 4096, 4096));
    await sleep(100);
    expect(live.readsStarted).toBe(CLIENT_MAX_IN_FLIGHT);
    open();
    const got = await Promise.all(reads);
    got.forEach((b, i) => expect(b.equals(live.data.subarray(i * 4096, (i + 1) * 4096))).toBe(true));
    expect(live.readsStarted).toBe(20);
    await client.close();
  });

  it('refuses a range past the end with OUT_OF_RANGE before sending anything', async () => {
    const client = await NbdClient.connect(socketPath, 'live');
    await expect(client.read((1 << 20) - 1, 2)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await expect(client.write(1 << 20, Buffer.alloc(1))).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await expect(client.read(-1, 1)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    expect(live.readsStarted + live.writesStarted).toBe(0);
    await client.close();
  });

  it('maps error replies back to offline codes: EPERM → VOLUME_READ_ONLY, ENOSPC → NO_SPACE, EIO → IO_ERROR', async () => {
    const ro = await NbdClient.connect(socketPath, 'snapshot/a');
    expect(ro.info.readOnly).toBe(true);
    await expect(ro.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
    await ro.close();
    const client = await NbdClient.connect(socketPath, 'failing');
    await expect(client.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'IO_ERROR', details: { errno: 5 } });
    failing.failure = new NoSpaceError('full');
    await expect(client.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'NO_SPACE', details: { errno: 28 } });
    // The connection survives error replies.
    expect((await client.read(0, 16)).length).toBe(16);
    await client.close();
  });

  it('an unknown export is the caller’s error (NBD_REP_ERR_UNKNOWN), IO_ERROR by default; nothing listening is NOT_SERVED', async () => {
    await expect(NbdClient.connect(socketPath, 'nope')).rejects.toMatchObject({ code: 'IO_ERROR' });
    await expect(NbdClient.connect(socketPath, 'nope', { unknownExport: () => new NoSpaceError('marker') })).rejects.toThrow('marker');
    await expect(NbdClient.connect(join(dir, 'absent.sock'), 'live')).rejects.toMatchObject({ code: 'NOT_SERVED' });
  });
});

/** A peer that negotiates `live` (1 MiB), then closes the connection on the first request. */
async function dropAfterHandshake(path: string): Promise<Server> {
  const peer = createServer((socket) => {
    const greeting = Buffer.alloc(18);
    greeting.writeBigUInt64BE(0x4e42444d41474943n, 0);
    greeting.writeBigUInt64BE(0x49484156454f5054n, 8);
    greeting.writeUInt16BE(3, 16);
    socket.write(greeting);
    let seen = 0;
    let attached = false;
    socket.on('data', (d: Buffer) => {
      seen += d.length;
      if (attached) socket.destroy();
      // Client flags (4), the NBD_OPT_GO header (16) and its data for "live" with one info request (12).
      else if (seen >= 4 + 16 + 12) {
        attached = true;
        const info = Buffer.alloc(20 + 12);
        info.writeBigUInt64BE(0x3e889045565a9n, 0);
        info.writeUInt32BE(7, 8);
        info.writeUInt32BE(3, 12);
        info.writeUInt32BE(12, 16);
        info.writeUInt16BE(0, 20);
        info.writeBigUInt64BE(1n << 20n, 22);
        info.writeUInt16BE(1, 30);
        const ack = Buffer.alloc(20);
        ack.writeBigUInt64BE(0x3e889045565a9n, 0);
        ack.writeUInt32BE(7, 8);
        ack.writeUInt32BE(1, 12);
        socket.write(Buffer.concat([info, ack]));
      }
    });
  });
  await new Promise<void>((resolve) => peer.listen(path, resolve));
  return peer;
}

describe('NbdClient when the connection is lost', () => {
  it('rejects the requests in flight and later ones with IO_ERROR', async () => {
    const path = join(dir, 'drop.sock');
    const peer = await dropAfterHandshake(path);
    try {
      const client = await NbdClient.connect(path, 'live');
      expect(client.info.sizeBytes).toBe(1 << 20);
      await expect(client.read(0, 4096)).rejects.toMatchObject({ code: 'IO_ERROR' });
      await expect(client.read(0, 4096)).rejects.toMatchObject({ code: 'IO_ERROR' });
      await client.close();
    } finally {
      peer.close();
    }
  });
});

/** A raw peer on `path`: `onConnection` scripts what it says (never speaking is one script). */
async function rawPeer(path: string, onConnection: (s: Socket) => void): Promise<Server> {
  const peer = createServer(onConnection);
  await new Promise<void>((resolve) => peer.listen(path, resolve));
  return peer;
}

describe('NbdClient during the handshake', () => {
  it('a server that accepts and never speaks fails connect() with IO_ERROR once handshakeTimeoutMs passed', async () => {
    const path = join(dir, 'mute.sock');
    const held: Socket[] = [];
    const peer = await rawPeer(path, (s) => held.push(s));
    try {
      const err: unknown = await NbdClient.connect(path, 'live', { handshakeTimeoutMs: 200 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'IO_ERROR', details: { endpoint: path, handshakeTimeoutMs: 200 } });
      expect(held).toHaveLength(1);
      // the client closed its end: the peer sees the connection end
      await new Promise<void>((resolve) => {
        if (held[0]!.readableEnded || held[0]!.destroyed) resolve();
        else held[0]!.once('close', () => resolve());
      });
    } finally {
      for (const s of held) s.destroy();
      peer.close();
    }
  });

  it('a server that greets, then never answers NBD_OPT_GO, fails the same way', async () => {
    const path = join(dir, 'greets.sock');
    const held: Socket[] = [];
    const peer = await rawPeer(path, (s) => {
      held.push(s);
      const greeting = Buffer.alloc(18);
      greeting.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
      greeting.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
      greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
      s.write(greeting);
      s.on('data', () => undefined);
    });
    try {
      await expect(NbdClient.connect(path, 'live', { handshakeTimeoutMs: 200 })).rejects.toMatchObject({ code: 'IO_ERROR', details: { handshakeTimeoutMs: 200 } });
    } finally {
      for (const s of held) s.destroy();
      peer.close();
    }
  });

  it('a server answering NBD_OPT_GO with NBD_REP_ERR_SHUTDOWN (it is stopping) is NOT_SERVED, not IO_ERROR', async () => {
    const path = join(dir, 'stopping.sock');
    const peer = await rawPeer(path, (s) => {
      const greeting = Buffer.alloc(18);
      greeting.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
      greeting.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
      greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
      s.write(greeting);
      let got = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        got = Buffer.concat([got, d]);
        if (got.length < 4 + 16) return;
        // the client sent its flags and the option header: answer the option it sent with the error reply
        const text = Buffer.from('server is shutting down');
        const reply = Buffer.alloc(20);
        reply.writeBigUInt64BE(NBD_REP_MAGIC, 0);
        reply.writeUInt32BE(got.readUInt32BE(4 + 8), 8);
        reply.writeUInt32BE(NBD_REP_ERR_SHUTDOWN, 12);
        reply.writeUInt32BE(text.length, 16);
        s.end(Buffer.concat([reply, text]));
        got = Buffer.alloc(0);
        s.removeAllListeners('data');
        s.on('data', () => undefined);
      });
    });
    try {
      const err: unknown = await NbdClient.connect(path, 'live', { handshakeTimeoutMs: 5000 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'NOT_SERVED', details: { exportName: 'live', replyType: NBD_REP_ERR_SHUTDOWN } });
      expect((err as Error).message).toContain('NBD_REP_ERR_SHUTDOWN');
    } finally {
      peer.close();
    }
  });
});

const haveQemuNbd = spawnSync('qemu-nbd', ['--version'], { stdio: 'ignore' }).error === undefined;
if (process.env.CI && !haveQemuNbd) throw new Error('CI=true but qemu-nbd is not installed (apt-get install qemu-utils)');

describe.skipIf(!haveQemuNbd)(`NbdClient against qemu-nbd${haveQemuNbd ? '' : ' [SKIPPED: apt-get install qemu-utils]'}`, () => {
  it('reads a raw file qemu-nbd serves, writes into it and flushes: the file has the bytes', async () => {
    const file = join(dir, 'disk.raw');
    const original = randomBytes(8 << 20, SEED + 3);
    await writeFile(file, original);
    const sock = join(dir, 'qemu.sock');
    const child = spawn('qemu-nbd', ['-f', 'raw', '-t', '-x', 'live', '-k', sock, file], { stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      for (let i = 0; i < 200; i++) {
        const up = await new Promise<boolean>((resolve) => {
          const s = connect(sock);
          s.once('connect', () => {
            s.destroy();
            resolve(true);
          });
          s.once('error', () => resolve(false));
        });
        if (up) break;
        await sleep(25);
      }
      const client = await NbdClient.connect(sock, 'live');
      expect(client.info.sizeBytes).toBe(original.length);
      expect((await client.read(0, original.length)).equals(original)).toBe(true);
      const patch = randomBytes(1 << 20, SEED + 4);
      await client.write(3 << 20, patch);
      await client.flush();
      await expect(client.read(original.length - 1, 2)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
      expect((await client.read(3 << 20, patch.length)).equals(patch)).toBe(true);
      await client.close();
      patch.copy(original, 3 << 20);
      expect((await readFile(file)).equals(original)).toBe(true);
    } finally {
      child.kill('SIGTERM');
      await exited;
    }
  });
});
