import { describe, expect, it } from 'vitest';
import { WriteBackStage } from '../src/write-back.js';

describe('write-back stage admission', () => {
  it('add() validates before it changes anything: an overlapping entry is refused and the stage is as it was', async () => {
    const landed: number[] = [];
    const stage = new WriteBackStage(4096, 1 << 20, { write: async (offsetBytes) => void landed.push(offsetBytes) });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const cow = { published: gate, end: () => undefined };
    stage.add(4096, Buffer.alloc(4096, 1), [cow]);
    expect(() => stage.add(0, Buffer.alloc(3 * 4096, 2), [cow])).toThrow(/already has a write-back entry/);
    expect(stage.overlapping(0, 0), 'block 0 of the refused entry was not registered').toEqual([]);
    // The bound counts only the held entry: an overwrite elsewhere that fills the stage to exactly its bound is admitted at once.
    let filled = false;
    const fill = stage.admit(8, 8, (1 << 20) - 4096, () => (filled = true));
    await new Promise((r) => setImmediate(r));
    expect(filled, 'the refused entry counted no bytes against the bound').toBe(true);
    await fill;
    // admit() waits for the overlapping entry to land, then runs its callback in the same step as the check.
    let admitted = false;
    const a = stage.admit(0, 2, 3 * 4096, () => {
      admitted = true;
      expect(stage.overlapping(0, 2)).toEqual([]);
    });
    await new Promise((r) => setImmediate(r));
    expect(admitted).toBe(false);
    release();
    await a;
    expect(admitted).toBe(true);
    expect(landed).toEqual([4096]);
  });
});
