#!/usr/bin/env node
// One scenario, one implementation, one repetition, in its own process (so
// cowvol's peak RSS is the scenario's own). Prints one line
// `@@RESULT {json}` on stdout. Run by bench/run.mjs; also usable alone:
//
//   node bench/scenario.mjs <scenario-id> <cowvol|raw|qcow2> [--quick] [--work DIR] [--rep N]
//        [--cpu-prof-measure FILE]   write a V8 CPU profile of the timed part only
//
// Internal modes (grandchildren of scenario 7):
//   node bench/scenario.mjs --internal open <volume>            time Volume.open
//   node bench/scenario.mjs --internal crash-writer <volume> <journalBytes>
import { Level } from 'level';
import { parseArgs } from 'node:util';
import { spawn, spawnSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Volume } from '@cowvol/cow-core';
import { MiB, diffObj, inFlight, median, now, payloadBuffer, permBlock, permutationStep, procIo } from './lib/common.mjs';
import { countingOpener, newCounters } from './lib/counting-opener.mjs';
import { scaleFor } from './lib/scale.mjs';
import { qemuBench, qemuCreate, qemuInfo, qemuSnapshotCreate, qemuSnapshotRead } from './lib/qemu.mjs';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const REPO_DIR = resolve(BENCH_DIR, '..');
const CLI = join(REPO_DIR, 'packages/cli/bin/run.js');
const SELF = fileURLToPath(import.meta.url);

// ------------------------------------------------------------------ context

function makeContext(scale, work, rep, profileFile) {
  const counters = newCounters();
  return { scale, work, rep, counters, opener: countingOpener(counters), profileFile, extra: {}, childRss: [] };
}

function snapshotCounters(ctx, vol) {
  const journal = vol?.journal?.stats;
  return {
    dev: structuredClone(ctx.counters),
    journal: journal ? { ...journal } : undefined,
    volumeStats: vol?.stats ? { ...vol.stats } : undefined,
    proc: procIo(),
  };
}

async function startProfiler(file) {
  if (!file) return undefined;
  const { Session } = await import('node:inspector/promises');
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.setSamplingInterval', { interval: 200 });
  await session.post('Profiler.start');
  return { session, file };
}

async function stopProfiler(p) {
  if (!p) return;
  const { profile } = await p.session.post('Profiler.stop');
  await writeFile(p.file, JSON.stringify(profile));
  p.session.disconnect();
}

/**
 * sync(1), untimed: writes back every dirty page and lets the file system
 * finish deletions (with the `discard` mount option, freeing the previous
 * run's GiBs issues discards that would otherwise slow the next fsyncs).
 */
function settle() {
  spawnSync('sync');
}

/** Times `fn` and the I/O it causes (BlockDevice counters, journal stats, /proc/self/io). */
async function measure(ctx, fn, vol) {
  settle();
  const before = snapshotCounters(ctx, vol);
  const prof = await startProfiler(ctx.profileFile);
  const t0 = now();
  const out = await fn();
  const seconds = (now() - t0) / 1000;
  await stopProfiler(prof);
  ctx.profileFile = undefined; // profile only the first measured part
  const after = snapshotCounters(ctx, vol);
  return { seconds, out, io: diffObj(after, before) };
}

// ---------------------------------------------------------------- targets

/** A write/read target over cowvol's API. */
function cowTarget(vol) {
  return {
    write: (off, buf) => vol.write(off, buf),
    sync: () => vol.flush(),
  };
}

