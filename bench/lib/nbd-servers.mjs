// NBD servers and the fio client for bench/nbd.mjs: `cowvol serve` and
// `qemu-nbd` started on a unix socket, stopped with SIGTERM, their peak RSS
// read from /proc; fio's nbd engine run against an NBD URI and timed from
// process start to exit.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { now } from './common.mjs';

const CLI = fileURLToPath(new URL('../../packages/cli/bin/run.js', import.meta.url));
const MEMORY_PRELOAD = new URL('./memory-preload.mjs', import.meta.url).href;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Absolute path of `cmd` on PATH, or undefined. */
export function which(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).stdout?.trim() || undefined;
}

/** First line of `cmd --version`. */
export function versionOf(cmd) {
  const r = spawnSync(cmd, ['--version'], { encoding: 'utf8' });
  return (r.stdout || r.stderr).split('\n')[0]?.trim();
}

/** Runs a command to completion; rejects with its stderr on a non-zero exit. */
export function run(cmd, args) {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim() || out.trim()}`))));
  });
}

/** `cowvol <args>` through the built CLI. */
export function cowvol(args) {
  return run(process.execPath, [CLI, ...args]);
}

function canConnect(socket) {
  return new Promise((resolve) => {
    const s = connect(socket);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

function peakRssBytes(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

const CLOCK_TICKS_PER_SECOND = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

/** CPU seconds (user + system, all threads) the process used so far, from /proc/<pid>/stat. */
function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND; // utime, stime: fields 14 and 15 of proc(5)
  } catch {
    return undefined;
  }
}

/**
 * Wraps a started server: `uri(exportName)` builds its NBD URI, `stop()`
 * (qemu-nbd: its one unnamed export) reads the peak RSS (VmHWM), sends SIGTERM and resolves { peakRssBytes,
 * code } once the process exited (a clean stop flushes first);
 * `cpuSeconds()` is its CPU time so far.
 */
function serverHandle(child, socket, stderrOf, { exportNames }) {
  let exited;
  const exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  void exit.then((e) => (exited = e));
  return {
    pid: child.pid,
    uri: (exportName) => `nbd+unix:///${exportNames ? exportName : ''}?socket=${socket}`,
    exited: () => exited,
    cpuSeconds: () => cpuSeconds(child.pid),
    async stop() {
      const rss = peakRssBytes(child.pid);
      if (!exited) child.kill('SIGTERM');
      const e = await exit;
      if (e.code !== 0 && e.signal !== 'SIGTERM') throw new Error(`server exited ${e.code ?? e.signal}: ${stderrOf().slice(-2000)}`);
      return { peakRssBytes: rss, code: e.code };
    },
  };
}

/**
 * `cowvol serve <volume>` on its default socket; resolves when it printed
 * its URI. `cpuProfDir`: run the server under `node --cpu-prof` (the
 * profile is written there when it stops). `memoryOut`: a file the server
 * writes its memory breakdown to when it exits (memory-preload.mjs).
 */
export async function startCowvol(volume, { cpuProfDir, memoryOut } = {}) {
  const nodeArgs = cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`] : [];
  if (memoryOut) nodeArgs.push('--import', MEMORY_PRELOAD);
  const env = memoryOut ? { ...process.env, BENCH_MEMORY_OUT: memoryOut } : process.env;
  const child = spawn(process.execPath, [...nodeArgs, CLI, 'serve', volume], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => (err = (err + d).slice(-20000)));
  const line = await new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]);
    });
    child.once('exit', (code) => reject(new Error(`cowvol serve exited ${code} before it was ready: ${err.slice(-2000)}`)));
  });
  const socket = new URL(line).searchParams.get('socket');
  return serverHandle(child, socket, () => err, { exportNames: true });
}

/**
 * `qemu-nbd` on a fresh socket: `format` raw or qcow2, `snapshot` an
 * internal snapshot to export read-only (-l); page cache (writeback) and
 * thread-pool AIO, its defaults; -t so fio's connection is not the last.
 */
export async function startQemuNbd(image, { format, snapshot } = {}) {
  const socketDir = mkdtempSync(join(tmpdir(), 'cowvol-nbd-'));
  const socket = join(socketDir, 'q.sock');
  const args = ['-k', socket, '-f', format, '-t', '--cache=writeback', '--aio=threads'];
  if (snapshot) args.push('-l', snapshot);
  const child = spawn(which('qemu-nbd'), [...args, image], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err = (err + d).slice(-20000)));
  const handle = serverHandle(child, socket, () => err, { exportNames: false });
  const stop = handle.stop;
  handle.stop = async () => {
    try {
      return await stop();
    } finally {
      rmSync(socketDir, { recursive: true, force: true });
    }
  };
  for (let i = 0; i < 200; i++) {
    if (handle.exited()) throw new Error(`qemu-nbd exited before it was ready: ${err}`);
    if (existsSync(socket) && (await canConnect(socket))) return handle;
    await sleep(25);
  }
  await handle.stop();
  throw new Error('qemu-nbd did not listen within 5 s');
}

/**
 * One fio job through the nbd engine (libnbd) against `uri`, over the whole
 * export (random jobs touch each block once: fio's random map, fixed seed).
 * Time: fio process start to exit — connect, I/O, the final FLUSH of write
 * jobs (end_fsync) and disconnect. Resolves { seconds, ioBytes, fioMiBps }.
 */
export async function runFio(uri, { rw, bsBytes, depth }) {
  const args = ['--name=nbd', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, `--bs=${bsBytes}`, `--iodepth=${depth}`, '--output-format=json'];
  if (rw.includes('write')) args.push('--end_fsync=1');
  const t0 = now();
  const out = await run(which('fio'), args);
  const seconds = (now() - t0) / 1000;
  const doc = JSON.parse(out.slice(out.indexOf('{')));
  const job = doc.jobs[0];
  if (job.error) throw new Error(`fio ${args.join(' ')}: error ${job.error}`);
  const side = rw.includes('write') ? job.write : job.read;
  return { seconds, ioBytes: side.io_bytes, fioMiBps: side.bw_bytes / 1048576 };
}
