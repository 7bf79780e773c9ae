#!/usr/bin/env node
// The NBD benchmark: fio (nbd engine, libnbd) through `cowvol serve` and
// through `qemu-nbd` on the same machine, in one run, same workloads, same
// data. A benchmark, not a test: no speed is asserted, a missed target never
// fails the run (bench/README.md "The NBD benchmark"; the recorded figures
// and their reading: docs/PERFORMANCE.md "Serving over NBD").
//
//   node bench/nbd.mjs [--quick] [--mib 256] [--reps 3] [--dir DIR] [--json] [--cpu-prof DIR]
//                      [--groups raw,cow-rand,cow-seq] [--impl cowvol|qemu] [--memory DIR]
//   --memory DIR: each cowvol server writes where its memory went (V8 heap,
//   Buffers, the rest of RSS) to DIR at exit; printed after the table.
//
// Groups, each on a fresh copy of one filled image, per implementation:
//   raw       cowvol (adopted, no snapshot) vs qemu-nbd -f raw: overwrite
//   cow-rand  after `cowvol snapshot create` vs qcow2 after `qemu-img snapshot -c`:
//             4 KiB random first writes (every block COWed once)
//   cow-seq   the same with 1 MiB sequential first writes, then reads of the
//             snapshot (every block of it now differs from live): `snapshot/s1`
//             vs `qemu-nbd -l s1`
import { parseArgs } from 'node:util';
import { copyFile, mkdtemp, open, rm, mkdir, writeFile, readdir, readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { loadavg, tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { KiB, MiB, median, fmtNum, fmtRatio, fmtBytes } from './lib/common.mjs';
import { which, versionOf, run, cowvol, startCowvol, startQemuNbd, runFio } from './lib/nbd-servers.mjs';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    mib: { type: 'string' },
    reps: { type: 'string' },
    dir: { type: 'string' },
    json: { type: 'boolean', default: false },
    'cpu-prof': { type: 'string' },
    groups: { type: 'string' },
    memory: { type: 'string' },
    impl: { type: 'string' },
  },
});
const sizeBytes = Number(values.mib ?? (values.quick ? '16' : '256')) * MiB;
const reps = Number(values.reps ?? (values.quick ? '1' : '3'));
const log = values.json ? (s) => process.stderr.write(`${s}\n`) : (s) => process.stdout.write(`${s}\n`);

const RAND_WRITE = { rw: 'randwrite', bsBytes: 4 * KiB, depth: 32 };
const SEQ_WRITE = { rw: 'write', bsBytes: MiB, depth: 4 };
const RAND_READ = { rw: 'randread', bsBytes: 4 * KiB, depth: 32 };
const SEQ_READ = { rw: 'read', bsBytes: MiB, depth: 4 };

/** The measured cells, in run order within their group; target = cowvol ÷ qemu-nbd. */
const CELLS = [
  { id: 'raw-rand-write', group: 'raw', job: RAND_WRITE, peer: 'raw', target: 0.7 },
  { id: 'raw-seq-write', group: 'raw', job: SEQ_WRITE, peer: 'raw', target: 0.7 },
  { id: 'raw-rand-read', group: 'raw', job: RAND_READ, peer: 'raw' },
  { id: 'cow-rand-write', group: 'cow-rand', job: RAND_WRITE, peer: 'qcow2', target: 1.0 },
  { id: 'cow-seq-write', group: 'cow-seq', job: SEQ_WRITE, peer: 'qcow2', target: 0.8 },
  { id: 'snap-rand-read', group: 'cow-seq', job: RAND_READ, peer: 'qcow2 -l', target: 0.8, snapshot: true },
  { id: 'snap-seq-read', group: 'cow-seq', job: SEQ_READ, peer: 'qcow2 -l', target: 0.8, snapshot: true },
];
const ALL_GROUPS = ['raw', 'cow-rand', 'cow-seq'];
/** `--groups`: run only these groups (one profile per workload); `--impl`: one implementation only (no ratio). */
const GROUPS = values.groups ? values.groups.split(',') : ALL_GROUPS;
for (const g of GROUPS) if (!ALL_GROUPS.includes(g)) throw new Error(`unknown group ${g}: one of ${ALL_GROUPS.join(', ')}`);
const IMPLS = values.impl ? [values.impl] : ['cowvol', 'qemu'];
for (const i of IMPLS) if (i !== 'cowvol' && i !== 'qemu') throw new Error(`unknown implementation ${i}: cowvol or qemu`);

