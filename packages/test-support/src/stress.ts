import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { CowvolError, assert } from '@cowvol/base';
import { Volume } from '@cowvol/cow-core';
import { mulberry32 } from './prng.js';
import { ContentModel, UNIT_BYTES, checkUnits, fillTag } from './stress-model.js';

/** Options of {@link runStress}. All bounded. */
export interface StressOptions {
  /** Wall time of the traffic phase. */
  seconds: number;
  /** Concurrent slot writers (1–64): each owns one slot of every block of the shared region. */
  writers: number;
  /** Seed of every random choice; printed in the summary so a run can be replayed. */
  seed: number;
  /** Concurrent snapshot readers. Default 4. */
  readers?: number;
  /** Blocks shared by the slot writers. Default 128. */
  sharedBlocks?: number;
  /** Writers of random 512-byte-aligned, block-unaligned multi-block writes over the whole volume. Default 4. */
  overlapWriters?: number;
  /** Blocks owned by the multi-block writer (whole-block runs). Default 64. */
  runBlocks?: number;
  /** Most snapshots kept at once (older ones are deleted at random). Default 8. */
  maxSnapshots?: number;
  /** Data mode of the volume. Default `ordered`. */
  dataMode?: 'ordered' | 'journal';
  /** Where to put the volume (a new temporary folder, removed afterwards, when absent). */
  directory?: string;
  /** Progress lines (one per second) go here when given. */
  log?: (line: string) => void;
}

/** What a stress run did and found. */
export interface StressSummary {
  seed: number;
  dataMode: string;
  seconds: number;
  writers: number;
  ops: number;
  writes: number;
  /** Of `writes`, those of the overlapping writers. */
  overlapWrites: number;
  reads: number;
  cows: number;
  pendingWaits: number;
  maxPendingWaitMs: number;
  readRechecks: number;
  snapshotsCreated: number;
  snapshotsDeleted: number;
  /** Reads whose content the model does not allow. Must be 0. */
  mismatches: number;
  /** The first few mismatches, in words. */
  mismatchDetails: string[];
  /** `check()` status after the run and a reopen. */
  finalCheck: string;
}

const BLOCK_BYTES = 4096;
const MAX_WRITERS = 64;
const UNITS_PER_BLOCK = BLOCK_BYTES / UNIT_BYTES; // 64: one slot per slot writer
const SECTOR_UNITS = 512 / UNIT_BYTES;
/** Longest overlapping write, in 512-byte sectors (5 blocks: always multi-block when long). */
const MAX_OVERLAP_SECTORS = 40;

/** What every traffic task of one run shares. */
interface Run {
  options: StressOptions;
  summary: StressSummary;
  model: ContentModel;
  volume: Volume;
  sharedBlocks: number;
  runBlocks: number;
  totalBlocks: number;
  liveNames: string[];
  /** Per snapshot: the tags each unit may hold (captured when it was created). */
  snapshotModels: Map<string, number[][]>;
  running: () => boolean;
  mismatch: (what: string) => void;
}

/**
 * Stress runner: every kind of writer a real client has, on one Volume for
 * `seconds` — slot writers (each owns one 64-byte slot of every shared
 * block, so COWs of one block race constantly), a multi-block writer,
 * writers of random unaligned multi-block writes that overlap each other
 * and every other writer — with snapshot create/delete churn and snapshot
 * readers; every read is checked unit by unit against the content model
 * (stress-model.ts: each 64-byte unit, hence each 512-byte sector, holds the
 * bytes of one write that covered it, the last one where they did not
 * overlap in time); then the volume is closed, reopened, verified whole and
 * checked.
 */
export async function runStress(options: StressOptions): Promise<StressSummary> {
  const own = options.directory === undefined;
  const dir = options.directory ?? (await mkdtemp(join(tmpdir(), 'cowvol-stress-')));
  const path = join(dir, 'stress.img');
  try {
    const run = await startRun(options, path);
    const writers = run.summary.writers;
    const progress = setInterval(() => options.log?.(progressLine(run)), 1000);
    try {
      await Promise.all([
        ...Array.from({ length: writers }, (_, w) => slotWriter(run, w)),
        runWriter(run),
        ...Array.from({ length: options.overlapWriters ?? 4 }, (_, k) => overlapWriter(run, k)),
        churn(run),
        ...Array.from({ length: options.readers ?? 4 }, (_, k) => reader(run, k)),
      ]);
    } finally {
      clearInterval(progress);
    }
    const stats = run.volume.stats;
    Object.assign(run.summary, { cows: stats.cows, pendingWaits: stats.pendingWaits, maxPendingWaitMs: Math.round(stats.maxPendingWaitMs * 10) / 10, readRechecks: stats.readRechecks });
    await run.volume.close();
    await verifyAfterReopen(run, path);
    const s = run.summary;
    s.ops = s.writes + s.reads + s.snapshotsCreated + s.snapshotsDeleted;
    return s;
  } finally {
    if (own) await rm(dir, { recursive: true, force: true });
  }
}