/** The physical limit: the same I/O on a plain file with node:fs/promises. */
async function rawTarget(path, { create = false, sizeBytes } = {}) {
  const fh = await open(path, create ? 'w+' : 'r+');
  if (create) await fh.truncate(sizeBytes);
  return {
    fh,
    async write(off, buf) {
      let done = 0;
      while (done < buf.length) done += (await fh.write(buf, done, buf.length - done, off + done)).bytesWritten;
    },
    /** Into the caller's buffer, like `Volume.readSnapshotInto`. */
    async readInto(off, buf) {
      let done = 0;
      while (done < buf.length) {
        const { bytesRead } = await fh.read(buf, done, buf.length - done, off + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    },
    sync: () => fh.datasync(),
    close: () => fh.close(),
  };
}

// -------------------------------------------------------------- workloads

/**
 * The write workloads, described once and replayed by cowvol, raw and
 * qemu-img bench alike:
 *   seq     1 MiB writes over the whole volume, 1 in flight
 *   rand    4 KiB writes, 16 in flight, every block once in the permutation
 *           order of permutationStep (see common.mjs)
 *   stride  4 KiB writes at a 64 KiB stride over the whole volume
 */
function workload(sc, kind, depth) {
  const nBlocks = sc.volBytes / sc.blockBytes;
  if (kind === 'seq') return { kind, ioBytes: sc.seqIoBytes, stepBytes: sc.seqIoBytes, count: sc.volBytes / sc.seqIoBytes, depth: 1 };
  if (kind === 'rand') {
    const step = permutationStep(nBlocks);
    return { kind, ioBytes: sc.blockBytes, stepBytes: step * sc.blockBytes, step, nBlocks, count: nBlocks, depth: depth ?? sc.depth, startIdx: 0 };
  }
  if (kind === 'stride') return { kind, ioBytes: sc.blockBytes, stepBytes: sc.stripeBytes, count: sc.volBytes / sc.stripeBytes, depth };
  throw new Error(`unknown workload ${kind}`);
}

function offsetOf(wl, i, sc) {
  if (wl.kind === 'rand') return permBlock(wl.startIdx + i, wl.step, wl.nBlocks) * sc.blockBytes;
  return i * wl.stepBytes;
}

/** Runs a write workload against a target, then one sync (the durability point). Resolves bytes written. */
async function runWrites(target, wl, sc) {
  const buf = payloadBuffer(wl.ioBytes);
  if (wl.depth === 1) {
    for (let i = 0; i < wl.count; i++) await target.write(offsetOf(wl, i, sc), buf);
  } else {
    await inFlight(wl.count, wl.depth, (i) => target.write(offsetOf(wl, i, sc), buf));
  }
  await target.sync();
  return wl.count * wl.ioBytes;
}

function qemuWorkload(wl, sc, offsetBytes = 0) {
  return { write: true, sizeBytes: wl.ioBytes, stepBytes: wl.stepBytes, count: wl.count, depth: wl.depth, offsetBytes };
}

async function fillTarget(target, sc) {
  await runWrites(target, workload(sc, 'seq'), sc);
}

async function qemuFill(img, sc) {
  await qemuCreate(img, sc.volBytes);
  await qemuBench(img, qemuWorkload(workload(sc, 'seq'), sc));
}

const mibps = (bytes, seconds) => bytes / MiB / seconds;

// ------------------------------------------------------------- cowvol bits

async function cowCreate(ctx, name, sizeBytes, options = {}) {
  // BENCH_JOURNAL_BYTES: journal file size for every volume the bench creates (default: the engine's).
  if (process.env.BENCH_JOURNAL_BYTES && options.journalSizeBytes === undefined) options = { ...options, journalSizeBytes: Number(process.env.BENCH_JOURNAL_BYTES) };
  return Volume.create(join(ctx.work, name), { sizeBytes, blockSizeBytes: ctx.scale.blockBytes, opener: ctx.opener, ...options });
}

async function cowOpen(ctx, name) {
  return Volume.open(join(ctx.work, name), { opener: ctx.opener });
}

async function cowFilled(ctx, name = 'vol.img', sizeBytes = ctx.scale.volBytes, options = {}) {
  const vol = await cowCreate(ctx, name, sizeBytes, options);
  await fillTarget(cowTarget(vol), { ...ctx.scale, volBytes: sizeBytes });
  return vol;
}

/** Runs `fn` as setup, once (shared scenarios keep it across repetitions), recording its time. */
async function setupOnce(ctx, marker, fn) {
  const path = join(ctx.work, marker);
  if (existsSync(path)) return false;
  const t0 = now();
  await fn();
  ctx.extra.setupSeconds = (now() - t0) / 1000;
  await writeFile(path, 'ready\n');
  return true;
}

async function timedSetup(ctx, fn) {
  const t0 = now();
  const r = await fn();
  ctx.extra.setupSeconds = (now() - t0) / 1000;
  return r;
}

/** Spawns this file in an internal mode; resolves its @@RESULT. */
function internal(ctx, args) {
  return new Promise((resolvePromise, reject) => {
    const extra = ctx.profileFile ? ['--cpu-prof-measure', ctx.profileFile] : [];
    ctx.profileFile = undefined;
    const child = spawn(process.execPath, [SELF, '--internal', ...args, ...extra], { stdio: ['ignore', 'pipe', 'inherit'], env: childEnv() });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('@@RESULT '));
      if (code !== 0 || !line) return reject(new Error(`internal ${args[0]} exited ${code}: ${out.slice(-500)}`));
      const r = JSON.parse(line.slice('@@RESULT '.length));
      if (r.maxRssKiB) ctx.childRss.push(r.maxRssKiB);
      resolvePromise(r);
    });
  });
}

function childEnv() {
  const env = { ...process.env };
  delete env.COWVOL_LOCK_CHECKS; // production configuration (the test suite turns lock-order checks on)
  return env;
}

function totalMapped(info) {
  return info.snapshots.reduce((n, s) => n + s.ownedBlocks, 0);
}

// ---------------------------------------------------------------- scenarios

/** Scenario 1: overwrite of a filled volume, no snapshot. Setup (fill) shared by the repetitions. */
function overwrite(kind) {
  return {
    async cowvol(ctx) {
      await setupOnce(ctx, 'ready', async () => (await cowFilled(ctx)).close());
      const vol = await cowOpen(ctx, 'vol.img');
      const wl = workload(ctx.scale, kind);
      const m = await measure(ctx, () => runWrites(cowTarget(vol), wl, ctx.scale), vol);
      await vol.close();
      return { metrics: { write: mibps(m.out, m.seconds) }, seconds: m.seconds, io: m.io };
    },
    async raw(ctx) {
      const path = join(ctx.work, 'raw.img');
      await setupOnce(ctx, 'ready', async () => {
        const t = await rawTarget(path, { create: true, sizeBytes: ctx.scale.volBytes });
        await fillTarget(t, ctx.scale);
        await t.close();
      });
      const t = await rawTarget(path);
      const m = await measure(ctx, () => runWrites(t, workload(ctx.scale, kind), ctx.scale));
      await t.close();
      return { metrics: { write: mibps(m.out, m.seconds) }, seconds: m.seconds, io: m.io };
    },
    async qcow2(ctx) {
      const img = join(ctx.work, 'q.qcow2');
      await setupOnce(ctx, 'ready', () => qemuFill(img, ctx.scale));
      const wl = workload(ctx.scale, kind);
      settle();
      const r = await qemuBench(img, qemuWorkload(wl, ctx.scale));
      return { metrics: { write: mibps(wl.count * wl.ioBytes, r.seconds) }, seconds: r.seconds, extra: qemuExtra(r) };
    },
  };
}

