import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_MODES } from './modes.js';
import { Volume } from '../src/index.js';
import { CrashController } from './crash-device.js';
import { mulberry32 } from './prng.js';
import { forgetChangeStamp } from '../../../test/helpers.js';

/**
 * Crash-point tests (guarantees 1, 2, 3, 4 and 6 across a power loss).
 *
 * A seeded workload (writes, snapshot creates and deletes, flushes) runs on a
 * volume opened through CrashController. Run k loses power at the k-th I/O
 * (write, truncate or sync) of the workload; the files are then rewritten to
 * what a volatile write cache could have kept (a seeded random subset of the
 * unsynced writes), the volume is reopened normally (journal recovery) and
 * checked against the model. Every I/O of the workload is a crash point.
 *
 * Knobs: COWVOL_CRASH_SEEDS (workload seeds, default 2),
 *        COWVOL_CRASH_MAX_POINTS (crash points per seed, mode and cache mode, default 50;
 *        with a stride, seeds start at different offsets so together they cover every I/O).
 * A failure message names the seed, crash point and cache mode to replay.
 */
const BS = 4096;
const BLOCKS = 24;
const SEEDS = Number(process.env.COWVOL_CRASH_SEEDS ?? 2);
const MAX_POINTS = Number(process.env.COWVOL_CRASH_MAX_POINTS ?? 50);

type Op = { kind: 'write'; offsetBytes: number; data: Buffer } | { kind: 'snapshot'; name: string } | { kind: 'delete'; name: string } | { kind: 'flush' };

function workload(seed: number): Op[] {
  const r = mulberry32(seed);
  const ops: Op[] = [];
  const names: string[] = [];
  let n = 0;
  for (let i = 0; i < 40; i++) {
    const x = r();
    if (x < 0.55) {
      const offsetBytes = Math.floor(r() * (BLOCKS * BS - 1));
      const length = 1 + Math.floor(r() * Math.min(BLOCKS * BS - offsetBytes, 5 * BS));
      const data = Buffer.alloc(length);
      for (let j = 0; j < length; j += 512) data.fill(Math.floor(r() * 256), j, Math.min(length, j + 512));
      ops.push({ kind: 'write', offsetBytes, data });
    } else if (x < 0.75) {
      const name = `s${++n}`;
      names.push(name);
      ops.push({ kind: 'snapshot', name });
    } else if (x < 0.87 && names.length > 0) {
      const [name] = names.splice(Math.floor(r() * names.length), 1);
      ops.push({ kind: 'delete', name: name! });
    } else {
      ops.push({ kind: 'flush' });
    }
  }
  return ops;
}

interface Model {
  live: Buffer;
  /** Live content as of the last completed sync point (flush or snapshot create). */
  durable: Buffer;
  /** Blocks written since that sync point (their content after a crash is old or new). */
  dirty: Set<number>;
  snapshots: Map<string, Buffer>;
  /** Snapshot whose create or delete was in flight at the crash: it may or may not exist. */
  uncertain: Map<string, Buffer>;
}

