import { describe, expect, it } from 'vitest';
import { AssertionFailedError } from '@cowvol/base';
import {
  blockStatusChunk,
  ByteQueue,
  decodeInfoRequest,
  decodeMetaContextRequest,
  errorChunk,
  exportNameReply,
  greeting,
  infoBlockSizeReply,
  infoExportReply,
  MAX_OPTION_BYTES,
  MAX_PAYLOAD_BYTES,
  NbdFramingError,
  offsetDataChunk,
  offsetHoleChunk,
  optionReply,
  parseClientFlags,
  parseOption,
  parseRequest,
  readReply,
  MAX_READ_CHUNKS,
  serverReply,
  simpleReply,
  zeroRuns,
  isAllZero,
} from '../src/index.js';
import { infoRequest, metaRequest } from './raw-client.js';

function hex(b: Buffer | Buffer[]): string {
  return (Array.isArray(b) ? Buffer.concat(b) : b).toString('hex');
}

function requestBytes(type: number, lengthBytes: number, payload = Buffer.alloc(0), magic = 0x25609513): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(magic, 0);
  h.writeUInt16BE(1, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(0x0102030405060708n, 8);
  h.writeBigUInt64BE(4096n, 16);
  h.writeUInt32BE(lengthBytes, 24);
  return Buffer.concat([h, payload]);
}

describe('ByteQueue', () => {
  it('peeks and takes across chunk boundaries', () => {
    const q = new ByteQueue();
    q.push(Buffer.from([1, 2]));
    q.push(Buffer.from([3]));
    q.push(Buffer.from([4, 5, 6]));
    expect(q.length).toBe(6);
    expect([...q.peek(4)]).toEqual([1, 2, 3, 4]);
    expect([...q.take(3)]).toEqual([1, 2, 3]);
    q.skip(1);
    expect([...q.take(2)]).toEqual([5, 6]);
    expect(q.length).toBe(0);
    expect(() => q.take(1)).toThrow(AssertionFailedError);
  });
});

