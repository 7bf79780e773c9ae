process.env.COWVOL_LOCK_CHECKS = '1'; // lock-order assertion on for this file

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { IoError } from '@cowvol/base';
import { Volume } from '../src/index.js';
import { GateOpener, settlesSoon } from './gate-device.js';

/**
 * The data=ordered write-back stage (write-back.ts): an overwrite whose
 * blocks need a COW waits in memory until the COW's mapping is committed,
 * while write() has already resolved. Each test holds the commit (the
 * journal sync) at the device seam to look at the stage while it is full.
 */
const BS = 4096;
const ORIGINAL = 0x11;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-wb-'));
  path = join(dir, 'vol.img');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function setup(options: { writeBackBytes?: number } = {}): Promise<{ v: Volume; gates: GateOpener }> {
  const v0 = await Volume.create(path, { sizeBytes: 16 * BS });
  await v0.write(0, Buffer.alloc(16 * BS, ORIGINAL));
  await v0.createSnapshot('s');
  await v0.close();
  const gates = new GateOpener();
  return { v: await Volume.open(path, { opener: gates, ...options }), gates };
}

const journalSync = (e: { file: string; op: string }) => e.file === 'journal' && e.op === 'sync';
const volumeWrites = (gates: GateOpener) => gates.log.filter((e) => e.file === 'vol.img' && e.op === 'write');