async function startRun(options: StressOptions, path: string): Promise<Run> {
  const sharedBlocks = options.sharedBlocks ?? 128;
  const runBlocks = options.runBlocks ?? 64;
  const totalBlocks = sharedBlocks + runBlocks;
  const summary: StressSummary = {
    seed: options.seed,
    dataMode: options.dataMode ?? 'ordered',
    seconds: options.seconds,
    writers: Math.max(1, Math.min(MAX_WRITERS, Math.floor(options.writers))),
    ops: 0,
    writes: 0,
    overlapWrites: 0,
    reads: 0,
    cows: 0,
    pendingWaits: 0,
    maxPendingWaitMs: 0,
    readRechecks: 0,
    snapshotsCreated: 0,
    snapshotsDeleted: 0,
    mismatches: 0,
    mismatchDetails: [],
    finalCheck: 'not run',
  };
  const volume = await Volume.create(path, { sizeBytes: totalBlocks * BLOCK_BYTES, blockSizeBytes: BLOCK_BYTES, dataMode: options.dataMode ?? 'ordered' });
  const deadline = performance.now() + options.seconds * 1000;
  return {
    options,
    summary,
    model: new ContentModel(totalBlocks * UNITS_PER_BLOCK),
    volume,
    sharedBlocks,
    runBlocks,
    totalBlocks,
    liveNames: [],
    snapshotModels: new Map(),
    running: () => performance.now() < deadline,
    mismatch: (what) => {
      summary.mismatches += 1;
      if (summary.mismatchDetails.length < 10) summary.mismatchDetails.push(`seed ${options.seed}: ${what}`);
    },
  };
}

/** Writes `units` units from `firstUnit` with a fresh tag, recorded in the model around the call. */
async function writeUnits(run: Run, firstUnit: number, units: number): Promise<void> {
  const w = run.model.begin(firstUnit, units);
  const buf = Buffer.allocUnsafe(units * UNIT_BYTES);
  fillTag(buf, w.tag);
  await run.volume.write(firstUnit * UNIT_BYTES, buf);
  run.model.end(w);
  run.summary.writes += 1;
}

async function slotWriter(run: Run, w: number): Promise<void> {
  const r = mulberry32(run.options.seed * 7919 + w);
  while (run.running()) {
    const b = Math.floor(r() * run.sharedBlocks);
    await writeUnits(run, b * UNITS_PER_BLOCK + w, 1);
  }
}

async function runWriter(run: Run): Promise<void> {
  const r = mulberry32(run.options.seed * 104729);
  while (run.running()) {
    const start = Math.floor(r() * run.runBlocks);
    const n = 1 + Math.floor(r() * Math.min(16, run.runBlocks - start));
    await writeUnits(run, (run.sharedBlocks + start) * UNITS_PER_BLOCK, n * UNITS_PER_BLOCK);
  }
}

/** Random 512-byte-aligned, block-unaligned writes anywhere: they overlap each other, the slot writers and the run writer. */
async function overlapWriter(run: Run, k: number): Promise<void> {
  const r = mulberry32(run.options.seed * 15485863 + k);
  const totalSectors = run.totalBlocks * (BLOCK_BYTES / 512);
  while (run.running()) {
    const sectors = 1 + Math.floor(r() * MAX_OVERLAP_SECTORS);
    const first = Math.floor(r() * (totalSectors - sectors + 1));
    await writeUnits(run, first * SECTOR_UNITS, sectors * SECTOR_UNITS);
    run.summary.overlapWrites += 1;
  }
}

async function churn(run: Run): Promise<void> {
  const random = mulberry32(run.options.seed);
  let snapshotSeq = 0;
  const maxSnapshots = run.options.maxSnapshots ?? 8;
  while (run.running()) {
    await new Promise((resolve) => setTimeout(resolve, 20 + random() * 80));
    if (run.liveNames.length < maxSnapshots && (run.liveNames.length === 0 || random() < 0.6)) {
      const name = `st${++snapshotSeq}`;
      // A snapshot is a read spanning the create: what a unit may hold is fixed when it returns.
      const read = run.model.beginRead();
      await run.volume.createSnapshot(name);
      const allowed = Array.from({ length: run.model.totalUnits }, (_, u) => run.model.allowed(u, read.start));
      run.model.finishRead(read);
      run.snapshotModels.set(name, allowed);
      run.liveNames.push(name);
      run.summary.snapshotsCreated += 1;
    } else if (run.liveNames.length > 0) {
      const [name] = run.liveNames.splice(Math.floor(random() * run.liveNames.length), 1);
      assert(name !== undefined, 'stress: a name is removed from a non-empty list');
      await run.volume.deleteSnapshot(name);
      run.snapshotModels.delete(name);
      run.summary.snapshotsDeleted += 1;
    }
  }
}

