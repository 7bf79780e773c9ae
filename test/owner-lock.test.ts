import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { link, lstat, readFile, symlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Volume } from '@cowvol/cow-core';
import { cowvol, jsonOf, run, sha256File, tempDir } from './helpers.js';

/**
 * The owner lock with real processes (docs/ARCHITECTURE.md §9 "The owner
 * lock"): it dies with its owner (SIGKILL, then the next open succeeds at
 * once), it is never handed to another process while the owner lives
 * (SIGSTOP longer than any stale time), exactly one of several racing opens
 * wins and the others are told the winner's pid, and it belongs to the file,
 * not the name (symlink, hard link, bind mount; `create --adopt` of another
 * name of a volume is refused).
 *
 * Knobs: COWVOL_LOCK_KILL_ROUNDS (default 20; each starts a process, so
 * about a second per round on a loaded machine: 50 for the full check),
 * COWVOL_LOCK_ROUNDS (racing rounds, default 50), COWVOL_LOCK_RACERS
 * (processes per race, default 3), COWVOL_LOCK_STOP_MS
 * (how long the owner stays stopped, default 12000: longer than the 10 s
 * stale time of a heartbeat lock; set 30000 for the full check).
 */
const KILL_ROUNDS = Number(process.env.COWVOL_LOCK_KILL_ROUNDS ?? 20);
const ROUNDS = Number(process.env.COWVOL_LOCK_ROUNDS ?? 50);
const RACERS = Number(process.env.COWVOL_LOCK_RACERS ?? 3);
const STOP_MS = Number(process.env.COWVOL_LOCK_STOP_MS ?? 12_000);
const CHILD = resolve(import.meta.dirname, 'owner-lock-child.mjs');
const BLOCK = 4096;

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-lock-'));
});
afterAll(async () => {
  await cleanup();
});

interface Reply {
  op: string;
  ok: boolean;
  pid: number;
  code?: string;
  holder?: number;
  message?: string;
}

/** A test/owner-lock-child.mjs process: send a command, get its one reply. */
class Worker {
  readonly child: ChildProcessWithoutNullStreams;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly replies: Reply[] = [];
  private waiting: ((r: Reply) => void) | undefined;
  private stderr = '';

  constructor() {
    this.child = spawn(process.execPath, [CHILD], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr.on('data', (d: Buffer) => (this.stderr += d.toString()));
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      const reply = JSON.parse(line) as Reply;
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = undefined;
        w(reply);
      } else this.replies.push(reply);
    });
    this.exited = new Promise((res) => this.child.on('exit', (code, signal) => res({ code, signal })));
  }

  get pid(): number {
    return this.child.pid!;
  }

  send(command: string): void {
    this.child.stdin.write(`${command}\n`);
  }

  next(): Promise<Reply> {
    const queued = this.replies.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((res, rej) => {
      this.waiting = res;
      void this.exited.then(({ code, signal }) => rej(new Error(`worker ${this.pid} exited (${String(code ?? signal)}) without a reply: ${this.stderr}`)));
    });
  }

  async ask(command: string): Promise<Reply> {
    this.send(command);
    return this.next();
  }

  async askOk(command: string): Promise<Reply> {
    const r = await this.ask(command);
    expect(r, `${command}: ${this.stderr}`).toMatchObject({ ok: true });
    return r;
  }

  async end(): Promise<void> {
    this.child.stdin.end();
    await this.exited;
  }
}

async function newVolume(name: string): Promise<string> {
  const path = join(dir, name);
  await (await Volume.create(path, { sizeBytes: 16 * BLOCK })).close();
  return path;
}

/** The error `fn` rejects with (fails the test when it resolves). */
async function rejection(fn: () => Promise<unknown>): Promise<{ code?: string; details?: { pid?: number }; message: string }> {
  try {
    const v = await fn();
    if (v instanceof Volume) await v.close();
  } catch (err) {
    return err as { code?: string; details?: { pid?: number }; message: string };
  }
  throw new Error('expected a rejection, got success');
}

