/**
 * NBD_OPT_STARTTLS with TLS-PSK ("FORCEDTLS" mode) and the handshake
 * timeout, byte by byte with RawClient; TLS on the client side is node:tls.
 * Real clients (libnbd, qemu) are in test/nbd-tls.test.ts.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TLSSocket } from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  NBD_CMD_READ,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
  NbdServer,
  loadPskKeys,
  parsePskKeys,
  type PskKeys,
} from '../src/index.js';
import { infoRequest, MemoryCatalog, MemoryExport, RawClient } from './raw-client.js';

const KEY = randomBytes(32);
const KEYS: PskKeys = new Map([['alice', KEY]]);

let dir: string;
let socketPath: string;
let server: NbdServer | undefined;
let live: MemoryExport;

/** vitest's asymmetric matcher, typed as what it is to the matching object: an opaque value. */
const stringMatching = (pattern: RegExp): unknown => expect.stringMatching(pattern);

async function start(options: { tlsPsk?: PskKeys; handshakeTimeoutMs?: number; maxConnections?: number }): Promise<void> {
  live = new MemoryExport('live', 1 << 20);
  live.data.write('inside TLS', 0);
  server = new NbdServer({ catalog: new MemoryCatalog([live]), ...options });
  await server.listen({ socketPath });
}

/** Connects, sends the client flags, STARTTLS; expects the ACK. */
async function startTls(): Promise<RawClient> {
  const c = await RawClient.connect(socketPath);
  await c.handshake();
  c.sendOption(NBD_OPT_STARTTLS);
  const ack = await c.readOptionReply();
  expect([ack.option, ack.type, ack.data.length]).toEqual([NBD_OPT_STARTTLS, NBD_REP_ACK, 0]);
  return c;
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-nbd-tls-'));
  socketPath = join(dir, 'nbd.sock');
});

