#!/usr/bin/env node
// `node bench/run.mjs [--quick] [--only <ids>] [--reps N] [--dir DIR] [--keep] [--no-qemu]` (the engine part of `pnpm bench`, bench/all.mjs)
//
// Runs every scenario of bench/lib/catalog.mjs against cowvol (TypeScript API,
// in process), raw Node file I/O (the physical limit for a Node program) and
// qcow2 through qemu-img (when installed), each run in its own child process
// (bench/scenario.mjs), alternating implementations per repetition. Prints a
// table (medians, ratios, targets with PASS/MISS, cowvol peak RSS, cowvol's
// I/O counts) on stdout, progress on stderr, and writes every run to
// bench/results/<ISO timestamp>.json.
//
// Exit status: 0 when every run completed — a MISS is information, never a
// failure; 1 when a run crashed (so CI's --quick run catches a rotting suite).
import { parseArgs } from 'node:util';
import { spawn, spawnSync } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { cpus, hostname, platform, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CATALOG, IMPLS, RSS_LIMIT_MIB, selectScenarios, targetLabel } from './lib/catalog.mjs';
import { describeScale, scaleFor } from './lib/scale.mjs';
import { fmtBytes, fmtNum, fmtRatio, median, now } from './lib/common.mjs';
import { qemuInfo } from './lib/qemu.mjs';

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
const REPO_DIR = resolve(BENCH_DIR, '..');

const { values } = parseArgs({
  args: process.argv.slice(2).filter((a) => a !== '--'),
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    reps: { type: 'string' },
    dir: { type: 'string' },
    keep: { type: 'boolean', default: false },
    'no-qemu': { type: 'boolean', default: false },
    'no-json': { type: 'boolean', default: false },
  },
});

const scale = scaleFor(values.quick);
const reps = Math.max(1, Number(values.reps ?? scale.reps));
if (values['no-qemu']) process.env.BENCH_NO_QEMU = '1';
const qemu = qemuInfo();
const scenarios = selectScenarios(values.only);
if (scenarios.length === 0) {
  process.stderr.write(`no scenario matches --only ${values.only}; ids: ${CATALOG.map((s) => s.id).join(', ')}\n`);
  process.exit(2);
}

const log = (line) => process.stderr.write(`${line}\n`);
const out = (line = '') => process.stdout.write(`${line}\n`);

// The CLI rows time the bundled CLI. A bundle older than the dist it was built from (a `tsc -b` since, and no `pnpm build`)
// is one the bin refuses to run: it would start through oclif from dist/commands, about 150 ms slower, and the rows would
// time a start no user gets. So they rebuild it from the current dist first, as `pnpm build` does.
if (scenarios.some((s) => s.id.startsWith('8-'))) {
  const cli = join(REPO_DIR, 'packages/cli');
  for (const script of ['scripts/bundle.mjs', 'scripts/manifest.mjs']) {
    const r = spawnSync(process.execPath, [join(cli, script)], { cwd: cli, stdio: ['ignore', 'ignore', 'inherit'] });
    if (r.status !== 0) {
      process.stderr.write(`bench: ${script} failed (exit ${String(r.status)}); the CLI rows need the bundled CLI (pnpm build)\n`);
      process.exit(1);
    }
  }
}