describe('parsers', () => {
  it('client flags: known bits pass, an unknown bit is a framing violation', () => {
    const q = new ByteQueue();
    q.push(Buffer.from([0, 0, 0]));
    expect(parseClientFlags(q)).toBeUndefined();
    q.push(Buffer.from([3]));
    expect(parseClientFlags(q)).toBe(3);
    q.push(Buffer.from([0, 0, 0, 4]));
    expect(() => parseClientFlags(q)).toThrow(NbdFramingError);
  });

  it('an option is returned only once whole, byte by byte', () => {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(7, 8);
    h.writeUInt32BE(3, 12);
    const bytes = Buffer.concat([h, Buffer.from('abc')]);
    const q = new ByteQueue();
    for (let i = 0; i < bytes.length - 1; i++) {
      q.push(bytes.subarray(i, i + 1));
      expect(parseOption(q)).toBeUndefined();
    }
    q.push(bytes.subarray(bytes.length - 1));
    expect(parseOption(q)).toEqual({ option: 7, data: Buffer.from('abc') });
    expect(q.length).toBe(0);
  });

  it('an option over 64 KiB or without IHAVEOPT is refused from its header alone', () => {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'latin1');
    h.writeUInt32BE(1, 8);
    h.writeUInt32BE(MAX_OPTION_BYTES + 1, 12);
    const q = new ByteQueue();
    q.push(h);
    expect(() => parseOption(q)).toThrow(/more than 65536/);
    const bad = Buffer.from(h);
    bad.write('IHAVEOPX', 0, 'latin1');
    const q2 = new ByteQueue();
    q2.push(bad);
    expect(() => parseOption(q2)).toThrow(NbdFramingError);
  });

  it('a request header, and a WRITE with its payload', () => {
    const q = new ByteQueue();
    q.push(requestBytes(0, 512));
    expect(parseRequest(q)).toEqual({ flags: 1, type: 0, cookie: 0x0102030405060708n, offsetBytes: 4096, lengthBytes: 512 });
    const w = requestBytes(1, 4, Buffer.from([9, 8, 7, 6]));
    q.push(w.subarray(0, 30));
    expect(parseRequest(q)).toBeUndefined();
    expect(q.length).toBe(30);
    q.push(w.subarray(30));
    expect(parseRequest(q)?.payload).toEqual(Buffer.from([9, 8, 7, 6]));
  });

  it('a WRITE over 32 MiB or a bad request magic is a framing violation before any payload arrives', () => {
    const q = new ByteQueue();
    q.push(requestBytes(1, MAX_PAYLOAD_BYTES + 1));
    expect(() => parseRequest(q)).toThrow(/more than 33554432/);
    const q2 = new ByteQueue();
    q2.push(requestBytes(0, 1, Buffer.alloc(0), 0x25609514));
    expect(() => parseRequest(q2)).toThrow(NbdFramingError);
    // A READ of more than 32 MiB carries no payload: it is answered EINVAL, not a framing violation.
    const q3 = new ByteQueue();
    q3.push(requestBytes(0, MAX_PAYLOAD_BYTES + 1));
    expect(parseRequest(q3)?.lengthBytes).toBe(MAX_PAYLOAD_BYTES + 1);
  });

  it('INFO/GO and META_CONTEXT payloads decode, and malformed ones give an error instead of throwing', () => {
    expect(decodeInfoRequest(infoRequest('live', [1, 3]))).toEqual({ value: { exportName: 'live', infoTypes: [1, 3] } });
    expect(decodeInfoRequest(infoRequest('live', [1]).subarray(0, 9))).toHaveProperty('error');
    expect(decodeInfoRequest(Buffer.from([0, 0, 0, 200]))).toEqual({ error: 'export name runs past the option' });
    // A name longer than the spec's 4096 bytes, wholly inside the option, is too long, not cut short.
    expect(decodeInfoRequest(infoRequest('n'.repeat(4097), []))).toEqual({ error: 'export name is 4097 bytes, longer than the 4096 the protocol allows' });
    expect(decodeMetaContextRequest(metaRequest('', ['base:allocation', 'qemu:x']))).toEqual({ value: { exportName: '', queries: ['base:allocation', 'qemu:x'] } });
    const huge = metaRequest('', []);
    huge.writeUInt32BE(0xffffffff, 4); // four billion queries in 8 bytes
    expect(decodeMetaContextRequest(huge)).toHaveProperty('error');
  });
});

describe('builders (docs/FORMAT.md §10)', () => {
  it('greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', () => {
    expect(hex(greeting())).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
  });

  it('option replies', () => {
    expect(hex(optionReply(7, 1))).toBe('0003e889045565a9' + '00000007' + '00000001' + '00000000');
    expect(hex(serverReply(3, 'live', 'd'))).toBe('0003e889045565a9' + '00000003' + '00000002' + '00000009' + '00000004' + Buffer.from('lived').toString('hex'));
    expect(hex(infoExportReply(7, 1 << 20, 0x1ed))).toBe('0003e889045565a9' + '00000007' + '00000003' + '0000000c' + '0000' + '0000000000100000' + '01ed');
    expect(hex(infoBlockSizeReply(6, 1, 4096, MAX_PAYLOAD_BYTES))).toBe('0003e889045565a9' + '00000006' + '00000003' + '0000000e' + '0003' + '00000001' + '00001000' + '02000000');
  });

  it('EXPORT_NAME reply: 124 zero bytes unless NO_ZEROES', () => {
    expect(exportNameReply(512, 3, true).length).toBe(10);
    const full = exportNameReply(512, 3, false);
    expect(full.length).toBe(134);
    expect(hex(full.subarray(0, 10))).toBe('0000000000000200' + '0003');
    expect(full.subarray(10).every((b) => b === 0)).toBe(true);
  });

  it('simple reply and structured chunks', () => {
    expect(hex(simpleReply(0xabn, 22))).toBe('67446698' + '00000016' + '00000000000000ab');
    const [head, data] = offsetDataChunk(5n, 4096, Buffer.from([1, 2]), true);
    expect(hex(head!)).toBe('668e33ef' + '0001' + '0001' + '0000000000000005' + '0000000a' + '0000000000001000');
    expect(data).toEqual(Buffer.from([1, 2]));
    expect(hex(offsetHoleChunk(5n, 0, 512, false))).toBe('668e33ef' + '0000' + '0002' + '0000000000000005' + '0000000c' + '0000000000000000' + '00000200');
    expect(hex(errorChunk(5n, 5, 'x'))).toBe('668e33ef' + '0001' + '8001' + '0000000000000005' + '00000007' + '00000005' + '0001' + '78');
    expect(hex(blockStatusChunk(5n, 1, [{ lengthBytes: 4096, flags: 3 }], true))).toBe('668e33ef' + '0001' + '0005' + '0000000000000005' + '0000000c' + '00000001' + '00001000' + '00000003');
  });
});

