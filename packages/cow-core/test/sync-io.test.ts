import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileBlockDevice, IoError, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { Volume } from '../src/index.js';
import { DATA_MODES } from './modes.js';
import { mulberry32 } from './prng.js';

/**
 * Small synchronous I/O on the hot paths (docs/ARCHITECTURE.md §4.14): live
 * reads, the COW's read of the old block, its store copy and overwrites are
 * done synchronously when the device offers it — the same bytes and the
 * same errors as through the thread pool. Each scenario runs twice, over
 * devices with and without the synchronous methods, and the two runs must
 * agree on every result and every error (code, failed ranges). Seeded:
 * COWVOL_SEED replays a printed seed.
 */
const SEED = process.env.COWVOL_SEED === undefined ? (Date.now() >>> 0) % 1_000_000 : Number(process.env.COWVOL_SEED);
const BS = 4096;
const BLOCKS = 32;

type Op = 'read' | 'write';

/**
 * Plain files whose reads or writes of chosen byte ranges fail with
 * IO_ERROR while `armed`; with `sync`, the devices offer `readIntoSync` and
 * `writeSync`, failing exactly like their thread-pool twins.
 */
class FailingOpener implements DeviceOpener {
  armed = false;
  /** Each fails every I/O of `op` on `file` overlapping the block at `offsetBytes`, `times` times. */
  readonly failing: Array<{ file: string; op: Op; offsetBytes: number; times: number }> = [];

  constructor(private readonly sync: boolean) {}

  async open(path: string, options: { create: boolean; readOnly?: boolean }): Promise<BlockDevice> {
    const inner = await FileBlockDevice.open(path, options);
    const file = basename(path);
    const check = (op: Op, o: number, l: number): void => {
      if (!this.armed) return;
      const hit = this.failing.find((f) => f.times > 0 && f.file === file && f.op === op && f.offsetBytes < o + l && o < f.offsetBytes + BS);
      if (hit) {
        hit.times -= 1;
        throw new IoError(`injected ${op} failure of ${file} at ${o}`, { details: { device: inner.name, op, offsetBytes: o, lengthBytes: l } });
      }
    };
    const device: BlockDevice = {
      name: inner.name,
      read: async (o, l) => (check('read', o, l), inner.read(o, l)),
      readInto: async (o, into) => (check('read', o, into.length), inner.readInto(o, into)),
      write: async (o, d) => (check('write', o, d.length), inner.write(o, d)),
      sync: () => inner.sync(),
      sizeBytes: () => inner.sizeBytes(),
      truncate: (s) => inner.truncate(s),
      close: () => inner.close(),
    };
    if (this.sync) {
      device.readIntoSync = (o, into) => {
        check('read', o, into.length);
        inner.readIntoSync(o, into);
      };
      device.writeSync = (o, d) => {
        check('write', o, d.length);
        inner.writeSync(o, d);
      };
    }
    return device;
  }
}

/** What a call gave: its bytes (hex of a digest would hide the block), or its error's code, message and failed ranges. */
async function outcome(call: () => Promise<Buffer | undefined>): Promise<unknown> {
  try {
    const data = await call();
    return { ok: data === undefined ? true : data.toString('base64') };
  } catch (err) {
    const e = err as { code?: string; message?: string; details?: { failedRanges?: unknown; offsetBytes?: unknown; lengthBytes?: unknown } };
    return { code: e.code, message: e.message, failedRanges: e.details?.failedRanges, offsetBytes: e.details?.offsetBytes, lengthBytes: e.details?.lengthBytes };
  }
}

/**
 * One scenario: fill, snapshot, then failing live reads, COW source reads,
 * store copies and overwrites, then the content read back. Returns every
 * outcome in order and the volume's synchronous I/O counters.
 */
async function scenario(dataMode: 'ordered' | 'journal', sync: boolean) {
  const dir = await mkdtemp(join(tmpdir(), 'cowvol-sync-io-'));
  try {
    const rnd = mulberry32(SEED);
    const opener = new FailingOpener(sync);
    const path = join(dir, 'v.img');
    const v = await Volume.create(path, { dataMode, sizeBytes: BLOCKS * BS, openers: { volume: opener, store: opener } });
    const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(rnd() * 256)));
    const out: unknown[] = [];
    await v.write(0, bytes(BLOCKS * BS));
    await v.flush();
    for (let b = 0; b < BLOCKS; b++) out.push(await outcome(() => v.read(b * BS, BS)));
    await v.createSnapshot('s');
    opener.failing.push({ file: 'v.img', op: 'read', offsetBytes: 3 * BS, times: Infinity }); // live reads and the COW's read of block 3
    // Journal mode writes the volume file at checkpoints only (a failure there fails the volume): ordered only.
    if (dataMode === 'ordered') opener.failing.push({ file: 'v.img', op: 'write', offsetBytes: 9 * BS, times: Infinity }); // overwrites of block 9
    opener.failing.push({ file: 'store', op: 'write', offsetBytes: BS, times: 1 }); // the first copy written to store block 0 (ordered)
    opener.armed = true;
    out.push(await outcome(() => v.read(3 * BS, BS)));
    out.push(await outcome(() => v.read(2 * BS, 3 * BS)));
    out.push(await outcome(async () => (await v.write(3 * BS + 100, bytes(200)), undefined))); // COW of block 3: its read fails
    out.push(await outcome(async () => (await v.write(6 * BS, bytes(2 * BS)), undefined))); // COWs of 6 and 7
    out.push(await outcome(async () => (await v.write(6 * BS, bytes(BS)), undefined))); // no COW: an overwrite
    out.push(await outcome(async () => (await v.write(9 * BS, bytes(BS)), undefined))); // COW of 9, then its overwrite fails (ordered: at the flush)
    out.push(await outcome(async () => (await v.flush(), undefined)));
    out.push(await outcome(async () => (await v.write(9 * BS, bytes(BS)), undefined))); // 9 is copied now: the overwrite fails at once (ordered)
    opener.armed = false;
    for (let b = 0; b < BLOCKS; b++) out.push(await outcome(() => v.read(b * BS, BS)));
    for (let b = 0; b < BLOCKS; b++) out.push(await outcome(() => v.readSnapshot('s', b * BS, BS)));
    const stats = v.syncIoStats;
    await v.close();
    return { out, stats };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe.each(DATA_MODES)('synchronous I/O on the hot paths (data mode %s)', (dataMode) => {
  it('gives the bytes and the errors of the thread-pool path', async () => {
    console.log(`sync I/O ${dataMode}: seed ${SEED} (COWVOL_SEED=${SEED} replays it)`);
    const pooled = await scenario(dataMode, false);
    const synced = await scenario(dataMode, true);
    expect(synced.out).toEqual(pooled.out);
    // The runs are not vacuous: failures surfaced, and the synchronous run took the synchronous path.
    expect(pooled.out).toContainEqual(expect.objectContaining({ code: 'IO_ERROR', failedRanges: [{ offsetBytes: 3 * BS + 100, lengthBytes: 200 }] }));
    if (dataMode === 'ordered') expect(pooled.out).toContainEqual(expect.objectContaining({ code: 'IO_ERROR', failedRanges: [{ offsetBytes: 9 * BS, lengthBytes: BS }] }));
    expect(pooled.stats.liveReads.syncCalls + pooled.stats.liveWrites.syncCalls + pooled.stats.storeWrites.syncCalls).toBe(0);
    expect(synced.stats.liveReads.syncCalls, 'live reads and COW source reads were synchronous').toBeGreaterThan(0);
  });
});
