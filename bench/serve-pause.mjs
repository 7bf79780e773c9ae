#!/usr/bin/env node
// The snapshot-create pause under load (docs/ARCHITECTURE.md §4.4, the
// freeze): fio (nbd engine, libnbd) writes 4 KiB random blocks at queue
// depth 32 into `live` of `cowvol serve` while a snapshot is created every
// 0.5 s through the server's control channel (the `snapshot.create` method
// `cowvol snapshot create` sends; speaking it directly keeps the CLI's
// process start out of the cadence). A benchmark, not a test: the target
// (p99 ≤ 50 ms) is reported, never enforced (docs/PERFORMANCE.md "Serving
// over NBD").
//
//   node bench/serve-pause.mjs [--quick] [--mib 256] [--creates 40] [--dir DIR] [--json]
//
// Per create, from fio's per-I/O log (--write_lat_log, unix-epoch ms):
//   gap    the longest interval between two consecutive write completions
//          that overlaps the create (what a writer sees as "nothing moved")
//   wait   the longest completion latency of a write in flight during it
//   create the control request's round trip (request sent → answer read),
//          which holds the freeze and everything around it
import { parseArgs } from 'node:util';
import { mkdtemp, readFile, readdir, rm, mkdir, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { MiB } from './lib/common.mjs';
import { which, versionOf, cowvol, startCowvol } from './lib/nbd-servers.mjs';
import { controlRequest } from '../packages/nbd/dist/index.js';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    mib: { type: 'string' },
    creates: { type: 'string' },
    dir: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const sizeBytes = Number(values.mib ?? (values.quick ? '32' : '256')) * MiB;
const creates = Number(values.creates ?? (values.quick ? '8' : '40'));
const INTERVAL_MS = 500;
const WARMUP_MS = 1000;
const TARGET_P99_MS = 50;
const log = values.json ? (s) => process.stderr.write(`${s}\n`) : (s) => process.stdout.write(`${s}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function checkTools() {
  if (which('fio')) return true;
  const msg = 'bench/serve-pause.mjs: fio not found (Debian/Ubuntu: apt-get install fio)';
  if (process.env.CI === 'true') throw new Error(msg);
  log(`${msg}; skipped`);
  return false;
}

/** fio through the nbd engine, time based, logging every write: { done, logPrefix }. */
function startFio(uri, work, runtimeSeconds) {
  const logPrefix = join(work, 'lat');
  const args = [
    '--name=pause',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=32',
    '--time_based',
    `--runtime=${runtimeSeconds}`,
    `--write_lat_log=${logPrefix}`,
    '--log_avg_msec=0',
    '--log_unix_epoch=1',
    '--output-format=json',
  ];
  const child = spawn(which('fio'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const done = new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out.slice(out.indexOf('{')))) : reject(new Error(`fio exited ${code}: ${err.trim()}`))));
  });
  return { done, logPrefix };
}

/** Completions from fio's clat log: [{ doneMs, latMs }] sorted by completion (the log's time is unix-epoch ms, latency ns). */
async function completions(work) {
  const name = (await readdir(work)).find((n) => n.startsWith('lat_clat') && n.endsWith('.log'));
  if (!name) throw new Error('fio wrote no clat log');
  const rows = [];
  for (const line of (await readFile(join(work, name), 'utf8')).split('\n')) {
    const f = line.split(',');
    if (f.length < 2) continue;
    rows.push({ doneMs: Number(f[0]), latMs: Number(f[1]) / 1e6 });
  }
  return rows.sort((a, b) => a.doneMs - b.doneMs);
}

/** Per create, the longest completion gap overlapping it and the longest wait of a write in flight during it. */
function pauses(createsDone, rows) {
  return createsDone.map((c) => {
    let gapMs = 0;
    for (let i = 1; i < rows.length; i++) {
      const from = rows[i - 1].doneMs;
      const to = rows[i].doneMs;
      if (to >= c.startMs && from <= c.endMs) gapMs = Math.max(gapMs, to - from);
    }
    let waitMs = 0;
    for (const r of rows) if (r.doneMs >= c.startMs && r.doneMs - r.latMs <= c.endMs) waitMs = Math.max(waitMs, r.latMs);
    return { ...c, createMs: c.endMs - c.startMs, gapMs, waitMs };
  });
}

function quantile(sorted, q) {
  return sorted.length === 0 ? undefined : sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s[s.length - 1] };
}

async function main() {
  if (!checkTools()) return;
  const work = await mkdtemp(join(values.dir ?? tmpdir(), 'cowvol-pausebench-'));
  try {
    const loadBefore = loadavg();
    log(
      `snapshot-create pause: ${sizeBytes / MiB} MiB volume, ${creates} creates every ${INTERVAL_MS} ms under fio 4 KiB random writes qd 32; load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')}`,
    );
    const vol = join(work, 'v.img');
    await cowvol(['create', vol, '--size', `${sizeBytes / MiB}M`]);
    const server = await startCowvol(vol);
    const runtimeSeconds = Math.ceil((WARMUP_MS + creates * INTERVAL_MS * 2) / 1000) + 2;
    const fio = startFio(server.uri('live'), work, runtimeSeconds);
    const createsDone = [];
    let fioDoc;
    try {
      await sleep(WARMUP_MS);
      for (let i = 0; i < creates; i++) {
        const tick = Date.now();
        const startMs = Date.now();
        await controlRequest(vol, 'snapshot.create', { name: `p${i}` });
        createsDone.push({ name: `p${i}`, startMs, endMs: Date.now() });
        await sleep(Math.max(0, tick + INTERVAL_MS - Date.now()));
      }
    } finally {
      fioDoc = await fio.done;
    }
    await server.stop();
    const rows = await completions(work);
    const lastCreate = createsDone[createsDone.length - 1];
    if (rows.length === 0 || rows[rows.length - 1].doneMs < lastCreate.endMs) throw new Error('fio stopped before the last create: raise the runtime');
    const per = pauses(createsDone, rows);
    const gap = stats(per.map((p) => p.gapMs));
    const wait = stats(per.map((p) => p.waitMs));
    const create = stats(per.map((p) => p.createMs));
    const all = stats(rows.map((r) => r.latMs));
    const iops = fioDoc.jobs[0].write.iops;
    const verdict = gap.p99 <= TARGET_P99_MS ? 'PASS' : 'MISS';
    const loadAfter = loadavg();
    const fmt = (s) => `p50 ${s.p50.toFixed(1)} ms, p99 ${s.p99.toFixed(1)} ms, max ${s.max.toFixed(1)} ms`;
    log(`\n${per.length} creates, ${rows.length} writes (${iops.toFixed(0)} IOPS); load average after ${loadAfter.map((x) => x.toFixed(2)).join(' ')}`);
    log(`  longest completion gap per create (the pause writers see): ${fmt(gap)}  target p99 <= ${TARGET_P99_MS} ms: ${verdict}`);
    log(`  longest wait of a write in flight per create:              ${fmt(wait)}`);
    log(`  create round trip (control request, the freeze inside):    ${fmt(create)}`);
    log(`  every write's completion latency:                          ${fmt(all)}`);
    const doc = {
      kind: 'serve-pause',
      date: new Date().toISOString(),
      sizeBytes,
      creates,
      intervalMs: INTERVAL_MS,
      machine: {
        cpus: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`,
        node: process.version,
        fio: versionOf(which('fio')),
        commit: spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim(),
      },
      loadAverage: { before: loadBefore, after: loadAfter },
      writes: rows.length,
      iops,
      gapMs: gap,
      waitMs: wait,
      createMs: create,
      writeLatencyMs: all,
      targetP99Ms: TARGET_P99_MS,
      verdict,
      perCreate: per,
    };
    const resultsDir = fileURLToPath(new URL('results/', import.meta.url));
    await mkdir(resultsDir, { recursive: true });
    await writeFile(join(resultsDir, `serve-pause-${doc.date.replace(/[:.]/g, '-')}.json`), `${JSON.stringify(doc, null, 2)}\n`);
    if (values.json) process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