function git(args) {
  const r = spawnSync('git', ['--no-optional-locks', ...args], { cwd: REPO_DIR, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

const startedAt = new Date();
// BENCH_COMMIT: for a run from an exported tree (git archive) that has no .git.
const commit = process.env.BENCH_COMMIT ?? git(['rev-parse', 'HEAD']);
const dirtyFiles = git(['status', '--porcelain', '--untracked-files=no']);
const machine = {
  cpu: cpus()[0]?.model,
  cores: cpus().length,
  totalmem: totalmem(),
  platform: platform(),
  release: release(),
  hostname: hostname(),
};

// --------------------------------------------------------------- header

out(`cowvol benchmark — ${values.quick ? 'QUICK' : 'FULL'} mode, ${startedAt.toISOString()}`);
out(`machine: ${machine.cpu} x${machine.cores}, ${fmtBytes(machine.totalmem)} RAM, ${machine.platform} ${machine.release}; node ${process.version}`);
out(`commit: ${commit ?? 'unknown'}${dirtyFiles ? ` (+ uncommitted changes in ${dirtyFiles.split('\n').length} tracked files)` : ''}`);
out(`qcow2 peer: ${qemu.available ? `${qemu.version}${qemu.stdbuf ? '' : ' (no stdbuf: qemu timings include process start)'}` : 'qemu-img not installed (or --no-qemu): qcow2 columns are "-"'}`);
out(describeScale(scale));
out(`scenarios: ${scenarios.map((s) => s.id).join(' ')}; ${reps} repetitions each, implementations alternating`);
out();

// ------------------------------------------------------------------ runs

const workBase = values.dir ? resolve(values.dir) : join(tmpdir(), `cowvol-bench-${process.pid}-${Date.now()}`);
const childTimeoutMs = (values.quick ? 5 : 60) * 60_000;
const runs = [];
let failures = 0;

function runChild(scenarioId, impl, rep, work) {
  const args = [join(BENCH_DIR, 'scenario.mjs'), scenarioId, impl, '--work', work, '--rep', String(rep)];
  if (values.quick) args.push('--quick');
  const env = { ...process.env };
  delete env.COWVOL_LOCK_CHECKS; // measure the production configuration
  return new Promise((resolvePromise) => {
    const t0 = now();
    const child = spawn(process.execPath, args, { cwd: REPO_DIR, stdio: ['ignore', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      stderr += `\n(timed out after ${childTimeoutMs / 1000} s; killed)`;
      child.kill('SIGKILL');
    }, childTimeoutMs);
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => {
      clearTimeout(timer);
      const wallSeconds = (now() - t0) / 1000;
      const line = stdout.split('\n').find((l) => l.startsWith('@@RESULT '));
      if (code === 0 && line) {
        resolvePromise({ ok: true, wallSeconds, ...JSON.parse(line.slice('@@RESULT '.length)) });
      } else {
        resolvePromise({ ok: false, scenario: scenarioId, impl, rep, wallSeconds, error: (stderr || stdout).trim().split('\n').slice(-12).join('\n') || `exit ${code}` });
      }
    });
  });
}

const total = scenarios.length;
for (const [index, sc] of scenarios.entries()) {
  const impls = sc.impls.filter((i) => i !== 'qcow2' || qemu.available);
  const work = join(workBase, sc.id);
  await mkdir(work, { recursive: true });
  for (let rep = 1; rep <= reps; rep++) {
    for (const impl of impls) {
      const r = await runChild(sc.id, impl, rep, work);
      runs.push(r);
      const tag = `[${String(index + 1).padStart(2)}/${total}] ${sc.id.padEnd(16)} rep ${rep}/${reps} ${impl.padEnd(6)}`;
      if (!r.ok) {
        failures++;
        log(`${tag} FAILED:\n${r.error.replace(/^/gm, '    ')}`);
        continue;
      }
      const ms = Object.entries(r.metrics ?? {})
        .map(([k, v]) => `${k} ${fmtNum(v)} ${sc.metrics[k] ?? ''}`)
        .join(', ');
      const setup = r.extra?.setupSeconds !== undefined ? `, setup ${fmtNum(r.extra.setupSeconds)} s` : '';
      log(`${tag} ${ms}  (timed ${fmtNum(r.seconds)} s${setup}, child ${fmtNum(r.wallSeconds)} s, RSS ${fmtBytes((r.peakRssKiB ?? r.maxRssKiB) * 1024)})`);
    }
  }
  if (!values.keep) await rm(work, { recursive: true, force: true });
}
if (!values.keep) await rm(workBase, { recursive: true, force: true });

// ------------------------------------------------------------- summarize

const okRuns = runs.filter((r) => r.ok);
const runsOf = (id, impl) => okRuns.filter((r) => r.scenario === id && r.impl === impl);
const medianOf = (id, metric, impl) => median(runsOf(id, impl).map((r) => r.metrics?.[metric]));

/** The run whose metric is the median one (its I/O counts are shown). */
function medianRun(id, metric, impl) {
  const rs = runsOf(id, impl)
    .filter((r) => typeof r.metrics?.[metric] === 'number')
    .sort((a, b) => a.metrics[metric] - b.metrics[metric]);
  return rs[Math.floor((rs.length - 1) / 2)];
}

const medians = {};
const ratios = {};
const targetResults = [];
const rssResults = {};
for (const sc of scenarios) {
  medians[sc.id] = {};
  ratios[sc.id] = {};
  for (const metric of Object.keys(sc.metrics)) {
    const m = {};
    for (const impl of IMPLS) m[impl] = medianOf(sc.id, metric, impl);
    medians[sc.id][metric] = m;
    ratios[sc.id][metric] = {
      vsRaw: m.cowvol !== undefined && m.raw ? m.cowvol / m.raw : undefined,
      vsQcow2: m.cowvol !== undefined && m.qcow2 ? m.cowvol / m.qcow2 : undefined,
    };
  }
  const cowRuns = runsOf(sc.id, 'cowvol');
  const peak = cowRuns.length ? Math.max(...cowRuns.map((r) => r.peakRssKiB ?? r.maxRssKiB)) / 1024 : undefined;
  rssResults[sc.id] = { peakMiB: peak, limitMiB: RSS_LIMIT_MIB, pass: peak === undefined ? undefined : peak <= RSS_LIMIT_MIB };
  for (const t of sc.targets) {
    let ratio;
    let note = '';
    let pass;
    if (t.kind === 'ref') {
      ratio = t.ref === 'raw' ? ratios[sc.id][t.metric].vsRaw : ratios[sc.id][t.metric].vsQcow2;
      if (ratio === undefined) note = t.ref === 'qcow2' && !qemu.available ? 'no qemu-img' : 'no data';
    } else if (t.kind === 'cross') {
      const base = medianOf(t.scenario, t.metric, 'cowvol');
      const mine = medians[sc.id][t.metric].cowvol;
      if (base && mine !== undefined) ratio = mine / base;
      else note = `needs ${t.scenario} (run it too)`;
    } else if (t.kind === 'zero') {
      const vals = cowRuns.map((r) => r.io?.[t.field]).filter((v) => typeof v === 'number');
      if (vals.length) {
        const worst = Math.max(...vals);
        pass = worst === 0;
        note = `${fmtBytes(worst)} moved`;
      } else note = 'no data';
    }
    if (ratio !== undefined) pass = ratio >= t.min;
    targetResults.push({ scenario: sc.id, metric: t.metric, kind: t.kind, label: targetLabel(t), min: t.min, ref: t.ref ?? t.scenario, ratio, pass, note });
  }
}

// ------------------------------------------------------------------ table

function table(headers, rows, align) {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i] ?? '').length)));
  const fmt = (cells) =>
    cells
      .map((c, i) => (align[i] === 'r' ? String(c ?? '').padStart(widths[i]) : String(c ?? '').padEnd(widths[i])))
      .join('  ')
      .trimEnd();
  return [fmt(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(fmt)].join('\n');
}