afterEach(async () => {
  await server?.stop();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe('psktool key files', () => {
  it('parses username:hexkey lines and refuses malformed ones, duplicates and empty files', () => {
    const keys = parsePskKeys(`alice:${KEY.toString('hex')}\n\nbob:00ff\r\n`, 'k.psk');
    expect([...keys.keys()]).toEqual(['alice', 'bob']);
    expect(keys.get('alice')!.equals(KEY)).toBe(true);
    expect(keys.get('bob')!.equals(Buffer.from([0, 255]))).toBe(true);
    for (const bad of ['alice', 'alice:', ':00ff', 'alice:0ff', 'alice:zz', 'a:b:00']) expect(() => parsePskKeys(bad, 'k.psk'), bad).toThrow(/k\.psk: line 1/);
    expect(() => parsePskKeys('a:00\na:11\n', 'k.psk')).toThrow(/appears twice/);
    expect(() => parsePskKeys('\n', 'k.psk')).toThrow(/no key/);
  });

  it('loads a private regular file; refuses a group/other-readable file, a symlink, a directory, a missing file (INVALID_ARGUMENT)', async () => {
    const file = join(dir, 'keys.psk');
    await writeFile(file, `alice:${KEY.toString('hex')}\n`, { mode: 0o600 });
    expect((await loadPskKeys(file)).get('alice')!.equals(KEY)).toBe(true);
    await chmod(file, 0o400);
    expect((await loadPskKeys(file)).size).toBe(1);
    for (const mode of [0o640, 0o604, 0o620]) {
      await chmod(file, mode);
      await expect(loadPskKeys(file)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: stringMatching(/group or others/) });
    }
    await chmod(file, 0o600);
    await symlink(file, join(dir, 'link.psk'));
    await expect(loadPskKeys(join(dir, 'link.psk'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: stringMatching(/symbolic link/) });
    await mkdir(join(dir, 'd'), { mode: 0o700 });
    await expect(loadPskKeys(join(dir, 'd'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: stringMatching(/not a regular file/) });
    await expect(loadPskKeys(join(dir, 'none.psk'))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});

describe('STARTTLS with TLS required', () => {
  beforeEach(() => start({ tlsPsk: KEYS }));

  it('before STARTTLS every option but ABORT is ERR_TLS_REQD, and the connection stays usable; ABORT is acknowledged', async () => {
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    for (const [option, data] of [
      [NBD_OPT_LIST, Buffer.alloc(0)],
      [NBD_OPT_INFO, infoRequest('live', [])],
      [NBD_OPT_GO, infoRequest('live', [])],
      [NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)],
      [4242, Buffer.from('x')],
    ] as const) {
      c.sendOption(option, data);
      const reply = await c.readOptionReply();
      expect([reply.option, reply.type], `option ${option}`).toEqual([option, NBD_REP_ERR_TLS_REQD]);
    }
    c.sendOption(NBD_OPT_ABORT);
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ACK);
    await c.waitClosed();
  });

  it('EXPORT_NAME before STARTTLS closes the connection; STARTTLS with data is ERR_INVALID', async () => {
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    c.sendOption(NBD_OPT_STARTTLS, Buffer.from([1]));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('live'));
    await c.waitClosed();
    expect(c.queue.length).toBe(0);
  });

  for (const [version, ciphers] of [
    ['TLSv1.3', undefined],
    ['TLSv1.2', 'ECDHE-PSK-CHACHA20-POLY1305'],
    ['TLSv1.2', 'PSK-AES128-GCM-SHA256'],
  ] as const) {
    it(`${version} ${ciphers ?? ''}: the option phase goes on inside TLS (a second STARTTLS is ERR_INVALID), then transmission`, async () => {
      const plain = await startTls();
      const c = await plain.startTls('alice', KEY, { minVersion: version, maxVersion: version, ...(ciphers ? { ciphers } : {}) });
      expect(c.socket).toBeInstanceOf(TLSSocket);
      expect(c.socket instanceof TLSSocket && c.socket.getProtocol()).toBe(version);
      c.sendOption(NBD_OPT_STARTTLS);
      expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
      c.sendOption(NBD_OPT_LIST);
      expect((await c.readOptionReplies()).map((r) => r.type)).toEqual([2, NBD_REP_ACK]);
      c.sendOption(NBD_OPT_GO, infoRequest('live', []));
      expect((await c.readOptionReplies()).at(-1)!.type).toBe(NBD_REP_ACK);
      c.sendRequest({ type: NBD_CMD_READ, cookie: 7n, offsetBytes: 0, lengthBytes: 10 });
      const reply = await c.readSimpleReply();
      expect([reply.cookie, reply.error, reply.data?.toString()]).toEqual([7n, 0, 'inside TLS']);
    });
  }

  it('a wrong key or an unknown username fails the TLS handshake and closes; other clients are served', async () => {
    for (const [identity, key] of [
      ['alice', randomBytes(32)],
      ['mallory', KEY],
    ] as const) {
      const plain = await startTls();
      await expect(plain.startTls(identity, key)).rejects.toThrow();
      await plain.waitClosed();
    }
    const c = await (await startTls()).startTls('alice', KEY);
    c.sendOption(NBD_OPT_GO, infoRequest('', []));
    expect((await c.readOptionReplies()).at(-1)!.type).toBe(NBD_REP_ACK);
  });

  it('bytes sent after STARTTLS, before its reply, close the connection', async () => {
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    // STARTTLS and a LIST in one write: the LIST is in the queue when STARTTLS is answered.
    c.sendOption(NBD_OPT_STARTTLS);
    c.sendOption(NBD_OPT_LIST);
    await c.waitClosed();
  });
});

describe('handshake timeout', () => {
  it('closes a client that never finishes the option phase, freeing its slot', async () => {
    await start({ handshakeTimeoutMs: 100, maxConnections: 1 });
    const idle = await RawClient.connect(socketPath);
    await idle.handshake();
    await idle.waitClosed(); // closed by the server: nothing else ends it
    const next = await RawClient.connect(socketPath);
    await next.open('live');
  });

  it('closes a client stuck before its TLS handshake', async () => {
    await start({ tlsPsk: KEYS, handshakeTimeoutMs: 100 });
    const stuck = await startTls(); // never sends a ClientHello
    await stuck.waitClosed();
  });

  it('serves a slow client that sends its options one by one within the time', async () => {
    await start({ tlsPsk: KEYS, handshakeTimeoutMs: 10_000 });
    const pause = () => new Promise((resolve) => setTimeout(resolve, 50));
    const c = await (await startTls()).startTls('alice', KEY);
    for (let i = 0; i < 3; i++) {
      await pause();
      c.sendOption(NBD_OPT_LIST);
      expect((await c.readOptionReplies()).at(-1)!.type).toBe(NBD_REP_ACK);
    }
    await pause();
    c.sendOption(NBD_OPT_GO, infoRequest('live', []));
    expect((await c.readOptionReplies()).at(-1)!.type).toBe(NBD_REP_ACK);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offsetBytes: 0, lengthBytes: 6 });
    expect((await c.readSimpleReply()).data?.toString()).toBe('inside');
  });

  it('does not close a connection that reached transmission', async () => {
    await start({ handshakeTimeoutMs: 50 });
    const c = await RawClient.connect(socketPath);
    await c.open('live');
    await new Promise((resolve) => setTimeout(resolve, 200)); // well past the timeout
    expect(c.closed).toBe(false);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offsetBytes: 0, lengthBytes: 6 });
    expect((await c.readSimpleReply()).data?.toString()).toBe('inside');
  });

  it('refuses a timeout that is not a positive integer (INVALID_ARGUMENT)', () => {
    for (const handshakeTimeoutMs of [0, -1, 1.5, 2 ** 31]) expect(() => new NbdServer({ catalog: new MemoryCatalog([]), handshakeTimeoutMs })).toThrow(/handshakeTimeoutMs/);
  });
});