describe('owner lock: held by the kernel for as long as the owner lives', () => {
  it(`the next open after a SIGKILL of the owner succeeds at once (${KILL_ROUNDS} rounds)`, async () => {
    const vol = await newVolume('kill.img');
    let next = new Worker();
    for (let round = 1; round <= KILL_ROUNDS; round++) {
      const holder = next;
      next = new Worker(); // started early: its start-up overlaps this round
      const where = `round ${round}`;
      expect((await holder.ask(`open ${vol}`)).ok, where).toBe(true);
      await holder.askOk('spin'); // killed in the middle of its writes
      holder.child.kill('SIGKILL');
      expect((await holder.exited).signal, where).toBe('SIGKILL');
      // One attempt, no retry: the lock died with its owner.
      const v = await Volume.open(vol);
      await v.close();
      if (round === 1) {
        const cli = await cowvol(['info', vol, '--json']);
        expect(cli.code, `${where}: ${cli.stderr}`).toBe(0);
      }
    }
    await next.end();
  });

  it('an owner that never calls close() still exits (the lock does not keep it alive), and the volume opens at once', async () => {
    const vol = await newVolume('forgotten.img');
    const code = `import { Volume } from '@cowvol/cow-core';
      const v = await Volume.open(process.argv[1]);
      await v.write(0, Buffer.alloc(${BLOCK}, 9));
      await v.flush();`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', code, vol], { cwd: import.meta.dirname, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    // A hang detector, not a timing assertion: a child kept alive by the lock is killed and fails the test.
    const watchdog = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on('exit', (c, sig) => res({ code: c, signal: sig })));
    clearTimeout(watchdog);
    expect(exit, stderr).toEqual({ code: 0, signal: null });
    const v = await Volume.open(vol);
    try {
      expect((await v.read(0, BLOCK)).equals(Buffer.alloc(BLOCK, 9))).toBe(true);
    } finally {
      await v.close();
    }
  });

  it(`exactly one of ${RACERS} racing opens wins; the others get VOLUME_BUSY naming the winner (${ROUNDS} rounds)`, async () => {
    const vol = await newVolume('race.img');
    const workers = Array.from({ length: RACERS }, () => new Worker());
    try {
      for (let round = 1; round <= ROUNDS; round++) {
        for (const w of workers) w.send(`open ${vol}`);
        const replies = await Promise.all(workers.map((w) => w.next()));
        const winners = replies.filter((r) => r.ok);
        const where = `round ${round}: ${JSON.stringify(replies)}`;
        expect(winners.length, where).toBe(1);
        const winner = winners[0]!;
        for (const r of replies.filter((x) => !x.ok)) expect(r, where).toMatchObject({ code: 'VOLUME_BUSY', holder: winner.pid });
        await workers.find((w) => w.pid === winner.pid)!.askOk('close');
      }
    } finally {
      await Promise.all(workers.map((w) => w.end()));
    }
  });

  it(`an owner stopped for ${STOP_MS} ms keeps the volume; others get VOLUME_BUSY; it goes on after SIGCONT`, async () => {
    const vol = await newVolume('stop.img');
    const owner = new Worker();
    try {
      await owner.askOk(`open ${vol}`);
      await owner.askOk('write 1');
      owner.child.kill('SIGSTOP');
      const until = Date.now() + STOP_MS;
      let attempts = 0;
      while (Date.now() < until || attempts < 2) {
        attempts += 1;
        const err = await rejection(() => Volume.open(vol));
        expect(err, `attempt ${attempts}: ${err.message}`).toMatchObject({ code: 'VOLUME_BUSY', details: { pid: owner.pid } });
        await new Promise((r) => setTimeout(r, Math.min(1000, Math.max(0, until - Date.now()))));
      }
      // The CLI, waiting a little, is refused the same way (not NOT_A_VOLUME).
      const cli = await cowvol(['info', vol, '--wait', '1', '--json']);
      expect(cli.code, cli.stderr).toBe(5);
      expect(jsonOf(cli)).toMatchObject({ error: { code: 'VOLUME_BUSY', details: { pid: owner.pid } } });
      owner.child.kill('SIGCONT');
      await owner.askOk('write 2');
      await owner.askOk('close');
    } finally {
      owner.child.kill('SIGCONT');
      await owner.end();
    }
    const v = await Volume.open(vol);
    try {
      expect((await v.read(BLOCK, 2 * BLOCK)).equals(Buffer.concat([Buffer.alloc(BLOCK, 1), Buffer.alloc(BLOCK, 2)]))).toBe(true);
    } finally {
      await v.close();
    }
  });
});