const verdict = (pass) => (pass === undefined ? 'n/a' : pass ? 'PASS' : 'MISS');

const mainRows = [];
for (const sc of scenarios) {
  for (const [i, metric] of Object.keys(sc.metrics).entries()) {
    const m = medians[sc.id][metric];
    const r = ratios[sc.id][metric];
    const ts = targetResults.filter((t) => t.scenario === sc.id && t.metric === metric);
    const targetText = ts.map((t) => t.label).join('; ');
    const failed = runs.filter((x) => !x.ok && x.scenario === sc.id);
    const verdictText =
      failed.length && m.cowvol === undefined
        ? `ERROR (${failed.length} run${failed.length > 1 ? 's' : ''} failed)`
        : ts.map((t) => `${verdict(t.pass)}${t.kind !== 'ref' && t.ratio !== undefined ? ` (${fmtRatio(t.ratio)})` : ''}${t.note ? ` [${t.note}]` : ''}`).join('; ');
    const rss = rssResults[sc.id];
    mainRows.push([
      i === 0 ? sc.id : '',
      metric,
      sc.metrics[metric],
      fmtNum(m.cowvol),
      sc.impls.includes('raw') ? fmtNum(m.raw) : '',
      sc.impls.includes('qcow2') ? fmtNum(m.qcow2) : '',
      fmtRatio(r.vsRaw),
      fmtRatio(r.vsQcow2),
      targetText,
      verdictText,
      i === 0 && rss.peakMiB !== undefined ? `${Math.round(rss.peakMiB)} ${verdict(rss.pass)}` : '',
    ]);
  }
}

