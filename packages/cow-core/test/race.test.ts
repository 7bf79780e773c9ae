process.env.COWVOL_LOCK_CHECKS = '1'; // lock-order assertion on for this file

import { mkdtemp, rm } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { IoError } from '@cowvol/base';
import { Volume } from '../src/index.js';
import { PRE_FREEZE_QUIET_MS, PRE_FREEZE_SYNC_PASSES } from '../src/snapshot-create.js';
import { GateOpener, settlesSoon, settlesWithin } from './gate-device.js';

/**
 * Race tests: each forces one interleaving that matters (BRIEF §5, seed
 * 004) by holding a chosen I/O at the device seam until the test lets it go.
 * Each names the assertion that trips on a naive implementation.
 */
const BS = 4096;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-race-'));
  path = join(dir, 'vol.img');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const ORIGINAL = 0x11;

async function setup(sizeBlocks = 16): Promise<{ v: Volume; gates: GateOpener }> {
  const v0 = await Volume.create(path, { sizeBytes: sizeBlocks * BS });
  await v0.write(0, Buffer.alloc(sizeBlocks * BS, ORIGINAL));
  await v0.createSnapshot('s');
  await v0.close();
  const gates = new GateOpener();
  return { v: await Volume.open(path, { opener: gates }), gates };
}

const at = (file: string, op: 'read' | 'write' | 'sync', offsetBytes?: number) => (e: { file: string; op: string; offsetBytes: number }) =>
  e.file === file && e.op === op && (offsetBytes === undefined || e.offsetBytes === offsetBytes);

describe('pending-COW protocol: one copy per block, which every other writer and reader of the block waits for', () => {
  it('two writers COWing the same block: one COWs, the other waits for it (naive: two copies, "already maps block" assertion or cows=2)', async () => {
    const { v, gates } = await setup();
    const held = gates.hold(at('store', 'write')); // writer A's COW copy stops here
    const a = v.write(3 * BS, Buffer.alloc(BS, 0xaa));
    await held.reached;
    const b = v.write(3 * BS + 100, Buffer.alloc(10, 0xbb));
    expect(await settlesSoon(b), "writer B must wait for A's pending COW").toBe(false);
    held.release();
    await Promise.all([a, b]);
    expect(v.stats.cows).toBe(1);
    expect(v.stats.pendingWaits).toBeGreaterThanOrEqual(1);
    expect((await v.readSnapshot('s', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, ORIGINAL))).toBe(true);
    const live = await v.read(3 * BS, BS);
    // B overwrote 10 bytes; A's whole-block write may land before or after B's (like two writes to a disk).
    expect(live.subarray(100, 110).equals(Buffer.alloc(10, 0xbb)) || live.equals(Buffer.alloc(BS, 0xaa))).toBe(true);
    expect((await v.checkConsistency()).problems).toEqual([]);
    await v.close();
  });

  it('a snapshot reader during a COW waits for the pending copy, then returns the old content (naive: may return the new data)', async () => {
    const { v, gates } = await setup();
    const held = gates.hold(at('journal', 'sync')); // COW copied, mapping not yet committed
    const w = v.write(5 * BS, Buffer.alloc(BS, 0xcc));
    await held.reached;
    const r = v.readSnapshot('s', 5 * BS, BS);
    expect(await settlesSoon(r), 'reader must wait for the pending COW').toBe(false);
    held.release();
    expect((await r).equals(Buffer.alloc(BS, ORIGINAL))).toBe(true);
    await w;
    expect((await v.readSnapshot('s', 5 * BS, BS)).equals(Buffer.alloc(BS, ORIGINAL))).toBe(true);
    await v.close();
  });

  it('a COW that fails mid-way is cancelled: the waiting writer retries, becomes the COWing task, and nothing leaks (naive: waiter hangs or writes without a copy)', async () => {
    const { v, gates } = await setup();
    const held = gates.hold(at('store', 'write'));
    const a = v.write(7 * BS, Buffer.alloc(BS, 0x01));
    await held.reached;
    const b = v.write(7 * BS, Buffer.alloc(BS, 0x02));
    expect(await settlesSoon(b)).toBe(false);
    held.release(new IoError('injected: store write fails'));
    await expect(a).rejects.toMatchObject({ code: 'IO_ERROR' });
    await b; // retried and succeeded
    await v.flush(); // its COW committed, its overwrite landed (write-back stage drained)
    expect(v.stats.cancelledCows).toBe(1);
    expect(v.stats.cows).toBe(1);
    expect((await v.read(7 * BS, BS)).equals(Buffer.alloc(BS, 0x02))).toBe(true);
    expect((await v.readSnapshot('s', 7 * BS, BS)).equals(Buffer.alloc(BS, ORIGINAL))).toBe(true);
    const report = await v.checkConsistency();
    expect(report).toMatchObject({ problems: [], leakedBlocks: 0, mappedBlocks: 1 });
    expect((await v.check()).status).toBe('clean');
    await v.close();
  });
});