function describe(job) {
  const kind = { randwrite: 'random write', write: 'sequential write', randread: 'random read', read: 'sequential read' }[job.rw];
  return `${fmtBytes(job.bsBytes)} ${kind}, qd ${job.depth}`;
}

/** The peers this bench needs; under CI a missing one fails the run, elsewhere the bench is skipped. */
function checkTools() {
  const missing = ['fio', 'qemu-nbd', 'qemu-img'].filter((t) => !which(t));
  if (missing.length === 0) return true;
  const msg = `bench/nbd.mjs: ${missing.join(', ')} not found (Debian/Ubuntu: apt-get install fio qemu-utils)`;
  if (process.env.CI === 'true') throw new Error(msg);
  log(`${msg}; skipped`);
  return false;
}

/** The filled image every group starts from: incompressible bytes, every block allocated. */
async function makeBase(work) {
  const path = join(work, 'base.img');
  const fh = await open(path, 'w');
  const chunk = randomBytes(MiB);
  for (let o = 0; o < sizeBytes; o += MiB) {
    chunk.writeUInt32LE(o / MiB, 0);
    await fh.write(chunk, 0, MiB, o);
  }
  await fh.datasync();
  await fh.close();
  return path;
}

async function runCells(server, group, exportOf, rss) {
  const out = {};
  for (const cell of CELLS.filter((c) => c.group === group && (c.snapshot ?? false) === (exportOf === 'snapshot'))) {
    const cpuBefore = server.cpuSeconds();
    const r = await runFio(server.uri(exportOf === 'snapshot' ? 'snapshot/s1' : 'live'), cell.job);
    out[cell.id] = { ...r, serverCpuSeconds: server.cpuSeconds() - cpuBefore };
  }
  const stopped = await server.stop();
  rss.push(stopped.peakRssBytes);
  return out;
}

/** One group on cowvol: adopt a copy of the base, snapshot it (COW groups), serve, run the group's cells. */
async function groupCowvol(work, base, group) {
  const vol = join(work, 'cv.img');
  await copyFile(base, vol);
  await cowvol(['create', vol, '--adopt']);
  if (group !== 'raw') await cowvol(['snapshot', 'create', vol, 's1']);
  const rss = [];
  const options = (exportOf) => ({
    ...(values['cpu-prof'] ? { cpuProfDir: values['cpu-prof'] } : {}),
    ...(values.memory ? { memoryOut: join(values.memory, `${group}-${exportOf}-${Date.now()}.json`) } : {}),
  });
  const server = await startCowvol(vol, options('live'));
  const results = await runCells(server, group, 'live', rss);
  if (group === 'cow-seq') Object.assign(results, await runCells(await startCowvol(vol, options('snapshot')), group, 'snapshot', rss));
  await rm(vol, { force: true });
  await rm(`${vol}.cowvol`, { recursive: true, force: true });
  return { results, rss };
}

/** One group on qemu-nbd: a raw copy, or a qcow2 conversion with internal snapshot s1 (read back with -l). */
async function groupQemu(work, base, group) {
  const qemuImg = which('qemu-img');
  const rss = [];
  let image = join(work, 'q.img');
  if (group === 'raw') await copyFile(base, image);
  else {
    image = join(work, 'q.qcow2');
    await run(qemuImg, ['convert', '-f', 'raw', '-O', 'qcow2', base, image]);
    await run(qemuImg, ['snapshot', '-c', 's1', image]);
  }
  const format = group === 'raw' ? 'raw' : 'qcow2';
  const results = await runCells(await startQemuNbd(image, { format }), group, 'live', rss);
  if (group === 'cow-seq') Object.assign(results, await runCells(await startQemuNbd(image, { format, snapshot: 's1' }), group, 'snapshot', rss));
  await rm(image, { force: true });
  return { results, rss };
}

