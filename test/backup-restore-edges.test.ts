/**
 * `cowvol backup restore` and the repository where users and scripts get
 * them wrong (docs/ARCHITECTURE.md §17, README "Backups off the machine",
 * "Interrupting a command"), on a file:// repository:
 *
 * - a nightly rotation forgot the middle of the chain: `--into` still finds
 *   a base the target holds;
 * - a target that exists, or a missing folder, is refused before any chunk
 *   is downloaded;
 * - a restore killed mid-import is finished by running it again, and its
 *   spool does not stay behind;
 * - a push stopped by SIGTERM in the middle releases its lock and removes
 *   its temporary objects, so a prune runs right after;
 * - a lost chunk is inherited by incremental pushes, and `push --full`
 *   stores a whole copy again;
 * - `verify` counts a chunk stored under another key as missing;
 * - `list` reports a damaged manifest and lists the others;
 * - a restore waits for no prune: it is refused while one holds the
 *   exclusive lock; a read-only repository is verified and restored from
 *   without a lock, with a warning.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, readFile, rename, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { acquireLock, chunkObjectKey, FileObjectStore, loadKeyFile, Repository, restoreFromRepository, type RestoreTarget } from '@cowvol/backup';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cowvol, cowvolOk, jsonOf, tempDir } from './helpers.js';
import { startServe } from './nbd-peers.js';

const MiB = 1024 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
let vol: string;
let key: string;
let repoUrl: string;
let uuid: string;

/** Writes `bytes` of random data at `offsetBytes` of the source volume. */
async function scribble(offsetBytes: number, bytes: number): Promise<void> {
  const input = join(dir, 'in.bin');
  await writeFile(input, randomBytes(bytes));
  await cowvolOk(['write', vol, '--offset', String(offsetBytes), '--input', input]);
}

/** The bytes of snapshot `name` of volume `path`. */
async function snapshotBytes(path: string, name: string): Promise<Buffer> {
  const r = await cowvolOk(['snapshot', 'read', path, name]);
  return r.stdout;
}

/** Every file under `root` whose name starts with `prefix`, recursively. */
async function filesStartingWith(root: string, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { withFileTypes: true, recursive: true })) if (e.name.startsWith(prefix)) out.push(e.name);
  return out;
}

/** A new file repository `dir/<name>` (64 KiB chunks) holding `snapshots` of the source volume, pushed in order. */
async function freshRepository(name: string, snapshots: readonly string[]): Promise<{ repo: string; url: string }> {
  const repo = join(dir, name);
  const url = pathToFileURL(repo).href;
  await cowvolOk(['backup', 'init', url, '--key-file', key, '--chunk-size', '64K']);
  for (const s of snapshots) await cowvolOk(['backup', 'push', vol, s, '--to', url, '--key-file', key]);
  return { repo, url };
}

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-restore-edges-'));
  vol = join(dir, 'src.img');
  key = join(dir, 'key');
  await cowvolOk(['backup', 'key-gen', key]);
  await cowvolOk(['create', vol, '--size', '24M']);
  await scribble(MiB, 20 * MiB);
  await cowvolOk(['snapshot', 'create', vol, 'mon']);
  await scribble(0, 2 * MiB);
  await cowvolOk(['snapshot', 'create', vol, 'tue']);
  await scribble(10 * MiB, 2 * MiB);
  await cowvolOk(['snapshot', 'create', vol, 'wed']);
  repoUrl = pathToFileURL(join(dir, 'repo')).href;
  await cowvolOk(['backup', 'init', repoUrl, '--key-file', key, '--chunk-size', '64K']);
  for (const s of ['mon', 'tue', 'wed']) await cowvolOk(['backup', 'push', vol, s, '--to', repoUrl, '--key-file', key]);
  uuid = (await readdir(join(dir, 'repo', 'manifests')))[0] ?? '';
  expect(uuid).toMatch(/^[0-9a-f]{32}$/);
}, 120_000);

afterAll(async () => {
  await cleanup();
});

