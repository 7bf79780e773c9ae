import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_TRIM,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  MAX_REFUSED_CONNECTIONS,
  MAX_REFUSED_OPTIONS,
  NBD_OPT_GO,
  NbdServer,
  type ConnectionLimits,
} from '../src/index.js';
import { infoRequest, MemoryCatalog, MemoryExport, metaRequest, RawClient } from './raw-client.js';

let dir: string;
let server: NbdServer | undefined;
let live: MemoryExport;
let frozen: MemoryExport;
let socketPath: string;
let catalog: MemoryCatalog;

async function start(limits?: ConnectionLimits, maxConnections = 16): Promise<void> {
  live = new MemoryExport('live', 1 << 20);
  frozen = new MemoryExport('snapshot/a', 1 << 20, true);
  catalog = new MemoryCatalog([live, frozen]);
  server = new NbdServer({ catalog, maxConnections, ...(limits ? { limits } : {}) });
  await server.listen({ socketPath });
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-nbd-'));
  socketPath = join(dir, 'nbd.sock');
});

afterEach(async () => {
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

describe('option phase', () => {
  beforeEach(() => start());

  it('LIST names every export with its description; STARTTLS without TLS is ERR_POLICY, an unknown option ERR_UNSUP, and the connection stays usable', async () => {
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    c.sendOption(NBD_OPT_STARTTLS);
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_POLICY);
    c.sendOption(4242, Buffer.from('whatever'));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_UNSUP);
    c.sendOption(NBD_OPT_LIST);
    const replies = await c.readOptionReplies();
    expect(replies.map((r) => r.type)).toEqual([2, 2, NBD_REP_ACK]);
    const names = replies.slice(0, 2).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString());
    expect(names).toEqual(['live', 'snapshot/a']);
    expect(replies[1]!.data.subarray(4 + 10).toString()).toBe('memory snapshot/a');
    c.sendOption(NBD_OPT_ABORT);
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ACK);
    await c.waitClosed();
  });

  it('INFO: unknown export, malformed payload, and the export, name, description and block size infos', async () => {
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    c.sendOption(NBD_OPT_INFO, infoRequest('nope', []));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_UNKNOWN);
    c.sendOption(NBD_OPT_INFO, Buffer.from([0, 0, 0, 9, 1]));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    c.sendOption(NBD_OPT_INFO, infoRequest('snapshot/a', [1, 2, 3]));
    const replies = await c.readOptionReplies();
    const infos = new Map(replies.filter((r) => r.type === 3).map((r) => [r.data.readUInt16BE(0), r.data.subarray(2)]));
    expect(infos.get(0)!.readBigUInt64BE(0)).toBe(1n << 20n);
    expect(infos.get(0)!.readUInt16BE(8) & NBD_FLAG_READ_ONLY).toBe(NBD_FLAG_READ_ONLY);
    expect(infos.get(1)!.toString()).toBe('snapshot/a');
    expect(infos.get(2)!.toString()).toBe('memory snapshot/a');
    expect([infos.get(3)!.readUInt32BE(0), infos.get(3)!.readUInt32BE(4), infos.get(3)!.readUInt32BE(8)]).toEqual([1, 4096, 32 << 20]);
    expect(replies.at(-1)!.type).toBe(NBD_REP_ACK);
  });

  it('meta contexts need structured replies; LIST with no query lists base:allocation; SET selects it', async () => {
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    c.sendOption(NBD_OPT_SET_META_CONTEXT, metaRequest('', ['base:allocation']));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    c.sendOption(NBD_OPT_STRUCTURED_REPLY, Buffer.from([1]));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    c.sendOption(NBD_OPT_STRUCTURED_REPLY);
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ACK);
    c.sendOption(NBD_OPT_LIST_META_CONTEXT, metaRequest('live', []));
    const listed = await c.readOptionReplies();
    expect(listed.map((r) => [r.type, r.data.subarray(4).toString()])).toEqual([
      [4, 'base:allocation'],
      [NBD_REP_ACK, ''],
    ]);
    c.sendOption(NBD_OPT_SET_META_CONTEXT, metaRequest('live', ['qemu:dirty-bitmap:x', 'base:allocation']));
    const set = await c.readOptionReplies();
    expect(set.map((r) => r.type)).toEqual([4, NBD_REP_ACK]);
    c.sendOption(NBD_OPT_SET_META_CONTEXT, metaRequest('nope', ['base:allocation']));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_UNKNOWN);
  });

  it('a client that sends options without reading the replies stops being read (bounded memory)', async () => {
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    c.socket.pause(); // never read a reply
    const options = 100_000; // ~100 bytes of reply each: 10 MB, far beyond socket buffers
    const list = Buffer.alloc(16);
    list.write('IHAVEOPT', 0, 'latin1');
    list.writeUInt32BE(NBD_OPT_LIST, 8);
    c.write(Buffer.concat(Array.from({ length: options }, () => list)));
    await until(() => catalog.listCalls > 0);
    let seen = -1; // then wait until it stops growing
    while (seen !== catalog.listCalls) {
      seen = catalog.listCalls;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(catalog.listCalls).toBeGreaterThan(0);
    expect(catalog.listCalls).toBeLessThan(options / 4);
    c.socket.destroy();
  });

  it('EXPORT_NAME enters transmission with the 10-byte reply under NO_ZEROES, 134 bytes without; an unknown name closes', async () => {
    const a = await RawClient.connect(socketPath);
    await a.handshake(3);
    a.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('live'));
    const reply = await a.take(10);
    expect(reply.readBigUInt64BE(0)).toBe(1n << 20n);
    a.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offsetBytes: 0, lengthBytes: 4 });
    expect((await a.readSimpleReply()).data).toEqual(Buffer.alloc(4));
    const b = await RawClient.connect(socketPath);
    await b.handshake(1);
    b.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('live'));
    expect((await b.take(134)).subarray(10).every((x) => x === 0)).toBe(true);
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope'));
    await c.waitClosed();
  });
});

