#!/usr/bin/env node
// Metadata commands against mapped blocks: `cowvol snapshot list`, `cowvol
// info` and `cowvol snapshot create`, end to end (process start included),
// on a volume with one empty snapshot and on one whose snapshot maps
// `--blocks` store blocks (a whole-volume first write after the snapshot).
// Their cost must be in snapshots, not in mapped blocks: the target is
// mapped ÷ empty ≤ 1.2 for each command (docs/PERFORMANCE.md, "Metadata
// commands"; space accounting kept, docs/ARCHITECTURE.md §15.3). Also prints
// the CLI start: `snapshot list` and `info` wall on the empty volume, median
// of --reps (target ≤ 120 ms for `snapshot list`).
//
//   node bench/metadata-commands.mjs [--blocks 1048576] [--reps 10] [--dir DIR] [--repo DIR]
//
// --repo runs another checkout's build (its CLI and library): the "before"
// column of docs/PERFORMANCE.md. Volumes are made with that checkout's
// library, so each tree reads the format it writes.
import { parseArgs } from 'node:util';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { MiB, median, now } from './lib/common.mjs';

const { values } = parseArgs({
  args: process.argv.slice(2).filter((a) => a !== '--'),
  options: {
    blocks: { type: 'string', default: String(1024 * 1024) },
    reps: { type: 'string', default: '10' },
    dir: { type: 'string' },
    repo: { type: 'string' },
  },
});
const BS = 4096;
const blocks = Number(values.blocks);
const reps = Math.max(1, Number(values.reps));
const repo = resolve(values.repo ?? join(dirname(fileURLToPath(import.meta.url)), '..'));
const cli = join(repo, 'packages/cli/bin/run.js');
const { Volume } = await import(pathToFileURL(join(repo, 'packages/cow-core/dist/index.js')).href);
const work = await mkdtemp(join(values.dir ?? tmpdir(), 'cowvol-metacmd-'));
const log = (line) => process.stderr.write(`${line}\n`);

/** A volume of `blocks` blocks with snapshot `s0`; with `mapped`, every block then overwritten once (each COWed into s0). */
async function makeVolume(name, mapped) {
  const path = join(work, name);
  const v = await Volume.create(path, { sizeBytes: blocks * BS, blockSizeBytes: BS });
  try {
    await v.createSnapshot('s0');
    if (mapped) {
      const chunk = Buffer.alloc(4 * MiB, 0xa5);
      for (let o = 0; o < blocks * BS; o += chunk.length) await v.write(o, chunk.subarray(0, Math.min(chunk.length, blocks * BS - o)));
      await v.flush();
    }
  } finally {
    await v.close();
  }
  return path;
}

/** GNU time, for the CPU time of each run (user + system: less disturbed by a busy machine than wall time); wall only without it. */
const GNU_TIME = '/usr/bin/time';
const haveTime = spawnSync(GNU_TIME, ['-f', '%U', 'true']).status === 0;

/** Wall and CPU milliseconds of one `cowvol <args>` run; fails loudly if it does. */
function timed(args) {
  const argv = haveTime ? [GNU_TIME, '-f', 'cpu %U %S', process.execPath, cli, ...args] : [process.execPath, cli, ...args];
  const t0 = now();
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  const ms = now() - t0;
  if (r.status !== 0) throw new Error(`cowvol ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  const cpu = /cpu ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr);
  return { ms, cpuMs: cpu ? (Number(cpu[1]) + Number(cpu[2])) * 1000 : NaN };
}

const t0 = now();
const empty = await makeVolume('empty.img', false);
const mapped = await makeVolume('mapped.img', true);
log(`volumes made in ${((now() - t0) / 1000).toFixed(1)} s: ${blocks} blocks of ${BS} bytes; mapped.img's s0 maps every one`);

const commands = [
  { name: 'snapshot list', args: (vol) => ['snapshot', 'list', vol, '--json'] },
  { name: 'info', args: (vol) => ['info', vol, '--json'] },
  { name: 'snapshot create', args: (vol, i) => ['snapshot', 'create', vol, `bench-${i}`] },
];
const results = [];
for (const c of commands) {
  const times = { empty: [], mapped: [] };
  for (let i = 0; i < reps; i++) {
    // Alternate the volumes so load on the machine hits both alike.
    times.empty.push(timed(c.args(empty, i)));
    times.mapped.push(timed(c.args(mapped, i)));
  }
  const e = median(times.empty.map((t) => t.ms));
  const m = median(times.mapped.map((t) => t.ms));
  const ec = median(times.empty.map((t) => t.cpuMs));
  const mc = median(times.mapped.map((t) => t.cpuMs));
  results.push({ command: c.name, emptyMs: e, mappedMs: m, ratio: m / e, emptyCpuMs: ec, mappedCpuMs: mc, cpuRatio: mc / ec });
}

const out = (line = '') => process.stdout.write(`${line}\n`);
out(`metadata commands: ${blocks} mapped blocks (${(blocks * BS) / MiB} MiB) vs none, median of ${reps}, wall ms (process start included)${values.repo ? `, tree ${repo}` : ''}`);
out('| command | empty volume | mapped volume | mapped ÷ empty | target ≤ 1.2× | CPU ms, empty | CPU ms, mapped | CPU mapped ÷ empty |');
out('| --- | --- | --- | --- | --- | --- | --- | --- |');
for (const r of results) {
  out(
    `| \`${r.command}\` | ${r.emptyMs.toFixed(0)} | ${r.mappedMs.toFixed(0)} | ${r.ratio.toFixed(2)}× | ${r.ratio <= 1.2 ? 'PASS' : 'MISS'} | ${r.emptyCpuMs.toFixed(0)} | ${r.mappedCpuMs.toFixed(0)} | ${r.cpuRatio.toFixed(2)}× |`,
  );
}
for (const r of results.filter((x) => x.command !== 'snapshot create')) {
  const target = r.command === 'snapshot list' ? ` (target ≤ 120 ms: ${r.emptyMs <= 120 ? 'PASS' : 'MISS'})` : '';
  out(`CLI start: \`${r.command}\` on the empty volume ${r.emptyMs.toFixed(0)} ms wall, ${r.emptyCpuMs.toFixed(0)} ms CPU${target}`);
}
await rm(work, { recursive: true, force: true });
