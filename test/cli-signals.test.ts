import { spawn, type ChildProcess } from 'node:child_process';
import { watch } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cowvol, sha256File, tempDir } from './helpers.js';

/**
 * README "Interrupting a command": SIGINT/SIGTERM remove cowvol's temporary
 * files (the spooled stdin, an export's `.partial` file) and exit 130/143.
 * Real child processes, signalled while the temporary file exists.
 */
let dir: string;
let cleanup: () => Promise<void>;
const MiB = 1024 * 1024;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-signals-'));
});
afterAll(async () => {
  await cleanup();
});

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stderr })));
}

/** Polls `folder` until `found(names)` holds (a hung run is stopped by the test timeout). */
async function waitFor(folder: string, found: (names: string[]) => Promise<boolean>): Promise<void> {
  while (!(await found(await readdir(folder)))) await sleep(5);
}

describe('a signal removes the spooled stdin', () => {
  for (const [signal, exitCode, command] of [
    ['SIGINT', 130, 'write'],
    ['SIGTERM', 143, 'import'],
  ] as const) {
    it(`${command} from a slow stdin producer, ${signal}: exit ${exitCode}, $TMPDIR/cowvol-stdin-* removed, volume untouched`, async () => {
      const tmp = join(dir, `tmp-${command}`);
      await mkdir(tmp);
      const vol = join(dir, `${command}.img`);
      if (command === 'write') expect((await cowvol(['create', vol, '--size', '4M'])).code).toBe(0);
      const volBefore = command === 'write' ? await sha256File(vol) : undefined;
      const args = command === 'write' ? ['write', vol] : ['import', vol, '--input', '-'];
      const child = spawn(process.execPath, [CLI, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } });
      const done = exited(child);
      child.stdin.on('error', () => undefined);
      // And never end: a producer that is still running. It starts as a stream does (the magic, docs/FORMAT.md §9),
      // or `import` would refuse it at its first bytes (below) before any signal.
      child.stdin.write(Buffer.concat([Buffer.from('CVSX'), randomBytes(256 * 1024)]));
      await waitFor(tmp, async (names) => {
        const spool = names.find((n) => n.startsWith('cowvol-stdin-'));
        if (spool === undefined) return false;
        const st = await stat(join(tmp, spool, 'input')).catch(() => undefined);
        return st !== undefined && st.size > 0;
      });
      child.kill(signal);
      const r = await done;
      expect(await readdir(tmp)).toEqual([]);
      expect(r.signal, r.stderr).toBe(null);
      expect(r.code, r.stderr).toBe(exitCode);
      expect(r.stderr).toContain(`cowvol: interrupted by ${signal}`);
      expect(r.stderr).not.toMatch(/^\s+at /m);
      if (volBefore !== undefined) expect(await sha256File(vol)).toBe(volBefore);
      else await expect(stat(vol)).rejects.toThrow(); // a full import never created its target
    });
  }
});

describe('an endless input that is not a stream', () => {
  it('import --input /dev/zero: NOT_A_STREAM (exit 8) at its first bytes, nothing spooled left, no target (naive: spools until $TMPDIR is full, then NO_SPACE)', async () => {
    const tmp = join(dir, 'tmp-zero');
    await mkdir(tmp);
    const vol = join(dir, 'zero.img');
    const child = spawn(process.execPath, [CLI, 'import', vol, '--input', '/dev/zero'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } });
    const r = await exited(child);
    expect(r.code, r.stderr).toBe(8);
    expect(r.stderr).toContain('cowvol: error [NOT_A_STREAM]');
    expect(await readdir(tmp)).toEqual([]);
    await expect(stat(vol)).rejects.toThrow();
  });
});