function qemuExtra(r) {
  return { qemuArgs: r.args?.join(' '), qemuReportedSeconds: r.reportedSeconds, qemuWallSeconds: r.wallSeconds, timedFromMarker: r.timedFromMarker };
}

/**
 * Scenarios 2–4: fill, snapshot, then the workload (every block COWs once);
 * with `secondPass`, the workload runs once untimed first and the timed run
 * overwrites blocks that were already COWed. Fresh setup every repetition.
 */
function afterSnapshot(kind, depth, { secondPass = false } = {}) {
  return {
    async cowvol(ctx) {
      const wl = workload(ctx.scale, kind, depth);
      const vol = await timedSetup(ctx, async () => {
        const v = await cowFilled(ctx);
        await v.createSnapshot('base');
        if (secondPass) await runWrites(cowTarget(v), wl, ctx.scale);
        return v;
      });
      const m = await measure(ctx, () => runWrites(cowTarget(vol), wl, ctx.scale), vol);
      await vol.close();
      return { metrics: { write: mibps(m.out, m.seconds) }, seconds: m.seconds, io: m.io };
    },
    async raw(ctx) {
      const wl = workload(ctx.scale, kind, depth);
      const t = await timedSetup(ctx, async () => {
        const tt = await rawTarget(join(ctx.work, 'raw.img'), { create: true, sizeBytes: ctx.scale.volBytes });
        await fillTarget(tt, ctx.scale);
        if (secondPass) await runWrites(tt, wl, ctx.scale);
        return tt;
      });
      const m = await measure(ctx, () => runWrites(t, wl, ctx.scale));
      await t.close();
      return { metrics: { write: mibps(m.out, m.seconds) }, seconds: m.seconds, io: m.io };
    },
    async qcow2(ctx) {
      const img = join(ctx.work, 'q.qcow2');
      const wl = workload(ctx.scale, kind, depth);
      await timedSetup(ctx, async () => {
        await qemuFill(img, ctx.scale);
        await qemuSnapshotCreate(img, 'base');
        if (secondPass) await qemuBench(img, qemuWorkload(wl, ctx.scale));
      });
      settle();
      const r = await qemuBench(img, qemuWorkload(wl, ctx.scale));
      return { metrics: { write: mibps(wl.count * wl.ioBytes, r.seconds) }, seconds: r.seconds, extra: qemuExtra(r) };
    },
  };
}

/**
 * Scenario 5: fill, snapshot "target", then `newer` snapshots, each followed
 * by 4K writes to a fresh 1% of the blocks (so each newer snapshot COWs 1%),
 * then a full sequential read of "target" in 1 MiB reads. Setup shared; each
 * repetition reopens the volume (so it includes loading the maps the chain
 * needs from LevelDB — the first read's real cost). Page cache warm for all.
 */
function snapshotRead(newerOf) {
  const plan = (sc) => {
    const nBlocks = sc.volBytes / sc.blockBytes;
    const per = Math.max(1, Math.round(nBlocks * sc.readNewerFraction));
    return { newer: newerOf(sc), per, nBlocks, step: permutationStep(nBlocks) };
  };
  return {
    async cowvol(ctx) {
      const sc = ctx.scale;
      const p = plan(sc);
      await setupOnce(ctx, 'ready', async () => {
        const vol = await cowFilled(ctx);
        await vol.createSnapshot('target');
        for (let k = 0; k < p.newer; k++) {
          await vol.createSnapshot(`newer-${k}`);
          await runWrites(cowTarget(vol), { kind: 'rand', ioBytes: sc.blockBytes, step: p.step, nBlocks: p.nBlocks, count: p.per, depth: sc.depth, startIdx: k * p.per }, sc);
        }
        const info = await vol.info();
        ctx.extra.setupMapped = totalMapped(info);
        await vol.close();
      });
      const vol = await cowOpen(ctx, 'vol.img');
      const m = await measure(
        ctx,
        async () => {
          let bytes = 0;
          const buf = Buffer.allocUnsafe(sc.readIoBytes); // one buffer for every read, for raw too
          for (let off = 0; off < sc.volBytes; off += sc.readIoBytes) {
            const into = buf.subarray(0, Math.min(sc.readIoBytes, sc.volBytes - off));
            await vol.readSnapshotInto('target', off, into);
            bytes += into.length;
          }
          return bytes;
        },
        vol,
      );
      await vol.close();
      return { metrics: { read: mibps(m.out, m.seconds) }, seconds: m.seconds, io: m.io, extra: { newerSnapshots: p.newer, blocksPerNewer: p.per } };
    },
    async raw(ctx) {
      const sc = ctx.scale;
      const path = join(ctx.work, 'raw.img');
      await setupOnce(ctx, 'ready', async () => {
        const t = await rawTarget(path, { create: true, sizeBytes: sc.volBytes });
        await fillTarget(t, sc);
        await t.close();
      });
      const t = await rawTarget(path);
      const m = await measure(ctx, async () => {
        let bytes = 0;
        const buf = Buffer.allocUnsafe(sc.readIoBytes);
        for (let off = 0; off < sc.volBytes; off += sc.readIoBytes) {
          const into = buf.subarray(0, Math.min(sc.readIoBytes, sc.volBytes - off));
          await t.readInto(off, into);
          bytes += into.length;
        }
        return bytes;
      });
      await t.close();
      return { metrics: { read: mibps(m.out, m.seconds) }, seconds: m.seconds, io: m.io };
    },
    async qcow2(ctx) {
      const sc = ctx.scale;
      const p = plan(sc);
      const img = join(ctx.work, 'q.qcow2');
      await setupOnce(ctx, 'ready', async () => {
        await qemuFill(img, sc);
        await qemuSnapshotCreate(img, 'target');
        for (let k = 0; k < p.newer; k++) {
          await qemuSnapshotCreate(img, `newer-${k}`);
          const start = permBlock(k * p.per, p.step, p.nBlocks) * sc.blockBytes;
          await qemuBench(img, { write: true, sizeBytes: sc.blockBytes, stepBytes: p.step * sc.blockBytes, count: p.per, depth: sc.depth, offsetBytes: start });
        }
      });
      settle();
      const r = await qemuSnapshotRead(img, 'target', sc.volBytes);
      return {
        metrics: { read: mibps(sc.volBytes, r.seconds) },
        seconds: r.seconds,
        extra: { qemuArgs: r.args.join(' '), qemuWallSeconds: r.wallSeconds, timedFromMarker: r.timedFromMarker, note: 'qemu-img convert -l snapshot.name=target -> null-co' },
      };
    },
  };
}

