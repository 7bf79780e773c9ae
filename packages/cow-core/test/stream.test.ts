import { describe, expect, it } from 'vitest';
import { CowvolError } from '@cowvol/base';
import { EXTENT_HEADER_BYTES, STREAM_MAGIC, StreamWriter, TRAILER_BYTES, encodeHeader, readExtent, verifyStream, type StreamHeader } from '../src/index.js';
import { crc32c } from '@cowvol/base';
import { memorySource, prng, randomBuffer } from './backup-helpers.js';

/**
 * The stream format (docs/FORMAT.md "Snapshot stream") on its own: a small
 * stream is written, then damaged in every way one can think of — every
 * single-bit flip of every byte, every truncation, trailing bytes, reordered
 * or foreign records — and each damaged stream must be refused by
 * verifyStream with STREAM_CORRUPT (or NOT_A_STREAM when the magic is hit).
 */
const BS = 512;

function header(kind: 'full' | 'incremental' = 'incremental'): StreamHeader {
  const id = (n: number) => ({ volumeUuid: '0123456789abcdef0123456789abcdef', snapshotId: n, createdAt: `2026-11-2${n}T00:00:00.000Z`, name: `night-${n}` });
  return { kind, sizeBytes: 64 * BS, blockSizeBytes: BS, source: id(2), base: kind === 'full' ? null : id(1), labels: { kind: 'nightly' }, createdAt: '2026-11-22T00:00:01.000Z', producer: 'test' };
}

async function build(h: StreamHeader, extents: Array<{ offset: number; data?: Buffer; zeroBytes?: number }>): Promise<Buffer> {
  const parts: Buffer[] = [];
  const w = new StreamWriter(h, async (b) => void parts.push(Buffer.from(b)));
  await w.start();
  for (const e of extents) {
    if (e.data) await w.data(e.offset, e.data);
    else await w.zero(e.offset, e.zeroBytes!);
  }
  await w.finish();
  return Buffer.concat(parts);
}

async function refusal(buf: Buffer): Promise<string> {
  try {
    await verifyStream(memorySource(buf));
  } catch (err) {
    if (err instanceof CowvolError) return err.code;
    throw err;
  }
  return 'ACCEPTED';
}