describe('read-through cannot see the future', () => {
  it('a live read racing a COW + overwrite is re-checked and served from the copy (naive: returns the overwrite)', async () => {
    const { v, gates } = await setup();
    // The reader's read of live block 9 stops after it resolved "no copy: read live".
    const held = gates.hold(at('vol.img', 'read', 9 * BS));
    const r = v.readSnapshot('s', 9 * BS, BS);
    await held.reached;
    // Meanwhile a writer COWs block 9 and overwrites it (its own COW read is not held: the hold fired once).
    await v.write(9 * BS, Buffer.alloc(BS, 0xee));
    await v.flush(); // the overwrite reached the volume file (past the write-back stage)
    held.release(); // the reader's live read now returns the new data …
    expect((await r).equals(Buffer.alloc(BS, ORIGINAL)), 'snapshot read returned data written after the snapshot').toBe(true);
    expect(v.stats.readRechecks).toBe(1); // … and the re-check replaced it with the copy
    await v.close();
  });
});

describe('freeze: snapshot create and delete during traffic', () => {
  it('snapshot create during an in-flight multi-block write waits for the whole write (naive: the snapshot holds half of it)', async () => {
    const size = 3 * 4 * 1024 * 1024; // three I/O chunks
    const v0 = await Volume.create(path, { sizeBytes: size });
    await v0.close();
    const gates = new GateOpener();
    const v = await Volume.open(path, { opener: gates });
    const held = gates.hold(at('vol.img', 'write', 4 * 1024 * 1024)); // the second chunk of the write stops
    const w = v.write(0, Buffer.alloc(size, 0x5a));
    await held.reached;
    // createSnapshot syncs the volume once before it freezes (ARCHITECTURE.md §4.4), then, frozen, syncs again and
    // commits the catalog entry: that commit (its journal write; nothing else here writes the journal) must not start
    // while the write is in flight.
    const createStarted = gates.hold(at('journal', 'write'));
    const c = v.createSnapshot('mid');
    expect(await settlesSoon(createStarted.reached), 'snapshot create must wait for the in-flight write to drain').toBe(false);
    held.release();
    await w;
    await createStarted.reached;
    createStarted.release();
    await c;
    const taken = await v.readSnapshot('mid', 0, size);
    expect(taken.equals(Buffer.alloc(size, 0x5a)), 'the snapshot holds the whole write').toBe(true);
    await v.write(0, Buffer.alloc(size, 0x01));
    expect((await v.readSnapshot('mid', 0, size)).equals(taken)).toBe(true);
    await v.close();
  });

  it('delete of a snapshot while it is being read waits for the reader (naive: the reader sees freed or reused blocks)', async () => {
    const { v, gates } = await setup();
    await v.write(0, Buffer.alloc(4 * BS, 0x77)); // blocks 0-3 COWed into s
    const held = gates.hold(at('store', 'read'));
    const r = v.readSnapshot('s', 0, 4 * BS);
    await held.reached;
    // The delete's first I/O is its journal commit: it must not start while the reader is in flight.
    const deleteStarted = gates.hold(at('journal', 'write'));
    const d = v.deleteSnapshot('s');
    expect(await settlesSoon(deleteStarted.reached), 'delete must wait for the reader').toBe(false);
    deleteStarted.release();
    held.release();
    expect((await r).equals(Buffer.alloc(4 * BS, ORIGINAL))).toBe(true);
    expect(await d).toEqual({ name: 's', freedBlocks: 4, handedOverBlocks: 0 });
    await v.close();
  });

  it('the syncs before the freeze repeat while each is slow, at most PRE_FREEZE_SYNC_PASSES, and writes go on meanwhile (naive: one pass leaves the freeze a long sync; passes without a bound never freeze)', async () => {
    const { v, gates } = await setup();
    const syncsBefore = gates.log.filter((e) => e.file === 'vol.img' && e.op === 'sync').length;
    let pass = gates.hold(at('vol.img', 'sync'));
    const c = v.createSnapshot('t');
    for (let i = 0; i < PRE_FREEZE_SYNC_PASSES; i++) {
      await pass.reached;
      // Not frozen: a write issued during the pass completes while the pass's sync is held.
      const w = v.write(i * BS, Buffer.alloc(BS, 0x40 + i));
      expect(await settlesWithin(w, 5000), `a write during pre-freeze pass ${i + 1} must not wait for the create`).toBe(true);
      // This pass is slow, and shorter than the one before: another follows, up to the bound.
      await sleep(PRE_FREEZE_QUIET_MS + 5 + 25 * (PRE_FREEZE_SYNC_PASSES - 1 - i));
      const released = pass;
      if (i + 1 < PRE_FREEZE_SYNC_PASSES) pass = gates.hold(at('vol.img', 'sync'));
      released.release();
    }
    // The sync inside the freeze is not held: the create ends (a bound of passes that never stops would not).
    expect(await settlesWithin(c, 10_000), 'the create freezes once its passes reach their bound').toBe(true);
    const syncs = gates.log.filter((e) => e.file === 'vol.img' && e.op === 'sync').length - syncsBefore;
    expect(syncs, 'pre-freeze passes plus the sync inside the freeze').toBe(PRE_FREEZE_SYNC_PASSES + 1);
    for (let i = 0; i < PRE_FREEZE_SYNC_PASSES; i++) {
      expect((await v.readSnapshot('t', i * BS, BS)).equals(Buffer.alloc(BS, 0x40 + i)), `the snapshot holds the write of pass ${i + 1}`).toBe(true);
      expect((await v.readSnapshot('s', i * BS, BS)).equals(Buffer.alloc(BS, ORIGINAL))).toBe(true);
    }
    await v.close();
  });

  it('a pre-freeze pass no shorter than the one before ends the passes (naive: a disk whose every sync is slow gets every pass)', async () => {
    const { v, gates } = await setup();
    const syncsBefore = gates.log.filter((e) => e.file === 'vol.img' && e.op === 'sync').length;
    const first = gates.hold(at('vol.img', 'sync'));
    const c = v.createSnapshot('t');
    await first.reached;
    const second = gates.hold(at('vol.img', 'sync'));
    await sleep(PRE_FREEZE_QUIET_MS + 5);
    first.release();
    await second.reached;
    await sleep(PRE_FREEZE_QUIET_MS + 80); // longer than the first pass: not converging
    second.release();
    expect(await settlesWithin(c, 10_000), 'the create freezes after the second pass').toBe(true);
    const syncs = gates.log.filter((e) => e.file === 'vol.img' && e.op === 'sync').length - syncsBefore;
    expect(syncs, 'two pre-freeze passes plus the sync inside the freeze').toBe(3);
    await v.close();
  });

  it('writes issued while a snapshot is being created wait and land after it (the snapshot never holds them)', async () => {
    const { v, gates } = await setup();
    const held = gates.hold(at('journal', 'write')); // createSnapshot's catalog commit, made frozen (ARCHITECTURE.md §4.4)
    const c = v.createSnapshot('t');
    await held.reached;
    const w = v.write(0, Buffer.alloc(BS, 0x99));
    expect(await settlesSoon(w)).toBe(false);
    held.release();
    await c;
    await w;
    expect((await v.readSnapshot('t', 0, BS)).equals(Buffer.alloc(BS, ORIGINAL))).toBe(true);
    expect((await v.read(0, BS)).equals(Buffer.alloc(BS, 0x99))).toBe(true);
    await v.close();
  });
});

