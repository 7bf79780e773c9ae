import { describe, expect, it } from 'vitest';
import { ContentModel, UNIT_BYTES, checkUnits, fillTag } from '../src/stress-model.js';
import { WriteBackStage } from '../src/write-back.js';

/** The stress runner's content model must reject what a disk would not do, or the stress suite could not fail. */
describe('stress content model', () => {
  it('writes that did not overlap in time: only the last one is allowed', () => {
    const m = new ContentModel(4);
    const a = m.begin(0, 2);
    m.end(a);
    const b = m.begin(1, 2);
    m.end(b);
    const r = m.beginRead();
    expect(m.allowed(0, r.start)).toEqual([a.tag]);
    expect(m.allowed(1, r.start)).toEqual([b.tag]);
    expect(m.allowed(3, r.start)).toEqual([0]);
    m.finishRead(r);
  });

  it('writes that overlapped in time: either; a write in flight: it or the value before', () => {
    const m = new ContentModel(1);
    const a = m.begin(0, 1);
    const b = m.begin(0, 1);
    m.end(b);
    m.end(a);
    const r = m.beginRead();
    expect(m.allowed(0, r.start).sort()).toEqual([a.tag, b.tag].sort());
    const c = m.begin(0, 1);
    expect(m.allowed(0, r.start)).toContain(c.tag);
    m.finishRead(r);
    m.end(c);
  });

  it('a read keeps what it may see: history superseded after the read began is not pruned for it', () => {
    const m = new ContentModel(1);
    const a = m.begin(0, 1);
    m.end(a);
    const r = m.beginRead();
    const b = m.begin(0, 1);
    m.end(b);
    const c = m.begin(0, 1);
    m.end(c); // supersedes b, but after r began: r may still see a, b or c
    expect(m.allowed(0, r.start).sort()).toEqual([a.tag, b.tag, c.tag].sort());
    m.finishRead(r);
    const r2 = m.beginRead();
    expect(m.allowed(0, r2.start)).toEqual([c.tag]);
    m.finishRead(r2);
  });

  it('checkUnits reports a torn unit and a value not allowed', () => {
    const buf = Buffer.alloc(2 * UNIT_BYTES);
    fillTag(buf, 7);
    expect(checkUnits(buf, 0, () => [7])).toEqual([]);
    buf.writeUInt32LE(8, UNIT_BYTES + 8);
    expect(checkUnits(buf, 0, () => [7])).toHaveLength(1);
    expect(checkUnits(buf, 0, () => [5])).toHaveLength(3);
  });
});

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
    expect(stage.bytes).toBe(4096);
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
