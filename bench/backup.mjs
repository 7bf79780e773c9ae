#!/usr/bin/env node
// The backup benchmark: restic (S3 backend) and `cowvol backup push` to the
// same RADOS Gateway, in one run, on the same volume: a full backup, then an
// incremental after a share of the 4 MiB chunks changed. A benchmark, not a
// test: no speed is asserted, a missed target never fails the run
// (bench/README.md "The backup benchmark"; the recorded figures:
// docs/PERFORMANCE.md "Backups").
//
//   node bench/backup.mjs [--quick] [--mib 1024] [--changed-pct 5] [--dir DIR] [--json]
//
// The S3 endpoint is the cluster of the environment (COWVOL_TEST_S3=1 and
// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, as .ci/run
// exports them), or one started here with test/ceph/start.sh and stopped at
// the end. Each tool gets its own bucket. Per backup:
//   wall       process start to exit
//   uploaded   the sum of the sizes of the bucket's objects after, less before
//              (what the store holds more: data, indexes, manifests)
//   peak RSS   the process's maximum resident set (/usr/bin/time -f %M)
// The change: `--changed-pct` of the volume's 4 MiB chunks (evenly spread,
// a fixed step) are overwritten whole with new random bytes through
// `cowvol write`, so "changed data" is that many chunks × 4 MiB.
import { parseArgs } from 'node:util';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { S3ObjectStore } from '@cowvol/backup';
import { MiB, fmtBytes, fmtNum, fmtRatio, now, permutationStep, permBlock } from './lib/common.mjs';
import { cowvol, run, which } from './lib/nbd-servers.mjs';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    mib: { type: 'string' },
    'changed-pct': { type: 'string', default: '5' },
    dir: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const CHUNK_BYTES = 4 * MiB;
const sizeBytes = Number(values.mib ?? (values.quick ? '64' : '1024')) * MiB;
const changedPct = Number(values['changed-pct']);
const log = values.json ? (s) => process.stderr.write(`${s}\n`) : (s) => process.stdout.write(`${s}\n`);
const CLI = fileURLToPath(new URL('../packages/cli/bin/run.js', import.meta.url));
const CEPH = fileURLToPath(new URL('../test/ceph/', import.meta.url));
/** Targets of the issue "Off-machine backups": cowvol ÷ restic, or uploaded ÷ changed data. */
const TARGETS = { incrementalUploadedPerChanged: 1.1, incrementalWallVsRestic: 0.5, fullWallVsRestic: 1.5 };

/** The tools this bench needs; under CI a missing one fails the run, elsewhere the bench is skipped. */
function checkTools() {
  const missing = ['restic', 'ceph-mon', 'radosgw'].filter((t) => !which(t));
  if (!which('/usr/bin/time')) missing.push('/usr/bin/time');
  if (missing.length === 0) return true;
  const msg = `bench/backup.mjs: ${missing.join(', ')} not found (Debian: apt-get install restic time ceph-mon ceph-osd ceph-mgr radosgw ceph-common)`;
  if (process.env.CI === 'true') throw new Error(msg);
  log(`${msg}; skipped`);
  return false;
}

/** The S3 endpoint and credentials: the environment's cluster, or one started under `work`. */
async function s3Endpoint(work) {
  const e = process.env;
  if (e.COWVOL_TEST_S3 === '1' && e.AWS_ENDPOINT_URL && e.AWS_ACCESS_KEY_ID && e.AWS_SECRET_ACCESS_KEY) {
    return { endpoint: e.AWS_ENDPOINT_URL, accessKeyId: e.AWS_ACCESS_KEY_ID, secretAccessKey: e.AWS_SECRET_ACCESS_KEY, stop: async () => undefined };
  }
  const dir = join(work, 'ceph');
  log('starting a Ceph cluster (test/ceph/start.sh)');
  const stop = async () => void (await run('bash', [join(CEPH, 'stop.sh'), dir]).catch(() => undefined));
  try {
    await run('bash', [join(CEPH, 'start.sh'), dir]);
  } catch (err) {
    await stop();
    throw err;
  }
  const vars = Object.fromEntries([...(await readFile(join(dir, 'env'), 'utf8')).matchAll(/^export ([A-Z_0-9]+)=(.*)$/gm)].map((m) => [m[1], m[2]]));
  return { endpoint: vars.AWS_ENDPOINT_URL, accessKeyId: vars.AWS_ACCESS_KEY_ID, secretAccessKey: vars.AWS_SECRET_ACCESS_KEY, stop };
}

