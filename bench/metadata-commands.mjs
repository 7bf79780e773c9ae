#!/usr/bin/env node
// Metadata commands against mapped blocks: `cowvol snapshot list`, `cowvol
// info` and `cowvol snapshot create`, end to end (process start included),
// on a volume with one empty snapshot and on one whose snapshot maps
// `--blocks` store blocks (a whole-volume first write after the snapshot).
// Their cost must be in snapshots, not in mapped blocks: the target is
// mapped ÷ empty ≤ 1.2 for each command (docs/PERFORMANCE.md, "Metadata
// commands"; space accounting kept, docs/ARCHITECTURE.md §15.3). Then the
// CLI start: `node -e 0` (Node's own start, the floor), `cowvol --version`,
// `snapshot list` and `info` on the empty volume, interleaved, median of
// --reps, wall and CPU (target ≤ 120 ms wall for `snapshot list`;
// docs/PERFORMANCE.md "CLI start"). --start-only skips the mapped volume.
//
//   node bench/metadata-commands.mjs [--blocks 1048576] [--reps 10] [--dir DIR] [--repo DIR] [--start-only]
//
// --repo runs another checkout's build (its CLI and library): the "before"
// column of docs/PERFORMANCE.md. Volumes are made with that checkout's
// library, so each tree reads the format it writes.
import { parseArgs } from 'node:util';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
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
    'start-only': { type: 'boolean', default: false },
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

/** Wall and CPU milliseconds of one `node <nodeArgs>` run (with `env` added to the environment); fails loudly if it does. */
function timedNode(nodeArgs, env = {}) {
  const argv = haveTime ? [GNU_TIME, '-f', 'cpu %U %S', process.execPath, ...nodeArgs] : [process.execPath, ...nodeArgs];
  const t0 = now();
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: { ...process.env, ...env } });
  const ms = now() - t0;
  if (r.status !== 0) throw new Error(`node ${nodeArgs.join(' ')} exited ${r.status}: ${r.stderr}`);
  const cpu = /cpu ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr);
  return { ms, cpuMs: cpu ? (Number(cpu[1]) + Number(cpu[2])) * 1000 : NaN };
}

/** Wall and CPU milliseconds of one `cowvol <args>` run. */
const timed = (args, env = {}) => timedNode([cli, ...args], env);

const t0 = now();
const empty = await makeVolume('empty.img', false);
const mapped = values['start-only'] ? undefined : await makeVolume('mapped.img', true);
log(`volumes made in ${((now() - t0) / 1000).toFixed(1)} s: ${blocks} blocks of ${BS} bytes${mapped ? "; mapped.img's s0 maps every one" : ''}`);
const out = (line = '') => process.stdout.write(`${line}\n`);

if (mapped !== undefined) {
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
  out(`metadata commands: ${blocks} mapped blocks (${(blocks * BS) / MiB} MiB) vs none, median of ${reps}, wall ms (process start included)${values.repo ? `, tree ${repo}` : ''}`);
  out('| command | empty volume | mapped volume | mapped ÷ empty | target ≤ 1.2× | CPU ms, empty | CPU ms, mapped | CPU mapped ÷ empty |');
  out('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of results) {
    out(
      `| \`${r.command}\` | ${r.emptyMs.toFixed(0)} | ${r.mappedMs.toFixed(0)} | ${r.ratio.toFixed(2)}× | ${r.ratio <= 1.2 ? 'PASS' : 'MISS'} | ${r.emptyCpuMs.toFixed(0)} | ${r.mappedCpuMs.toFixed(0)} | ${r.cpuRatio.toFixed(2)}× |`,
    );
  }
  out();
}

// CLI start: every run of the five interleaved, so the machine's load hits them alike.
const starts = [
  { name: '`node -e 0` (the floor)', run: () => timedNode(['-e', '0']) },
  { name: '`cowvol --version`', run: () => timed(['--version']) },
  { name: '`cowvol snapshot list`', run: () => timed(['snapshot', 'list', empty]), targetMs: 120 },
  { name: '`cowvol info`', run: () => timed(['info', empty]) },
  // The same command through oclif, as every command started before the lean start (docs/ARCHITECTURE.md §1).
  { name: '`cowvol snapshot list` through oclif (`COWVOL_LEAN_START=0`)', run: () => timed(['snapshot', 'list', empty], { COWVOL_LEAN_START: '0' }) },
];
const startTimes = starts.map(() => []);
for (let i = 0; i < reps; i++) starts.forEach((s, j) => startTimes[j].push(s.run()));
const floor = { ms: median(startTimes[0].map((t) => t.ms)), cpuMs: median(startTimes[0].map((t) => t.cpuMs)) };
const bundled = existsSync(join(repo, 'packages/cli/dist/bundle/cowvol.js')) ? 'bundled CLI (packages/cli/dist/bundle)' : 'unbundled CLI';
out(`CLI start: ${bundled}, empty volume, median of ${reps}, interleaved${values.repo ? `, tree ${repo}` : ''}`);
if (process.env.NODE_EXTRA_CA_CERTS || process.env.NODE_OPTIONS) {
  out(`(NODE_EXTRA_CA_CERTS or NODE_OPTIONS is set: Node loads them at every start, in the floor too; \`env -u NODE_EXTRA_CA_CERTS\` measures without)`);
}
out('| command | wall ms | − floor | CPU ms | − floor | target |');
out('| --- | --- | --- | --- | --- | --- |');
starts.forEach((s, j) => {
  const ms = median(startTimes[j].map((t) => t.ms));
  const cpuMs = median(startTimes[j].map((t) => t.cpuMs));
  const target = s.targetMs === undefined ? '' : `wall ≤ ${s.targetMs} ms: ${ms <= s.targetMs ? 'PASS' : 'MISS'}`;
  const over = (a, b) => (j === 0 ? '' : (a - b).toFixed(0));
  out(`| ${s.name} | ${ms.toFixed(0)} | ${over(ms, floor.ms)} | ${cpuMs.toFixed(0)} | ${over(cpuMs, floor.cpuMs)} | ${target} |`);
});
await rm(work, { recursive: true, force: true });