describe('a signal removes the export .partial file', () => {
  it('snapshot export --output <file>, SIGTERM while the .partial file is written: exit 143, no .partial, no output', async () => {
    const vol = join(dir, 'export.img');
    expect((await cowvol(['create', vol, '--size', '48M'])).code).toBe(0);
    await writeFile(join(dir, 'data.bin'), randomBytes(40 * MiB)); // random: every block is exported
    expect((await cowvol(['write', vol, '--input', join(dir, 'data.bin')])).code).toBe(0);
    expect((await cowvol(['snapshot', 'create', vol, 's'])).code).toBe(0);
    const outDir = join(dir, 'out');
    await mkdir(outDir);
    // Stop the child as soon as its .partial file appears, so the signal lands mid-export.
    let seen: string | undefined;
    let child: ChildProcess | undefined;
    const watcher = watch(outDir, (_event, name) => {
      if (seen === undefined && name?.includes('.partial-')) {
        seen = name;
        child?.kill('SIGSTOP');
      }
    });
    try {
      child = spawn(process.execPath, [CLI, 'snapshot', 'export', vol, 's', '--output', join(outDir, 'full.cvs')], { stdio: ['ignore', 'pipe', 'pipe'] });
      const done = exited(child);
      await waitFor(outDir, async () => seen !== undefined);
      expect(seen).toMatch(/^\.full\.cvs\.partial-/);
      child.kill('SIGTERM');
      child.kill('SIGCONT');
      const r = await done;
      expect(await readdir(outDir)).toEqual([]);
      expect(r.signal, r.stderr).toBe(null);
      expect(r.code, r.stderr).toBe(143);
      expect(r.stderr).toContain('cowvol: interrupted by SIGTERM');
    } finally {
      watcher.close();
    }
  });
});

describe("a signal removes a read-only open's private metadata copy", () => {
  it('snapshot read stopped by SIGINT while its reader does not read: exit 130, no cowvol-meta-* folder left in $TMPDIR', async () => {
    const tmp = join(dir, 'tmp-meta');
    await mkdir(tmp);
    const vol = join(dir, 'meta-copy.img');
    expect((await cowvol(['create', vol, '--size', '64M'])).code).toBe(0);
    expect((await cowvol(['write', vol, '--offset', '0'], { input: randomBytes(8 * MiB) })).code).toBe(0);
    expect((await cowvol(['snapshot', 'create', vol, 's'])).code).toBe(0);
    // stdout is a pipe this test never reads: the read stalls once the pipe is full, its volume open (and its copy) in place.
    const child = spawn(process.execPath, [CLI, 'snapshot', 'read', vol, 's'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } });
    const done = exited(child);
    await waitFor(tmp, async (names) => names.some((n) => n.startsWith('cowvol-meta-')));
    await sleep(200); // past the copy's making: the command is reading
    child.kill('SIGINT');
    const r = await done;
    expect(r.code, r.stderr).toBe(130);
    expect(await readdir(tmp)).toEqual([]);
  });
});

/**
 * README "Exit codes": for a change to the volume, any non-zero exit but 9
 * means it was not made. Once it is made, a signal or a report that cannot
 * be written exits 9 (OUTCOME_UNKNOWN: look before retrying).
 */