describe('write-back stage (data=ordered)', () => {
  it('write() resolves before its COW commits; the overwrite reaches the file only after the commit; reads see it at once', async () => {
    const { v, gates } = await setup();
    const held = gates.hold(journalSync);
    const w = v.write(4 * BS, Buffer.alloc(2 * BS, 0xaa));
    await held.reached;
    expect(await settlesSoon(w), 'write() waits only for the copy, not for the commit').toBe(true);
    expect(volumeWrites(gates), 'guarantee 3: no overwrite before the commit').toEqual([]);
    expect((await readFile(path)).subarray(4 * BS, 6 * BS).equals(Buffer.alloc(2 * BS, ORIGINAL))).toBe(true);
    // Readers: the live view has the acknowledged write; the snapshot waits for the copy.
    expect((await v.read(3 * BS, 4 * BS)).equals(Buffer.concat([Buffer.alloc(BS, ORIGINAL), Buffer.alloc(2 * BS, 0xaa), Buffer.alloc(BS, ORIGINAL)]))).toBe(true);
    const r = v.readSnapshot('s', 4 * BS, BS);
    expect(await settlesSoon(r), 'a snapshot reader waits for the pending COW').toBe(false);
    held.release();
    expect((await r).equals(Buffer.alloc(BS, ORIGINAL))).toBe(true);
    await v.flush();
    expect(volumeWrites(gates).length).toBe(1);
    expect((await readFile(path)).subarray(4 * BS, 6 * BS).equals(Buffer.alloc(2 * BS, 0xaa))).toBe(true);
    await v.close();
  });

  it('is bounded: with the commit held, writes beyond writeBackBytes wait for room', async () => {
    const { v, gates } = await setup({ writeBackBytes: 2 * BS });
    const held = gates.hold(journalSync);
    const a = v.write(0, Buffer.alloc(2 * BS, 1));
    await held.reached;
    expect(await settlesSoon(a)).toBe(true);
    const b = v.write(8 * BS, Buffer.alloc(BS, 2)); // its copy can proceed; its overwrite has no room
    expect(await settlesSoon(b), 'a full stage must hold the writer back').toBe(false);
    held.release();
    await b;
    await v.flush();
    expect((await v.read(0, 2 * BS)).equals(Buffer.alloc(2 * BS, 1))).toBe(true);
    expect((await v.read(8 * BS, BS)).equals(Buffer.alloc(BS, 2))).toBe(true);
    expect((await v.readSnapshot('s', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, ORIGINAL))).toBe(true);
    await v.close();
  });

  it('overwrites land in call order: a later write to a held block (copied already or not) waits and wins', async () => {
    const { v, gates } = await setup();
    await v.write(6 * BS, Buffer.alloc(BS, 0x01)); // block 6 COWed and committed
    await v.flush();
    const held = gates.hold(journalSync);
    // Blocks 5 (needs a COW) and 6 (copied already) in one held overwrite.
    const a = v.write(5 * BS, Buffer.alloc(2 * BS, 0xa0));
    await held.reached;
    await a;
    const b = v.write(6 * BS + 10, Buffer.alloc(10, 0xb0)); // no COW needed, but block 6 is held
    const c = v.write(5 * BS, Buffer.alloc(5, 0xc0)); // block 5: pending COW
    expect(await settlesSoon(b), 'a later overwrite must not overtake a held one').toBe(false);
    expect(await settlesSoon(c)).toBe(false);
    held.release();
    await Promise.all([b, c]);
    await v.flush();
    const want = Buffer.alloc(2 * BS, 0xa0);
    want.fill(0xc0, 0, 5);
    want.fill(0xb0, BS + 10, BS + 20);
    expect((await v.read(5 * BS, 2 * BS)).equals(want)).toBe(true);
    expect((await readFile(path)).subarray(5 * BS, 7 * BS).equals(want), 'the file agrees with the reads').toBe(true);
    expect((await v.readSnapshot('s', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, ORIGINAL))).toBe(true);
    expect(v.stats.cows).toBe(2);
    await v.close();
  });

  it('a snapshot taken after a write holds it even while its overwrite is still held (create drains the stage)', async () => {
    const { v, gates } = await setup();
    const held = gates.hold(journalSync);
    await v.write(2 * BS, Buffer.alloc(BS, 0x22));
    await held.reached;
    const c = v.createSnapshot('t');
    expect(await settlesSoon(c), 'create waits for the held overwrite').toBe(false);
    held.release();
    await c;
    expect((await v.readSnapshot('t', 2 * BS, BS)).equals(Buffer.alloc(BS, 0x22))).toBe(true);
    expect((await v.readSnapshot('s', 2 * BS, BS)).equals(Buffer.alloc(BS, ORIGINAL))).toBe(true);
    await v.close();
  });

  it('a commit-stage failure drops the overwrite, keeps the snapshot, and is reported once by the next flush with its range', async () => {
    const { v, gates } = await setup();
    const held = gates.hold((e) => e.file === 'store' && e.op === 'sync'); // ordered data: the journal syncs the store first
    await v.write(9 * BS, Buffer.alloc(BS, 0x99));
    await held.reached;
    held.release(new IoError('injected: store sync fails'));
    const err = await v.flush().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'IO_ERROR', details: { failedRanges: [{ offsetBytes: 9 * BS, lengthBytes: BS }] } });
    await v.flush(); // reported once; the volume goes on (a failed ordered-data sync does not abort the journal)
    expect((await v.read(9 * BS, BS)).equals(Buffer.alloc(BS, ORIGINAL)), 'the lost overwrite is not visible').toBe(true);
    expect((await v.readSnapshot('s', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, ORIGINAL))).toBe(true);
    expect(await v.checkConsistency()).toMatchObject({ problems: [], leakedBlocks: 0, mappedBlocks: 0 });
    await v.write(9 * BS, Buffer.alloc(BS, 0x98)); // retried: COWs and lands
    await v.flush();
    expect((await v.read(9 * BS, BS)).equals(Buffer.alloc(BS, 0x98))).toBe(true);
    await v.close();
  });

  it('close() reports a failure no flush reported, after closing everything', async () => {
    const { v, gates } = await setup();
    const held = gates.hold((e) => e.file === 'store' && e.op === 'sync');
    await v.write(1 * BS, Buffer.alloc(BS, 0x77));
    await held.reached;
    held.release(new IoError('injected: store sync fails'));
    await expect(v.close()).rejects.toMatchObject({ code: 'IO_ERROR' });
    const r = await Volume.open(path); // closed for real: the owner lock is free
    expect((await r.readSnapshot('s', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, ORIGINAL))).toBe(true);
    expect((await r.read(BS, BS)).equals(Buffer.alloc(BS, ORIGINAL))).toBe(true);
    await r.close();
  });

  it('writeBackBytes 0 (write-through): write() resolves only after its overwrite reached the file', async () => {
    const { v, gates } = await setup({ writeBackBytes: 0 });
    const held = gates.hold(journalSync);
    const w = v.write(3 * BS, Buffer.alloc(BS, 0x33));
    await held.reached;
    expect(await settlesSoon(w), 'write-through waits for the commit').toBe(false);
    held.release();
    await w;
    expect(volumeWrites(gates).length).toBe(1);
    await v.close();
    await expect(Volume.open(path, { writeBackBytes: -1 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});
