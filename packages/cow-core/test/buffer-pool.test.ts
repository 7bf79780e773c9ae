import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BufferPool } from '../src/buffer-pool.js';
import { Volume } from '../src/index.js';
import { IoError } from '@cowvol/base';
import { GateOpener } from './gate-device.js';
import { DATA_MODES } from './modes.js';

/**
 * The write path's buffer pool (buffer-pool.ts, docs/ARCHITECTURE.md §3.4):
 * exact lengths, reuse by size class, a bound on what it keeps, and no
 * buffer handed out twice — plus the one place a pooled buffer outlives its
 * owner's use of it: a write-back entry a reader picked before it landed.
 */
describe('BufferPool', () => {
  it('hands out exactly the length asked for and reuses a given-back buffer of the same size class', () => {
    const pool = new BufferPool(1 << 20, false);
    const a = pool.take(5000);
    expect(a.length).toBe(5000);
    expect(a.buffer.byteLength, 'rounded up to the 8 KiB class').toBe(8192);
    expect(pool.outstanding).toBe(1);
    pool.give(a);
    expect(pool.outstanding).toBe(0);
    expect(pool.pooledBytes).toBe(8192);
    const b = pool.take(8000);
    expect(b.buffer, 'same class: the same backing store').toBe(a.buffer);
    expect(pool.pooledBytes).toBe(0);
    const c = pool.take(8000);
    expect(c.buffer, 'the free list was empty: a new one').not.toBe(a.buffer);
  });

  it('refuses a buffer given back twice, or one it never handed out', () => {
    const pool = new BufferPool(1 << 20, false);
    const a = pool.take(4096);
    pool.give(a);
    expect(() => pool.give(a)).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
    expect(() => pool.give(Buffer.allocUnsafeSlow(4096))).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
  });

  it('keeps at most maxBytes in its free lists; sizes outside 4 KiB–4 MiB are never pooled', () => {
    const pool = new BufferPool(64 * 1024, false);
    const taken = Array.from({ length: 10 }, () => pool.take(16 * 1024));
    for (const t of taken) pool.give(t);
    expect(pool.pooledBytes).toBe(64 * 1024);
    expect(pool.outstanding).toBe(0);
    for (const n of [0, 100, 4095, 4 * 1024 * 1024 + 1]) {
      const b = pool.take(n);
      expect(b.length).toBe(n);
      pool.give(b); // ignored: not from a size class
    }
    expect(pool.pooledBytes).toBe(64 * 1024);
    expect(pool.outstanding).toBe(0);
  });

  it('with poisoning on, a given-back buffer reads 0xdb, so a use after give shows as wrong bytes', () => {
    const pool = new BufferPool(1 << 20, true);
    const a = pool.take(4096).fill(7);
    const view = Buffer.from(a.buffer, 0, 4096);
    pool.give(a);
    expect(view.every((x) => x === 0xdb)).toBe(true);
  });
});

describe('write-back entries and the pool', () => {
  const BS = 4096;
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowvol-pool-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A volume of `blocks` blocks filled with `fill`, snapshot `s` taken, reopened through a GateOpener. */
  async function snapshotted(blocks: number, fill: number, dataMode: (typeof DATA_MODES)[number]): Promise<{ v: Volume; gates: GateOpener }> {
    const path = join(dir, 'vol.img');
    const v0 = await Volume.create(path, { sizeBytes: blocks * BS, dataMode });
    await v0.write(0, Buffer.alloc(blocks * BS, fill));
    await v0.createSnapshot('s');
    await v0.close();
    const gates = new GateOpener();
    return { v: await Volume.open(path, { opener: gates }), gates };
  }

  it('a live read that picked a held overwrite before it landed lays its bytes over intact, though the entry landed and its buffer could be reused meanwhile', async () => {
    const { v, gates } = await snapshotted(16, 0x11, 'ordered');
    try {
      const commit = gates.hold((e) => e.file === 'journal' && e.op === 'sync');
      await v.write(4 * BS, Buffer.alloc(2 * BS, 0xaa)); // held in the stage: its COW's commit waits at the gate
      await commit.reached;
      const liveRead = gates.hold((e) => e.file === 'vol.img' && e.op === 'read' && e.offsetBytes === 4 * BS);
      const r = v.read(4 * BS, 2 * BS); // picks the entry, then its file read stops at the gate
      await liveRead.reached;
      commit.release();
      await v.flush(); // the entry landed
      // Another first write of the same size: its COW copy and its stage copy take 8 KiB buffers from the pool.
      await v.write(8 * BS, Buffer.alloc(2 * BS, 0xbb));
      await v.flush();
      liveRead.release();
      const got = await r;
      expect(got.equals(Buffer.alloc(2 * BS, 0xaa)), `read ${got.subarray(0, 4).toString('hex')}…, not the acknowledged 0xaa`).toBe(true);
      expect((await v.readSnapshot('s', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, 0x11))).toBe(true);
      expect(v.bufferPoolStats.outstanding, 'every buffer went back').toBe(0);
    } finally {
      await v.close();
    }
  });

  it.each(DATA_MODES)('gives every buffer back after concurrent first writes, overlapping writes, live reads and a failed copy (%s)', async (dataMode) => {
    const { v, gates } = await snapshotted(256, 0x22, dataMode);
    try {
      // 64 writes in flight, sizes from 1 to 9 blocks, overlapping each other, with live reads among them.
      const ops: Array<Promise<unknown>> = [];
      for (let i = 0; i < 64; i++) {
        const first = (i * 37) % 240;
        ops.push(v.write(first * BS, Buffer.alloc(((i % 9) + 1) * BS, i)));
        if (i % 4 === 0) ops.push(v.read(first * BS, 8 * BS));
      }
      await Promise.all(ops);
      await v.flush();
      expect(v.bufferPoolStats.outstanding).toBe(0);
      // A COW whose store write fails: the write fails, its copy buffer still goes back.
      const failing = gates.hold((e) => e.file === 'store' && e.op === 'write');
      const w = v.write(250 * BS, Buffer.alloc(2 * BS, 0x99));
      if (dataMode === 'ordered') {
        await failing.reached;
        failing.release(new IoError('injected store write failure'));
        await expect(w).rejects.toMatchObject({ code: 'IO_ERROR' });
      } else {
        await w; // journal mode: the copy is a journal image, no store write to fail
        failing.release();
      }
      await v.flush().catch(() => undefined);
      expect(v.bufferPoolStats.outstanding).toBe(0);
      expect((await v.readSnapshot('s', 0, 256 * BS)).equals(Buffer.alloc(256 * BS, 0x22))).toBe(true);
    } finally {
      await v.close();
    }
  });
});