describe('transmission', () => {
  it('errors are per request and the connection stays usable: EPERM, EINVAL for ranges, flags, commands, BLOCK_STATUS without a context', async () => {
    await start();
    const ro = await RawClient.connect(socketPath);
    const roFlags = await ro.open('snapshot/a');
    expect(roFlags & NBD_FLAG_SEND_TRIM).toBe(0);
    const payload = Buffer.alloc(512, 7);
    ro.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offsetBytes: 0, lengthBytes: 512, payload });
    ro.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 2n, offsetBytes: 0, lengthBytes: 512 });
    ro.sendRequest({ type: NBD_CMD_READ, cookie: 3n, offsetBytes: (1 << 20) - 1, lengthBytes: 2 });
    ro.sendRequest({ type: NBD_CMD_READ, cookie: 4n, offsetBytes: 0, lengthBytes: 1, flags: 1 << 9 });
    ro.sendRequest({ type: 99, cookie: 5n, offsetBytes: 0, lengthBytes: 0 });
    ro.sendRequest({ type: NBD_CMD_BLOCK_STATUS, cookie: 6n, offsetBytes: 0, lengthBytes: 512 });
    ro.sendRequest({ type: NBD_CMD_READ, cookie: 7n, offsetBytes: 0, lengthBytes: 1, flags: NBD_CMD_FLAG_DF });
    ro.sendRequest({ type: NBD_CMD_READ, cookie: 8n, offsetBytes: 2 ** 60, lengthBytes: 1 });
    ro.sendRequest({ type: NBD_CMD_READ, cookie: 9n, offsetBytes: 512, lengthBytes: 512 });
    const replies = new Map<bigint, number>();
    for (let i = 0; i < 9; i++) {
      const r = await ro.readSimpleReply();
      replies.set(r.cookie, r.error);
    }
    expect(Object.fromEntries([...replies].map(([k, v]) => [String(k), v]))).toEqual({
      1: NBD_EPERM,
      2: NBD_EPERM,
      3: NBD_EINVAL,
      4: NBD_EINVAL,
      5: NBD_EINVAL,
      6: NBD_EINVAL,
      7: NBD_EINVAL,
      8: NBD_EINVAL,
      9: 0,
    });
    expect(frozen.writes).toBe(0);
  });

  it('structured replies: READ is one OFFSET_DATA chunk, a failed READ an ERROR chunk, BLOCK_STATUS one extent per context (REQ_ONE)', async () => {
    await start();
    live.data.fill(5, 0, 4096);
    const c = await RawClient.connect(socketPath);
    const flags = await c.open('live', { structured: true, baseAllocation: true });
    expect(flags & NBD_FLAG_SEND_DF).toBe(NBD_FLAG_SEND_DF);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offsetBytes: 4000, lengthBytes: 200, flags: NBD_CMD_FLAG_DF });
    const data = await c.readAnyReply();
    expect([data.structured, data.type, data.flags]).toEqual([true, NBD_REPLY_TYPE_OFFSET_DATA, 1]);
    expect(data.payload.readBigUInt64BE(0)).toBe(4000n);
    expect(data.payload.subarray(8)).toEqual(Buffer.concat([Buffer.alloc(96, 5), Buffer.alloc(104)]));
    c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offsetBytes: 1 << 20, lengthBytes: 1 });
    const err = await c.readAnyReply();
    expect([err.type, err.error, err.flags]).toEqual([NBD_REPLY_TYPE_ERROR, NBD_EINVAL, 1]);
    c.sendRequest({ type: NBD_CMD_READ, cookie: 4n, offsetBytes: 0, lengthBytes: 0 });
    const none = await c.readAnyReply();
    expect([none.cookie, none.type, none.flags, none.payload.length]).toEqual([4n, 0, 1, 0]);
    c.sendRequest({ type: NBD_CMD_BLOCK_STATUS, cookie: 3n, offsetBytes: 4096, lengthBytes: 65536, flags: NBD_CMD_FLAG_REQ_ONE });
    const bs = await c.readAnyReply();
    expect([bs.type, bs.flags, bs.payload.length]).toEqual([NBD_REPLY_TYPE_BLOCK_STATUS, 1, 12]);
    expect([bs.payload.readUInt32BE(0), bs.payload.readUInt32BE(4), bs.payload.readUInt32BE(8)]).toEqual([1, 65536, 0]);
  });

  it('64 READs in flight answered in one turn: each reply whole and with its own bytes; zero ranges as OFFSET_HOLE', async () => {
    await start();
    for (let i = 0; i < 64; i++) if (i % 4 !== 0) live.data.fill(i, i * 4096, (i + 1) * 4096); // every fourth block stays zero
    const stall = deferred();
    live.gate = stall.promise;
    const c = await RawClient.connect(socketPath);
    await c.open('live', { structured: true });
    for (let i = 0; i < 64; i++) c.sendRequest({ type: NBD_CMD_READ, cookie: BigInt(i), offsetBytes: i * 4096, lengthBytes: 4096 });
    await until(() => live.readsStarted >= 64);
    stall.resolve(); // all 64 complete together: their replies leave in one batch
    const seen = new Set<bigint>();
    for (let n = 0; n < 64; n++) {
      const r = await c.readAnyReply();
      const i = Number(r.cookie);
      expect(r.flags & 1).toBe(1);
      expect(Number(r.payload.readBigUInt64BE(0))).toBe(i * 4096);
      if (i % 4 === 0) expect([r.type, r.payload.readUInt32BE(8)]).toEqual([NBD_REPLY_TYPE_OFFSET_HOLE, 4096]);
      else expect([r.type, r.payload.subarray(8).equals(Buffer.alloc(4096, i))]).toEqual([NBD_REPLY_TYPE_OFFSET_DATA, true]);
      seen.add(r.cookie);
    }
    expect(seen.size).toBe(64);
  });

  it('replies come out of order: a FLUSH behind a stalled READ is answered first', async () => {
    await start();
    const stall = deferred();
    live.gate = stall.promise;
    const c = await RawClient.connect(socketPath);
    await c.open('live');
    c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offsetBytes: 0, lengthBytes: 16 });
    c.sendRequest({ type: NBD_CMD_FLUSH, cookie: 2n, offsetBytes: 0, lengthBytes: 0 });
    expect((await c.readSimpleReply()).cookie).toBe(2n);
    stall.resolve();
    expect((await c.readSimpleReply()).cookie).toBe(1n);
  });

  it('writes, FUA, zeroes and trim reach the export; a clean disconnect (DISC) flushes after the requests in flight', async () => {
    await start();
    const c = await RawClient.connect(socketPath);
    await c.open('');
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offsetBytes: 100, lengthBytes: 3, payload: Buffer.from([1, 2, 3]), flags: NBD_CMD_FLAG_FUA });
    expect((await c.readSimpleReply()).error).toBe(0);
    expect(live.flushes).toBe(0); // the memory export's write does its own FUA
    live.data.fill(9, 1000, 3000);
    c.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 2n, offsetBytes: 1000, lengthBytes: 1000 });
    c.sendRequest({ type: NBD_CMD_TRIM, cookie: 3n, offsetBytes: 2000, lengthBytes: 500 });
    await c.readSimpleReply();
    await c.readSimpleReply();
    expect([...live.data.subarray(99, 104)]).toEqual([0, 1, 2, 3, 0]);
    expect(live.data.subarray(1000, 2500).every((b) => b === 0)).toBe(true);
    expect(live.data[2500]).toBe(9);
    const stall = deferred();
    live.gate = stall.promise;
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 4n, offsetBytes: 0, lengthBytes: 1, payload: Buffer.from([42]) });
    c.sendRequest({ type: NBD_CMD_DISC, cookie: 5n, offsetBytes: 0, lengthBytes: 0 });
    await until(() => live.writesStarted === 2);
    expect(live.flushes).toBe(0);
    stall.resolve();
    expect((await c.readSimpleReply()).cookie).toBe(4n);
    await c.waitClosed();
    await until(() => live.flushes === 1);
    expect(live.data[0]).toBe(42);
  });

  it('a framing violation closes that connection only', async () => {
    await start();
    const good = await RawClient.connect(socketPath);
    await good.open('live');
    const bad = await RawClient.connect(socketPath);
    await bad.open('live');
    bad.write(Buffer.alloc(28, 0xee));
    await bad.waitClosed();
    const big = await RawClient.connect(socketPath);
    await big.open('live');
    big.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offsetBytes: 0, lengthBytes: 32 * 1024 * 1024 + 1 });
    await big.waitClosed();
    good.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offsetBytes: 0, lengthBytes: 8 });
    expect((await good.readSimpleReply()).error).toBe(0);
    expect(live.writes).toBe(0);
  });

  it('stops reading while too many requests are in flight, and serves them all afterwards', async () => {
    await start({ maxInFlightRequests: 8, maxInFlightBytes: 1 << 30 });
    const stall = deferred();
    live.gate = stall.promise;
    const c = await RawClient.connect(socketPath);
    await c.open('live');
    for (let i = 0; i < 100; i++) c.sendRequest({ type: NBD_CMD_READ, cookie: BigInt(i), offsetBytes: i * 512, lengthBytes: 512 });
    await until(() => live.readsStarted >= 8);
    await new Promise((r) => setTimeout(r, 100));
    expect(live.readsStarted).toBe(8);
    stall.resolve();
    const cookies = new Set<bigint>();
    for (let i = 0; i < 100; i++) cookies.add((await c.readSimpleReply()).cookie);
    expect(cookies.size).toBe(100);
  });

  it('a client that never reads its replies holds bounded memory: the server stops reading its requests', async () => {
    await start({ maxInFlightRequests: 1024, maxInFlightBytes: 4 << 20 });
    const c = await RawClient.connect(socketPath);
    await c.open('live');
    c.socket.pause(); // never read a reply
    const requests = 512; // 512 × 1 MiB of replies, far beyond socket buffers
    for (let i = 0; i < requests; i++) c.sendRequest({ type: NBD_CMD_READ, cookie: BigInt(i), offsetBytes: 0, lengthBytes: 1 << 20 });
    await until(() => live.readsStarted > 0);
    let seen = -1; // then wait until it stops growing
    while (seen !== live.readsStarted) {
      seen = live.readsStarted;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(live.readsStarted).toBeGreaterThan(0);
    expect(live.readsStarted).toBeLessThan(requests / 4);
    c.socket.destroy();
  });

  it('stop: requests in flight finish, new ones get ESHUTDOWN, the export is flushed, the connection closed', async () => {
    await start();
    const stall = deferred();
    live.gate = stall.promise;
    const c = await RawClient.connect(socketPath);
    await c.open('live');
    c.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offsetBytes: 0, lengthBytes: 1, payload: Buffer.from([1]) });
    await until(() => live.writesStarted === 1);
    const stopped = server!.stop();
    c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offsetBytes: 0, lengthBytes: 1 });
    expect(await c.readSimpleReply()).toEqual({ cookie: 2n, error: NBD_ESHUTDOWN });
    stall.resolve();
    expect((await c.readSimpleReply()).error).toBe(0);
    await stopped;
    await c.waitClosed();
    expect(live.data[0]).toBe(1);
    expect(live.flushes).toBe(1);
  });

  it('a socket path longer than sun_path holds, or in a folder that does not exist, is INVALID_ARGUMENT saying so, and no file is made', async () => {
    const long = join(dir, 'd'.repeat(120 - dir.length), 'nbd.sock');
    const s = new NbdServer({ catalog: new MemoryCatalog([]) });
    await expect(s.listen({ socketPath: long })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('a unix socket path is at most 107 bytes') as unknown });
    await expect(s.listen({ socketPath: join(dir, 'missing', 'nbd.sock') })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('does not exist') as unknown });
    expect(await readdir(dir)).toEqual([]);
    await s.stop();
  });

  it('an export that exists but cannot be attached now (a restore rewrites live) is refused with ERR_POLICY and the reason, not ERR_UNKNOWN', async () => {
    await start();
    const resolve = catalog.resolve.bind(catalog);
    const rewriting = 'export live is being rewritten by a snapshot restore on this server: try again when it has finished';
    catalog.resolve = (name: string) => (name === 'live' ? Promise.resolve(undefined) : resolve(name));
    catalog.unavailable = (name: string) => (name === 'live' ? rewriting : undefined);
    const c = await RawClient.connect(socketPath);
    await c.handshake();
    c.sendOption(NBD_OPT_GO, infoRequest('live', []));
    const refused = await c.readOptionReply();
    expect([refused.type, refused.data.toString()]).toEqual([NBD_REP_ERR_POLICY, rewriting]);
    c.sendOption(NBD_OPT_GO, infoRequest('nope', []));
    expect((await c.readOptionReply()).type).toBe(NBD_REP_ERR_UNKNOWN);
    c.sendOption(NBD_OPT_GO, infoRequest('snapshot/a', []));
    expect((await c.readOptionReply()).type).not.toBe(NBD_REP_ERR_UNKNOWN);
  });

  it('a connection past --max-connections is greeted and each option refused with ERR_POLICY naming the limit; the others keep working', async () => {
    await start(undefined, 1);
    const a = await RawClient.connect(socketPath);
    await a.open('live');
    const b = await RawClient.connect(socketPath);
    await b.handshake();
    b.sendOption(NBD_OPT_GO, infoRequest('live', []));
    const refused = await b.readOptionReply();
    expect(refused.type).toBe(NBD_REP_ERR_POLICY);
    expect(refused.data.toString()).toMatch(/too many connections: this server serves at most 1 at once/);
    b.sendOption(NBD_OPT_ABORT);
    expect((await b.readOptionReply()).type).toBe(NBD_REP_ACK);
    await b.waitClosed();
    expect(server!.status().connections).toBe(1);
    a.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offsetBytes: 0, lengthBytes: 1 });
    expect((await a.readSimpleReply()).error).toBe(0);
  });

  it('a refused connection is closed after MAX_REFUSED_OPTIONS refusals, and past MAX_REFUSED_CONNECTIONS refused ones a new one is closed unanswered', async () => {
    await start(undefined, 1);
    const a = await RawClient.connect(socketPath);
    await a.open('live');
    const persistent = await RawClient.connect(socketPath);
    await persistent.handshake();
    for (let i = 0; i < MAX_REFUSED_OPTIONS; i++) {
      persistent.sendOption(NBD_OPT_LIST);
      expect((await persistent.readOptionReply()).type).toBe(NBD_REP_ERR_POLICY);
    }
    await persistent.waitClosed();
    await until(() => server?.refusing === 0);
    const waiting: RawClient[] = [];
    for (let i = 0; i < MAX_REFUSED_CONNECTIONS; i++) {
      const c = await RawClient.connect(socketPath);
      await c.handshake(); // greeted: each holds one of the refusal places
      waiting.push(c);
    }
    const extra = await RawClient.connect(socketPath);
    await extra.waitClosed();
    expect(extra.queue.length).toBe(0);
    for (const c of waiting) c.sendOption(NBD_OPT_ABORT);
    for (const c of waiting) await c.waitClosed();
    await until(() => server?.refusing === 0);
  });
});