describe('owner lock: one file, one volume, whatever its name', () => {
  it('a symbolic link, a hard link and a symlinked folder of an open volume are busy', async () => {
    const vol = await newVolume('named.img');
    const sym = join(dir, 'named-symlink.img');
    const hard = join(dir, 'named-hardlink.img');
    await symlink(vol, sym);
    await link(vol, hard);
    await symlink(dir, join(dir, 'folder-link'));
    const viaFolder = join(dir, 'folder-link', 'named.img');
    const owner = new Worker();
    try {
      await owner.askOk(`open ${vol}`);
      for (const name of [sym, hard, viaFolder]) {
        const err = await rejection(() => Volume.open(name));
        expect(err, `${name}: ${err.message}`).toMatchObject({ code: 'VOLUME_BUSY', details: { pid: owner.pid } });
      }
      const cli = await cowvol(['snapshot', 'create', sym, 's1', '--json']);
      expect(cli.code, cli.stderr).toBe(5);
      expect(jsonOf(cli)).toMatchObject({ error: { code: 'VOLUME_BUSY', details: { pid: owner.pid } } });
      // Adopting another name of the open volume: busy, and no second sidecar.
      const adopt = await rejection(() => Volume.create(sym, { adopt: true }));
      expect(adopt).toMatchObject({ code: 'VOLUME_BUSY', details: { pid: owner.pid } });
      await expect(lstat(`${sym}.cowvol`)).rejects.toMatchObject({ code: 'ENOENT' });
      await owner.askOk('close');
    } finally {
      await owner.end();
    }
    // Closed: a symlink name is not the volume; the message names the real one.
    const closed = await rejection(() => Volume.open(sym));
    expect(closed.code).toBe('NOT_A_VOLUME');
    expect(closed.message).toContain(vol);
  });

  it('create --adopt of a volume file under another name is refused and changes nothing', async () => {
    const vol = await newVolume('adopted.img');
    const before = await sha256File(vol);
    const sym = join(dir, 'adopted-symlink.img');
    const hard = join(dir, 'adopted-hardlink.img');
    await symlink(vol, sym);
    await link(vol, hard);
    expect(await rejection(() => Volume.create(sym, { adopt: true }))).toMatchObject({ code: 'VOLUME_EXISTS' });
    expect(await rejection(() => Volume.create(hard, { adopt: true }))).toMatchObject({ code: 'INVALID_ARGUMENT' });
    const cli = await cowvol(['create', sym, '--adopt', '--json']);
    expect(cli.code, cli.stderr).toBe(4);
    expect(jsonOf(cli)).toMatchObject({ error: { code: 'VOLUME_EXISTS' } });
    for (const name of [sym, hard]) await expect(lstat(`${name}.cowvol`)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await sha256File(vol)).toBe(before);
    await (await Volume.open(vol)).close();
  });

  it('create --adopt takes a raw image only by its own name; create refuses a dangling symlink', async () => {
    const raw = join(dir, 'plain.raw');
    await writeFile(raw, Buffer.alloc(8 * BLOCK, 7));
    const sym = join(dir, 'plain-symlink.raw');
    await symlink(raw, sym);
    expect(await rejection(() => Volume.create(sym, { adopt: true }))).toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(lstat(`${sym}.cowvol`)).rejects.toMatchObject({ code: 'ENOENT' });
    await (await Volume.create(raw, { adopt: true })).close();

    const target = join(dir, 'nowhere.img');
    const dangling = join(dir, 'dangling.img');
    await symlink(target, dangling);
    expect(await rejection(() => Volume.create(dangling, { sizeBytes: 16 * BLOCK }))).toMatchObject({ code: 'VOLUME_EXISTS' });
    await expect(lstat(target)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a file bind mount of a volume is busy while it is open, and is not adopted', async (ctx) => {
    const vol = await newVolume('bound.img');
    const mountPoint = join(dir, 'bound-mount.img');
    await writeFile(mountPoint, '');
    const mounted = await run('mount', ['--bind', vol, mountPoint]);
    if (mounted.code !== 0) {
      // Bind mounts need root (CAP_SYS_ADMIN); CI runs as root and must run this.
      if (process.env.CI === 'true') throw new Error(`mount --bind failed under CI: ${mounted.stderr}`);
      ctx.skip(`mount --bind needs root: ${mounted.stderr.trim()}`);
    }
    try {
      const owner = await Volume.open(vol);
      try {
        expect(await rejection(() => Volume.open(mountPoint))).toMatchObject({ code: 'VOLUME_BUSY', details: { pid: process.pid } });
      } finally {
        await owner.close();
      }
      expect(await rejection(() => Volume.create(mountPoint, { adopt: true }))).toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(lstat(`${mountPoint}.cowvol`)).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      await run('umount', [mountPoint]);
    }
    expect(await readFile(mountPoint)).toHaveLength(0);
  });
});