async function runWorkload(volume: Volume, ops: Op[], model: Model): Promise<void> {
  for (const op of ops) {
    if (op.kind === 'write') {
      const first = Math.floor(op.offsetBytes / BS);
      const last = Math.floor((op.offsetBytes + op.data.length - 1) / BS);
      for (let b = first; b <= last; b++) model.dirty.add(b);
      op.data.copy(model.live, op.offsetBytes);
      await volume.write(op.offsetBytes, op.data);
    } else if (op.kind === 'snapshot') {
      model.uncertain.set(op.name, Buffer.from(model.live));
      await volume.createSnapshot(op.name);
      model.uncertain.delete(op.name);
      model.snapshots.set(op.name, Buffer.from(model.live));
      model.durable = Buffer.from(model.live);
      model.dirty.clear();
    } else if (op.kind === 'delete') {
      model.uncertain.set(op.name, model.snapshots.get(op.name)!);
      model.snapshots.delete(op.name);
      await volume.deleteSnapshot(op.name);
      model.uncertain.delete(op.name);
    } else {
      await volume.flush();
      model.durable = Buffer.from(model.live);
      model.dirty.clear();
    }
  }
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-crash-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * Puts back the volume and its sidecar from a copy. Copying the file back is
 * a write made outside cowvol (new times), which an open would refuse
 * (outside-writes.test.ts covers that): the copy is stamped as it is
 * (`forgetChangeStamp`), so the open runs recovery.
 */
async function restoreFrom(backup: string, path: string): Promise<void> {
  await rm(`${path}.cowvol`, { recursive: true, force: true });
  await cp(join(backup, 'vol.img'), path);
  await cp(join(backup, 'vol.img.cowvol'), `${path}.cowvol`, { recursive: true });
  await forgetChangeStamp(path);
}

async function freshVolume(path: string, dataMode: (typeof DATA_MODES)[number]): Promise<Model> {
  await rm(path, { force: true });
  await rm(`${path}.cowvol`, { recursive: true, force: true });
  // A small journal (256 blocks) so the workload wraps it and checkpoints under pressure.
  const v = await Volume.create(path, { dataMode, sizeBytes: BLOCKS * BS, journalSizeBytes: 256 * BS });
  const base = Buffer.alloc(BLOCKS * BS);
  for (let b = 0; b < BLOCKS; b++) base.fill(b + 1, b * BS, (b + 1) * BS);
  await v.write(0, base);
  await v.close();
  return { live: Buffer.from(base), durable: Buffer.from(base), dirty: new Set(), snapshots: new Map(), uncertain: new Map() };
}

/** Both data modes run every test of this file (the crash suite in ordered and data=journal mode). */
describe.each(DATA_MODES)('data mode %s', (dataMode) => {
  describe('crash points: guarantees 1-4 and 6 hold after a power loss at every I/O', () => {
    for (let seed = 1; seed <= SEEDS; seed++) {
      it(`seed ${seed}: every crash point recovers to a state the model allows`, async () => {
        const ops = workload(seed);
        const path = join(dir, `seed${seed}.img`);
        // Dry run: count the workload's I/Os.
        await freshVolume(path, dataMode);
        const counter = new CrashController(Number.MAX_SAFE_INTEGER, mulberry32(0), 1);
        const dry = await Volume.open(path, { opener: counter });
        await runWorkload(dry, ops, await freshVolume(join(dir, 'scratch.img'), dataMode));
        await dry.close();
        const totalIos = counter.ios;
        expect(totalIos).toBeGreaterThan(20);
        const step = Math.max(1, Math.ceil(totalIos / MAX_POINTS));
        let points = 0;
        let recoveryCrashes = 0;
        let missed = 0;
        for (const [keepFraction, tearFraction] of [
          [0, 0],
          [0.5, 0.5],
          [1, 0],
        ] as const) {
          for (let crashAt = 1 + ((seed - 1) % step); crashAt <= totalIos; crashAt += step) {
            const where = `mode=${dataMode} seed=${seed} crashAt=${crashAt}/${totalIos} keepFraction=${keepFraction} tearFraction=${tearFraction}`;
            const model = await freshVolume(path, dataMode);
            const ctl = new CrashController(crashAt, mulberry32(seed * 1000 + crashAt), keepFraction, tearFraction);
            const volume = await Volume.open(path, { opener: ctl });
            let crashed = false;
            try {
              await runWorkload(volume, ops, model);
              await volume.close(); // its sync and checkpoint are crash points too
            } catch (err) {
              crashed = ctl.crashed;
              if (!crashed) throw err;
              await volume.close().catch(() => undefined);
            }
            if (!crashed) {
              // Background checkpoints make the I/O count vary a little between
              // runs: this run finished before reaching I/O `crashAt`.
              missed += 1;
              continue;
            }
            await ctl.restore();
            points += 1;

            // Every fourth point: a second power loss during recovery itself
            // (at one of the I/Os that open + close do); recovery must be idempotent.
            if (points % 4 === 0) {
              const backup = `${dir}-backup`;
              await rm(backup, { recursive: true, force: true });
              await cp(path, join(backup, 'vol.img'));
              await cp(`${path}.cowvol`, join(backup, 'vol.img.cowvol'), { recursive: true, filter: (src) => !src.endsWith('/lock') });
              const counter = new CrashController(Number.MAX_SAFE_INTEGER, mulberry32(1), 1);
              const probe = await Volume.open(path, { opener: counter });
              await probe.close();
              const recoveryIos = counter.ios;
              await restoreFrom(backup, path);
              if (recoveryIos > 0) {
                const second = new CrashController(1 + (crashAt % recoveryIos), mulberry32(crashAt), keepFraction, tearFraction);
                const during = await Volume.open(path, { opener: second }).catch(() => undefined);
                await during?.close().catch(() => undefined);
                expect(second.crashed, `${where}: recovery crash point`).toBe(true);
                await second.restore();
                recoveryCrashes += 1;
              }
              await rm(backup, { recursive: true, force: true });
            }
            const reopened = await Volume.open(path);
            try {
              const names = (await reopened.listSnapshots()).map((s) => s.name);
              for (const name of model.snapshots.keys()) expect(names, `${where}: snapshot ${name} lost`).toContain(name);
              for (const name of names) {
                const expected = model.snapshots.get(name) ?? model.uncertain.get(name);
                expect(expected, `${where}: unexpected snapshot ${name}`).toBeDefined();
                const got = await reopened.readSnapshot(name, 0, BLOCKS * BS);
                expect(got.equals(expected!), `${where}: snapshot ${name} changed`).toBe(true);
              }
              const live = await reopened.read(0, BLOCKS * BS);
              for (let b = 0; b < BLOCKS; b++) {
                if (model.dirty.has(b)) continue;
                const same = live.subarray(b * BS, (b + 1) * BS).equals(model.durable.subarray(b * BS, (b + 1) * BS));
                expect(same, `${where}: flushed live block ${b} lost`).toBe(true);
              }
              const report = await reopened.checkConsistency();
              expect(report.problems, where).toEqual([]);
              expect(report.leakedBlocks, `${where}: leaked store blocks`).toBe(0);
              // The persisted metadata, checked like `cowvol check`: clean (a reservation is never persisted, so no leaks either).
              const check = await reopened.check();
              expect(check.corruptions, where).toEqual([]);
              expect(check.status, where).toBe('clean');
            } finally {
              await reopened.close();
            }
          }
        }
        console.log(
          `crash test mode ${dataMode} seed ${seed}: ${points} crash points over ${totalIos} I/Os, ${recoveryCrashes} second crashes during recovery, ${missed} points past the end of the run`,
        );
        expect(missed, 'most crash points must land inside the run').toBeLessThan(points / 4 + 1);
      }, 600_000);
    }
  });
});
