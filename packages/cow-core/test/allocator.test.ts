import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ExtentAllocator } from '../src/index.js';
import { decodeValue } from '../src/metadata.js';

describe('extent allocator', () => {
  it('reuses the lowest freed space first, then grows the high-water mark', () => {
    const a = new ExtentAllocator(0);
    expect(a.allocate(10)).toEqual([{ startBlock: 0, lengthBlocks: 10 }]);
    a.free({ startBlock: 2, lengthBlocks: 3 });
    a.free({ startBlock: 7, lengthBlocks: 1 });
    expect(a.allocate(5)).toEqual([
      { startBlock: 2, lengthBlocks: 3 },
      { startBlock: 7, lengthBlocks: 1 },
      { startBlock: 10, lengthBlocks: 1 },
    ]);
    expect(a.highWaterBlocks).toBe(11);
    expect(a.freeBlocks).toBe(0);
  });

  it('merges adjacent free extents', () => {
    const a = new ExtentAllocator(0);
    a.allocate(9);
    a.free({ startBlock: 0, lengthBlocks: 3 });
    a.free({ startBlock: 6, lengthBlocks: 3 });
    a.free({ startBlock: 3, lengthBlocks: 3 });
    expect(a.extents()).toEqual([{ startBlock: 0, lengthBlocks: 9 }]);
  });

  it('guarantee 6: no double use — freeing a free block or one beyond the store is an assertion failure', () => {
    const a = new ExtentAllocator(0);
    a.allocate(4);
    a.free({ startBlock: 1, lengthBlocks: 2 });
    expect(() => a.free({ startBlock: 2, lengthBlocks: 1 })).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
    expect(() => a.free({ startBlock: 0, lengthBlocks: 2 })).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
    expect(() => a.free({ startBlock: 4, lengthBlocks: 1 })).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
  });

  it('allocateExact takes one chosen block out of the free space, raising the high-water mark across a gap', () => {
    const a = new ExtentAllocator(0, [], true);
    a.allocateExact(5); // commits may land out of allocation order: 0..4 become free
    expect(a.highWaterBlocks).toBe(6);
    expect(a.extents()).toEqual([{ startBlock: 0, lengthBlocks: 5 }]);
    a.allocateExact(2);
    expect(a.extents()).toEqual([
      { startBlock: 0, lengthBlocks: 2 },
      { startBlock: 3, lengthBlocks: 2 },
    ]);
    expect(() => a.allocateExact(2)).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
    expect(() => a.allocateExact(5)).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
  });

  it('the live allocator records no key operations; the committed one does', () => {
    const live = new ExtentAllocator(0);
    live.allocate(3);
    live.free({ startBlock: 0, lengthBlocks: 1 });
    expect(live.takeOps()).toEqual([]);
    const committed = new ExtentAllocator(0, [], true);
    committed.allocate(3);
    expect(committed.takeOps().map((op) => op.k)).toEqual(['alloc']);
  });

  it('the ops it emits rebuild the same state (property: persisted == in memory)', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 1, max: 20 })), { maxLength: 60 }), (steps) => {
        const a = new ExtentAllocator(0, [], true);
        const used: number[] = [];
        const persisted = new Map<string, { lengthBlocks: number }>();
        for (const [kind, n] of steps) {
          if (kind === 2) {
            // allocateExact, as the committed allocator applies `map` records: a free block, or one above the mark.
            const free = a.extents().flatMap((e) => Array.from({ length: e.lengthBlocks }, (_, i) => e.startBlock + i));
            const b = free.length > 0 && n % 3 !== 0 ? free[n % free.length]! : a.highWaterBlocks + (n % 4);
            a.allocateExact(b);
            used.push(b);
          } else if (kind === 1 || used.length === 0) {
            for (const e of a.allocate(n)) for (let i = 0; i < e.lengthBlocks; i++) used.push(e.startBlock + i);
          } else {
            const k = Math.min(n, used.length);
            const freed = used.splice(0, k).sort((x, y) => x - y);
            for (const b of freed) a.free({ startBlock: b, lengthBlocks: 1 });
          }
          const ops = a.takeOps();
          expect(new Set(ops.map((op) => op.k)).size, 'one operation per key').toBe(ops.length);
          for (const op of ops) {
            if (op.k === 'alloc') continue;
            if (op.o === 'p') persisted.set(op.k, decodeValue.free(op.k, op.v));
            else {
              expect(persisted.has(op.k), `delete of ${op.k}, which LevelDB does not hold`).toBe(true);
              persisted.delete(op.k);
            }
          }
          // Every used block is outside the free set; free + used = high-water mark.
          for (const b of used) expect(a.isFree(b)).toBe(false);
          expect(a.freeBlocks + used.length).toBe(a.highWaterBlocks);
          expect([...persisted.entries()].map(([k, v]) => `${k}+${v.lengthBlocks}`).sort()).toEqual(
            a
              .extents()
              .map((e) => `free:${e.startBlock.toString(16).padStart(12, '0')}+${e.lengthBlocks}`)
              .sort(),
          );
        }
      }),
    );
  });
});
