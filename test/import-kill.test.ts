import { spawn } from 'node:child_process';
import { readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Volume, importStream, type StreamSource } from '@cowvol/cow-core';
import { mulberry32 } from '@cowvol/test-support';
import { CLI, cowvol, cowvolOk, tempDir } from './helpers.js';

/**
 * A full-stream import SIGKILLed at any step — before the target exists,
 * at every step of creating it, between extents, after a marker, before
 * and after the final snapshot — is finished by `import --resume`, or, when
 * there is nothing to resume (`RESUME_MISMATCH`), by a plain re-run, with
 * exactly the source snapshot's content (docs/ARCHITECTURE.md §15.6). The
 * kill comes from the production seam `COWVOL_KILL_AT`
 * (packages/cow-core/src/kill-point.ts); each run asserts the child really
 * died by SIGKILL at that step, so a step that is never reached fails.
 *
 * Knob: COWVOL_IMPORT_KILL_EXTENTS (default 3) — how many extent
 * boundaries (`import:extent#n`, spread over the stream) are killed at.
 */
const CHILD = resolve(import.meta.dirname, 'import-kill-child.mjs');
const KiB = 1024;
const SIZE = 2048 * KiB;
const MARKER_BYTES = 64 * KiB;
const EXTENT_KILLS = Number(process.env.COWVOL_IMPORT_KILL_EXTENTS ?? 3);

let dir: string;
let cleanup: () => Promise<void>;
let streamPath: string;
let stream: Buffer;
let expected: Buffer;
let extents: number;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-import-kill-'));
  const seed = Number(process.env.COWVOL_SEED ?? 4242);
  console.log(`[import-kill] seed=${seed}`);
  const rnd = mulberry32(seed);
  const src = join(dir, 'src.img');
  const v = await Volume.create(src, { sizeBytes: SIZE });
  // Ten runs of data at random places: ten extents or so, some spanning several pieces.
  for (let i = 0; i < 10; i++) {
    const len = (1 + Math.floor(rnd() * 24)) * 4 * KiB;
    const at = Math.floor(rnd() * ((SIZE - len) / (4 * KiB))) * 4 * KiB;
    await v.write(at, Buffer.from(Array.from({ length: len }, () => Math.floor(rnd() * 256))));
  }
  await v.createSnapshot('src');
  expected = await v.readSnapshot('src', 0, SIZE);
  await v.close();
  streamPath = join(dir, 'src.cvs');
  const out = await cowvolOk(['snapshot', 'export', src, 'src', '--output', streamPath, '--json']);
  extents = (JSON.parse(out.stdout.toString()) as { extentCount: number }).extentCount;
  stream = await readFile(streamPath);
});
afterAll(async () => {
  await cleanup();
});

function source(): StreamSource {
  return { lengthBytes: stream.length, read: async (o, l) => stream.subarray(o, Math.min(stream.length, o + l)) };
}

/** Runs the import child with COWVOL_KILL_AT=step; resolves with how it ended. */
function killedImport(target: string, step: string): Promise<{ signal: NodeJS.Signals | null; code: number | null; stderr: string }> {
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, [CHILD, target, streamPath, String(MARKER_BYTES)], { env: { ...process.env, COWVOL_KILL_AT: step }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', fail);
    child.on('exit', (code, signal) => ok({ code, signal, stderr }));
  });
}

/** Runs `cowvol <args>` with COWVOL_KILL_AT=step; resolves with the signal that ended it. */
function cowvolKilled(args: string[], step: string): Promise<NodeJS.Signals | null> {
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, COWVOL_KILL_AT: step }, stdio: 'ignore' });
    child.on('error', fail);
    child.on('exit', (_code, signal) => ok(signal));
  });
}