/** Scenario 6: create + delete (of the just-created, empty snapshot) latency, `samples` times. Setup shared. */
function createLatency(bigVolume, many) {
  return {
    async cowvol(ctx) {
      const sc = ctx.scale;
      const existing = many ? sc.manySnapshots : 1;
      await setupOnce(ctx, 'ready', async () => {
        const vol = bigVolume ? await cowCreate(ctx, 'vol.img', sc.bigVolBytes) : await cowFilled(ctx);
        if (bigVolume) await fillTarget(cowTarget(vol), { ...sc, volBytes: 16 * MiB }); // some data, rest sparse
        for (let i = 0; i < existing; i++) await vol.createSnapshot(`existing-${i}`);
        await vol.close();
      });
      const vol = await cowOpen(ctx, 'vol.img');
      const createMs = [];
      const deleteMs = [];
      const ioCreate = [];
      const ioDelete = [];
      // One untimed warm-up pair (first-call JIT and LevelDB costs), then the samples.
      await vol.createSnapshot(`rep${ctx.rep}-warmup`);
      await vol.deleteSnapshot(`rep${ctx.rep}-warmup`);
      for (let s = 0; s < sc.createSamples; s++) {
        const name = `rep${ctx.rep}-${s}`;
        const c = await measure(ctx, () => vol.createSnapshot(name), vol);
        createMs.push(c.seconds * 1000);
        ioCreate.push(c.io);
        const d = await measure(ctx, () => vol.deleteSnapshot(name), vol);
        deleteMs.push(d.seconds * 1000);
        ioDelete.push(d.io);
      }
      const snapshots = (await vol.listSnapshots()).length;
      await vol.close();
      return {
        metrics: { create: 1000 / median(createMs), delete: 1000 / median(deleteMs) },
        seconds: median(createMs) / 1000,
        secondsByMetric: { create: median(createMs) / 1000, delete: median(deleteMs) / 1000 },
        io: ioCreate[Math.floor(ioCreate.length / 2)],
        ioByMetric: { create: ioCreate[Math.floor(ioCreate.length / 2)], delete: ioDelete[Math.floor(ioDelete.length / 2)] },
        extra: {
          volumeBytes: bigVolume ? sc.bigVolBytes : sc.volBytes,
          existingSnapshots: existing,
          snapshotsAtEnd: snapshots,
          createMs,
          deleteMs,
          createMsMedian: median(createMs),
          deleteMsMedian: median(deleteMs),
        },
      };
    },
  };
}

/** Scenario 6: delete of the middle of older ← middle (owns N blocks) ← newer: every block is handed over to older. */
const deleteMiddle = {
  async cowvol(ctx) {
    const sc = ctx.scale;
    const n = Math.min(sc.deleteBlocks, sc.volBytes / sc.blockBytes);
    const vol = await timedSetup(ctx, async () => {
      const v = await cowFilled(ctx);
      await v.createSnapshot('older');
      await v.createSnapshot('middle');
      await runWrites(cowTarget(v), { kind: 'seq', ioBytes: sc.seqIoBytes, stepBytes: sc.seqIoBytes, count: Math.floor((n * sc.blockBytes) / sc.seqIoBytes), depth: 1 }, sc);
      const rest = (n * sc.blockBytes) % sc.seqIoBytes;
      if (rest) await v.write(n * sc.blockBytes - rest, payloadBuffer(rest));
      await v.flush();
      await v.createSnapshot('newer');
      await v.write(0, payloadBuffer(sc.seqIoBytes)); // newer owns a little too
      await v.flush();
      return v;
    });
    const owned = (await vol.listSnapshots()).find((s) => s.name === 'middle').ownedBlocks;
    const m = await measure(ctx, () => vol.deleteSnapshot('middle'), vol);
    await vol.close();
    const dev = m.io.dev;
    const dataBytesMoved = dev.volume.writeBytes + dev.store.writeBytes + dev.volume.readBytes + dev.store.readBytes;
    return {
      metrics: { delete: owned / m.seconds },
      seconds: m.seconds,
      io: { ...m.io, dataBytesMoved },
      extra: { ownedBlocks: owned, handedOverBlocks: m.out.handedOverBlocks, freedBlocks: m.out.freedBlocks, deleteMs: m.seconds * 1000 },
    };
  },
};

