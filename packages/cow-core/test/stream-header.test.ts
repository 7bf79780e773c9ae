import { describe, expect, it } from 'vitest';
import { CowvolError } from '@cowvol/base';
import { MAX_VOLUME_BYTES, StreamWriter, verifyStream, type StreamHeader } from '../src/index.js';
import { memorySource } from './backup-helpers.js';

/**
 * Every field of a stream header is checked when the header is read
 * (docs/FORMAT.md §9.1): a stream whose checksums hold but whose header this
 * cowvol cannot apply is STREAM_CORRUPT naming the field — in pass 1,
 * before an import touches its target.
 */
const id = (name: string, snapshotId = 2) => ({ volumeUuid: '0123456789abcdef0123456789abcdef', snapshotId, createdAt: '2026-11-22T00:00:00.000Z', name });

function header(overrides: Partial<StreamHeader> | Record<string, unknown>): StreamHeader {
  return {
    kind: 'full',
    sizeBytes: 64 * 4096,
    blockSizeBytes: 4096,
    source: id('good'),
    base: null,
    labels: { kind: 'nightly' },
    createdAt: '2026-11-22T00:00:01.000Z',
    producer: 'test',
    ...overrides,
  };
}

async function streamOf(h: StreamHeader): Promise<Buffer> {
  const parts: Buffer[] = [];
  const w = new StreamWriter(h, async (b) => void parts.push(Buffer.from(b)));
  await w.start();
  await w.finish();
  return Buffer.concat(parts);
}

async function refusal(h: StreamHeader): Promise<{ code: string; field?: unknown }> {
  try {
    await verifyStream(memorySource(await streamOf(h)));
  } catch (err) {
    if (err instanceof CowvolError) return { code: err.code, field: err.details?.field };
    throw err;
  }
  return { code: 'ACCEPTED' };
}

describe('stream header fields', () => {
  it('a well-formed header is accepted (full and incremental)', async () => {
    expect(await refusal(header({}))).toEqual({ code: 'ACCEPTED' });
    expect(await refusal(header({ kind: 'incremental', base: id('older', 1) }))).toEqual({ code: 'ACCEPTED' });
    expect(await refusal(header({ blockSizeBytes: 512, sizeBytes: 512 }))).toEqual({ code: 'ACCEPTED' });
    expect(await refusal(header({ blockSizeBytes: 65536, sizeBytes: MAX_VOLUME_BYTES }))).toEqual({ code: 'ACCEPTED' });
  });

  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['block size 1000', { blockSizeBytes: 1000, sizeBytes: 64_000 }, 'blockSizeBytes'],
    ['block size 256', { blockSizeBytes: 256, sizeBytes: 256 * 8 }, 'blockSizeBytes'],
    ['block size 128 KiB', { blockSizeBytes: 131072, sizeBytes: 131072 * 4 }, 'blockSizeBytes'],
    ['size beyond MAX_VOLUME_BYTES', { sizeBytes: MAX_VOLUME_BYTES + 4096 }, 'sizeBytes'],
    ['size not a multiple of the block', { sizeBytes: 64 * 4096 + 512 }, 'sizeBytes'],
    ['size 0', { sizeBytes: 0 }, 'sizeBytes'],
    ['snapshot name with a space', { source: id('two words') }, 'source.name'],
    ['snapshot name with CSI', { source: id('x\u009b') }, 'source.name'],
    ['snapshot name too long', { source: id('n'.repeat(129)) }, 'source.name'],
    ['empty snapshot name', { source: id('') }, 'source.name'],
    ['base name invalid', { kind: 'incremental', base: id('bad/name', 1) }, 'base.name'],
    ['base in a full stream', { base: id('older', 1) }, 'base'],
    ['no base in an incremental', { kind: 'incremental', base: null }, 'base'],
    ['label value with a C1 control', { labels: { k: 'a\u0085b' } }, 'labels'],
    ['label value with a bidi override', { labels: { k: 'a\u202eb' } }, 'labels'],
    ['label key __proto__', { labels: JSON.parse('{"__proto__":"x"}') as unknown }, 'labels'],
    ['invalid label key', { labels: { 'bad key': 'v' } }, 'labels'],
    ['labels not strings', { labels: { k: 1 } }, 'labels'],
    ['volume uuid with a control', { source: { ...id('good'), volumeUuid: 'ab\u001bcd' } }, 'source.volumeUuid'],
    ['empty producer', { producer: '' }, 'producer'],
    ['createdAt with a line separator', { createdAt: '2026\u2028' }, 'createdAt'],
    ['unknown kind', { kind: 'differential' }, 'kind'],
  ];
  for (const [what, overrides, field] of cases) {
    it(`refuses ${what} (STREAM_CORRUPT, field ${field})`, async () => {
      const r = await refusal(header(overrides));
      expect(r.code).toBe('STREAM_CORRUPT');
      expect(String(r.field).startsWith(field), String(r.field)).toBe(true);
    });
  }
});