describe('per-block completion: a multi-chunk write settles after all its chunks and names the failed ranges', () => {
  it('a multi-chunk write with one failing chunk waits for all chunks and reports the exact failed range', async () => {
    const size = 3 * 4 * 1024 * 1024;
    const v0 = await Volume.create(path, { sizeBytes: size });
    await v0.close();
    const gates = new GateOpener();
    const v = await Volume.open(path, { opener: gates });
    const held = gates.hold(at('vol.img', 'write', 4 * 1024 * 1024));
    const w = v.write(0, Buffer.alloc(size, 0x42));
    await held.reached;
    held.release(new IoError('injected: chunk 2 write fails'));
    const err = await w.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'IO_ERROR', details: { failedRanges: [{ offsetBytes: 4 * 1024 * 1024, lengthBytes: 4 * 1024 * 1024 }] } });
    // The other chunks completed.
    expect((await v.read(0, 4 * 1024 * 1024)).equals(Buffer.alloc(4 * 1024 * 1024, 0x42))).toBe(true);
    expect((await v.read(8 * 1024 * 1024, 4 * 1024 * 1024)).equals(Buffer.alloc(4 * 1024 * 1024, 0x42))).toBe(true);
    expect((await v.read(4 * 1024 * 1024, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    await v.close();
  });
});

describe('lock order: the journal handle before any block lock', () => {
  it('starting a journal handle while holding a block lock is an assertion failure', async () => {
    const { v } = await setup();
    const internals = (
      v as unknown as {
        ctx: {
          heldBlockLocks: { run<T>(store: { blocks: number }, fn: () => T): T };
          startHandle(credits: number): Promise<{ abandon(): void }>;
        };
      }
    ).ctx;
    expect(() => internals.heldBlockLocks.run({ blocks: 1 }, () => internals.startHandle(1))).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
    const handle = await internals.heldBlockLocks.run({ blocks: 0 }, () => internals.startHandle(1));
    handle.abandon();
    await v.close();
  });
});