/** Scenario 7: clean open of a volume with many snapshots, each with `perSnapshot(sc)` COWed blocks. Setup shared. */
function cleanOpen(perSnapshot) {
  return {
    async cowvol(ctx) {
      const sc = ctx.scale;
      const path = join(ctx.work, 'vol.img');
      await setupOnce(ctx, 'ready', async () => {
        const vol = await cowFilled(ctx);
        const per = perSnapshot(sc);
        const nBlocks = sc.volBytes / sc.blockBytes;
        const bytes = per * sc.blockBytes;
        for (let k = 0; k < sc.openSnapshots; k++) {
          await vol.createSnapshot(`s-${k}`);
          // `per` contiguous blocks starting where the previous snapshot's stopped (wrapping).
          const first = (k * per) % nBlocks;
          const firstLen = Math.min(per, nBlocks - first) * sc.blockBytes;
          await vol.write(first * sc.blockBytes, payloadBuffer(firstLen));
          if (firstLen < bytes) await vol.write(0, payloadBuffer(bytes - firstLen));
        }
        const info = await vol.info();
        ctx.extra.setupMapped = totalMapped(info);
        ctx.extra.setupSnapshots = info.snapshots.length;
        await vol.close();
      });
      const r = await internal(ctx, ['open', path]);
      return {
        metrics: { open: 1 / r.openSeconds },
        seconds: r.openSeconds,
        io: r.io,
        extra: { openMs: r.openSeconds * 1000, snapshots: r.snapshots, mappedBlocks: r.mapped, openRssKiB: r.maxRssKiB },
      };
    },
  };
}

/**
 * Scenario 7: recovery. A clean, filled volume; its LevelDB directory is
 * copied (the metadata as of the last checkpoint). A child then writes with
 * checkpoints switched off until the journal holds `journalBytes` of
 * committed transactions (snapshot pairs, full overwrites COWing every
 * block, hand-over deletes) and exits without close. Two opens are timed:
 * "crash" = process crash (LevelDB has every transaction applied; recovery
 * scans the journal and skips them), "power loss" = the same journal with
 * LevelDB rewound to the copy (LevelDB never syncs on its own: its writes
 * after the last checkpoint are lost) — every transaction is replayed.
 *
 * How the journal gets that big without a checkpoint depends on the engine:
 * - circular journal (journal v2: fixed-size log, background checkpoint at
 *   half full): the volume is created with `journalSizeBytes` = 2.5 × the
 *   target (at least 160 MiB: on a 64 MiB journal a handle may use at most
 *   4095 log blocks, too few for the delete batches of the writer's
 *   snapshots), so no checkpoint starts before the target is reached;
 * - append-only journal (v1: checkpoint at 16 MiB, CHECKPOINT_THRESHOLD_BYTES):
 *   the writer switches its instance's checkpoint off (harmless on v2).
 * The writer fails if any checkpoint ran anyway (the rewound LevelDB would
 * then be older than the journal's tail: not a state a power loss produces).
 */
const recovery = {
  async cowvol(ctx) {
    const sc = ctx.scale;
    const path = join(ctx.work, 'vol.img');
    const side = `${path}.cowvol`;
    const journalSizeBytes = Math.max(160 * MiB, Math.ceil((2.5 * sc.journalBytes) / MiB) * MiB);
    const profileFile = ctx.profileFile; // --cpu-prof-measure profiles the power-loss open
    ctx.profileFile = undefined;
    const crash = await timedSetup(ctx, async () => {
      await (await cowFilled(ctx, 'vol.img', sc.volBytes, { journalSizeBytes })).close();
      await cp(join(side, 'meta'), join(ctx.work, 'meta.checkpointed'), { recursive: true });
      const c = await internal(ctx, ['crash-writer', path, String(sc.journalBytes)]);
      await rm(join(side, 'lock'), { recursive: true, force: true });
      await rm(join(side, 'owner'), { force: true });
      await cp(join(side, 'journal'), join(ctx.work, 'journal.crashed'));
      return c;
    });
    const a = await internal(ctx, ['open', path]);
    // Power loss: same journal, LevelDB as of the last checkpoint — but for
    // the volume file's `open` change stamp, which the writer wrote with a
    // sync before its first write, so a power loss keeps it.
    const stamp = await readMetaKey(join(side, 'meta'), 'stamp');
    await rm(join(side, 'meta'), { recursive: true, force: true });
    await cp(join(ctx.work, 'meta.checkpointed'), join(side, 'meta'), { recursive: true });
    if (stamp !== undefined) await writeMetaKey(join(side, 'meta'), 'stamp', stamp);
    await cp(join(ctx.work, 'journal.crashed'), join(side, 'journal'));
    ctx.profileFile = profileFile;
    const b = await internal(ctx, ['open', path]);
    const journalMiB = crash.journalBytes / MiB;
    return {
      metrics: { 'open-crash': 1 / a.openSeconds, 'open-powerloss': 1 / b.openSeconds },
      seconds: b.openSeconds,
      secondsByMetric: { 'open-crash': a.openSeconds, 'open-powerloss': b.openSeconds },
      io: b.io,
      ioByMetric: { 'open-crash': a.io, 'open-powerloss': b.io },
      extra: {
        journalBytes: crash.journalBytes,
        journalFileBytes: journalSizeBytes,
        journalTransactions: crash.transactions,
        crashOpenMs: a.openSeconds * 1000,
        powerLossOpenMs: b.openSeconds * 1000,
        crashRecovery: a.recovery,
        powerLossRecovery: b.recovery,
        powerLossReplayMiBps: journalMiB / b.openSeconds,
        crashWriterRounds: crash.rounds,
        writerRssKiB: crash.maxRssKiB,
        crashOpenRssKiB: a.maxRssKiB,
        powerLossOpenRssKiB: b.maxRssKiB,
      },
    };
  },
};

