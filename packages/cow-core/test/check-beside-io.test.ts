import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Volume } from '../src/index.js';
import { GateOpener, settlesWithin } from './gate-device.js';

/**
 * `check --read-data` beside I/O (docs/ARCHITECTURE.md §8.3, "Beside I/O"):
 * in data=ordered mode without `repair`, only the metadata check is frozen;
 * while the store is read, writes (with their COWs) and snapshot creates go
 * on and deletes wait. A store read of the check is held at the device seam
 * so the test sees the data phase in progress.
 */
const BS = 4096;
const BLOCKS = 16;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-check-io-'));
  path = join(dir, 'vol.img');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A volume whose snapshot `s` owns blocks 0..7 and whose newest snapshot `t` owns none; opened through gates. */
async function setup(dataMode: 'ordered' | 'journal'): Promise<{ v: Volume; gates: GateOpener }> {
  const v0 = await Volume.create(path, { sizeBytes: BLOCKS * BS, dataMode });
  await v0.write(0, Buffer.alloc(BLOCKS * BS, 0x11));
  await v0.createSnapshot('s');
  await v0.write(0, Buffer.alloc(8 * BS, 0x22));
  await v0.createSnapshot('t');
  await v0.close();
  const gates = new GateOpener();
  return { v: await Volume.open(path, { opener: gates }), gates };
}

const storeRead = (e: { file: string; op: string }): boolean => e.file === 'store' && e.op === 'read';

describe('check --read-data beside I/O', () => {
  it('data=ordered: writes that COW and snapshot creates complete while the store is read; a delete waits for the check; the report is clean', async () => {
    const { v, gates } = await setup('ordered');
    try {
      const held = gates.hold(storeRead);
      const checking = v.check({ readData: true });
      await held.reached;
      const write = v.write(8 * BS, Buffer.alloc(BS, 0x33)); // block 8's first write after t: a COW into t
      expect(await settlesWithin(write, 10_000), 'a write must not wait for the data read').toBe(true);
      await write;
      const create = v.createSnapshot('u');
      expect(await settlesWithin(create, 10_000), 'a snapshot create must not wait for the data read').toBe(true);
      await create;
      const deleting = v.deleteSnapshot('s');
      expect(await settlesWithin(deleting, 300), 'a delete must wait: it frees or hands over store blocks the check reads').toBe(false);
      held.release();
      const report = await checking;
      expect(report.status).toBe('clean');
      expect(report.dataChecked).toBe(true);
      expect(report.damagedBlocks).toBe(0);
      await deleting;
      expect((await v.readSnapshot('t', 8 * BS, BS)).equals(Buffer.alloc(BS, 0x11)), 't kept block 8 as it was').toBe(true);
      expect((await v.check({ readData: true })).status).toBe('clean');
    } finally {
      await v.close();
    }
  });

  it('data=ordered: a close while the store is read ends the check with VOLUME_CLOSED or its report, closes, and the volume reopens clean', async () => {
    const { v, gates } = await setup('ordered');
    const held = gates.hold(storeRead);
    const checking = v.check({ readData: true });
    const outcome = checking.then(
      (report) => ({ report }),
      (err: unknown) => ({ err }),
    );
    await held.reached;
    await v.write(8 * BS, Buffer.alloc(BS, 0x44)); // I/O beside the data read, then the close
    const closing = v.close();
    // The close may wait for the held read; releasing it lets both finish, in either order.
    held.release();
    await closing;
    const result = await outcome;
    if ('err' in result) expect(result.err).toMatchObject({ code: 'VOLUME_CLOSED' });
    else expect(result.report.status).toBe('clean');
    const again = await Volume.open(path);
    try {
      expect((await again.check({ readData: true })).status).toBe('clean');
      expect((await again.read(8 * BS, BS)).equals(Buffer.alloc(BS, 0x44)), 'the write before the close is there').toBe(true);
      expect((await again.readSnapshot('t', 8 * BS, BS)).equals(Buffer.alloc(BS, 0x11)), 't kept block 8 as it was').toBe(true);
    } finally {
      await again.close();
    }
  });

  it('with repair, and in data=journal mode, the whole check stays frozen: a write waits for it', async () => {
    for (const [mode, options] of [
      ['ordered', { readData: true, repair: true }],
      ['journal', { readData: true }],
    ] as const) {
      await rm(dir, { recursive: true, force: true });
      dir = await mkdtemp(join(tmpdir(), 'cowvol-check-io-'));
      path = join(dir, 'vol.img');
      const { v, gates } = await setup(mode);
      try {
        const held = gates.hold(storeRead);
        const checking = v.check(options);
        await held.reached;
        const write = v.write(8 * BS, Buffer.alloc(BS, 0x33));
        expect(await settlesWithin(write, 300), `${mode} ${JSON.stringify(options)}: the write waits for the frozen check`).toBe(false);
        held.release();
        expect((await checking).status).toBe('clean');
        await write;
      } finally {
        await v.close();
      }
    }
  });
});
