import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Level } from 'level';
import { pack, unpack } from 'msgpackr';
import { statStamp } from '@cowvol/cow-core';

/** Absolute path of the built CLI entry point. */
export const CLI = resolve(import.meta.dirname, '../packages/cli/bin/run.js');

export interface RunResult {
  code: number;
  stdout: Buffer;
  stderr: string;
}

/**
 * Runs `cowvol <args>` as a real child process (the built CLI), optionally
 * feeding `input` on stdin. Never throws on a non-zero exit: tests assert on
 * `code`.
 */
export function cowvol(args: string[], options: { input?: Buffer; cwd?: string; env?: Record<string, string> } = {}): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], options);
}

/** Runs `cowvol <args>` and throws with its stderr unless it exits 0. */
export async function cowvolOk(args: string[], input?: Buffer): Promise<RunResult> {
  const r = await cowvol(args, input === undefined ? {} : { input });
  if (r.code !== 0) throw new Error(`cowvol ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** The one JSON document a `--json` command printed on stdout. */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- T names the shape the caller expects; JSON.parse cannot check it, and a wrong shape fails the caller's expectations
export function jsonOf<T = Record<string, unknown>>(r: RunResult): T {
  return JSON.parse(r.stdout.toString('utf8')) as T;
}

/** Runs any program, collecting stdout (bytes) and stderr (text). */
export function run(cmd: string, args: string[], options: { input?: Buffer; cwd?: string; env?: Record<string, string> } = {}): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { cwd: options.cwd, stdio: ['pipe', 'pipe', 'pipe'], ...(options.env ? { env: { ...process.env, ...options.env } } : {}) });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code: code ?? -1, stdout: Buffer.concat(out), stderr: err }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? Buffer.alloc(0));
  });
}

/** Runs and throws with stderr when the exit code is not 0. */
export async function runOk(cmd: string, args: string[], options: { input?: Buffer; cwd?: string } = {}): Promise<RunResult> {
  const r = await run(cmd, args, options);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** A fresh temporary directory and a function removing it. */
export async function tempDir(prefix = 'cowvol-test-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function sha256File(path: string): Promise<string> {
  return sha256(await readFile(path));
}

/**
 * After copying a volume file and its sidecar (a test fixture): the copy has
 * a new inode and new times, which cowvol refuses as a write made outside it
 * (VOLUME_MODIFIED_OUTSIDE; docs/ARCHITECTURE.md §13). A `closed` stamp (or
 * none) is taken anew of the copy as it now is (FORMAT.md §6.11), as
 * accepting its changes would; an `open` one (a copy of a crashed session)
 * is kept: it compares the size only, which a copy keeps. The volume must be
 * closed.
 */
export async function forgetChangeStamp(volumePath: string): Promise<void> {
  const db = new Level<string, Buffer>(join(`${volumePath}.cowvol`, 'meta'), { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    const old = await db.get('stamp');
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-condition -- level's typings say get() resolves a value, but it resolves undefined for a missing key
    if (old !== undefined && (unpack(old) as { state: string }).state === 'open') return;
    await db.put('stamp', pack(await statStamp(volumePath, 'closed')));
  } finally {
    await db.close();
  }
  // A write right after gets a newer modification time than the stamp (as after a clean close).
  await new Promise((resolve) => setTimeout(resolve, 20));
}

/** Small deterministic PRNG (mulberry32, from @cowvol/test-support) so a seed replays a run exactly. */
export { mulberry32 as prng } from '@cowvol/test-support';