/** reps × groups × {cowvol, qemu-nbd}, the implementations alternating first. */
async function measure(work, base) {
  const runs = Object.fromEntries(CELLS.map((c) => [c.id, { cowvol: [], qemu: [] }]));
  for (let rep = 0; rep < reps; rep++) {
    for (const group of GROUPS) {
      const order = (rep % 2 === 0 ? ['cowvol', 'qemu'] : ['qemu', 'cowvol']).filter((i) => IMPLS.includes(i));
      for (const impl of order) {
        const { results, rss } = impl === 'cowvol' ? await groupCowvol(work, base, group) : await groupQemu(work, base, group);
        const peak = Math.max(...rss.filter((x) => x !== undefined));
        for (const [id, r] of Object.entries(results)) {
          const mibps = r.ioBytes / MiB / r.seconds;
          runs[id][impl].push({ ...r, mibps, peakRssBytes: peak });
          const cpu = `server CPU ${r.serverCpuSeconds.toFixed(2)} s`;
          log(`  rep ${rep + 1}/${reps} ${id.padEnd(15)} ${impl.padEnd(6)} ${fmtNum(mibps)} MiB/s (${r.seconds.toFixed(2)} s, fio's own ${fmtNum(r.fioMiBps)} MiB/s, ${cpu})`);
        }
      }
    }
  }
  return runs;
}

function summarize(runs) {
  return CELLS.filter((cell) => GROUPS.includes(cell.group)).map((cell) => {
    const cv = median(runs[cell.id].cowvol.map((r) => r.mibps));
    const q = median(runs[cell.id].qemu.map((r) => r.mibps));
    const ratio = cv !== undefined && q !== undefined ? cv / q : undefined;
    // Per repetition, cowvol ÷ the qemu-nbd run of the same repetition: the spread the median hides.
    const paired = runs[cell.id].qemu.length === 0 ? [] : runs[cell.id].cowvol.map((r, i) => r.mibps / runs[cell.id].qemu[i].mibps).sort((a, b) => a - b);
    const verdict = cell.target === undefined || ratio === undefined ? '-' : ratio >= cell.target ? 'PASS' : 'MISS';
    const iops = cell.job.bsBytes === 4 * KiB ? (x) => (x === undefined ? undefined : (x * MiB) / cell.job.bsBytes) : () => undefined;
    const rssOf = (impl) => median(runs[cell.id][impl].map((r) => r.peakRssBytes));
    // Server CPU seconds per GiB moved: how much of a core each server needs for the same work.
    const cpuPerGiB = (impl) => median(runs[cell.id][impl].map((r) => r.serverCpuSeconds / (r.ioBytes / (1024 * MiB))));
    return {
      id: cell.id,
      workload: describe(cell.job),
      peer: `qemu-nbd ${cell.peer}`,
      cowvolMiBps: cv,
      qemuMiBps: q,
      cowvolIops: iops(cv),
      qemuIops: iops(q),
      ratio,
      pairedRatioRange: paired.length ? [paired[0], paired[paired.length - 1]] : undefined,
      target: cell.target,
      verdict,
      cowvolCpuSecondsPerGiB: cpuPerGiB('cowvol'),
      qemuCpuSecondsPerGiB: cpuPerGiB('qemu'),
      cowvolPeakRssBytes: rssOf('cowvol'),
      qemuPeakRssBytes: rssOf('qemu'),
    };
  });
}

