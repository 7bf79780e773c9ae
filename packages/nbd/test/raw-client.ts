import { connect, type Socket } from 'node:net';
import { connect as connectTls, type ConnectionOptions } from 'node:tls';
import {
  ByteQueue,
  NBD_CMD_READ,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  type BlockExport,
  type ExportCatalog,
  type Extent,
} from '../src/index.js';

/** A byte-level NBD client for tests: every message is built and parsed here, independently of the server's builders. */
export class RawClient {
  readonly queue = new ByteQueue();
  private waiters: Array<() => void> = [];
  closed = false;
  /** Expected data length of simple READ replies, by cookie. */
  private readLengths = new Map<bigint, number>();

  private constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.queue.push(d);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static async connect(path: string): Promise<RawClient> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  /**
   * After an NBD_REP_ACK to NBD_OPT_STARTTLS: the TLS handshake as a PSK
   * client; resolves with a client speaking inside TLS, rejects when the
   * handshake fails.
   */
  async startTls(identity: string, key: Buffer, options: ConnectionOptions = {}): Promise<RawClient> {
    const secure = connectTls({ socket: this.socket, pskCallback: () => ({ identity, psk: key }), checkServerIdentity: () => undefined, ...options });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    return new RawClient(secure);
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  /** Waits until `n` bytes arrived; throws when the server closed first. */
  async need(n: number): Promise<void> {
    while (this.queue.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.queue.length} of ${n} bytes`);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  async take(n: number): Promise<Buffer> {
    await this.need(n);
    return Buffer.from(this.queue.take(n));
  }

  /** Resolves once the server closed the connection. */
  async waitClosed(): Promise<void> {
    while (!this.closed) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  /** Reads the greeting and sends the client flags (fixed newstyle, no zeroes by default). */
  async handshake(clientFlags = 3): Promise<Buffer> {
    const greeting = await this.take(18);
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags);
    this.write(flags);
    return greeting;
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.take(20);
    if (h.readBigUInt64BE(0) !== 0x3e889045565a9n) throw new Error('bad option reply magic');
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.take(h.readUInt32BE(16)) };
  }

  /** Reads option replies up to and including the ACK or an error. */
  async readOptionReplies(): Promise<Array<{ option: number; type: number; data: Buffer }>> {
    const out = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === NBD_REP_ACK || r.type >= 2 ** 31) return out;
    }
  }

  /** Handshake, optional structured replies and base:allocation, GO; resolves with the transmission flags. */
  async open(exportName = '', options: { structured?: boolean; baseAllocation?: boolean } = {}): Promise<number> {
    await this.handshake();
    if (options.structured) {
      this.sendOption(NBD_OPT_STRUCTURED_REPLY);
      await this.readOptionReplies();
    }
    if (options.baseAllocation) {
      this.sendOption(NBD_OPT_SET_META_CONTEXT, metaRequest(exportName, ['base:allocation']));
      await this.readOptionReplies();
    }
    this.sendOption(NBD_OPT_GO, infoRequest(exportName, []));
    const replies = await this.readOptionReplies();
    const last = replies.at(-1)!;
    if (last.type !== NBD_REP_ACK) throw new Error(`GO failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const exportInfo = replies.find((r) => r.type === 3 && r.data.readUInt16BE(0) === 0)!;
    return exportInfo.data.readUInt16BE(10);
  }

  sendRequest(r: { type: number; flags?: number; cookie: bigint; offsetBytes: number; lengthBytes: number; payload?: Buffer }): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(r.flags ?? 0, 4);
    h.writeUInt16BE(r.type, 6);
    h.writeBigUInt64BE(r.cookie, 8);
    h.writeBigUInt64BE(BigInt(r.offsetBytes), 16);
    h.writeUInt32BE(r.lengthBytes, 24);
    if (r.type === NBD_CMD_READ) this.readLengths.set(r.cookie, r.lengthBytes);
    this.write(r.payload ? Buffer.concat([h, r.payload]) : h);
  }

  /** One simple reply (with its data for a successful READ). */
  async readSimpleReply(): Promise<{ cookie: bigint; error: number; data?: Buffer }> {
    const h = await this.take(16);
    if (h.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) throw new Error(`not a simple reply: magic 0x${h.readUInt32BE(0).toString(16)}`);
    const cookie = h.readBigUInt64BE(8);
    const error = h.readUInt32BE(4);
    const readLength = this.readLengths.get(cookie);
    this.readLengths.delete(cookie);
    return error === 0 && readLength !== undefined ? { cookie, error, data: await this.take(readLength) } : { cookie, error };
  }

  /** One reply of either kind: a simple reply or one structured chunk. */
  async readAnyReply(): Promise<{ cookie: bigint; structured: boolean; flags: number; type: number; error: number; payload: Buffer }> {
    await this.need(4);
    if (this.queue.peek(4).readUInt32BE(0) === NBD_SIMPLE_REPLY_MAGIC) {
      const r = await this.readSimpleReply();
      return { cookie: r.cookie, structured: false, flags: 1, type: 0, error: r.error, payload: r.data ?? Buffer.alloc(0) };
    }
    const h = await this.take(20);
    if (h.readUInt32BE(0) !== 0x668e33ef) throw new Error('bad structured reply magic');
    const type = h.readUInt16BE(6);
    const payload = await this.take(h.readUInt32BE(16));
    const error = type >= 0x8000 ? payload.readUInt32BE(0) : 0;
    return { cookie: h.readBigUInt64BE(8), structured: true, flags: h.readUInt16BE(4), type, error, payload };
  }

  end(): void {
    this.socket.end();
  }
}

export function infoRequest(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

export function metaRequest(name: string, queries: string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length)];
  for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q));
  return Buffer.concat(parts);
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/** An export in memory; `gate` (when set) holds every read and write until it resolves. */
export class MemoryExport implements BlockExport {
  readonly data: Buffer;
  readonly preferredBlockBytes = 4096;
  flushes = 0;
  writes = 0;
  readsStarted = 0;
  writesStarted = 0;
  /** Every range the server wrote through `write`, in order. */
  readonly writeLog: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  gate: Promise<void> | undefined;
  constructor(
    readonly name: string,
    sizeBytes: number,
    readonly readOnly = false,
    readonly description = `memory ${name}`,
  ) {
    this.data = Buffer.alloc(sizeBytes);
  }
  get sizeBytes(): number {
    return this.data.length;
  }
  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.readsStarted++;
    await this.gate;
    return Buffer.from(this.data.subarray(offsetBytes, offsetBytes + lengthBytes));
  }
  async write(offsetBytes: number, data: Buffer): Promise<void> {
    this.writesStarted++;
    await this.gate;
    this.writes++;
    this.writeLog.push({ offsetBytes, lengthBytes: data.length });
    data.copy(this.data, offsetBytes);
  }
  async flush(): Promise<void> {
    this.flushes++;
  }
  async writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.gate;
    this.data.fill(0, offsetBytes, offsetBytes + lengthBytes);
  }
}

/** A catalog of memory exports; `""` means the first. */
export class MemoryCatalog implements ExportCatalog {
  listCalls = 0;
  constructor(readonly exports: MemoryExport[]) {}
  async list() {
    this.listCalls++;
    return this.exports.map((e) => ({ name: e.name, description: e.description }));
  }
  /** Why an export that exists cannot be attached now; set by a test. */
  unavailable?: (name: string) => string | undefined;
  async resolve(name: string) {
    return name === '' ? this.exports[0] : this.exports.find((e) => e.name === name);
  }
}

export type { Extent };
