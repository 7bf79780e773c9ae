import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CowvolError } from '@cowvol/base';
import { StreamWriter, TRAILER_BYTES, Volume, encodeHeader, importStream, verifyStream, type StreamHeader, type StreamSource } from '../src/index.js';
import { exportToBuffer, memorySource } from './backup-helpers.js';

/** The named errors of the stream writer and of an import whose input changes between its two passes (docs/ARCHITECTURE.md §15.6). */
const BS = 512;

function header(labels: Record<string, string> = {}): StreamHeader {
  const id = { volumeUuid: '0123456789abcdef0123456789abcdef', snapshotId: 1, createdAt: '2026-11-21T00:00:00.000Z', name: 'night-1' };
  return { kind: 'full', sizeBytes: 64 * BS, blockSizeBytes: BS, source: id, base: null, labels, createdAt: '2026-11-22T00:00:01.000Z', producer: 'test' };
}

/** A full stream of snapshot s1 of a 1 MiB volume with data in two places (two extents), and s1's content. */
async function twoExtentStream(dir: string): Promise<{ stream: Buffer; expected: Buffer }> {
  const src = await Volume.create(join(dir, 'src.img'), { sizeBytes: 1 << 20, blockSizeBytes: 4096 });
  await src.write(0, Buffer.alloc(4096, 1));
  await src.write(512 * 1024, Buffer.alloc(4096, 2));
  await src.createSnapshot('s1');
  const stream = await exportToBuffer(src, 's1');
  const expected = await src.readSnapshot('s1', 0, 1 << 20);
  await src.close();
  return { stream, expected };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CowvolError) return err.code;
    throw err;
  }
  return 'RESOLVED';
}

describe('stream errors have stable codes', () => {
  it('the writer: an extent out of order or of a bad length is STREAM_EXTENT_INVALID', async () => {
    const w = new StreamWriter(header(), async () => undefined);
    await w.start();
    await w.data(4 * BS, Buffer.alloc(BS, 1));
    expect(await codeOf(w.data(0, Buffer.alloc(BS, 1)))).toBe('STREAM_EXTENT_INVALID');
    expect(await codeOf(w.zero(8 * BS, 0))).toBe('STREAM_EXTENT_INVALID');
  });

  it('a header over 64 KiB of JSON is STREAM_HEADER_TOO_LARGE', () => {
    const labels = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, 'v'.repeat(256)]));
    let code = 'RETURNED';
    try {
      encodeHeader(header(labels));
    } catch (err) {
      code = err instanceof CowvolError ? err.code : 'NOT_A_COWVOL_ERROR';
    }
    expect(code).toBe('STREAM_HEADER_TOO_LARGE');
  });

  it('an extent that verified but is gone when applied (the input was rewritten) is STREAM_CHANGED', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cowvol-stream-errors-'));
    try {
      const { stream } = await twoExtentStream(dir);
      const v = await verifyStream(memorySource(stream));
      expect(v.extentCount).toBeGreaterThanOrEqual(2);
      const lastExtent = v.extentOffsets[v.extentCount - 1] ?? 0;
      const trailer = stream.subarray(stream.length - TRAILER_BYTES);
      let applying = false;
      // In the apply pass the last extent's place holds the trailer, as if the file had been cut there.
      const source: StreamSource = {
        lengthBytes: stream.length,
        read: async (o, l) => (applying && o === lastExtent ? trailer.subarray(0, Math.min(l, trailer.length)) : stream.subarray(o, Math.min(stream.length, o + l))),
      };
      const err = await importStream(join(dir, 'dst.img'), source, { onProgress: (p) => void (applying = p.phase === 'apply') }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CowvolError);
      expect((err as CowvolError).code).toBe('STREAM_CHANGED');
      expect((err as CowvolError).details).toMatchObject({ extentIndex: v.extentCount - 1, streamOffsetBytes: lastExtent });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('an extent that verified but is damaged when applied is STREAM_CORRUPT with details.applying, saying the import is pending; --resume with the intact stream finishes it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cowvol-stream-errors-'));
    try {
      const { stream, expected } = await twoExtentStream(dir);
      const v = await verifyStream(memorySource(stream));
      const lastExtent = v.extentOffsets[v.extentCount - 1] ?? 0;
      const damaged = Buffer.from(stream);
      damaged[lastExtent + 40]! ^= 0x01; // a byte of the last extent's data
      let applying = false;
      const source: StreamSource = {
        lengthBytes: stream.length,
        read: async (o, l) => (applying ? damaged : stream).subarray(o, Math.min(stream.length, o + l)),
      };
      const target = join(dir, 'dst.img');
      const err = await importStream(target, source, { onProgress: (p) => void (applying = p.phase === 'apply') }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CowvolError);
      expect((err as CowvolError).code).toBe('STREAM_CORRUPT');
      expect((err as CowvolError).details).toMatchObject({ applying: true, extentIndex: v.extentCount - 1 });
      expect((err as CowvolError).message).toContain('run it again with --resume');
      const r = await importStream(target, memorySource(stream), { resume: true, verify: true });
      expect(r.resumed).toBe(true);
      const t = await Volume.open(target);
      expect((await t.readSnapshot('s1', 0, 1 << 20)).equals(expected)).toBe(true);
      await t.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
