import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { CowvolError, mulberry32 } from '@cowvol/journal';
import { Volume } from './volume.js';

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

// The seeded PRNG is the journal package's (one implementation for every suite); re-exported here for runStress's users.
export { mulberry32 };

/**
 * A unit of content the model tracks: the 32-bit tag filling one slot of a
 * shared block, or one whole block of the run region. Each unit has one
 * owner who writes it sequentially, so at any instant its content is its
 * last completed value or, while a write is in flight, possibly that
 * write's value.
 */
interface Unit {
  done: number;
  inflight: number | undefined;
}

/**
 * Stress runner: writers on overlapping blocks (every slot writer touches
 * every shared block, so COWs of one block race constantly), a multi-block
 * writer, snapshot create/delete churn and snapshot readers, all on one
 * Volume for `seconds`; every read is verified against the model; then the
 * volume is closed, reopened, verified whole and checked.
 */
export async function runStress(options: StressOptions): Promise<StressSummary> {
  const writers = Math.max(1, Math.min(MAX_WRITERS, Math.floor(options.writers)));
  const slotBytes = BLOCK_BYTES / MAX_WRITERS; // 64 bytes: room for MAX_WRITERS slots
  const sharedBlocks = options.sharedBlocks ?? 128;
  const runBlocks = options.runBlocks ?? 64;
  const readers = options.readers ?? 4;
  const maxSnapshots = options.maxSnapshots ?? 8;
  const totalBlocks = sharedBlocks + runBlocks;
  const random = mulberry32(options.seed);
  const own = options.directory === undefined;
  const dir = options.directory ?? (await mkdtemp(join(tmpdir(), 'cowvol-stress-')));
  const path = join(dir, 'stress.img');
  const summary: StressSummary = {
    seed: options.seed,
    dataMode: options.dataMode ?? 'ordered',
    seconds: options.seconds,
    writers,
    ops: 0,
    writes: 0,
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
  const mismatch = (what: string): void => {
    summary.mismatches += 1;
    if (summary.mismatchDetails.length < 10) summary.mismatchDetails.push(`seed ${options.seed}: ${what}`);
  };

  // units[w][b]: slot w of shared block b; runUnits[b]: block sharedBlocks+b.
  const units: Unit[][] = Array.from({ length: writers }, () => Array.from({ length: sharedBlocks }, () => ({ done: 0, inflight: undefined })));
  const runUnits: Unit[] = Array.from({ length: runBlocks }, () => ({ done: 0, inflight: undefined }));
  const snapshotModels = new Map<string, { slots: Array<Array<[number, number | undefined]>>; runs: Array<[number, number | undefined]> }>();
  const capture = () => ({
    slots: units.map((row) => row.map((u) => [u.done, u.inflight] as [number, number | undefined])),
    runs: runUnits.map((u) => [u.done, u.inflight] as [number, number | undefined]),
  });
  const allowed = (m: [number, number | undefined], tag: number): boolean => tag === m[0] || tag === m[1];

  /** Verifies `data` (blocks first..) against expected unit values. */
  const verify = (what: string, first: number, data: Buffer, expect: (w: number, b: number) => [number, number | undefined], expectRun: (b: number) => [number, number | undefined]): void => {
    for (let i = 0; i < data.length / BLOCK_BYTES; i++) {
      const b = first + i;
      if (b < sharedBlocks) {
        for (let w = 0; w < writers; w++) {
          const tag = data.readUInt32LE(i * BLOCK_BYTES + w * slotBytes);
          if (!allowed(expect(w, b), tag)) mismatch(`${what}: block ${b} slot ${w} holds ${tag.toString(16)}, expected ${expect(w, b).map((x) => x?.toString(16)).join(' or ')}`);
        }
      } else {
        const tag = data.readUInt32LE(i * BLOCK_BYTES);
        if (!allowed(expectRun(b - sharedBlocks), tag)) mismatch(`${what}: run block ${b} holds ${tag.toString(16)}`);
      }
    }
  };

  try {
    let volume = await Volume.create(path, { sizeBytes: totalBlocks * BLOCK_BYTES, blockSizeBytes: BLOCK_BYTES, dataMode: options.dataMode ?? 'ordered' });
    const deadline = performance.now() + options.seconds * 1000;
    let seq = 0;
    let snapshotSeq = 0;
    const liveNames: string[] = [];
    const running = () => performance.now() < deadline;

    const slotWriter = async (w: number): Promise<void> => {
      const r = mulberry32(options.seed * 7919 + w);
      while (running()) {
        const b = Math.floor(r() * sharedBlocks);
        const tag = ((w + 1) << 24) | (++seq & 0xffffff);
        const buf = Buffer.alloc(slotBytes);
        for (let i = 0; i < slotBytes; i += 4) buf.writeUInt32LE(tag >>> 0, i);
        const unit = units[w]![b]!;
        unit.inflight = tag >>> 0;
        await volume.write(b * BLOCK_BYTES + w * slotBytes, buf);
        unit.done = tag >>> 0;
        unit.inflight = undefined;
        summary.writes += 1;
      }
    };
    const runWriter = async (): Promise<void> => {
      const r = mulberry32(options.seed * 104729);
      while (running()) {
        const start = Math.floor(r() * runBlocks);
        const n = 1 + Math.floor(r() * Math.min(16, runBlocks - start));
        const tag = (0xff << 24) | (++seq & 0xffffff);
        const buf = Buffer.alloc(n * BLOCK_BYTES);
        for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE(tag >>> 0, i);
        for (let i = 0; i < n; i++) runUnits[start + i]!.inflight = tag >>> 0;
        await volume.write((sharedBlocks + start) * BLOCK_BYTES, buf);
        for (let i = 0; i < n; i++) {
          runUnits[start + i]!.done = tag >>> 0;
          runUnits[start + i]!.inflight = undefined;
        }
        summary.writes += 1;
      }
    };
    const churn = async (): Promise<void> => {
      while (running()) {
        await new Promise((resolve) => setTimeout(resolve, 20 + random() * 80));
        if (liveNames.length < maxSnapshots && (liveNames.length === 0 || random() < 0.6)) {
          const name = `st${++snapshotSeq}`;
          // Values possible at the instant of the snapshot: what completed, or what was in flight.
          const model = capture();
          await volume.createSnapshot(name);
          snapshotModels.set(name, model);
          liveNames.push(name);
          summary.snapshotsCreated += 1;
        } else if (liveNames.length > 0) {
          const [name] = liveNames.splice(Math.floor(random() * liveNames.length), 1);
          await volume.deleteSnapshot(name!);
          snapshotModels.delete(name!);
          summary.snapshotsDeleted += 1;
        }
      }
    };
    const reader = async (k: number): Promise<void> => {
      const r = mulberry32(options.seed * 31 + k);
      while (running()) {
        const first = Math.floor(r() * totalBlocks);
        const n = 1 + Math.floor(r() * Math.min(8, totalBlocks - first));
        if (liveNames.length > 0 && r() < 0.75) {
          const name = liveNames[Math.floor(r() * liveNames.length)]!;
          const model = snapshotModels.get(name)!;
          try {
            const data = await volume.readSnapshot(name, first * BLOCK_BYTES, n * BLOCK_BYTES);
            verify(`snapshot ${name}`, first, data, (w, b) => model.slots[w]![b]!, (b) => model.runs[b]!);
          } catch (err) {
            if (!(err instanceof CowvolError && err.code === 'SNAPSHOT_NOT_FOUND')) throw err; // deleted meanwhile
          }
        } else {
          // Live: a unit may hold any value its owner wrote between the last
          // write completed before the read began and the last one issued
          // before it ended (owners write sequentially; tags carry a rising
          // sequence number in their low 24 bits).
          const before = capture();
          const data = await volume.read(first * BLOCK_BYTES, n * BLOCK_BYTES);
          const after = capture();
          const inWindow = (tag: number, m0: [number, number | undefined], m1: [number, number | undefined]): boolean => {
            if (tag === m0[0]) return true;
            const lo = m0[0] & 0xffffff;
            const hi = (m1[1] ?? m1[0]) & 0xffffff;
            const owner = (m1[1] ?? m1[0]) >>> 24;
            return tag >>> 24 === owner && (tag & 0xffffff) > lo && (tag & 0xffffff) <= hi;
          };
          for (let i = 0; i < n; i++) {
            const b = first + i;
            if (b < sharedBlocks) {
              for (let w = 0; w < writers; w++) {
                const tag = data.readUInt32LE(i * BLOCK_BYTES + w * slotBytes);
                if (!inWindow(tag, before.slots[w]![b]!, after.slots[w]![b]!)) mismatch(`live: block ${b} slot ${w} holds ${tag.toString(16)}, outside the values written during the read`);
              }
            } else {
              const tag = data.readUInt32LE(i * BLOCK_BYTES);
              if (!inWindow(tag, before.runs[b - sharedBlocks]!, after.runs[b - sharedBlocks]!)) mismatch(`live: run block ${b} holds ${tag.toString(16)}`);
            }
          }
        }
        summary.reads += 1;
      }
    };
    const progress = setInterval(() => options.log?.(`stress: ${summary.writes} writes, ${summary.reads} reads, ${volume.stats.cows} cows, ${volume.stats.pendingWaits} pending waits, snapshots +${summary.snapshotsCreated}/-${summary.snapshotsDeleted}, mismatches ${summary.mismatches}`), 1000);
    try {
      await Promise.all([
        ...Array.from({ length: writers }, (_, w) => slotWriter(w)),
        runWriter(),
        churn(),
        ...Array.from({ length: readers }, (_, k) => reader(k)),
      ]);
    } finally {
      clearInterval(progress);
    }
    summary.cows = volume.stats.cows;
    summary.pendingWaits = volume.stats.pendingWaits;
    summary.maxPendingWaitMs = Math.round(volume.stats.maxPendingWaitMs * 10) / 10;
    summary.readRechecks = volume.stats.readRechecks;

    // Quiescent: reopen and verify everything exactly.
    await volume.close();
    volume = await Volume.open(path);
    try {
      const all = await volume.read(0, totalBlocks * BLOCK_BYTES);
      verify('live after reopen', 0, all, (w, b) => [units[w]![b]!.done, undefined], (b) => [runUnits[b]!.done, undefined]);
      for (const name of liveNames) {
        const model = snapshotModels.get(name)!;
        verify(`snapshot ${name} after reopen`, 0, await volume.readSnapshot(name, 0, totalBlocks * BLOCK_BYTES), (w, b) => model.slots[w]![b]!, (b) => model.runs[b]!);
      }
      const report = await volume.check();
      summary.finalCheck = report.status;
      if (report.status !== 'clean') mismatch(`check after reopen: ${report.status} ${JSON.stringify(report.corruptions.slice(0, 3))}`);
    } finally {
      await volume.close();
    }
    summary.ops = summary.writes + summary.reads + summary.snapshotsCreated + summary.snapshotsDeleted;
    return summary;
  } finally {
    if (own) await rm(dir, { recursive: true, force: true });
  }
}

/** One line for logs: `stress seed=… ops=… … mismatches=0`. */
export function formatStressSummary(s: StressSummary): string {
  return `stress seed=${s.seed} dataMode=${s.dataMode} seconds=${s.seconds} writers=${s.writers} ops=${s.ops} writes=${s.writes} reads=${s.reads} cows=${s.cows} pendingWaits=${s.pendingWaits} maxPendingWaitMs=${s.maxPendingWaitMs} readRechecks=${s.readRechecks} snapshotsCreated=${s.snapshotsCreated} snapshotsDeleted=${s.snapshotsDeleted} finalCheck=${s.finalCheck} mismatches=${s.mismatches}`;
}
