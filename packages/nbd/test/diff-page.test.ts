import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { DiffExtent } from '@cowvol/cow-core';
import { diffPage } from '../src/index.js';

/**
 * `snapshot.diff` pages (docs/FORMAT.md §11.2): following `nextOffsetBytes`
 * from 0 gives back every extent once, in order, each page at most the
 * bound; a page asked from inside an extent starts with the rest of it.
 */
const extentsArb = fc
  .array(fc.record({ gapBlocks: fc.integer({ min: 0, max: 4 }), lengthBlocks: fc.integer({ min: 1, max: 5 }), snapshotId: fc.integer({ min: 1, max: 3 }) }), { maxLength: 60 })
  .map((runs) => {
    const out: DiffExtent[] = [];
    let at = 0;
    for (const r of runs) {
      at += r.gapBlocks * 4096;
      out.push({ offsetBytes: at, lengthBytes: r.lengthBlocks * 4096, snapshot: `s${r.snapshotId}`, snapshotId: r.snapshotId });
      at += r.lengthBlocks * 4096;
    }
    return out;
  });

describe('diffPage', () => {
  it('pages joined from offset 0 are the extents, each page at most the bound (fast-check)', () => {
    fc.assert(
      fc.property(extentsArb, fc.integer({ min: 1, max: 7 }), (extents, max) => {
        const joined: DiffExtent[] = [];
        let after = 0;
        for (let pages = 0; ; pages++) {
          expect(pages).toBeLessThanOrEqual(extents.length);
          const page = diffPage(extents, after, max);
          expect(page.extents.length).toBeLessThanOrEqual(max);
          joined.push(...page.extents);
          if (page.nextOffsetBytes === null) break;
          expect(page.nextOffsetBytes).toBeGreaterThan(after);
          after = page.nextOffsetBytes;
        }
        expect(joined).toEqual(extents);
      }),
    );
  });

  it('from inside an extent: the rest of it first; past the end: an empty last page', () => {
    const extents: DiffExtent[] = [
      { offsetBytes: 0, lengthBytes: 8192, snapshot: 'a', snapshotId: 1 },
      { offsetBytes: 16384, lengthBytes: 4096, snapshot: 'b', snapshotId: 2 },
    ];
    expect(diffPage(extents, 4096, 1)).toEqual({ extents: [{ offsetBytes: 4096, lengthBytes: 4096, snapshot: 'a', snapshotId: 1 }], nextOffsetBytes: 8192 });
    expect(diffPage(extents, 8192, 1)).toEqual({ extents: [extents[1]], nextOffsetBytes: null });
    expect(diffPage(extents, 1 << 30, 1)).toEqual({ extents: [], nextOffsetBytes: null });
  });
});