/** One raw value of a volume's LevelDB (a closed database). */
async function readMetaKey(metaPath, key) {
  const db = new Level(metaPath, { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    return await db.get(key);
  } finally {
    await db.close();
  }
}

async function writeMetaKey(metaPath, key, value) {
  const db = new Level(metaPath, { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    await db.put(key, value, { sync: true });
  } finally {
    await db.close();
  }
}

/** Scenario 8: CLI wall time, process start included, `samples` calls per run. Setup shared. */
function cliRoundTrip(which) {
  const time = async (cmd, args) => {
    const t0 = now();
    await new Promise((resolvePromise, reject) => {
      const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolvePromise(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err || out}`))));
    });
    return now() - t0;
  };
  return {
    async cowvol(ctx) {
      const sc = ctx.scale;
      const path = join(ctx.work, 'vol.img');
      await setupOnce(ctx, 'ready', async () => {
        const vol = await cowFilled(ctx);
        for (let i = 0; i < sc.cliSnapshots; i++) await vol.createSnapshot(`existing-${i}`);
        await vol.close();
      });
      const args = (i) => (which === 'list' ? [CLI, 'snapshot', 'list', path, '--json'] : [CLI, 'snapshot', 'create', path, `rep${ctx.rep}-${i}`]);
      const ms = [];
      settle();
      for (let i = 0; i < sc.cliSamples; i++) ms.push(await time(process.execPath, args(i)));
      // One more, untimed, with a preload that reports the CLI process's peak RSS.
      const rssFile = join(ctx.work, `rss-${ctx.rep}`);
      const preload = join(BENCH_DIR, 'lib', 'rss-preload.mjs');
      await rm(rssFile, { force: true });
      const rssArgs = which === 'list' ? args(0) : [CLI, 'snapshot', 'create', path, `rep${ctx.rep}-rss`];
      await new Promise((res, rej) => {
        const child = spawn(process.execPath, ['--import', preload, ...rssArgs], { stdio: 'ignore', env: { ...childEnv(), BENCH_RSS_OUT: rssFile } });
        child.on('error', rej);
        child.on('close', res);
      });
      const cliRss = Number((await import('node:fs')).readFileSync(rssFile, 'utf8').trim()) || undefined;
      if (cliRss) ctx.childRss.push(cliRss);
      return {
        metrics: { [which]: 1000 / median(ms) },
        seconds: median(ms) / 1000,
        extra: {
          wallMs: ms,
          cliMaxRssKiB: cliRss,
          command: `node packages/cli/bin/run.js ${rssArgs
            .slice(1)
            .map((a) => (a === path ? 'vol.img' : a))
            .join(' ')}`,
        },
      };
    },
    async qcow2(ctx) {
      const sc = ctx.scale;
      const img = join(ctx.work, 'q.qcow2');
      await setupOnce(ctx, 'ready', async () => {
        await qemuFill(img, sc);
        for (let i = 0; i < sc.cliSnapshots; i++) await qemuSnapshotCreate(img, `existing-${i}`);
      });
      const ms = [];
      settle();
      for (let i = 0; i < sc.cliSamples; i++) {
        ms.push(await time(qemuInfo().qemuImg, which === 'list' ? ['snapshot', '-l', img] : ['snapshot', '-c', `rep${ctx.rep}-${i}`, img]));
      }
      return { metrics: { [which]: 1000 / median(ms) }, seconds: median(ms) / 1000, extra: { wallMs: ms, command: `qemu-img snapshot ${which === 'list' ? '-l' : '-c <name>'} q.qcow2` } };
    },
  };
}

/** Wall time of one command (process start included); rejects on a non-zero exit. */
function timeCommand(cmd, args, env = childEnv()) {
  return new Promise((resolvePromise, reject) => {
    const t0 = now();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolvePromise(now() - t0) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${out}`))));
  });
}

/** The input file of scenario 8-cli-write*: `cliWriteBytes` of incompressible bytes, written and synced untimed. */
async function cliWriteInput(ctx) {
  const path = join(ctx.work, 'data');
  const fh = await open(path, 'w');
  try {
    // In 4 MiB pieces: the bench process's own RSS stays small (it is counted as cowvol's peak).
    for (let at = 0; at < ctx.scale.cliWriteBytes; at += 4 * MiB) await fh.write(randomBytes(Math.min(4 * MiB, ctx.scale.cliWriteBytes - at)));
  } finally {
    await fh.close();
  }
  return path;
}