describe('after the change was made', () => {
  /** Runs `cowvol args` stopped (SIGSTOP) at kill point `at`, then sends `signal` and SIGCONT; resolves with how it ended. */
  async function signalledAt(args: string[], at: string, signal: NodeJS.Signals): Promise<{ code: number | null; stderr: string }> {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, COWVOL_KILL_AT: at, COWVOL_KILL_SIGNAL: 'SIGSTOP' } });
    const done = exited(child);
    const pid = child.pid ?? 0;
    const deadline = Date.now() + 60_000;
    while ((await readFile(`/proc/${String(pid)}/stat`, 'utf8').catch(() => ') Z')).split(') ')[1]?.[0] !== 'T') {
      expect(Date.now(), `cowvol ${args.join(' ')} did not reach ${at}`).toBeLessThan(deadline);
      await sleep(10);
    }
    process.kill(pid, signal);
    process.kill(pid, 'SIGCONT');
    return done;
  }

  it('an import interrupted once its snapshot is committed exits 9, not 130; one interrupted before exits 130 and changed nothing', async () => {
    const src = join(dir, 'made-src.img');
    expect((await cowvol(['create', src, '--size', '1M'])).code).toBe(0);
    expect((await cowvol(['write', src, '--offset', '0'], { input: randomBytes(64 * 1024) })).code).toBe(0);
    expect((await cowvol(['snapshot', 'create', src, 's1'])).code).toBe(0);
    const stream = join(dir, 'made.cvs');
    expect((await cowvol(['snapshot', 'export', src, 's1', '--output', stream])).code).toBe(0);
    const after = await signalledAt(['import', join(dir, 'made-after.img'), '--input', stream], 'import:finished', 'SIGINT');
    expect(after.code, after.stderr).toBe(9);
    expect(after.stderr).toContain('[OUTCOME_UNKNOWN]: interrupted by SIGINT once its change was under way');
    expect((await cowvol(['snapshot', 'info', join(dir, 'made-after.img'), 's1'])).code).toBe(0);
    const before = await signalledAt(['import', join(dir, 'made-before.img'), '--input', stream], 'import:verified', 'SIGINT');
    expect(before.code, before.stderr).toBe(130);
    expect((await readdir(dir)).filter((n) => n.startsWith('made-before.img'))).toEqual([]);
  });

  it('a check --repair interrupted once its repair started exits 9, not 143', async () => {
    const vol = join(dir, 'repair-stop.img');
    expect((await cowvol(['create', vol, '--size', '1M'])).code).toBe(0);
    const r = await signalledAt(['check', vol, '--repair'], 'check:repair', 'SIGTERM');
    expect(r.code, r.stderr).toBe(9);
    expect(r.stderr).toContain('[OUTCOME_UNKNOWN]');
  });

  it('a snapshot restore interrupted part way exits 9 (the live volume is already partly rewritten), not 130', async () => {
    const vol = join(dir, 'restore-part.img');
    expect((await cowvol(['create', vol, '--size', '4M'])).code).toBe(0);
    expect((await cowvol(['write', vol, '--offset', '0'], { input: randomBytes(4 * MiB) })).code).toBe(0);
    expect((await cowvol(['snapshot', 'create', vol, 'a'])).code).toBe(0);
    expect((await cowvol(['write', vol, '--offset', '0'], { input: randomBytes(4 * MiB) })).code).toBe(0);
    const r = await signalledAt(['snapshot', 'restore', vol, 'a'], 'restore:piece#1', 'SIGINT');
    expect(r.code, r.stderr).toBe(9);
    expect(r.stderr).toContain('[OUTCOME_UNKNOWN]');
  });

  it('snapshot create, rename and delete whose report cannot be written (stdout is /dev/full) exit 9 with the change made; a refused one keeps its own code', async () => {
    const vol = join(dir, 'full-stdout.img');
    expect((await cowvol(['create', vol, '--size', '1M'])).code).toBe(0);
    const toFull = (args: string[]) =>
      new Promise<{ code: number | null; stderr: string }>((resolve) => {
        const child = spawn('sh', ['-c', 'exec "$0" "$@" >/dev/full', process.execPath, CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
        void exited(child).then(resolve);
      });
    const created = await toFull(['snapshot', 'create', vol, 's9']);
    expect(created.code, created.stderr).toBe(9);
    expect(created.stderr).toContain('[OUTCOME_UNKNOWN]: the command ran to the end, but its report could not be written (NO_SPACE');
    expect((await cowvol(['snapshot', 'info', vol, 's9'])).code).toBe(0);
    const renamed = await toFull(['snapshot', 'rename', vol, 's9', 's10', '--json']);
    expect(renamed.code, renamed.stderr).toBe(9);
    expect((await cowvol(['snapshot', 'info', vol, 's10'])).code).toBe(0);
    const refused = await toFull(['snapshot', 'create', vol, 's10']);
    expect(refused.stderr).toContain('[SNAPSHOT_EXISTS]');
    expect(refused.code).not.toBe(9);
    const deleted = await toFull(['snapshot', 'delete', vol, 's10']);
    expect(deleted.code, deleted.stderr).toBe(9);
    expect((await cowvol(['snapshot', 'info', vol, 's10'])).code).not.toBe(0);
  });
});