describe('zeros as holes (docs/ARCHITECTURE.md §14.11)', () => {
  /** Decodes a READ reply's chunks: [offset, length, 'hole' | 'data', done]. */
  function chunksOf(reply: Buffer[]): Array<[number, number, string, boolean]> {
    const all = Buffer.concat(reply);
    const out: Array<[number, number, string, boolean]> = [];
    for (let at = 0; at < all.length;) {
      const type = all.readUInt16BE(at + 6);
      const length = all.readUInt32BE(at + 16);
      const offset = Number(all.readBigUInt64BE(at + 20));
      const done = (all.readUInt16BE(at + 4) & 1) === 1;
      out.push(type === 2 ? [offset, all.readUInt32BE(at + 28), 'hole', done] : [offset, length - 8, 'data', done]);
      at += 20 + length;
    }
    return out;
  }

  it("zeroRuns cuts at the export's piece boundaries, merges equal neighbours and covers the data exactly", () => {
    const data = Buffer.alloc(5 * 4096);
    data[4096 + 17] = 1; // export byte 1000 + 4113: in the export's piece [4096, 8192), data bytes [3096, 7192)
    expect(isAllZero(Buffer.alloc(200_000))).toBe(true);
    expect(isAllZero(data)).toBe(false);
    // Read at export offset 1000: pieces end at 4096, 8192, … of the export; the first is partial.
    const runs = zeroRuns(data, 1000, 4096);
    expect(runs).toEqual([
      { lengthBytes: 3096, zero: true },
      { lengthBytes: 4096, zero: false },
      { lengthBytes: 5 * 4096 - 7192, zero: true },
    ]);
    expect(runs.reduce((n, r) => n + r.lengthBytes, 0)).toBe(data.length);
  });

  it('readReply: all zeros is one OFFSET_HOLE even under DF; mixed data is hole and data chunks, DONE on the last; DF or a short read one data chunk', () => {
    expect(chunksOf(readReply(1n, 8192, Buffer.alloc(4096), true, 4096))).toEqual([[8192, 4096, 'hole', true]]);
    const mixed = Buffer.alloc(16 * 4096);
    mixed.fill(7, 4 * 4096, 6 * 4096);
    expect(chunksOf(readReply(1n, 0, mixed, false, 4096))).toEqual([
      [0, 4 * 4096, 'hole', false],
      [4 * 4096, 2 * 4096, 'data', false],
      [6 * 4096, 10 * 4096, 'hole', true],
    ]);
    expect(chunksOf(readReply(1n, 0, mixed, true, 4096))).toEqual([[0, 16 * 4096, 'data', true]]);
    const short = Buffer.alloc(6000);
    short[0] = 1;
    expect(chunksOf(readReply(1n, 0, short, false, 4096))).toEqual([[0, 6000, 'data', true]]);
    // A data chunk carries a view of the bytes read, not a copy.
    const reply = readReply(1n, 0, mixed, false, 4096);
    expect(reply.some((b) => b.buffer === mixed.buffer && b.length === 2 * 4096)).toBe(true);
  });

  it(`readReply: a large read with alternating zero and data blocks is cut into at most ${MAX_READ_CHUNKS} chunks`, () => {
    const data = Buffer.alloc(8 * 1024 * 1024);
    for (let at = 0; at < data.length; at += 2 * 4096) data[at] = 1; // every other block holds data
    const chunks = chunksOf(readReply(1n, 0, data, false, 4096));
    expect(chunks.length).toBeLessThanOrEqual(MAX_READ_CHUNKS);
    expect(chunks.reduce((n, c) => n + c[1], 0)).toBe(data.length);
  });
});
