/**
 * `cowvol serve` when its disk fills (docs/ARCHITECTURE.md §14.8, "A
 * volume that fails"): a client's large write after a snapshot needs more
 * store space than a small tmpfs has. Where the full disk hits a data write,
 * that write fails (ENOSPC) and the server goes on serving; where it hits a
 * metadata commit, the journal aborts and the volume refuses every call —
 * then the server stops and exits with the failure's code (7) instead of
 * staying up answering nothing. Either way it is never up and wedged, and
 * once space is freed every snapshot reads back exactly. Needs root (a
 * tmpfs mount) and nbdcopy.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { assert } from '@cowvol/base';
import { CLI, cowvol, cowvolOk, run, tempDir } from './helpers.js';
import { requireTools, startServe } from './nbd-peers.js';
import { IS_ROOT, mountTmpfs, requireRootUnderCi, unmount } from './tmpfs.js';

const MiB = 1024 * 1024;
const { missing, skipReason } = requireTools([['nbdcopy', 'libnbd-bin']]);
let dir: string;
let cleanup: () => Promise<void>;
let mnt: string | undefined;

it('runs as root under CI (mounting a tmpfs needs it)', () => requireRootUnderCi());

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-serve-full-'));
  if (!IS_ROOT) return;
  mnt = join(dir, 'mnt');
  await mkdir(mnt);
  mountTmpfs(mnt, 64 * MiB);
});

afterAll(async () => {
  if (IS_ROOT && mnt !== undefined) unmount(mnt);
  await cleanup();
});

it.skipIf(!IS_ROOT || missing)(
  `a write that fills the disk leaves the server serving or stopped with exit 7, never up and wedged; every snapshot reads back once space is freed${skipReason}`,
  { timeout: 120_000 },
  async () => {
    assert(mnt !== undefined, 'mounted in beforeAll');
    const vol = join(mnt, 'vol.img');
    const a = join(dir, 'a.raw');
    const b = join(dir, 'b.raw');
    await writeFile(a, randomBytes(40 * MiB));
    await writeFile(b, randomBytes(40 * MiB));
    await cowvolOk(['create', vol, '--size', '40M', '--journal-size', '4M']);
    const served = await startServe(vol);
    let exitCode: number | null | undefined;
    void served.exited.then((code) => (exitCode = code));
    try {
      const uri = `nbd+unix:///live?socket=${served.socket}`;
      await run('nbdcopy', [a, uri]);
      await cowvolOk(['snapshot', 'create', vol, 'a']);
      const full = await run('nbdcopy', [b, uri]); // the COW of 40 MiB does not fit
      expect(full.code, 'the write that filled the disk failed').not.toBe(0);
      // Settled: the server has stopped, or its control channel answers.
      let status = await cowvol(['status', vol, '--json']);
      for (let i = 0; i < 20 && exitCode === undefined && status.code !== 0; i++) {
        await sleep(250);
        status = await cowvol(['status', vol, '--json']);
      }
      if (exitCode === undefined) {
        console.log('serve-full-disk: the server is still up after the full disk (it failed a data write)');
        expect(status.code, `up, so it answers: ${status.stderr}`).toBe(0);
        const list = await cowvol(['snapshot', 'list', vol, '--json']);
        expect(list.code, list.stderr).toBe(0);
        expect((await cowvol(['stop', vol])).code).toBe(0);
        expect(await served.exited).toBe(0);
      } else {
        console.log('serve-full-disk: the full disk aborted the journal; the server stopped');
        expect(exitCode, served.log()).toBe(7);
        expect(served.log()).toContain('the volume failed: stopping');
      }
    } finally {
      if (served.child.exitCode === null && served.child.signalCode === null) served.child.kill('SIGKILL');
    }
    execFileSync('mount', ['-o', 'remount,size=256m', mnt]);
    const check = await cowvol(['check', vol]);
    expect(check.code, check.stderr).toBe(0);
    const snapshotA = await cowvolOk(['snapshot', 'read', vol, 'a']);
    expect(snapshotA.stdout.equals(await import('node:fs/promises').then((f) => f.readFile(a)))).toBe(true);
  },
);

it('a log that cannot be written (stderr on a full disk: /dev/full) loses its lines and does not stop the server', { timeout: 60_000 }, async () => {
  const vol = join(dir, 'log-full.img');
  await cowvolOk(['create', vol, '--size', '4M']);
  const full = await open('/dev/full', 'w');
  const child = spawn(process.execPath, [CLI, 'serve', vol], { stdio: ['ignore', 'pipe', full.fd] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  try {
    const uri = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(out.trim());
      });
      void exited.then((code) => reject(new Error(`serve exited ${String(code)} before serving`)));
    });
    const data = randomBytes(4096);
    await writeFile(join(dir, 'log-full.bin'), data);
    for (let i = 0; i < 5; i++) await cowvolOk(['write', vol, '--input', join(dir, 'log-full.bin'), '--offset', String(i * 4096)]);
    expect(uri).toContain('nbd+unix');
    expect(child.exitCode, 'still serving after its log lines were lost').toBeNull();
    const stop = await cowvol(['stop', vol]);
    expect(stop.code, stop.stderr).toBe(0);
    expect(await exited).toBe(0);
  } finally {
    await full.close();
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
});
