#!/usr/bin/env node
// Many snapshots (docs/PERFORMANCE.md "Many snapshots"): `cowvol snapshot
// create` and `cowvol snapshot list --json`, end to end (process start
// included), offline and served (`cowvol serve`), on a volume with one
// snapshot and on one at the limit (`--snapshots`, default MAX_SNAPSHOTS:
// each create there is the last one that fits; an untimed delete makes room
// for the next rep). Target: create at the limit ≤ 1.2 × create at one
// snapshot; list O(snapshots). Also, from the library: the time to create
// the fixture's snapshots (per create), the process's RSS once they exist,
// and a first read of the oldest snapshot (its chain loads every newer map).
//
//   node bench/many-snapshots.mjs [--snapshots 65536] [--reps 5] [--dir DIR]
//
// --dir: where the volumes live (/dev/shm keeps the fixture's commits off the disk).
import { parseArgs } from 'node:util';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { median, now } from './lib/common.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { Volume, MAX_SNAPSHOTS } = await import(pathToFileURL(join(root, 'packages/cow-core/dist/index.js')).href);
const { values } = parseArgs({
  args: process.argv.slice(2).filter((a) => a !== '--'),
  options: { snapshots: { type: 'string', default: String(MAX_SNAPSHOTS) }, reps: { type: 'string', default: '5' }, dir: { type: 'string' } },
});
const BS = 4096;
const many = Number(values.snapshots);
const reps = Math.max(1, Number(values.reps));
const cli = join(root, 'packages/cli/bin/run.js');
const work = await mkdtemp(join(values.dir ?? tmpdir(), 'cowvol-many-'));
const log = (line) => process.stderr.write(`${line}\n`);
const out = (line = '') => process.stdout.write(`${line}\n`);

/** A volume of 256 blocks with `count` snapshots (block 0 written before the first); returns its path and what building it cost. */
async function makeVolume(name, count) {
  const path = join(work, name);
  const v = await Volume.create(path, { sizeBytes: 256 * BS, blockSizeBytes: BS });
  const cost = { perCreateMs: 0, rssBytes: 0, firstReadMs: 0 };
  try {
    await v.write(0, Buffer.alloc(BS, 1));
    const t0 = now();
    for (let i = 0; i < count; i++) {
      await v.createSnapshot(`s${i}`);
      if (i === 0) await v.write(0, Buffer.alloc(BS, 2));
      if (i % 8192 === 8191) log(`${name}: ${i + 1} snapshots, ${((now() - t0) / (i + 1)).toFixed(2)} ms per create`);
    }
    cost.perCreateMs = (now() - t0) / count;
    globalThis.gc?.();
    cost.rssBytes = process.memoryUsage().rss;
    const t1 = now();
    await v.readSnapshot('s0', 0, BS);
    cost.firstReadMs = now() - t1;
  } finally {
    await v.close();
  }
  return { path, ...cost };
}

/** Wall ms of one `cowvol <args>` run; fails loudly if it does. */
function timed(args) {
  const t0 = now();
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 30 });
  const ms = now() - t0;
  if (r.status !== 0) throw new Error(`cowvol ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return ms;
}

/** `cowvol serve <vol>` until `fn` resolves, then `cowvol stop`. */
async function served(vol, fn) {
  const child = spawn(process.execPath, [cli, 'serve', vol], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve, reject) => {
    child.stdout.once('data', resolve);
    child.once('exit', (code) => reject(new Error(`cowvol serve exited ${code}`)));
  });
  try {
    return await fn();
  } finally {
    timed(['stop', vol]);
  }
}

/** Median wall ms of create (then an untimed delete) and of list --json, interleaved over the two volumes. */
function measure(one, full) {
  const t = { createOne: [], createFull: [], listOne: [], listFull: [] };
  for (let i = 0; i < reps; i++) {
    for (const [vol, c, l] of [
      [one, t.createOne, t.listOne],
      [full, t.createFull, t.listFull],
    ]) {
      c.push(timed(['snapshot', 'create', vol, `bench-${i}`]));
      timed(['snapshot', 'delete', vol, `bench-${i}`]);
      l.push(timed(['snapshot', 'list', vol, '--json']));
    }
  }
  return Object.fromEntries(Object.entries(t).map(([k, v]) => [k, median(v)]));
}

const one = await makeVolume('one.img', 1);
log(`building ${many - 1} snapshots…`);
const full = await makeVolume('full.img', many - 1);
log(`fixture: ${full.perCreateMs.toFixed(2)} ms per library create; RSS ${(full.rssBytes / 2 ** 20).toFixed(0)} MiB; first read of the oldest ${full.firstReadMs.toFixed(0)} ms`);
const offline = measure(one.path, full.path);
const servedOne = await served(one.path, () => served(full.path, () => measure(one.path, full.path)));
out(`many snapshots: 1 vs ${many} (each create the ${many}th), median of ${reps}, wall ms (process start included)`);
out(`library, building ${many - 1}: ${full.perCreateMs.toFixed(2)} ms per create, RSS ${(full.rssBytes / 2 ** 20).toFixed(0)} MiB after; first read of the oldest: ${full.firstReadMs.toFixed(0)} ms`);
out('| command | where | 1 snapshot | at the limit | limit ÷ 1 |');
out('| --- | --- | --- | --- | --- |');
for (const [where, r] of [
  ['offline', offline],
  ['served', servedOne],
]) {
  out(
    `| \`snapshot create\` | ${where} | ${r.createOne.toFixed(0)} | ${r.createFull.toFixed(0)} | ${(r.createFull / r.createOne).toFixed(2)}× (target ≤ 1.2×: ${r.createFull / r.createOne <= 1.2 ? 'PASS' : 'MISS'}) |`,
  );
  out(`| \`snapshot list --json\` | ${where} | ${r.listOne.toFixed(0)} | ${r.listFull.toFixed(0)} | ${(r.listFull / r.listOne).toFixed(2)}× |`);
}
await rm(work, { recursive: true, force: true });