describe('export totals', () => {
  it('keeps the totals of at most maxExportTotals exports, dropping the least recently closed; a bad bound is INVALID_ARGUMENT', async () => {
    const exports = ['live', 'snapshot/a', 'snapshot/b', 'snapshot/c'].map((name, i) => new MemoryExport(name, 1 << 16, i > 0));
    catalog = new MemoryCatalog(exports);
    server = new NbdServer({ catalog, maxExportTotals: 2 });
    await server.listen({ socketPath });
    /** Attaches to `name`, reads one byte, disconnects and waits until the server counted the connection as closed. */
    const visit = async (name: string): Promise<void> => {
      const c = await RawClient.connect(socketPath);
      await c.open(name);
      c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offsetBytes: 0, lengthBytes: 1 });
      expect((await c.readSimpleReply()).error).toBe(0);
      c.sendRequest({ type: NBD_CMD_DISC, cookie: 2n, offsetBytes: 0, lengthBytes: 0 });
      await c.waitClosed();
      await until(() => server?.status().connections === 0);
    };
    const kept = (): string[] => (server?.status().exports ?? []).map((e) => e.name);
    await visit('live');
    await visit('snapshot/a');
    expect(kept()).toEqual(['live', 'snapshot/a']);
    await visit('snapshot/b'); // over the bound: the least recently closed (live) goes
    expect(kept()).toEqual(['snapshot/a', 'snapshot/b']);
    await visit('snapshot/a'); // closed again: now the most recent
    await visit('snapshot/c');
    expect(kept()).toEqual(['snapshot/a', 'snapshot/c']);
    expect(server.status().exports.find((e) => e.name === 'snapshot/a')).toMatchObject({ requests: 2, readBytes: 2 });
    expect(() => new NbdServer({ catalog, maxExportTotals: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
  });
});