out(`RESULTS (medians of ${reps} runs; every figure a throughput, higher is better; ratio = cowvol / reference)`);
out(
  table(['scenario', 'metric', 'unit', 'cowvol', 'raw', 'qcow2', 'cv/raw', 'cv/qcow2', 'target', 'verdict', `RSS MiB (<=${RSS_LIMIT_MIB})`], mainRows, [
    'l',
    'l',
    'l',
    'r',
    'r',
    'r',
    'r',
    'r',
    'l',
    'l',
    'r',
  ]),
);
out();

// cowvol I/O in the timed part of its median run.
const ioRows = [];
for (const sc of scenarios) {
  for (const metric of Object.keys(sc.metrics)) {
    const r = medianRun(sc.id, metric, 'cowvol');
    if (!r) continue;
    const io = r.ioByMetric?.[metric] ?? r.io;
    if (!io?.dev) continue;
    const d = io.dev;
    const j = io.journal ?? {};
    const v = io.volumeStats ?? {};
    ioRows.push([
      sc.id,
      metric,
      fmtNum((r.secondsByMetric?.[metric] ?? r.seconds) * 1000),
      `${d.volume.syncs}/${d.store.syncs}/${d.journal.syncs}`,
      j.commits ?? '-',
      `${fmtBytes(d.volume.writeBytes)}/${fmtBytes(d.store.writeBytes)}/${fmtBytes(d.journal.writeBytes)}`,
      `${fmtBytes(d.volume.readBytes)}/${fmtBytes(d.store.readBytes)}`,
      `${d.volume.writes + d.store.writes + d.journal.writes}/${d.volume.reads + d.store.reads}`,
      fmtBytes(io.proc?.wchar),
      v.cows ?? '-',
    ]);
  }
}
out('COWVOL I/O in the timed part (median run; scenario 6 create/delete: one operation; 7: the open)');
out(
  table(['scenario', 'metric', 'ms', 'fsyncs vol/store/jrnl', 'commits', 'written vol/store/jrnl', 'read vol/store', 'calls w/r', 'proc wchar', 'COWs'], ioRows, [
    'l',
    'l',
    'r',
    'r',
    'r',
    'r',
    'r',
    'r',
    'r',
    'r',
  ]),
);
out('  fsyncs and bytes are counted at cowvol\'s BlockDevice seam (a counting DeviceOpener); "proc wchar" is every byte the');
out("  process wrote (LevelDB included). LevelDB's own fsyncs (at checkpoints) are not counted.");
out();

