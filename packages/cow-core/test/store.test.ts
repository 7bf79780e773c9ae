import { describe, expect, it } from 'vitest';
import { SnapshotStore } from '../src/store.js';
import { MemDevice } from './mem-device.js';
import { mulberry32 } from './prng.js';

const BS = 4096;

function storeOn(dev: MemDevice): SnapshotStore {
  return new SnapshotStore(dev, BS);
}

const block = (p: number, size = 1) => Buffer.alloc(size * BS, (p * 7 + 1) & 0xff);

describe('SnapshotStore write combining', () => {
  it('writes queued behind a write in flight go out as one write per consecutive run, each byte where it belongs', async () => {
    const dev = new MemDevice();
    const store = storeOn(dev);
    const release = dev.holdNextWrite();
    const first = store.write(0, block(0));
    // While block 0 is being written: 16 single-block copies (blocks 1-16), a
    // two-block copy (20-21) after a gap, and one at 30.
    const rest = [...Array.from({ length: 16 }, (_, i) => store.write(1 + i, block(1 + i))), store.write(20, block(20, 2)), store.write(30, block(30))];
    release();
    await Promise.all([first, ...rest]);
    expect(dev.writes.map((w) => [w.offsetBytes / BS, w.lengthBytes / BS])).toEqual([
      [1, 1], // block 0 alone (nothing was queued yet)
      [2, 16], // blocks 1-16 combined
      [21, 2],
      [31, 1],
    ]);
    for (const p of [0, 5, 16, 30]) expect((await store.read(p, 1)).equals(block(p)), `store block ${p}`).toBe(true);
    expect((await store.read(20, 2)).equals(block(20, 2))).toBe(true);
  });

  it('a failed combined write fails exactly the requests of its run; the others succeed', async () => {
    const dev = new MemDevice();
    const store = storeOn(dev);
    const release = dev.holdNextWrite();
    const first = store.write(0, block(0));
    const runA = [store.write(1, block(1)), store.write(2, block(2))];
    const runB = [store.write(10, block(10)), store.write(11, block(11))];
    dev.failWrite = (offsetBytes) => offsetBytes === store.offsetOf(10);
    release();
    await first;
    await Promise.all(runA);
    for (const p of runB) await expect(p).rejects.toMatchObject({ code: 'IO_ERROR' });
    expect((await store.read(1, 2)).equals(Buffer.concat([block(1), block(2)]))).toBe(true);
  });

  it('random concurrent writes of distinct blocks read back exactly (seeded)', async () => {
    const seed = Number(process.env.COWVOL_STORE_SEED ?? 0x5eed);
    const rnd = mulberry32(seed);
    const dev = new MemDevice();
    const store = storeOn(dev);
    const blocks = Array.from({ length: 200 }, (_, i) => i).sort(() => rnd() - 0.5);
    const pending: Array<Promise<void>> = [];
    for (const p of blocks) {
      pending.push(store.write(p, block(p)));
      if (rnd() < 0.2) await Promise.resolve(); // let some batches start in between
    }
    await Promise.all(pending);
    for (let p = 0; p < 200; p++) expect((await store.read(p, 1)).equals(block(p)), `seed ${seed}: store block ${p}`).toBe(true);
    expect(dev.writes.length, `seed ${seed}: writes were combined`).toBeLessThan(200);
  });
});