describe('stream format v1', () => {
  it('round trip: what the writer wrote is verified and read back, zero extents carry no data', async () => {
    const rnd = prng(7);
    const a = randomBuffer(rnd, 3 * BS);
    const b = randomBuffer(rnd, BS);
    const buf = await build(header(), [
      { offset: 0, data: a },
      { offset: 4 * BS, zeroBytes: 8 * BS },
      { offset: 63 * BS, data: b },
    ]);
    const v = await verifyStream(memorySource(buf));
    expect(v).toMatchObject({ extentCount: 3, totalBytes: 12 * BS, dataBytes: 4 * BS, streamBytes: buf.length });
    expect(v.header).toEqual(header());
    const src = memorySource(buf);
    const e0 = await readExtent(src, v.header, v.extentOffsets[0]!, 0, 0);
    const e1 = await readExtent(src, v.header, v.extentOffsets[1]!, 1, 0);
    const e2 = await readExtent(src, v.header, v.extentOffsets[2]!, 2, 0);
    expect(e0!.data!.equals(a)).toBe(true);
    expect(e1).toMatchObject({ zero: true, data: undefined, offsetBytes: 4 * BS, lengthBytes: 8 * BS });
    expect(e2!.data!.equals(b)).toBe(true);
    // The zero extent is just its header and CRC.
    expect(v.extentOffsets[2]! - v.extentOffsets[1]!).toBe(EXTENT_HEADER_BYTES + 4);
    expect(buf.readUInt32BE(0)).toBe(STREAM_MAGIC);
  });

  it('every single-bit flip anywhere in the stream is refused (every byte is covered by a checksum)', async () => {
    const rnd = prng(11);
    const buf = await build(header(), [
      { offset: BS, data: randomBuffer(rnd, 2 * BS) },
      { offset: 8 * BS, zeroBytes: BS },
      { offset: 10 * BS, data: randomBuffer(rnd, BS) },
    ]);
    expect(await refusal(buf)).toBe('ACCEPTED');
    const accepted: string[] = [];
    const codes = new Set<string>();
    for (let byte = 0; byte < buf.length; byte++) {
      for (let bit = 0; bit < 8; bit++) {
        const bad = Buffer.from(buf);
        bad[byte]! ^= 1 << bit;
        const code = await refusal(bad);
        codes.add(code);
        if (code === 'ACCEPTED') accepted.push(`${byte}:${bit}`);
        if (byte >= 4) expect(code, `flip of bit ${bit} of byte ${byte}`).toBe('STREAM_CORRUPT');
      }
    }
    expect(accepted).toEqual([]);
    expect([...codes].sort()).toEqual(['NOT_A_STREAM', 'STREAM_CORRUPT']);
  });

  it('every truncation and any trailing byte is refused', async () => {
    const rnd = prng(12);
    const buf = await build(header('full'), [
      { offset: 0, data: randomBuffer(rnd, BS) },
      { offset: 2 * BS, data: randomBuffer(rnd, 2 * BS) },
    ]);
    for (let cut = 0; cut < buf.length; cut++) {
      const code = await refusal(buf.subarray(0, cut));
      expect(['STREAM_CORRUPT', 'NOT_A_STREAM'], `cut at ${cut}`).toContain(code);
    }
    expect(await refusal(Buffer.concat([buf, Buffer.alloc(1)]))).toBe('STREAM_CORRUPT');
  });

  it('reordered records, a record from another stream and a trailer from another stream are refused', async () => {
    const rnd = prng(13);
    const d1 = randomBuffer(rnd, BS);
    const d2 = randomBuffer(rnd, BS);
    const s1 = await build(header(), [
      { offset: 0, data: d1 },
      { offset: 2 * BS, data: d2 },
    ]);
    const v1 = await verifyStream(memorySource(s1));
    const [h, r0, r1, trailer] = [
      s1.subarray(0, v1.extentOffsets[0]),
      s1.subarray(v1.extentOffsets[0], v1.extentOffsets[1]),
      s1.subarray(v1.extentOffsets[1], s1.length - TRAILER_BYTES),
      s1.subarray(s1.length - TRAILER_BYTES),
    ];
    expect(await refusal(Buffer.concat([h, r1, r0, trailer]))).toBe('STREAM_CORRUPT'); // swapped
    expect(await refusal(Buffer.concat([h, r0, trailer]))).toBe('STREAM_CORRUPT'); // one dropped
    // Same extents under another header (another source): its trailer does not chain to this header.
    const other = { ...header(), source: { ...header().source, snapshotId: 9 } };
    const s2 = await build(other, [
      { offset: 0, data: d1 },
      { offset: 2 * BS, data: d2 },
    ]);
    const h2 = s2.subarray(0, (await verifyStream(memorySource(s2))).extentOffsets[0]);
    expect(await refusal(Buffer.concat([h2, r0, r1, trailer]))).toBe('STREAM_CORRUPT');
  });

  it('a newer stream version is refused as UNSUPPORTED_VERSION, a foreign file as NOT_A_STREAM', async () => {
    const { bytes } = encodeHeader(header());
    const v2 = Buffer.from(bytes);
    v2.writeUInt32BE(2, 4);
    v2.writeUInt32BE(crc32c(v2.subarray(0, v2.length - 4)), v2.length - 4);
    expect(await refusal(v2)).toBe('UNSUPPORTED_VERSION');
    expect(await refusal(Buffer.from('hello, this is not a stream'))).toBe('NOT_A_STREAM');
    expect(await refusal(Buffer.alloc(0))).toBe('NOT_A_STREAM');
  });

  it('the writer refuses extents out of order or too long (it never writes a stream the reader would refuse)', async () => {
    const w = new StreamWriter(header(), async () => undefined);
    await w.start();
    await w.data(4 * BS, Buffer.alloc(BS, 1));
    await expect(w.data(0, Buffer.alloc(BS, 1))).rejects.toThrow(/not after/);
    await expect(w.zero(8 * BS, 8 * 1024 * 1024)).rejects.toThrow(/outside/);
  });
});