/**
 * Scenario 8-cli-write (no snapshot) and 8-cli-write-cow (first write after
 * a snapshot): `cowvol write vol.img --input data` of a whole filled volume,
 * wall time with process start, against `dd bs=1M conv=fdatasync,notrunc`
 * on a filled raw file (no snapshot) or `qemu-io -c 'write -s data 0 N'
 * -c flush` on a filled qcow2 image after `qemu-img snapshot -c` (after a
 * snapshot). Setup (fill, snapshot) per repetition and untimed; the snapshot
 * command's own wall time is kept in `extra`.
 */
function cliWrite(afterSnapshot) {
  const bytes = (ctx) => ctx.scale.cliWriteBytes;
  const sized = (ctx) => ({ ...ctx.scale, volBytes: bytes(ctx) });
  const cowvol = async (ctx) => {
    const data = await cliWriteInput(ctx);
    const path = join(ctx.work, 'vol.img');
    await timedSetup(ctx, async () => (await cowFilled(ctx, 'vol.img', bytes(ctx))).close());
    const extra = {};
    if (afterSnapshot) {
      settle();
      extra.snapshotMs = await timeCommand(process.execPath, [CLI, 'snapshot', 'create', path, 's']);
    }
    const rssFile = join(ctx.work, 'rss');
    const args = ['--import', join(BENCH_DIR, 'lib', 'rss-preload.mjs'), CLI, 'write', path, '--input', data];
    settle();
    const ms = await timeCommand(process.execPath, args, { ...childEnv(), BENCH_RSS_OUT: rssFile });
    const cliRss = Number((await import('node:fs')).readFileSync(rssFile, 'utf8').trim()) || undefined;
    if (cliRss) ctx.childRss.push(cliRss);
    // The command's fixed cost, for DETAILS: the same command with a 4 KiB input (process start, open, flush, close).
    const small = join(ctx.work, 'data-4k');
    await writeFile(small, randomBytes(4096));
    settle();
    extra.fixedMs = await timeCommand(process.execPath, [CLI, 'write', path, '--input', small]);
    const command = `${afterSnapshot ? 'cowvol snapshot create vol.img s; ' : ''}cowvol write vol.img --input data`;
    return { metrics: { write: mibps(bytes(ctx), ms / 1000) }, seconds: ms / 1000, extra: { ...extra, wallMs: ms, cliMaxRssKiB: cliRss, command } };
  };
  if (!afterSnapshot) {
    return {
      cowvol,
      async raw(ctx) {
        const data = await cliWriteInput(ctx);
        const path = join(ctx.work, 'raw.img');
        await timedSetup(ctx, async () => {
          const t = await rawTarget(path, { create: true, sizeBytes: bytes(ctx) });
          await fillTarget(t, sized(ctx));
          await t.sync();
          await t.close();
        });
        settle();
        const ms = await timeCommand('dd', [`if=${data}`, `of=${path}`, 'bs=1M', 'conv=fdatasync,notrunc', 'status=none']);
        return { metrics: { write: mibps(bytes(ctx), ms / 1000) }, seconds: ms / 1000, extra: { wallMs: ms, command: 'dd if=data of=raw.img bs=1M conv=fdatasync,notrunc' } };
      },
    };
  }
  return {
    cowvol,
    async qcow2(ctx) {
      const data = await cliWriteInput(ctx);
      const img = join(ctx.work, 'q.qcow2');
      await timedSetup(ctx, () => qemuFill(img, sized(ctx)));
      settle();
      const snapshotMs = await timeCommand(qemuInfo().qemuImg, ['snapshot', '-c', 's', img]);
      settle();
      const qemuIo = join(dirname(qemuInfo().qemuImg), 'qemu-io');
      const ms = await timeCommand(qemuIo, ['-f', 'qcow2', '-c', `write -s ${data} 0 ${bytes(ctx)}`, '-c', 'flush', img]);
      const command = `qemu-img snapshot -c s q.qcow2; qemu-io -f qcow2 -c 'write -s data 0 ${bytes(ctx) / MiB}M' -c flush q.qcow2`;
      return { metrics: { write: mibps(bytes(ctx), ms / 1000) }, seconds: ms / 1000, extra: { snapshotMs, wallMs: ms, command } };
    },
  };
}

const SCENARIOS = {
  '1-seq': overwrite('seq'),
  '1-rand': overwrite('rand'),
  '2-seq': afterSnapshot('seq'),
  '2-rand': afterSnapshot('rand'),
  '3-stride-qd1': afterSnapshot('stride', 1),
  '3-stride-qd16': afterSnapshot('stride', 16),
  '4-seq': afterSnapshot('seq', undefined, { secondPass: true }),
  '4-rand': afterSnapshot('rand', undefined, { secondPass: true }),
  '5-read-1': snapshotRead(() => 1),
  '5-read-many': snapshotRead((sc) => sc.readNewerMany),
  '6-create-1g-1': createLatency(false, false),
  '6-create-1g-many': createLatency(false, true),
  '6-create-1t-1': createLatency(true, false),
  '6-create-1t-many': createLatency(true, true),
  '6-delete-mid': deleteMiddle,
  '7-open-small': cleanOpen(() => 1),
  '7-open-mapped': cleanOpen((sc) => Math.ceil(sc.openMapped / sc.openSnapshots)),
  '7-recover': recovery,
  '8-cli-list': cliRoundTrip('list'),
  '8-cli-create': cliRoundTrip('create'),
  '8-cli-write': cliWrite(false),
  '8-cli-write-cow': cliWrite(true),
};

