import { rm } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Volume } from '@cowvol/cow-core';
import { CLI, cowvol, sha256File, tempDir, cowvolOk as ok, jsonOf as json } from './helpers.js';

/**
 * Several processes and interruptions through the real CLI: a busy volume
 * (VOLUME_BUSY, --wait), and an import killed with SIGKILL then resumed.
 */
let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-processes-'));
});
afterAll(async () => {
  await cleanup();
});

describe('several processes: busy volumes and interrupted imports', () => {
  it('a busy volume fails fast with VOLUME_BUSY (exit 5), or with --wait waits for the holder to finish', async () => {
    const vol = join(dir, 'busy.img');
    await ok(['create', vol, '--size', '64K']);
    const holder = await Volume.open(vol);
    const started = Date.now();
    const fast = await cowvol(['snapshot', 'list', vol, '--json']);
    expect(fast.code).toBe(5);
    expect(json(fast)).toMatchObject({ error: { code: 'VOLUME_BUSY', details: { pid: process.pid } } });
    const waiting = cowvol(['snapshot', 'create', vol, 'after-wait', '--wait', '20', '--json']);
    await new Promise((r) => setTimeout(r, 1500));
    await holder.close();
    const waited = await waiting;
    expect(waited.code, waited.stderr).toBe(0);
    expect(Date.now() - started).toBeGreaterThan(1000);
    expect(json(waited)).toMatchObject({ name: 'after-wait' });
    // A deadline that passes: VOLUME_BUSY after about the wait.
    const h2 = await Volume.open(vol);
    try {
      const t0 = Date.now();
      const timedOut = await cowvol(['info', vol, '--wait', '0.5']);
      expect(timedOut.code).toBe(5);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    } finally {
      await h2.close();
    }
    expect((await cowvol(['info', vol, '--wait', 'soon'])).code).toBe(2);
  });

  it('an import killed mid-way is continued with --resume and gives the same volume', async () => {
    const vol = join(dir, 'big-src.img');
    await ok(['create', vol, '--size', '40M']);
    await ok(['write', vol], randomBytes(40 * 1024 * 1024));
    await ok(['snapshot', 'create', vol, 'all']);
    const stream = join(dir, 'all.cvs');
    await ok(['snapshot', 'export', vol, 'all', '--output', stream]);
    const target = join(dir, 'big-dst.img');
    // Kill the import once it has reported applying more than 20 MiB (past its first durable marker, at 16 MiB).
    const child = spawn(process.execPath, [CLI, 'import', target, '--input', stream, '--progress'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let killedAt = -1;
    let buffered = '';
    child.stderr.on('data', (d: Buffer) => {
      buffered += d.toString();
      for (const line of buffered.split('\n').slice(0, -1)) {
        const e = JSON.parse(line) as { phase?: string; doneBytes: number };
        if (killedAt < 0 && e.phase === 'apply' && e.doneBytes > 20 * 1024 * 1024) {
          killedAt = e.doneBytes;
          child.kill('SIGKILL');
        }
      }
      buffered = buffered.slice(buffered.lastIndexOf('\n') + 1);
    });
    const code = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    expect(killedAt, 'the import was killed while applying').toBeGreaterThan(0);
    expect(code).not.toBe(0);
    // The killed process's lock goes stale after 10 s: --wait rides that out.
    const pending = await cowvol(['import', target, '--input', stream, '--json', '--wait', '20']);
    expect(json(pending)).toMatchObject({ error: { code: 'IMPORT_PENDING' } });
    const resumed = json<{ resumed: boolean; skippedExtents: number; appliedExtents: number; extentCount: number }>(await ok(['import', target, '--input', stream, '--resume', '--json']));
    expect(resumed.resumed).toBe(true);
    expect(resumed.skippedExtents, 'extents before the durable marker are not applied again').toBeGreaterThan(0);
    expect(resumed.skippedExtents + resumed.appliedExtents).toBe(resumed.extentCount);
    const a = join(dir, 'a.raw');
    const b = join(dir, 'b.raw');
    await ok(['snapshot', 'read', vol, 'all', '--output', a]);
    await ok(['snapshot', 'read', target, 'all', '--output', b]);
    expect(await sha256File(b)).toBe(await sha256File(a));
    for (const f of [a, b, stream, vol, target]) await rm(f, { force: true });
    await rm(`${vol}.cowvol`, { recursive: true, force: true });
    await rm(`${target}.cowvol`, { recursive: true, force: true });
  });
});