describe('backup restore', () => {
  it('--into finds a base the target holds when a manifest in the middle of the chain was forgotten', async () => {
    const target = join(dir, 'chain.img');
    await cowvolOk(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key]);
    await rm(join(dir, 'repo', 'manifests', uuid, 'tue')); // what `backup forget` does to tue
    const r = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/wed`, target, '--into', '--key-file', key, '--verify', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(jsonOf<{ base: string; verified: boolean }>(r)).toMatchObject({ base: `manifests/${uuid}/mon`, verified: true });
    expect((await snapshotBytes(target, 'wed')).equals(await snapshotBytes(vol, 'wed'))).toBe(true);
  });

  it("--into takes the target's newest snapshot as the base when it was pushed, also off the parent chain (a sibling restored last)", async () => {
    // Pushed mon, then wed (parent mon: tue had no manifest yet), then tue (parent mon): tue is wed's sibling, not its ancestor.
    const { url } = await freshRepository('repo-sibling', ['mon', 'wed', 'tue']);
    const target = join(dir, 'sibling.img');
    await cowvolOk(['backup', 'restore', `${url}/${uuid}/mon`, target, '--key-file', key]);
    await cowvolOk(['backup', 'restore', `${url}/${uuid}/tue`, target, '--into', '--key-file', key]);
    const r = await cowvol(['backup', 'restore', `${url}/${uuid}/wed`, target, '--into', '--key-file', key, '--verify', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(jsonOf<{ base: string }>(r)).toMatchObject({ base: `manifests/${uuid}/tue` });
    expect((await snapshotBytes(target, 'wed')).equals(await snapshotBytes(vol, 'wed'))).toBe(true);
  });

  it('a target that exists, or whose folder is missing, is refused before any chunk is downloaded', async () => {
    const existing = join(dir, 'notes.txt');
    await writeFile(existing, 'not a volume');
    const cases: Array<[string, string[], string, number]> = [
      ['an existing file', [existing], 'VOLUME_EXISTS', 4],
      ['an existing folder', [join(dir, 'repo')], 'VOLUME_EXISTS', 4],
      ['a missing folder', [join(dir, 'no-such-folder', 'x.img')], 'INVALID_ARGUMENT', 2],
      ['a path through a file', [join(existing, 'x.img')], 'INVALID_ARGUMENT', 2],
      ['--into a missing volume', [join(dir, 'missing.img'), '--into'], 'VOLUME_NOT_FOUND', 3],
    ];
    for (const [what, target, code, exit] of cases) {
      const r = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, ...target, '--key-file', key, '--progress']);
      expect(r.stderr, what).toContain(`[${code}]`);
      expect(r.code, what).toBe(exit);
      expect(r.stderr, `${what}: nothing downloaded`).not.toContain('"phase":"download"');
    }
    expect(await readFile(existing, 'utf8')).toBe('not a volume');
    // The volume the snapshot was taken on: VOLUME_EXISTS without --into, SNAPSHOT_EXISTS with it, both before any download.
    for (const [flags, code, exit] of [
      [[], 'VOLUME_EXISTS', 4],
      [['--into'], 'SNAPSHOT_EXISTS', 4],
    ] as const) {
      const r = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, vol, ...flags, '--key-file', key, '--progress']);
      expect(r.stderr, `the source volume ${flags.join(' ')}`).toContain(`[${code}]`);
      expect(r.code).toBe(exit);
      expect(r.stderr).not.toContain('"phase":"download"');
    }
  });

  it('run again after it finished, a restore answers at once — nothing downloaded, exit 0 — naming the snapshot as it is called there now', async () => {
    const target = join(dir, 'twice.img');
    await cowvolOk(['backup', 'restore', `${repoUrl}/${uuid}/wed`, target, '--key-file', key]);
    const again = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/wed`, target, '--key-file', key, '--verify', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(jsonOf(again)).toMatchObject({ snapshot: 'wed', alreadyThere: true, resumed: false, chunksDownloaded: 0, verified: true });
    // Renamed there, and another snapshot named wed taken: the restored copy is found by its identity, under its new name.
    await cowvolOk(['snapshot', 'rename', target, 'wed', 'restored-wed']);
    await cowvolOk(['write', target, '--input', join(dir, 'in.bin')]);
    await cowvolOk(['snapshot', 'create', target, 'wed']);
    const renamed = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/wed`, target, '--key-file', key, '--verify', '--json']);
    expect(renamed.code, renamed.stderr).toBe(0);
    expect(jsonOf(renamed)).toMatchObject({ snapshot: 'restored-wed', alreadyThere: true, verified: true });
    const human = await cowvolOk(['backup', 'restore', `${repoUrl}/${uuid}/wed`, target, '--key-file', key]);
    expect(human.stdout.toString()).toContain(`${target} holds wed already, as restored-wed: nothing downloaded`);
  });

  it('a copy there that is suspect (writes made outside cowvol, accepted) is not "already there": BASE_MISMATCH, nothing vouched for', async () => {
    const target = join(dir, 'suspect.img');
    await cowvolOk(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key]);
    const fh = await open(target, 'r+');
    await fh.write(Buffer.from('EVIL'), 0, 4, 100); // the restored snapshot reads these bytes through to live
    await fh.close();
    await cowvolOk(['accept-changes', target]);
    const r = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key, '--json']);
    expect(r.code, r.stderr).toBe(4);
    expect(jsonOf<{ error: { code: string; details: { suspect: boolean } } }>(r).error).toMatchObject({ code: 'BASE_MISMATCH', details: { suspect: true } });
  });

  it('killed while it created the new volume, the same restore run again starts it over; the spool is removed', async () => {
    const target = join(dir, 'half.img');
    const killed = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key], { env: { COWVOL_KILL_AT: 'create:file' } });
    expect(killed.code, killed.stderr).toBe(-1);
    expect(await filesStartingWith(dir, '.half.img.cowvol-restore-')).toHaveLength(1);
    const again = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key, '--verify']);
    expect(again.code, again.stderr).toBe(0);
    expect((await snapshotBytes(target, 'mon')).equals(await snapshotBytes(vol, 'mon'))).toBe(true);
    expect(await filesStartingWith(dir, '.half.img.cowvol-restore-')).toEqual([]);
  });

  it('killed in the middle of its import, the same restore run again finishes it; no spool is left', async () => {
    const target = join(dir, 'killed.img');
    const killed = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key], { env: { COWVOL_KILL_AT: 'import:extent#40' } });
    expect(killed.code, killed.stderr).toBe(-1); // SIGKILL: no exit code
    expect(await filesStartingWith(dir, '.killed.img.cowvol-restore-')).toHaveLength(1);
    // info says the import is pending, and a write is refused until it is finished.
    const info = jsonOf<{ pendingImport: { source: { name: string } } | null }>(await cowvolOk(['info', target, '--json']));
    expect(info.pendingImport?.source.name).toBe('mon');
    const write = await cowvol(['write', target, '--input', '-'], { input: Buffer.alloc(4096, 1) });
    expect(write.stderr).toContain('[IMPORT_PENDING]');
    expect(write.code).toBe(4);
    const again = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key, '--verify', '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(jsonOf(again)).toMatchObject({ resumed: true, alreadyThere: false, verified: true });
    expect((await snapshotBytes(target, 'mon')).equals(await snapshotBytes(vol, 'mon'))).toBe(true);
    expect(await filesStartingWith(dir, '.killed.img.cowvol-restore-')).toEqual([]);
    expect((await cowvol(['check', target])).code).toBe(0);
  });
});

describe('a restore interrupted into a volume that is then served', () => {
  it('the server refuses writes to it (the CLI says IMPORT_PENDING) and the same restore run again finishes it through the server', async () => {
    const target = join(dir, 'served-target.img');
    const killed = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key], { env: { COWVOL_KILL_AT: 'import:extent#40' } });
    expect(killed.code, killed.stderr).toBe(-1);
    const server = await startServe(target);
    try {
      const write = await cowvol(['write', target, '--input', '-'], { input: Buffer.alloc(4096, 3) });
      expect(write.stderr).toContain('[IMPORT_PENDING]');
      expect(write.code).toBe(4);
      const again = await cowvol(['backup', 'restore', `${repoUrl}/${uuid}/mon`, target, '--key-file', key, '--verify', '--json']);
      expect(again.code, again.stderr).toBe(0);
      expect(jsonOf(again)).toMatchObject({ resumed: true, verified: true });
      await cowvolOk(['write', target, '--input', '-'], Buffer.alloc(4096, 3)); // the import is finished: writes go on
    } finally {
      await cowvolOk(['stop', target]);
      await server.exited;
    }
    expect((await snapshotBytes(target, 'mon')).equals(await snapshotBytes(vol, 'mon'))).toBe(true);
  });

  it('--into a volume served read-only is refused before any chunk is downloaded (VOLUME_READ_ONLY, exit 4); the volume is untouched', async () => {
    // A repository of its own: other tests here forget manifests of the shared one.
    const { url } = await freshRepository('repo-served-ro', ['mon', 'tue']);
    const target = join(dir, 'served-ro.img');
    await cowvolOk(['backup', 'restore', `${url}/${uuid}/mon`, target, '--key-file', key]);
    const server = await startServe(target, ['--read-only']);
    try {
      const r = await cowvol(['backup', 'restore', `${url}/${uuid}/tue`, target, '--into', '--key-file', key, '--progress']);
      expect(r.stderr).toContain('[VOLUME_READ_ONLY]');
      expect(r.code).toBe(4);
      expect(r.stderr, 'nothing downloaded').not.toContain('"phase":"download"');
    } finally {
      await cowvolOk(['stop', target]);
      await server.exited;
    }
    expect(jsonOf<{ snapshots: Array<{ name: string }> }>(await cowvolOk(['snapshot', 'list', target, '--json'])).snapshots.map((s) => s.name)).toEqual(['mon']);
    expect(await filesStartingWith(dir, '.served-ro.img.cowvol-restore-'), 'no spool').toEqual([]);
  });
});

/**
 * Runs the CLI with `args` until it stops itself at kill point `step`
 * (COWVOL_KILL_SIGNAL=SIGSTOP): resolves once the process is stopped (state
 * T in /proc), with its pid, its exit and what it printed so far.
 */
async function stoppedAt(args: string[], step: string): Promise<{ pid: number; exited: Promise<number | null>; output: () => { stdout: string; stderr: string } }> {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, COWVOL_KILL_AT: step, COWVOL_KILL_SIGNAL: 'SIGSTOP' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (d: Buffer) => (out.stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out.stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const pid = child.pid ?? 0;
  const deadline = Date.now() + 60_000;
  while ((await readFile(`/proc/${String(pid)}/stat`, 'utf8')).split(') ')[1]?.[0] !== 'T') {
    expect(Date.now(), `${args.join(' ')} did not reach ${step}: ${out.stderr}`).toBeLessThan(deadline);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { pid, exited, output: () => out };
}

describe('interrupted backup commands', () => {
  it('a push stopped by SIGTERM mid-way releases its lock and removes its temporary objects: a prune runs right after', async () => {
    const { repo, url } = await freshRepository('repo-term', []);
    // The push stops itself at its 20th chunk (COWVOL_KILL_SIGNAL=SIGSTOP); SIGTERM arrives there, then SIGCONT.
    const { pid, exited, output } = await stoppedAt(['backup', 'push', vol, 'mon', '--to', url, '--key-file', key, '--jobs', '4'], 'push:chunk#20');
    expect(await readdir(join(repo, 'locks'))).toHaveLength(1); // stopped while holding its lock
    process.kill(pid, 'SIGTERM');
    process.kill(pid, 'SIGCONT');
    expect(await exited).toBe(143);
    expect(output().stderr).toContain('interrupted by SIGTERM; temporary files removed, repository locks released');
    expect(await readdir(join(repo, 'locks'))).toEqual([]);
    expect(await filesStartingWith(repo, '.cowvol-tmp-')).toEqual([]);
    const prune = await cowvol(['backup', 'prune', url, '--key-file', key]);
    expect(prune.code, prune.stderr).toBe(0);
  });
});

describe('a push whose lock object is deleted under it', () => {
  it('stops before its manifest with LOCK_LOST (exit 5), whatever its lease says: a prune that took it for stale may have deleted what it found stored', async () => {
    const { repo, url } = await freshRepository('repo-lock-gone', []);
    // The push stops itself once its chunks are stored (push:chunks, COWVOL_KILL_SIGNAL=SIGSTOP); its lock is deleted there, then SIGCONT.
    const { pid, exited, output } = await stoppedAt(['backup', 'push', vol, 'mon', '--to', url, '--key-file', key, '--json'], 'push:chunks');
    const locks = await readdir(join(repo, 'locks'));
    expect(locks).toHaveLength(1);
    await rm(join(repo, 'locks', locks[0] ?? ''));
    process.kill(pid, 'SIGCONT');
    expect(await exited).toBe(5);
    expect(JSON.parse(output().stdout)).toMatchObject({ error: { code: 'LOCK_LOST', message: expect.stringContaining('its object is gone') as unknown } });
    expect(await readdir(join(repo, 'manifests')).catch(() => [])).toEqual([]);
  });
});

describe('a SIGKILLed backup command', () => {
  it('leaves its lock, which the next command of this machine finds gone at once: a prune right after runs, and the push run again finishes', async () => {
    const { repo, url } = await freshRepository('repo-kill', []);
    const killed = await cowvol(['backup', 'push', vol, 'mon', '--to', url, '--key-file', key], { env: { COWVOL_KILL_AT: 'push:chunk#5' } });
    expect(killed.code, killed.stderr).toBe(-1);
    expect(await readdir(join(repo, 'locks'))).toHaveLength(1); // nothing released it
    const prune = await cowvol(['backup', 'prune', url, '--key-file', key, '--json']);
    expect(prune.code, prune.stderr).toBe(0);
    expect(await readdir(join(repo, 'locks'))).toEqual([]); // the exclusive taker deleted the stale one
    await cowvolOk(['backup', 'push', vol, 'mon', '--to', url, '--key-file', key]);
    await cowvolOk(['backup', 'restore', `${url}/${uuid}/mon`, join(dir, 'after-kill.img'), '--key-file', key, '--verify']);
    expect((await snapshotBytes(join(dir, 'after-kill.img'), 'mon')).equals(await snapshotBytes(vol, 'mon'))).toBe(true);
  });
});

describe('the repository lock of reading commands', () => {
  it('a restore is refused while a prune holds the exclusive lock (REPOSITORY_LOCKED, exit 5), before anything is written', async () => {
    // A repository of its own, apart from the ones the commands killed above left their locks on.
    const { url } = await freshRepository('repo-locked', ['mon']);
    const repo = await Repository.open(new FileObjectStore(url), await loadKeyFile(key));
    const prune = await acquireLock(repo, 'exclusive', { command: 'prune' });
    try {
      const target = join(dir, 'locked-out.img');
      const r = await cowvol(['backup', 'restore', `${url}/${uuid}/mon`, target, '--key-file', key]);
      expect(r.stderr).toContain('[REPOSITORY_LOCKED]');
      expect(r.code).toBe(5);
      expect(await filesStartingWith(dir, 'locked-out.img')).toEqual([]);
      expect(await filesStartingWith(dir, '.locked-out.img')).toEqual([]);
    } finally {
      await prune.release();
    }
  });

  const root = process.getuid?.() === 0;
  if (process.env.CI && !root) throw new Error('CI=true but this run is not root: the read-only bind mount test needs it');
  it.skipIf(!root)(`a read-only repository (bind mount) is verified and restored from, without a lock, with a warning${root ? '' : ' [SKIPPED: needs root for mount]'}`, async () => {
    // A repository of its own, apart from the ones the commands killed above left their locks on.
    const { repo: rw, url: rwUrl } = await freshRepository('repo-rw', ['mon']);
    const ro = join(dir, 'repo-ro');
    await mkdir(ro);
    execFileSync('mount', ['--bind', rw, ro]);
    try {
      execFileSync('mount', ['-o', 'remount,bind,ro', ro]);
      const url = pathToFileURL(ro).href;
      const verify = await cowvol(['backup', 'verify', url, '--key-file', key]);
      expect(verify.code, verify.stderr).toBe(0);
      expect(verify.stderr).toContain('cowvol: warning: verify runs without a lock');
      const target = join(dir, 'from-ro.img');
      const restore = await cowvol(['backup', 'restore', `${url}/${uuid}/mon`, target, '--key-file', key, '--json']);
      expect(restore.code, restore.stderr).toBe(0);
      expect(jsonOf<{ warnings: string[] }>(restore).warnings).toEqual([expect.stringContaining('restore runs without a lock')]);
      expect((await snapshotBytes(target, 'mon')).equals(await snapshotBytes(vol, 'mon'))).toBe(true);
      // Unable to write a lock, still able to see one: a prune running (through the writable path) refuses the restore.
      const prune = await acquireLock(await Repository.open(new FileObjectStore(rwUrl), await loadKeyFile(key)), 'exclusive', { command: 'prune' });
      try {
        const locked = await cowvol(['backup', 'restore', `${url}/${uuid}/mon`, join(dir, 'from-ro-2.img'), '--key-file', key]);
        expect(locked.stderr).toContain('[REPOSITORY_LOCKED]');
        expect(locked.code).toBe(5);
      } finally {
        await prune.release();
      }
    } finally {
      execFileSync('umount', [ro]);
    }
  });
});

describe('a lost chunk', () => {
  it('is inherited by the next incremental push (verify names it), and push --full stores a whole copy again', async () => {
    const { repo, url } = await freshRepository('repo-lost', ['mon']);
    // The chunk at 6.25 MiB: mon's data, which tue (0–2 MiB) and wed (10–12 MiB) leave as it is.
    const repository = await Repository.open(new FileObjectStore(url), await loadKeyFile(key));
    const lost = (await repository.getManifest(uuid, 'mon')).chunks.get(100) ?? '';
    expect(lost).not.toBe('');
    await rm(join(repo, chunkObjectKey(lost)));
    await cowvolOk(['backup', 'push', vol, 'tue', '--to', url, '--key-file', key]); // exit 0: it trusts mon's ids
    const affected = async (): Promise<string[]> => {
      const r = await cowvol(['backup', 'verify', url, '--key-file', key, '--json']);
      expect(r.code, r.stderr).toBe(2);
      return jsonOf<{ affectedSnapshots: Array<{ snapshotName: string }> }>(r).affectedSnapshots.map((a) => a.snapshotName);
    };
    expect(await affected()).toEqual(['mon', 'tue']);
    const full = await cowvol(['backup', 'push', vol, 'wed', '--to', url, '--key-file', key, '--full', '--json']);
    expect(full.code, full.stderr).toBe(0);
    expect(jsonOf<{ parent: string | null; chunksUploaded: number }>(full)).toMatchObject({ parent: null });
    expect(jsonOf<{ chunksUploaded: number }>(full).chunksUploaded).toBeGreaterThan(0);
    // wed holds the lost chunk's content as it was: stored again, which makes mon and tue whole too.
    const after = await cowvol(['backup', 'verify', url, '--key-file', key]);
    expect(after.code, after.stdout.toString()).toBe(0);
    const target = join(dir, 'from-full.img');
    await cowvolOk(['backup', 'restore', `${url}/${uuid}/wed`, target, '--key-file', key, '--verify']);
    expect((await snapshotBytes(target, 'wed')).equals(await snapshotBytes(vol, 'wed'))).toBe(true);
  });
});

describe('a damaged chunk', () => {
  it('is replaced by push --full (read back, fails authentication), and the repository verifies clean again', async () => {
    const { repo, url } = await freshRepository('repo-damaged', ['mon']);
    const repository = await Repository.open(new FileObjectStore(url), await loadKeyFile(key));
    const damaged = (await repository.getManifest(uuid, 'mon')).chunks.get(100) ?? '';
    expect(damaged).not.toBe('');
    const path = join(repo, chunkObjectKey(damaged));
    const bytes = await readFile(path);
    bytes[bytes.length - 40]! ^= 0x01; // inside the ciphertext: the object is there, its tag fails
    await writeFile(path, bytes);
    const before = await cowvol(['backup', 'verify', url, '--key-file', key, '--read-data', '--json']);
    expect(before.code, before.stderr).toBe(2);
    expect(jsonOf<{ damagedChunks: Array<{ chunkId: string; problem: string }> }>(before).damagedChunks).toEqual([expect.objectContaining({ chunkId: damaged, problem: 'corrupt' })]);
    // An incremental push inherits it; --full reads every stored chunk back and replaces only the damaged one.
    const full = await cowvol(['backup', 'push', vol, 'tue', '--to', url, '--key-file', key, '--full', '--json']);
    expect(full.code, full.stderr).toBe(0);
    expect(jsonOf<{ chunksReplaced: number; parent: string | null }>(full)).toMatchObject({ chunksReplaced: 1, parent: null });
    expect((await readFile(path)).equals(bytes)).toBe(false);
    const after = await cowvol(['backup', 'verify', url, '--key-file', key, '--read-data']);
    expect(after.code, after.stdout.toString()).toBe(0);
    await cowvolOk(['backup', 'restore', `${url}/${uuid}/mon`, join(dir, 'from-repaired.img'), '--key-file', key, '--verify']);
    expect((await snapshotBytes(join(dir, 'from-repaired.img'), 'mon')).equals(await snapshotBytes(vol, 'mon'))).toBe(true);
  });
});

describe('backup list', () => {
  it('a damaged manifest is reported and the others are still listed', async () => {
    const { repo, url } = await freshRepository('repo-list', ['mon', 'tue', 'wed']);
    const path = join(repo, 'manifests', uuid, 'tue');
    const bytes = await readFile(path);
    bytes[bytes.length - 5]! ^= 0x20;
    await writeFile(path, bytes);
    const r = await cowvol(['backup', 'list', url, '--key-file', key, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const listed = jsonOf<{ snapshots: Array<{ snapshot: string }>; damaged: Array<{ key: string; code: string }> }>(r);
    expect(listed.snapshots.map((x) => x.snapshot)).toEqual(['mon', 'wed']);
    expect(listed.damaged).toEqual([expect.objectContaining({ key: `manifests/${uuid}/tue`, code: 'BACKUP_CORRUPT' })]);
    expect(r.stderr).toContain(`cowvol: warning: manifest manifests/${uuid}/tue does not open`);
  });
});

describe('backup verify', () => {
  it('a chunk stored under another key is missing, as a restore would find it', async () => {
    const { repo, url } = await freshRepository('repo-moved', ['tue']);
    expect((await cowvol(['backup', 'verify', url, '--key-file', key])).code).toBe(0);
    const prefix = (await readdir(join(repo, 'chunks')))[0] ?? '';
    const id = (await readdir(join(repo, 'chunks', prefix)))[0] ?? '';
    const elsewhere = prefix === 'ff' ? '00' : 'ff';
    await mkdir(join(repo, 'chunks', elsewhere), { recursive: true });
    await rename(join(repo, 'chunks', prefix, id), join(repo, 'chunks', elsewhere, id));
    const r = await cowvol(['backup', 'verify', url, '--key-file', key, '--json']);
    expect(r.code, r.stderr).toBe(2);
    expect(jsonOf<{ damagedChunks: Array<{ chunkId: string; problem: string }> }>(r).damagedChunks).toEqual([expect.objectContaining({ chunkId: id, problem: 'missing' })]);
  });

  it('restore --verify reads back only the chunks that hold data: a 1 GiB sparse volume costs its data, not its size', async () => {
    const sparse = join(dir, 'sparse.img');
    await cowvolOk(['create', sparse, '--size', '1G']);
    const input = join(dir, 'sparse.bin');
    await writeFile(input, randomBytes(200_000));
    await cowvolOk(['write', sparse, '--offset', String(300 * MiB), '--input', input]);
    const tail = join(dir, 'sparse-tail.bin');
    await writeFile(tail, randomBytes(4096));
    await cowvolOk(['write', sparse, '--offset', String(1024 * MiB - 4096), '--input', tail]);
    await cowvolOk(['snapshot', 'create', sparse, 'only']);
    const url = pathToFileURL(join(dir, 'repo-sparse')).href;
    await cowvolOk(['backup', 'init', url, '--key-file', key, '--chunk-size', '64K']);
    const pushed = jsonOf<{ volumeUuid: string }>(await cowvolOk(['backup', 'push', sparse, 'only', '--to', url, '--key-file', key, '--json']));
    const target = join(dir, 'sparse-restored.img');
    const r = await cowvol(['backup', 'restore', `${url}/${pushed.volumeUuid}/only`, target, '--key-file', key, '--verify', '--json']);
    expect(r.code, r.stderr).toBe(0);
    // The chunks that hold data, each read whole: ceil(200,000 / 64 KiB) at 300 MiB, and the last one.
    expect(jsonOf(r)).toMatchObject({ verified: true, verifyReadBytes: (Math.ceil(200_000 / 65_536) + 1) * 65_536 });
    expect((await snapshotBytes(target, 'only')).equals(await snapshotBytes(sparse, 'only'))).toBe(true);
  });

  it('restore --verify fails with VERIFY_FAILED when the snapshot read back differs from the backup in one byte (a target whose read-back flips it)', async () => {
    const { url } = await freshRepository('repo-verify-failed', ['mon']);
    const target = join(dir, 'verify-failed.img');
    await cowvolOk(['backup', 'restore', `${url}/${uuid}/mon`, target, '--key-file', key]);
    const repo = await Repository.open(new FileObjectStore(url), await loadKeyFile(key));
    const { Volume } = await import('@cowvol/cow-core');
    const volume = await Volume.openForReading(target);
    const flipAt = 3 * MiB + 12_345;
    const flipping: RestoreTarget = {
      state: async () => ({
        pendingImport: null,
        origins: (await volume.listSnapshots()).flatMap((s) => (s.origin ? [{ origin: s.origin, name: s.name, suspect: s.suspect }] : [])),
        identities: [],
      }),
      importFile: () => Promise.reject(new Error('the snapshot is there already: nothing is imported')),
      readSnapshot: async (name, offsetBytes, lengthBytes) => {
        const data = await volume.readSnapshot(name, offsetBytes, lengthBytes);
        if (flipAt >= offsetBytes && flipAt < offsetBytes + data.length) data[flipAt - offsetBytes] = (data[flipAt - offsetBytes] ?? 0) ^ 1;
        return data;
      },
      close: () => volume.close(),
    };
    const err = await restoreFromRepository(repo, uuid, 'mon', target, { into: true, verify: true, target: flipping }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'VERIFY_FAILED', details: { offsetBytes: flipAt - (flipAt % 65_536) } });
  });

  it('a suspect snapshot is not pushed (SNAPSHOT_SUSPECT, exit 4, no manifest): under its old identity it could pass for a copy a target holds', async () => {
    const src = join(dir, 'suspect-src.img');
    await cowvolOk(['create', src, '--size', '4M']);
    const input = join(dir, 'suspect.bin');
    await writeFile(input, randomBytes(MiB));
    await cowvolOk(['write', src, '--input', input]);
    await cowvolOk(['snapshot', 'create', src, 'p']);
    const { url } = await freshRepository('repo-suspect', []);
    // A write made outside cowvol, then accepted: p read those live blocks, so it is suspect.
    const outside = await open(src, 'r+');
    await outside.write(randomBytes(4096), 0, 4096, 8192);
    await outside.close();
    await cowvolOk(['accept-changes', src]);
    const r = await cowvol(['backup', 'push', src, 'p', '--to', url, '--key-file', key, '--json']);
    expect([r.code, jsonOf<{ error: { code: string } }>(r).error.code]).toEqual([4, 'SNAPSHOT_SUSPECT']);
    expect(jsonOf<{ snapshots: unknown[] }>(await cowvolOk(['backup', 'list', url, '--key-file', key, '--json'])).snapshots).toEqual([]);
    await cowvolOk(['snapshot', 'create', src, 'n']);
    const n = jsonOf<{ parent: string | null }>(await cowvolOk(['backup', 'push', src, 'n', '--to', url, '--key-file', key, '--json']));
    expect(n.parent, 'n is pushed whole: p is no parent').toBeNull();
  });
});