// ----------------------------------------------------------- internal modes

async function internalOpen(path, profileFile) {
  const counters = newCounters();
  const ctx = { counters, profileFile };
  settle();
  const before = snapshotCounters(ctx);
  const prof = await startProfiler(profileFile);
  const t0 = now();
  const vol = await Volume.open(path, { opener: countingOpener(counters) });
  const openSeconds = (now() - t0) / 1000;
  await stopProfiler(prof);
  const io = diffObj(snapshotCounters(ctx, vol), before);
  const info = await vol.info();
  await vol.close();
  return { openSeconds, io, recovery: info.recovery, snapshots: info.snapshots.length, mapped: totalMapped(info) };
}

async function internalCrashWriter(path, targetBytes) {
  const vol = await Volume.open(path);
  // Build a journal larger than the engine's checkpoint threshold: switch this instance's checkpoint off.
  if (process.env.BENCH_KEEP_CHECKPOINT !== '1') vol.checkpoint = async () => undefined; // (=1: production behaviour, for comparison)
  const journal = vol.journal;
  const checkpointsBefore = journal?.stats?.checkpoints ?? 0;
  const journalPath = `${path}.cowvol/journal`;
  const pending = async () => (typeof journal?.uncheckpointedBytes === 'number' ? journal.uncheckpointedBytes : (await stat(journalPath)).size);
  const sizeBytes = vol.sizeBytes;
  const buf = payloadBuffer(4 * MiB);
  let rounds = 0;
  const tag = Date.now().toString(36);
  outer: for (;;) {
    await vol.createSnapshot(`a-${tag}-${rounds}`);
    await vol.createSnapshot(`m-${tag}-${rounds}`);
    for (let off = 0; off < sizeBytes; off += buf.length) {
      await vol.write(off, buf.subarray(0, Math.min(buf.length, sizeBytes - off)));
      if ((await pending()) >= targetBytes) break outer;
    }
    await vol.deleteSnapshot(`m-${tag}-${rounds}`); // hand-over: every block moves to a-…
    if ((await pending()) >= targetBytes) break;
    await vol.deleteSnapshot(`a-${tag}-${rounds}`); // no older snapshot: every block is freed
    if ((await pending()) >= targetBytes) break;
    rounds++;
  }
  const checkpoints = (journal?.stats?.checkpoints ?? 0) - checkpointsBefore;
  if (checkpoints !== 0) throw new Error(`${checkpoints} checkpoint(s) ran while building the journal: the power-loss image would be inconsistent`);
  return { journalBytes: await pending(), transactions: journal?.stats?.commits, rounds: rounds + 1, exitWithoutClose: true };
}

// ---------------------------------------------------------------------- main

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      quick: { type: 'boolean', default: false },
      work: { type: 'string' },
      rep: { type: 'string', default: '1' },
      'cpu-prof-measure': { type: 'string' },
      internal: { type: 'string' },
    },
  });
  const emit = (obj) => process.stdout.write(`@@RESULT ${JSON.stringify(obj)}\n`);

  if (values.internal === 'open') {
    const r = await internalOpen(positionals[0], values['cpu-prof-measure']);
    emit({ ...r, maxRssKiB: process.resourceUsage().maxRSS });
    return;
  }
  if (values.internal === 'crash-writer') {
    const r = await internalCrashWriter(positionals[0], Number(positionals[1]));
    emit({ ...r, maxRssKiB: process.resourceUsage().maxRSS });
    process.exit(0); // the crash: no close, no checkpoint
  }

  const [id, impl] = positionals;
  const scenario = SCENARIOS[id];
  if (!scenario) throw new Error(`unknown scenario ${id}; known: ${Object.keys(SCENARIOS).join(', ')}`);
  const fn = scenario[impl];
  if (!fn) throw new Error(`scenario ${id} has no ${impl} implementation`);
  if (impl === 'qcow2' && !qemuInfo().available) throw new Error('qemu-img not installed');

  const scale = scaleFor(values.quick);
  const ownWork = !values.work;
  const base = values.work ?? (await mkdtemp(join(tmpdir(), 'cowvol-bench-')));
  const work = join(base, impl);
  await mkdir(work, { recursive: true });
  const ctx = makeContext(scale, work, Number(values.rep), values['cpu-prof-measure'] ? resolve(values['cpu-prof-measure']) : undefined);
  const shared = existsSync(join(work, 'ready'));
  if (!shared) {
    // Not a prepared shared setup: start from an empty directory.
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { recursive: true });
    settle();
  }
  const t0 = now();
  let result;
  try {
    result = await fn(ctx);
  } finally {
    if (ownWork) await rm(base, { recursive: true, force: true });
  }
  const maxRssKiB = process.resourceUsage().maxRSS;
  emit({
    scenario: id,
    impl,
    rep: ctx.rep,
    ...result,
    extra: { ...ctx.extra, ...(result.extra ?? {}) },
    maxRssKiB,
    childMaxRssKiB: ctx.childRss.length ? Math.max(...ctx.childRss) : undefined,
    peakRssKiB: Math.max(maxRssKiB, ...ctx.childRss),
    totalSeconds: (now() - t0) / 1000,
  });
}

main().catch((err) => {
  process.stderr.write(`scenario failed: ${err?.stack ?? err}\n`);
  process.exit(1);
});