// Details worth reading next to the numbers.
const details = [];
const ex = (id, impl = 'cowvol') => runsOf(id, impl).map((r) => r.extra ?? {});
for (const sc of scenarios) {
  if (sc.id.startsWith('6-create')) {
    const e = ex(sc.id);
    if (e.length)
      details.push(
        `${sc.id}: create ${fmtNum(median(e.map((x) => x.createMsMedian)))} ms, delete (empty) ${fmtNum(median(e.map((x) => x.deleteMsMedian)))} ms (medians of ${e[0].createMs?.length} samples/run), ${e[0].existingSnapshots} existing snapshots, volume ${fmtBytes(e[0].volumeBytes)}`,
      );
  } else if (sc.id === '6-delete-mid') {
    const e = ex(sc.id);
    const rs = runsOf(sc.id, 'cowvol');
    if (e.length)
      details.push(
        `6-delete-mid: ${fmtNum(median(e.map((x) => x.deleteMs)))} ms to delete a snapshot owning ${e[0].ownedBlocks} blocks; handed over ${e[0].handedOverBlocks}, freed ${e[0].freedBlocks}; data bytes moved ${rs.map((r) => fmtBytes(r.io?.dataBytesMoved)).join('/')}, journal ${rs.map((r) => fmtBytes(r.io?.dev?.journal?.writeBytes)).join('/')}`,
      );
  } else if (sc.id.startsWith('7-open')) {
    const e = ex(sc.id);
    if (e.length)
      details.push(
        `${sc.id}: open ${fmtNum(median(e.map((x) => x.openMs)))} ms with ${e[0].snapshots} snapshots, ${e[0].mappedBlocks?.toLocaleString('en-US')} mapped blocks (setup ${fmtNum(e[0].setupSeconds)} s)`,
      );
  } else if (sc.id === '7-recover') {
    const e = ex(sc.id);
    if (e.length) {
      details.push(
        `7-recover: journal ${fmtBytes(median(e.map((x) => x.journalBytes)))} un-checkpointed; open after process crash ${fmtNum(median(e.map((x) => x.crashOpenMs)))} ms` +
          ` (replayed ${e[0].crashRecovery?.replayedTransactions} tx, applied 0: LevelDB had them); after power loss ${fmtNum(median(e.map((x) => x.powerLossOpenMs)))} ms` +
          ` (replayed ${e[0].powerLossRecovery?.replayedTransactions} tx / ${e[0].powerLossRecovery?.replayedRecords?.toLocaleString('en-US')} records, ${fmtNum(median(e.map((x) => x.powerLossReplayMiBps)))} MiB/s of journal);` +
          ` peak RSS: writer ${fmtBytes(Math.max(...e.map((x) => x.writerRssKiB ?? 0)) * 1024)}, crash open ${fmtBytes(Math.max(...e.map((x) => x.crashOpenRssKiB ?? 0)) * 1024)}, power-loss open ${fmtBytes(Math.max(...e.map((x) => x.powerLossOpenRssKiB ?? 0)) * 1024)}`,
      );
    }
  } else if (sc.id.startsWith('8-cli-write')) {
    const e = ex(sc.id);
    const refImpl = sc.impls.includes('raw') ? 'raw' : 'qcow2';
    const q = ex(sc.id, refImpl);
    const ms = (xs) => fmtNum(median(xs.map((x) => x.wallMs)));
    if (e.length)
      details.push(
        `${sc.id}: cowvol ${ms(e)} ms wall; its fixed cost, the same command with a 4 KiB input, ${ms(e.map((x) => ({ wallMs: x.fixedMs })))} ms (\`${e[0].command}\`${e[0].snapshotMs !== undefined ? `; snapshot create ${ms(e.map((x) => ({ wallMs: x.snapshotMs })))} ms, not in the ratio` : ''}, CLI peak RSS ${fmtBytes(Math.max(...e.map((x) => x.cliMaxRssKiB ?? 0)) * 1024)})` +
          (q.length
            ? `; ${refImpl === 'raw' ? 'dd' : 'qemu-io'} ${ms(q)} ms (\`${q[0].command}\`${q[0].snapshotMs !== undefined ? `; snapshot ${ms(q.map((x) => ({ wallMs: x.snapshotMs })))} ms` : ''})`
            : ''),
      );
  } else if (sc.id.startsWith('8-')) {
    const e = ex(sc.id);
    const q = ex(sc.id, 'qcow2');
    if (e.length)
      details.push(
        `${sc.id}: cowvol ${fmtNum(1000 / median(runsOf(sc.id, 'cowvol').map((r) => r.metrics[Object.keys(sc.metrics)[0]])))} ms (\`${e[0].command}\`, CLI peak RSS ${fmtBytes((e[0].cliMaxRssKiB ?? 0) * 1024)})${q.length ? `; qcow2 ${fmtNum(1000 / median(runsOf(sc.id, 'qcow2').map((r) => r.metrics[Object.keys(sc.metrics)[0]])))} ms (\`${q[0].command}\`)` : ''}`,
      );
  } else if (sc.id.startsWith('5-')) {
    const e = ex(sc.id);
    if (e.length) details.push(`${sc.id}: ${e[0].newerSnapshots} newer snapshot(s), each COWed ${e[0].blocksPerNewer} blocks; read via readSnapshot (1 MiB calls, first call loads the chain's maps)`);
  }
}
for (const sc of scenarios) {
  const rss = rssResults[sc.id];
  if (rss.pass !== false) continue;
  const rs = runsOf(sc.id, 'cowvol').sort((a, b) => a.rep - b.rep);
  const one = (r) =>
    `rep ${r.rep}: ${fmtBytes(r.maxRssKiB * 1024)}${r.childMaxRssKiB ? ` (child processes ${fmtBytes(r.childMaxRssKiB * 1024)})` : ''}${r.extra?.setupSeconds !== undefined ? ' incl. setup' : ''}`;
  details.push(`${sc.id}: RSS over ${RSS_LIMIT_MIB} MiB — ${rs.map(one).join('; ')}`);
}
const failedRuns = runs.filter((r) => !r.ok);
for (const r of failedRuns) details.push(`${r.scenario} rep ${r.rep} ${r.impl} FAILED: ${r.error.split('\n').find((l) => l.trim()) ?? ''}`);
if (details.length) {
  out('DETAILS');
  for (const d of details) out(`  ${d}`);
  out();
}

out('NOTES');
out('  raw    = node:fs/promises FileHandle, same offsets/sizes/in-flight depth, one fdatasync at the end (cowvol: one flush()).');
out('  qcow2  = qemu-img bench -f qcow2 -t writeback (page cache, like raw and cowvol) with one flush at the end (--flush-interval=count);');
out('           timed from its "Sending …" line to exit (its own "Run completed" figure stops before the final flush ends).');
out('  random = qemu-img bench has no random mode: all three use the same permutation, block i -> (i*P) mod nBlocks with P a large');
out('           prime (qemu: -S P*4096, offsets wrap at the image size); every block written exactly once, 16 in flight.');
out('  5-read = qcow2 column: qemu-img convert -l snapshot.name=target into a null-co target. Page cache warm for every implementation.');
out('  7      = open timed in a fresh process around Volume.open. Recovery: a writer fills the journal with no checkpoint in between');
out('           (circular journal sized 2.5x the target; an append-only journal gets its instance checkpoint switched off) and exits');
out('           without close; "crash" opens as is, "power loss" first rewinds LevelDB to its copy as of the last checkpoint.');
out('  8      = wall time of the whole command, process start included, for both. 8-cli-write: the raw column is dd bs=1M');
out('           conv=fdatasync,notrunc of the same input onto a filled raw file; 8-cli-write-cow: the qcow2 column is qemu-io -c');
out("           'write -s data 0 N' -c flush after qemu-img snapshot -c (the snapshot commands are setup, their wall in DETAILS).");
out(`  Targets are information: a MISS never fails the run. Elapsed ${fmtNum((Date.now() - startedAt.getTime()) / 1000)} s; ${okRuns.length} runs ok, ${failures} failed.`);

// ------------------------------------------------------------------- JSON

if (!values['no-json']) {
  const resultsDir = join(BENCH_DIR, 'results');
  await mkdir(resultsDir, { recursive: true });
  const file = join(resultsDir, `${startedAt.toISOString().replace(/:/g, '-')}${values.quick ? '-quick' : ''}.json`);
  const doc = {
    schema: 1,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    durationSeconds: (Date.now() - startedAt.getTime()) / 1000,
    machine: machine.cpu,
    cores: machine.cores,
    totalmem: machine.totalmem,
    machineDetails: machine,
    node: process.version,
    commit,
    dirtyTrackedFiles: dirtyFiles ? dirtyFiles.split('\n') : [],
    quick: values.quick,
    only: values.only ?? null,
    reps,
    scale,
    qemu: { available: qemu.available, version: qemu.version, stdbuf: Boolean(qemu.stdbuf) },
    rssLimitMiB: RSS_LIMIT_MIB,
    runs,
    medians,
    ratios,
    targets: targetResults,
    rss: rssResults,
    failures,
  };
  await writeFile(file, `${JSON.stringify(doc, null, 2)}\n`);
  out(`  JSON: ${relative(process.cwd(), file) || file}`);
}

process.exitCode = failures > 0 ? 1 : 0;
