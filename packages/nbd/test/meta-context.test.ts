import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { dirtyExtents } from '../src/meta-context.js';

const SEED = Number(process.env.NBD_META_SEED ?? Date.now() % 2 ** 31);

describe(`dirtyExtents against a per-byte model (seed ${SEED})`, () => {
  it('covers the range from its first byte, alternates flags, no zero length, at most maxExtents, each byte as the model says', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 63 })), fc.integer({ min: 0, max: 63 }), fc.integer({ min: 1, max: 64 }), fc.integer({ min: 1, max: 8 }), (blocks, start, len, max) => {
        const sorted = [...blocks].sort((a, b) => a - b);
        const changed = sorted.map((b) => ({ offsetBytes: b * 4, lengthBytes: 4 }));
        const lengthBytes = Math.min(len, 256 - start);
        const out = dirtyExtents(changed, start, lengthBytes, max);
        expect(out.length).toBeGreaterThan(0);
        expect(out.length).toBeLessThanOrEqual(max);
        let at = start;
        out.forEach((e, i) => {
          expect(e.lengthBytes).toBeGreaterThan(0);
          if (i > 0) expect(e.flags).not.toBe(out[i - 1]!.flags);
          for (let b = at; b < at + e.lengthBytes; b++) expect(e.flags).toBe(sorted.includes(Math.floor(b / 4)) ? 1 : 0);
          at += e.lengthBytes;
        });
        expect(at).toBeLessThanOrEqual(start + lengthBytes);
        if (out.length < max) expect(at).toBe(start + lengthBytes);
      }),
      { seed: SEED, numRuns: 300 },
    );
  });
});