/** What each unit of live snapshot `name` may hold (fixed when it was created). */
function snapshotModel(run: Run, name: string): number[][] {
  const allowed = run.snapshotModels.get(name);
  assert(allowed !== undefined, `stress: live snapshot ${name} has a model`);
  return allowed;
}

async function reader(run: Run, k: number): Promise<void> {
  const r = mulberry32(run.options.seed * 31 + k);
  while (run.running()) {
    const first = Math.floor(r() * run.totalBlocks);
    const n = 1 + Math.floor(r() * Math.min(8, run.totalBlocks - first));
    const firstUnit = first * UNITS_PER_BLOCK;
    if (run.liveNames.length > 0 && r() < 0.75) {
      const name = run.liveNames[Math.floor(r() * run.liveNames.length)]!;
      const allowed = snapshotModel(run, name);
      try {
        const data = await run.volume.readSnapshot(name, first * BLOCK_BYTES, n * BLOCK_BYTES);
        for (const bad of checkUnits(data, firstUnit, (u) => allowed[u]!)) run.mismatch(`snapshot ${name}: ${bad}`);
      } catch (err) {
        if (!(err instanceof CowvolError && err.code === 'SNAPSHOT_NOT_FOUND')) throw err; // deleted meanwhile
      }
    } else {
      const read = run.model.beginRead();
      const data = await run.volume.read(first * BLOCK_BYTES, n * BLOCK_BYTES);
      for (const bad of checkUnits(data, firstUnit, (u) => run.model.allowed(u, read.start))) run.mismatch(`live: ${bad}`);
      run.model.finishRead(read);
    }
    run.summary.reads += 1;
  }
}

/** Quiescent: reopen and verify the live volume and every snapshot whole, then `check()`. */
async function verifyAfterReopen(run: Run, path: string): Promise<void> {
  const volume = await Volume.open(path);
  try {
    const read = run.model.beginRead();
    const all = await volume.read(0, run.totalBlocks * BLOCK_BYTES);
    for (const bad of checkUnits(all, 0, (u) => run.model.allowed(u, read.start))) run.mismatch(`live after reopen: ${bad}`);
    run.model.finishRead(read);
    for (const name of run.liveNames) {
      const allowed = snapshotModel(run, name);
      const data = await volume.readSnapshot(name, 0, run.totalBlocks * BLOCK_BYTES);
      for (const bad of checkUnits(data, 0, (u) => allowed[u]!)) run.mismatch(`snapshot ${name} after reopen: ${bad}`);
    }
    // The kept space counters (owned, shared) equal a recount of the maps, live and committed.
    for (const problem of (await volume.checkConsistency()).problems) run.mismatch(`consistency after reopen: ${problem}`);
    const report = await volume.check();
    run.summary.finalCheck = report.status;
    if (report.status !== 'clean') run.mismatch(`check after reopen: ${report.status} ${JSON.stringify(report.corruptions.slice(0, 3))}`);
  } finally {
    await volume.close();
  }
}

function progressLine(run: Run): string {
  const s = run.summary;
  const st = run.volume.stats;
  return `stress: ${s.writes} writes (${s.overlapWrites} overlapping), ${s.reads} reads, ${st.cows} cows, ${st.pendingWaits} pending waits, snapshots +${s.snapshotsCreated}/-${s.snapshotsDeleted}, mismatches ${s.mismatches}`;
}

/** One line for logs: `stress seed=… ops=… … mismatches=0`. */
export function formatStressSummary(s: StressSummary): string {
  return `stress seed=${s.seed} dataMode=${s.dataMode} seconds=${s.seconds} writers=${s.writers} ops=${s.ops} writes=${s.writes} overlapWrites=${s.overlapWrites} reads=${s.reads} cows=${s.cows} pendingWaits=${s.pendingWaits} maxPendingWaitMs=${s.maxPendingWaitMs} readRechecks=${s.readRechecks} snapshotsCreated=${s.snapshotsCreated} snapshotsDeleted=${s.snapshotsDeleted} finalCheck=${s.finalCheck} mismatches=${s.mismatches}`;
}
