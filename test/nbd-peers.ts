/**
 * NBD servers and clients for the suites that compare `cowvol serve` with
 * its peers (nbd-differential.test.ts, nbd-ext4.test.ts) and every suite that
 * starts a server (`startServe`, `requireTools`): start and stop
 * `cowvol serve`, `qemu-nbd` and nbdkit's file plugin on unix sockets, and
 * run libnbd Python programs with nbdsh under Debian's `/usr/bin/python3`
 * (the interpreter that has the `nbd` module).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import { CLI } from './helpers.js';

/** Tools missing from PATH, as `[tool, Debian package]` pairs; under CI=true any missing one throws. */
export function requireTools(tools: Array<[string, string]>): { missing: boolean; skipReason: string } {
  const missing = tools.filter(([tool]) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).error !== undefined);
  const packages = [...new Set(missing.map(([, pkg]) => pkg))].join(' ');
  if (process.env.CI && missing.length > 0) throw new Error(`CI=true but ${missing.map(([t]) => t).join(', ')} not installed (apt-get install ${packages})`);
  return { missing: missing.length > 0, skipReason: missing.length === 0 ? '' : ` [SKIPPED: apt-get install ${packages}]` };
}

/** A running NBD server: the URI of its writable (or read-only) default export, its log, and a clean stop. */
export interface PeerServer {
  name: string;
  uri: string;
  log: () => string;
  /** SIGTERM, then the exit code; `cowvol serve` must exit 0. */
  stop: () => Promise<number | null>;
}

function watch(name: string, child: ChildProcess): { log: () => string; exited: Promise<number | null> } {
  let log = '';
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  void exited.then(() => (log += `\n[${name} exited]`));
  return { log: () => log, exited };
}

async function waitForSocket(path: string, exited: Promise<number | null>, log: () => string): Promise<void> {
  const state = { gone: false };
  void exited.then(() => (state.gone = true));
  for (let i = 0; i < 400; i++) {
    if (state.gone) throw new Error(`server exited before listening on ${path}: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(path);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(25);
  }
  throw new Error(`nothing listens on ${path}: ${log()}`);
}

/** A started `cowvol serve`: the process, its first stdout line (the URI it prints when ready), the socket that URI names, its stderr so far, its exit code. */
export interface ServeProcess {
  child: ChildProcess;
  uriLine: string;
  socket: string;
  log: () => string;
  exited: Promise<number | null>;
}

/** `cowvol serve <volume> [args]`; resolves once it printed its URI line, rejects with its log if it exits first. The one way every suite starts a server. */
export async function startServe(volume: string, args: string[] = []): Promise<ServeProcess> {
  const child = spawn(process.execPath, [CLI, 'serve', volume, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const uriLine = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    void exited.then((code) => reject(new Error(`cowvol serve exited ${String(code)}: ${log}`)));
  });
  const socket = decodeURIComponent(uriLine.slice(uriLine.indexOf('socket=') + 'socket='.length).split('&')[0]!);
  return { child, uriLine, socket, log: () => log, exited };
}

/** Ends a server child a test started, if it still runs: SIGKILL, then waits for its exit. */
export async function killServer(child: ChildProcess | undefined): Promise<void> {
  if (child?.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
}

/** `cowvol serve <volume> [args]` as a peer; the URI names the `live` export. */
export async function serveCowvol(volume: string, args: string[] = []): Promise<PeerServer & { socket: string }> {
  const { child, socket, log, exited } = await startServe(volume, args);
  return { name: 'cowvol', uri: `nbd+unix:///live?socket=${socket}`, socket, log, stop: () => stopChild(child, exited) };
}

/** `qemu-nbd -f raw -t -k <socket> --discard=unmap [-r] <file>`: TRIM punches holes, as cowvol's reads as zeros. */
export async function serveQemuNbd(file: string, socket: string, readOnly = false): Promise<PeerServer> {
  await rm(socket, { force: true });
  const child = spawn('qemu-nbd', ['-f', 'raw', '-t', '-k', socket, '--discard=unmap', ...(readOnly ? ['-r'] : []), file], { stdio: ['ignore', 'ignore', 'pipe'] });
  const { log, exited } = watch('qemu-nbd', child);
  await waitForSocket(socket, exited, log);
  return { name: 'qemu-nbd', uri: `nbd+unix:///?socket=${socket}`, log, stop: () => stopChild(child, exited) };
}

/** `nbdkit -f -U <socket> [-r] file file=<file>`. */
export async function serveNbdkit(file: string, socket: string, readOnly = false): Promise<PeerServer> {
  await rm(socket, { force: true }); // nbdkit -f leaves its socket file behind
  const child = spawn('nbdkit', ['-f', '-U', socket, ...(readOnly ? ['-r'] : []), 'file', `file=${file}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  const { log, exited } = watch('nbdkit', child);
  await waitForSocket(socket, exited, log);
  return { name: 'nbdkit', uri: `nbd+unix:///?socket=${socket}`, log, stop: () => stopChild(child, exited) };
}

async function stopChild(child: ChildProcess, exited: Promise<number | null>): Promise<number | null> {
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  return exited;
}

/** Stops every server still running (afterAll), ignoring how they exit. */
export async function stopAll(servers: Iterable<PeerServer>): Promise<void> {
  await Promise.all([...servers].map((s) => s.stop()));
}

/** Runs a libnbd Python program with nbdsh (`-c`), Debian's python3 first on PATH; stdout must be its result. */
export async function nbdsh(script: string): Promise<string> {
  const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };
  return new Promise((resolve, reject) => {
    const child = spawn('nbdsh', ['-c', script], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(out);
      else reject(new Error(`nbdsh exited ${String(code)}: ${err}${out.slice(0, 2000)}`));
    });
  });
}

/** The first offset where `a` and `b` differ, or -1 (also when only their lengths differ: the shorter length). */
export function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** Asserts two images are byte-identical, naming the first differing offset. */
export function expectSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  const at = firstDifference(actual, expected);
  expect(at, `${what}: first difference at byte ${at}`).toBe(-1);
}