function bucketStore(s3, bucket) {
  return new S3ObjectStore({
    url: `s3://${bucket}`,
    endpoint: s3.endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
}

/** Bytes and objects the bucket holds. */
async function bucketBytes(s3, bucket) {
  const store = bucketStore(s3, bucket);
  let bytes = 0;
  let objects = 0;
  try {
    for await (const o of store.list('')) {
      bytes += o.sizeBytes;
      objects++;
    }
  } finally {
    store.close();
  }
  return { bytes, objects };
}

/** Runs `cmd args` under /usr/bin/time: wall seconds (start to exit) and peak RSS bytes. Rejects on a non-zero exit. */
function timed(cmd, args, env) {
  return new Promise((resolve, reject) => {
    const t0 = now();
    let out = '';
    let err = '';
    const child = spawn('/usr/bin/time', ['-f', 'BENCH_MAXRSS_KIB=%M', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = (now() - t0) / 1000;
      const rss = /BENCH_MAXRSS_KIB=(\d+)/.exec(err);
      if (code !== 0) reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim().slice(-2000) || out.trim().slice(-2000)}`));
      else resolve({ seconds, peakRssBytes: rss ? Number(rss[1]) * 1024 : undefined, stdout: out });
    });
  });
}

/** A volume of incompressible bytes, every chunk different, adopted by cowvol, with snapshot `full`. */
async function makeVolume(work) {
  const path = join(work, 'vol.img');
  const fh = await open(path, 'w');
  for (let o = 0; o < sizeBytes; o += MiB) await fh.write(randomBytes(MiB), 0, MiB, o);
  await fh.datasync();
  await fh.close();
  await cowvol(['create', path, '--adopt']);
  await cowvol(['snapshot', 'create', path, 'full']);
  return path;
}

/** Overwrites `changedPct` % of the 4 MiB chunks (a fixed permutation step) through cowvol, then takes snapshot `incr`. */
async function changeVolume(work, vol) {
  const nChunks = sizeBytes / CHUNK_BYTES;
  const count = Math.max(1, Math.round((nChunks * changedPct) / 100));
  const step = permutationStep(nChunks);
  const input = join(work, 'chunk.bin');
  for (let i = 0; i < count; i++) {
    await writeFile(input, randomBytes(CHUNK_BYTES));
    await cowvol(['write', vol, '--offset', String(permBlock(i, step, nChunks) * CHUNK_BYTES), '--input', input, '--no-progress']);
  }
  await rm(input);
  await cowvol(['snapshot', 'create', vol, 'incr']);
  return { changedChunks: count, changedBytes: count * CHUNK_BYTES };
}

/** One backup by one tool: wall, peak RSS, bytes the bucket grew by. */
async function measure(s3, bucket, cmd, args, env) {
  const before = await bucketBytes(s3, bucket);
  const r = await timed(cmd, args, env);
  const after = await bucketBytes(s3, bucket);
  return { seconds: r.seconds, peakRssBytes: r.peakRssBytes, uploadedBytes: after.bytes - before.bytes, objectsAdded: after.objects - before.objects };
}

/** restic on the volume file (the live volume, which equals the snapshot just taken). */
function resticTool(work, s3, bucket) {
  const env = {
    RESTIC_REPOSITORY: `s3:${s3.endpoint}/${bucket}`,
    RESTIC_PASSWORD: 'cowvol-bench',
    AWS_ACCESS_KEY_ID: s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
    AWS_DEFAULT_REGION: 'us-east-1',
    RESTIC_CACHE_DIR: join(work, 'restic-cache'),
  };
  return {
    name: 'restic',
    bucket,
    init: () => timed('restic', ['init'], env),
    backup: (vol) => measure(s3, bucket, 'restic', ['backup', '--quiet', '--host', 'bench', vol], env),
  };
}

/** `cowvol backup push` of the volume's snapshots, when this build has the command. */
function cowvolTool(work, s3, bucket) {
  const help = spawnSync(process.execPath, [CLI, 'backup', 'push', '--help'], { encoding: 'utf8' });
  if (help.status !== 0) return undefined;
  const keyFile = join(work, 'cowvol.key');
  const url = `s3://${bucket}/repo`;
  const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: 'us-east-1' };
  const store = ['--key-file', keyFile, '--endpoint', s3.endpoint, '--path-style'];
  return {
    name: 'cowvol',
    bucket,
    init: async () => {
      await timed(process.execPath, [CLI, 'backup', 'key-gen', keyFile], env);
      await timed(process.execPath, [CLI, 'backup', 'init', url, ...store], env);
    },
    backup: (vol, snapshot) => measure(s3, bucket, process.execPath, [CLI, 'backup', 'push', vol, snapshot, '--to', url, ...store, '--no-progress'], env),
  };
}

async function main() {
  if (!checkTools()) return;
  const work = await mkdtemp(join(values.dir ?? tmpdir(), 'cowvol-backupbench-'));
  let s3;
  try {
    s3 = await s3Endpoint(work);
    const loadBefore = loadavg();
    log(`backup benchmark: ${fmtBytes(sizeBytes)} volume, ${changedPct} % of 4 MiB chunks changed, S3 ${s3.endpoint}, load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')}`);
    const tag = randomBytes(4).toString('hex');
    const tools = [resticTool(work, s3, `bench-restic-${tag}`)];
    const cv = cowvolTool(work, s3, `bench-cowvol-${tag}`);
    if (cv === undefined) log('cowvol: `cowvol backup push` is not in this build; no cowvol row');
    else tools.push(cv);
    for (const t of tools) {
      const store = bucketStore(s3, t.bucket);
      await store.createContainer();
      store.close();
      await t.init();
    }
    const vol = await makeVolume(work);
    const results = {};
    for (const t of tools) {
      results[t.name] = { full: await t.backup(vol, 'full') };
      log(`  ${t.name.padEnd(7)} full         ${results[t.name].full.seconds.toFixed(2)} s, ${fmtBytes(results[t.name].full.uploadedBytes)} uploaded`);
    }
    const change = await changeVolume(work, vol);
    for (const t of tools) {
      results[t.name].incremental = await t.backup(vol, 'incr');
      log(`  ${t.name.padEnd(7)} incremental  ${results[t.name].incremental.seconds.toFixed(2)} s, ${fmtBytes(results[t.name].incremental.uploadedBytes)} uploaded`);
    }
    const loadAfter = loadavg();
    const verdicts = judge(results, change);
    printTable(results, change, verdicts);
    const doc = {
      kind: 'backup',
      date: new Date().toISOString(),
      sizeBytes,
      changedPct,
      change,
      machine: machine(),
      loadAverage: { before: loadBefore, after: loadAfter },
      results,
      verdicts,
    };
    const resultsDir = fileURLToPath(new URL('results/', import.meta.url));
    await mkdir(resultsDir, { recursive: true });
    await writeFile(join(resultsDir, `backup-${doc.date.replace(/[:.]/g, '-')}.json`), `${JSON.stringify(doc, null, 2)}\n`);
    if (values.json) process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
  } finally {
    await s3?.stop();
    await rm(work, { recursive: true, force: true });
  }
}

/** The targets, where both sides were measured. */
function judge(results, change) {
  const c = results.cowvol;
  const r = results.restic;
  const verdict = (value, target) => ({ value, target, verdict: value === undefined ? '-' : value <= target ? 'PASS' : 'MISS' });
  const out = {};
  if (c !== undefined) out.incrementalUploadedPerChanged = verdict(c.incremental.uploadedBytes / change.changedBytes, TARGETS.incrementalUploadedPerChanged);
  if (c !== undefined && r !== undefined) {
    out.incrementalWallVsRestic = verdict(c.incremental.seconds / r.incremental.seconds, TARGETS.incrementalWallVsRestic);
    out.fullWallVsRestic = verdict(c.full.seconds / r.full.seconds, TARGETS.fullWallVsRestic);
  }
  return out;
}

function printTable(results, change, verdicts) {
  log(`\nchanged: ${change.changedChunks} chunks of 4 MiB = ${fmtBytes(change.changedBytes)}`);
  const head = ['tool', 'backup', 'wall s', 'uploaded', 'uploaded / changed', 'peak RSS'];
  const body = [];
  for (const [name, r] of Object.entries(results)) {
    for (const phase of ['full', 'incremental']) {
      const m = r[phase];
      body.push([name, phase, fmtNum(m.seconds), fmtBytes(m.uploadedBytes), phase === 'incremental' ? fmtRatio(m.uploadedBytes / change.changedBytes) : '-', fmtBytes(m.peakRssBytes)]);
    }
  }
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (row) => `| ${row.map((c, i) => c.padEnd(widths[i])).join(' | ')} |`;
  log(line(head));
  log(`|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`);
  for (const row of body) log(line(row));
  for (const [name, v] of Object.entries(verdicts)) log(`${name}: ${fmtRatio(v.value)} (target <= ${v.target}x) ${v.verdict}`);
}

function machine() {
  const git = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim();
  return {
    cpus: `${cpus().length} x ${cpus()[0]?.model ?? '?'}`,
    memBytes: totalmem(),
    node: process.version,
    commit: git || process.env.BENCH_COMMIT,
    restic: spawnSync('restic', ['version'], { encoding: 'utf8' }).stdout.trim(),
  };
}

await main();