function steps(): string[] {
  const out = ['import:verified', 'create:intent', 'create:file', 'create:store', 'create:journal', 'create:meta', 'create:recorded', 'import:created'];
  for (let i = 1; i <= EXTENT_KILLS; i++) out.push(`import:extent#${Math.max(1, Math.round((i * extents) / (EXTENT_KILLS + 1)))}`);
  out.push('import:marker#1', 'import:applied', 'import:finished');
  return [...new Set(out)];
}

describe('import killed at every step: --resume or a re-run finishes it with the right data', () => {
  it('every step of a small full import', async () => {
    expect(extents, 'the stream has several extents').toBeGreaterThanOrEqual(4);
    const outcomes: string[] = [];
    for (const step of steps()) {
      const target = join(dir, `t-${step.replace(/[^a-z0-9]+/gi, '-')}.img`);
      const killed = await killedImport(target, step);
      expect(killed.signal, `import killed at ${step} (exit ${String(killed.code)}): ${killed.stderr}`).toBe('SIGKILL');
      // The dead importer's owner lock would go stale only after its stale time; nobody else uses the target.
      await rm(join(`${target}.cowvol`, 'lock'), { recursive: true, force: true });
      let how = 'resumed';
      const result = await importStream(target, source(), { resume: true }).catch(async (err: unknown) => {
        expect(err, `--resume after a kill at ${step}: ${String(err)}`).toMatchObject({ code: 'RESUME_MISMATCH' });
        how = 're-run';
        return importStream(target, source());
      });
      outcomes.push(`${step}:${result.alreadyImported ? 'already-done' : how}`);
      const v = await Volume.open(target);
      try {
        expect((await v.readSnapshot('src', 0, SIZE)).equals(expected), `snapshot src after a kill at ${step}`).toBe(true);
        expect((await v.read(0, SIZE)).equals(expected), `live volume after a kill at ${step}`).toBe(true);
        expect(await v.importState(), `no import left pending after ${step}`).toBeUndefined();
        expect((await v.check()).status, `check after a kill at ${step}`).toBe('clean');
      } finally {
        await v.close();
      }
      expect((await stat(join(`${target}.cowvol`, 'creating')).catch(() => undefined)) === undefined, `create intent gone after ${step}`).toBe(true);
    }
    console.log(`[import-kill] ${extents} extents; outcomes ${outcomes.join(', ')}`);
  });

  it('cowvol create killed at each step: other commands name the interrupted create, a re-run creates the volume; an adopted file is never removed', async () => {
    // Every step is killed at by the import test above; here the first, the file, the database and the commit point.
    for (const step of ['create:intent', 'create:file', 'create:meta', 'create:recorded']) {
      const vol = join(dir, `c-${step.replace(/[^a-z0-9]+/gi, '-')}.img`);
      const killed = await cowvolKilled(['create', vol, '--size', '1M'], step);
      expect(killed, `create killed at ${step}`).toBe('SIGKILL');
      await rm(join(`${vol}.cowvol`, 'lock'), { recursive: true, force: true });
      if (step !== 'create:recorded') {
        // Any other command names the interrupted create and what finishes it, not a damaged or unreadable database.
        const info = await cowvol(['info', vol]);
        expect(info.code, `info after ${step}: ${info.stderr}`).toBe(step === 'create:intent' ? 3 : 6);
        expect(info.stderr, `info after ${step}`).toContain('a create of it was interrupted');
        expect(info.stderr).toContain('run the same `cowvol create` again');
      }
      const again = await cowvol(['create', vol, '--size', '1M']);
      if (step === 'create:recorded') {
        expect(again.stderr, 'the create had finished').toContain('[VOLUME_EXISTS]');
        await cowvolOk(['info', vol]); // an open removes the intent the killed create left after its commit point
      } else expect(again.code, `re-run after ${step}: ${again.stderr}`).toBe(0);
      expect((await stat(join(`${vol}.cowvol`, 'creating')).catch(() => undefined)) === undefined, `create intent gone after ${step}`).toBe(true);
    }
    // --adopt: the file is the user's; a reclaimed create must leave it as it was.
    const adopted = join(dir, 'adopted.img');
    await writeFile(adopted, expected);
    expect(await cowvolKilled(['create', adopted, '--adopt'], 'create:journal')).toBe('SIGKILL');
    await rm(join(`${adopted}.cowvol`, 'lock'), { recursive: true, force: true });
    await cowvolOk(['create', adopted, '--adopt']);
    expect((await readFile(adopted)).equals(expected), 'the adopted file is intact').toBe(true);
  });

  it('a full import onto a symbolic link to nothing says so, and creates nothing through it', async () => {
    const link = join(dir, 'dangling.img');
    await symlink(join(dir, 'nowhere.img'), link);
    const r = await cowvol(['import', link, '--input', streamPath]);
    expect([r.code, r.stderr]).toEqual([4, expect.stringContaining('is a symbolic link to')]);
    expect(r.stderr).toContain('which does not exist');
    expect(r.stderr).not.toContain('--adopt');
    expect(await stat(join(dir, 'nowhere.img')).catch(() => undefined)).toBeUndefined();
  });

  it('a file put at the path after a create was killed is never removed by the next create or import (the intent names the file it made)', async () => {
    // [kill point, how the user's file gets there, the command run next, what it must say]
    const cases = [
      ['create:journal', 'replaced', ['create', '--adopt'], 0], // a new inode where the killed create's file was: adopted as it is
      ['create:journal', 'rewritten', ['create', '--adopt'], 0], // the same inode written over (cp onto it): adopted as it is
      ['create:intent', 'replaced', ['create', '--size', '1M'], 4], // before the file was made: VOLUME_EXISTS, not overwritten
      ['create:journal', 'replaced', ['import', '--input', streamPath], 4], // an import into the path: VOLUME_EXISTS
    ] as const;
    for (const [step, how, command, code] of cases) {
      const vol = join(dir, `u-${step.replace(/[^a-z0-9]+/gi, '-')}-${how}-${command[0]}.img`);
      expect(await cowvolKilled(['create', vol, '--size', '1M'], step), `create killed at ${step}`).toBe('SIGKILL');
      await rm(join(`${vol}.cowvol`, 'lock'), { recursive: true, force: true });
      if (how === 'replaced') {
        await rm(vol, { force: true });
        await writeFile(`${vol}.tmp`, expected);
        await rename(`${vol}.tmp`, vol);
      } else await writeFile(vol, expected);
      const r = await cowvol([command[0], vol, ...command.slice(1)]);
      expect(r.code, `${command.join(' ')} after a kill at ${step} (${how}): ${r.stderr}`).toBe(code);
      if (code === 4) expect(r.stderr).toContain('[VOLUME_EXISTS]');
      expect((await readFile(vol)).equals(expected), `the user's file is intact after ${command.join(' ')} (${how}, ${step})`).toBe(true);
    }
  });

  it('through the CLI: a re-run after a kill while creating the target, --resume after a kill after a marker', async () => {
    for (const [step, args, code] of [
      ['create:journal', [], 'RESUME_MISMATCH'],
      ['import:marker#1', ['--resume'], undefined],
    ] as const) {
      const target = join(dir, `cli-${step.replace(/[^a-z0-9]+/gi, '-')}.img`);
      expect((await killedImport(target, step)).signal, step).toBe('SIGKILL');
      await rm(join(`${target}.cowvol`, 'lock'), { recursive: true, force: true });
      if (code) {
        const resumed = await cowvol(['import', target, '--input', streamPath, '--resume']);
        expect(resumed.stderr, step).toContain(`[${code}]`);
      }
      const r = await cowvol(['import', target, '--input', streamPath, ...args]);
      expect(r.code, `${step}: ${r.stderr}`).toBe(0);
      const v = await Volume.open(target);
      try {
        expect((await v.readSnapshot('src', 0, SIZE)).equals(expected), `snapshot src after a kill at ${step}`).toBe(true);
      } finally {
        await v.close();
      }
    }
  });

  it('a create killed while it made the file (its intent names no file yet): the file stays, and create or import says what to do', async () => {
    const vol = join(dir, 'unnamed.img');
    expect(await cowvolKilled(['create', vol, '--size', '1M'], 'create:file')).toBe('SIGKILL');
    await rm(join(`${vol}.cowvol`, 'lock'), { recursive: true, force: true });
    // As if killed before the intent was rewritten to name the file (FORMAT §2 step 4).
    await writeFile(join(`${vol}.cowvol`, 'creating'), `${JSON.stringify({ v: 1, createdFile: true, pid: 1 })}\n`);
    for (const command of [
      ['import', vol, '--input', streamPath],
      ['create', vol, '--size', '1M'],
    ]) {
      const r = await cowvol(command);
      expect(r.code, `${String(command[0])}: ${r.stderr}`).toBe(4);
      expect(r.stderr).toContain('a create of it was interrupted while it made that file');
      expect((await stat(vol)).size).toBe(1024 * 1024); // kept
    }
    await cowvolOk(['create', vol, '--adopt']); // the user's call: take it
  });

  it('--resume --verify after a kill between the commit and the read-back still reads the snapshot back (verified: true), not "nothing to do" unverified', async () => {
    const target = join(dir, 'verify-after-commit.img');
    const killed = await cowvol(['import', target, '--input', streamPath, '--verify'], { env: { COWVOL_KILL_AT: 'import:finished' } });
    expect(killed.code, killed.stderr).toBe(-1);
    await rm(join(`${target}.cowvol`, 'lock'), { recursive: true, force: true });
    const r = await cowvol(['import', target, '--input', streamPath, '--resume', '--verify', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ alreadyImported: true, verified: true });
    const plain = await cowvol(['import', target, '--input', streamPath, '--resume', '--json']);
    expect(JSON.parse(plain.stdout.toString())).toMatchObject({ alreadyImported: true, verified: false });
  });

  it('a snapshot create while the import is pending is refused (IMPORT_PENDING, exit 4), takes nothing and leaves live as it was; --resume then finishes', async () => {
    const target = join(dir, 'resume-name-taken.img');
    expect((await killedImport(target, 'import:marker#1')).signal).toBe('SIGKILL');
    await rm(join(`${target}.cowvol`, 'lock'), { recursive: true, force: true });
    const before = (await cowvolOk(['read', target])).stdout;
    const r = await cowvol(['snapshot', 'create', target, 'src']); // the incoming snapshot's name
    expect([r.code, r.stderr]).toEqual([4, expect.stringContaining('[IMPORT_PENDING]')]);
    expect(r.stderr).toContain('half-applied');
    expect((await cowvolOk(['read', target])).stdout.equals(before), 'a refused create leaves live as it was').toBe(true);
    expect(JSON.parse((await cowvolOk(['snapshot', 'list', target, '--json'])).stdout.toString())).toMatchObject({ snapshots: [] });
    // No snapshot to restore: the advice is to remove the partly created volume, not a restore.
    const again = await cowvol(['import', target, '--input', streamPath]);
    expect([again.code, again.stderr]).toEqual([4, expect.stringContaining('[IMPORT_PENDING]')]);
    expect(again.stderr).toContain('removing the partly created volume');
    expect(again.stderr).not.toContain('snapshot restore');
    // A dry run of the resume says what the resume does: it continues after the durable marker.
    const dry = JSON.parse((await cowvolOk(['import', target, '--input', streamPath, '--resume', '--dry-run', '--json'])).stdout.toString()) as { resumed: boolean; skippedExtents: number };
    expect(dry.resumed).toBe(true);
    expect(dry.skippedExtents).toBeGreaterThan(0);
    await cowvolOk(['import', target, '--input', streamPath, '--resume']);
    expect((await cowvolOk(['snapshot', 'read', target, 'src'])).stdout.equals(expected)).toBe(true);
  });
});