function printTable(rows) {
  const head = ['cell', 'workload', 'peer', 'cowvol MiB/s', 'qemu MiB/s', 'cv/qemu', 'per rep', 'target', 'verdict', 'CPU s/GiB cowvol', 'CPU s/GiB qemu', 'RSS cowvol', 'RSS qemu'];
  const body = rows.map((r) => [
    r.id,
    r.workload,
    r.peer,
    fmtNum(r.cowvolMiBps) + (r.cowvolIops ? ` (${fmtNum(r.cowvolIops)} IOPS)` : ''),
    fmtNum(r.qemuMiBps) + (r.qemuIops ? ` (${fmtNum(r.qemuIops)} IOPS)` : ''),
    fmtRatio(r.ratio),
    r.pairedRatioRange ? `${fmtRatio(r.pairedRatioRange[0])}-${fmtRatio(r.pairedRatioRange[1])}` : '-',
    r.target === undefined ? '-' : `>=${r.target}x`,
    r.verdict,
    fmtNum(r.cowvolCpuSecondsPerGiB),
    fmtNum(r.qemuCpuSecondsPerGiB),
    fmtBytes(r.cowvolPeakRssBytes),
    fmtBytes(r.qemuPeakRssBytes),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (row) => `| ${row.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  log(line(head));
  log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const row of body) log(line(row));
}

/** Where each cowvol server's memory was at its highest RSS (--memory): V8 heap, Buffers, the rest. */
async function printMemory(dir) {
  const mib = (n) => `${(n / MiB).toFixed(1)}M`;
  log('\ncowvol serve memory at its highest RSS (process.memoryUsage, sampled every 100 ms):');
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.json')).sort()) {
    const { atPeakRss: m, maxRssBytes } = JSON.parse(await readFile(join(dir, name), 'utf8'));
    const other = m.rss - m.heapTotal - m.arrayBuffers;
    log(
      `  ${name.replace(/-\d+\.json$/, '').padEnd(18)} peak RSS ${mib(maxRssBytes)}; sampled RSS ${mib(m.rss)} = V8 heap ${mib(m.heapTotal)} (used ${mib(m.heapUsed)}) + Buffers ${mib(m.arrayBuffers)} + other native ${mib(other)}`,
    );
  }
}

function machine() {
  const git = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
  return {
    cpus: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`,
    memBytes: totalmem(),
    node: process.version,
    commit: git || process.env.BENCH_COMMIT,
    fio: versionOf(which('fio')),
    qemuNbd: versionOf(which('qemu-nbd')),
  };
}

async function main() {
  if (!checkTools()) return;
  const work = await mkdtemp(join(values.dir ?? tmpdir(), 'cowvol-nbdbench-'));
  if (values['cpu-prof']) await mkdir(values['cpu-prof'], { recursive: true });
  if (values.memory) await mkdir(values.memory, { recursive: true });
  try {
    const loadBefore = loadavg();
    log(`NBD benchmark: ${fmtBytes(sizeBytes)} images, ${reps} rep(s), load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')}`);
    const base = await makeBase(work);
    const runs = await measure(work, base);
    const rows = summarize(runs);
    const loadAfter = loadavg();
    log(`\nfio through NBD, MiB/s from fio start to exit (connect, I/O, final FLUSH, disconnect); medians of ${reps}; load average after ${loadAfter.map((x) => x.toFixed(2)).join(' ')}`);
    printTable(rows);
    if (values.memory) await printMemory(values.memory);
    const doc = { kind: 'nbd', date: new Date().toISOString(), sizeBytes, reps, machine: machine(), loadAverage: { before: loadBefore, after: loadAfter }, rows, runs };
    const resultsDir = fileURLToPath(new URL('results/', import.meta.url));
    await mkdir(resultsDir, { recursive: true });
    await writeFile(join(resultsDir, `nbd-${doc.date.replace(/[:.]/g, '-')}.json`), `${JSON.stringify(doc, null, 2)}\n`);
    if (values.json) process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
