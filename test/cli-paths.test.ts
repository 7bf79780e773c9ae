import { spawn, type StdioOptions } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, chown, link, lutimes, mkdir, open, readdir, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Level } from 'level';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cowvol, run, sha256, sha256File, tempDir, type RunResult } from './helpers.js';

/**
 * The README's commands walked with the paths users get wrong or attack
 * with (README "Paths given to --input and --output"): a folder, a missing
 * folder, /dev/full, a FIFO, a symlink and a hard link to the volume, files
 * of the sidecar, a permission-denied path, stdout on /dev/full and a pipe
 * closed early. Every outcome is a documented code and exit code — never
 * INTERNAL, never a stack trace — and the volume and its snapshots are
 * unchanged afterwards.
 */
let dir: string;
let cleanup: () => Promise<void>;
let vol: string;
const MiB = 1024 * 1024;
/** README "Exit codes". */
const EXIT: Record<string, number> = { INVALID_ARGUMENT: 2, OUT_OF_RANGE: 2, INPUT_NOT_FOUND: 3, IO_ERROR: 7, NO_SPACE: 7 };

/** Runs the CLI with any stdio (e.g. stdout on /dev/full), env and uid. */
function cowvolWith(args: string[], options: { stdout?: number; uid?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const stdio: StdioOptions = ['ignore', options.stdout ?? 'pipe', 'pipe'];
    const child = spawn(process.execPath, [CLI, ...args], { stdio, env: options.env ?? process.env, ...(options.uid === undefined ? {} : { uid: options.uid, gid: options.uid }) });
    const out: Buffer[] = [];
    let err = '';
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr: err }));
  });
}

/** The documented outcome: `[CODE]` on stderr, its exit code, no INTERNAL, no stack trace. */
function expectRefused(r: RunResult, code: string, what: string): void {
  expect(r.stderr, what).not.toMatch(/INTERNAL/);
  expect(r.stderr, what).not.toMatch(/^\s+at /m);
  expect(r.stderr, what).toContain(`[${code}]`);
  expect(r.code, `${what}: ${r.stderr}`).toBe(EXIT[code]);
}

/** Hash of the volume file, the store, the journal and the metadata's logical content: equal means every snapshot is unchanged. */
async function fingerprint(volume: string): Promise<string> {
  const sidecar = `${volume}.cowvol`;
  const parts = [await sha256File(volume), await sha256File(join(sidecar, 'store')), await sha256File(join(sidecar, 'journal'))];
  // LevelDB rewrites its own files on every open; compare its logical content.
  const db = new Level<string, Buffer>(join(sidecar, 'meta'), { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    for await (const [k, v] of db.iterator()) parts.push(`${k}=${v.toString('hex')}`);
  } finally {
    await db.close();
  }
  return sha256(Buffer.from(parts.join('\n')));
}

let before: string;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-paths-'));
  vol = join(dir, 'vol.img');
  expect((await cowvol(['create', vol, '--size', '4M'])).code).toBe(0);
  await writeFile(join(dir, 'a.bin'), randomBytes(MiB));
  expect((await cowvol(['write', vol, '--input', join(dir, 'a.bin')])).code).toBe(0);
  expect((await cowvol(['snapshot', 'create', vol, 's1'])).code).toBe(0);
  await writeFile(join(dir, 'b.bin'), randomBytes(MiB));
  expect((await cowvol(['write', vol, '--input', join(dir, 'b.bin'), '--offset', '512K'])).code).toBe(0);
  expect((await cowvol(['snapshot', 'create', vol, 's2'])).code).toBe(0);
  await mkdir(join(dir, 'folder'));
  await symlink(vol, join(dir, 'link-to-volume'));
  await link(vol, join(dir, 'hard-link-to-volume'));
  await symlink(join(`${vol}.cowvol`, 'store'), join(dir, 'link-to-store'));
  await symlink(join(`${vol}.cowvol`, 'planted'), join(dir, 'dangling-into-sidecar'));
  await symlink(`${vol}.cowvol`, join(dir, 'link-to-sidecar'));
  before = await fingerprint(vol);
});
afterAll(async () => {
  await cleanup();
});

describe('outputs that are the volume or in its sidecar are refused (INVALID_ARGUMENT), by device and inode', () => {
  const outputs = (): Array<[string, string]> => [
    ['the volume file itself', vol],
    ['a symlink to the volume', join(dir, 'link-to-volume')],
    ['a hard link to the volume', join(dir, 'hard-link-to-volume')],
    ['the store in the sidecar', join(`${vol}.cowvol`, 'store')],
    ['the journal in the sidecar', join(`${vol}.cowvol`, 'journal')],
    ['a symlink to the store', join(dir, 'link-to-store')],
    ['a new file in the sidecar', join(`${vol}.cowvol`, 'new-file')],
    ['a new file in the sidecar through a symlinked folder', join(dir, 'link-to-sidecar', 'new-file')],
    ['a dangling symlink into the sidecar', join(dir, 'dangling-into-sidecar')],
  ];
  const commands: Array<[string, (out: string) => string[]]> = [
    ['read', (out) => ['read', vol, '--output', out]],
    ['snapshot read', (out) => ['snapshot', 'read', vol, 's1', '--output', out]],
    ['snapshot export', (out) => ['snapshot', 'export', vol, 's1', '--output', out]],
    ['snapshot export --since', (out) => ['snapshot', 'export', vol, 's2', '--since', 's1', '--output', out]],
  ];
  it('read, snapshot read, snapshot export (full and --since): every name of the volume and its sidecar', async () => {
    // Each name against one command in turn, and the volume itself and a symlink to it against every command.
    const list = outputs();
    const cases: Array<[string, string[]]> = list.map(([what, out], i) => [what, commands[i % commands.length]![1](out)]);
    commands.forEach(([, argsFor], i) => {
      if (i !== 0) cases.push(['the volume file itself', argsFor(vol)]);
      if (i !== 1) cases.push(['a symlink to the volume', argsFor(join(dir, 'link-to-volume'))]);
    });
    for (const [what, args] of cases) expectRefused(await cowvol(args), 'INVALID_ARGUMENT', `${args.slice(0, 2).join(' ')} --output ${what}`);
    expect(await fingerprint(vol)).toBe(before);
    expect((await readdir(`${vol}.cowvol`)).filter((n) => n === 'new-file' || n === 'planted' || n.includes('.partial-'))).toEqual([]);
    expect((await readdir(dir)).filter((n) => n.includes('.partial-'))).toEqual([]);
  });
});

describe('OS errors on user paths are documented codes', () => {
  it('a folder, a missing folder, a path through a file, a missing input', async () => {
    const folder = join(dir, 'folder');
    const cases: Array<[string[], string]> = [
      [['write', vol, '--input', folder], 'INVALID_ARGUMENT'],
      [['write', vol, '--input', join(dir, 'missing', 'x')], 'INPUT_NOT_FOUND'],
      [['write', vol, '--input', join(dir, 'a.bin', 'x')], 'INVALID_ARGUMENT'],
      [['import', join(dir, 'new.img'), '--input', folder], 'INVALID_ARGUMENT'],
      [['import', join(dir, 'new.img'), '--input', join(dir, 'missing', 'x')], 'INPUT_NOT_FOUND'],
      [['read', vol, '--output', folder], 'INVALID_ARGUMENT'],
      [['read', vol, '--output', join(dir, 'missing', 'x')], 'INVALID_ARGUMENT'],
      [['read', vol, '--output', join(dir, 'a.bin', 'x')], 'INVALID_ARGUMENT'],
      [['snapshot', 'export', vol, 's1', '--output', folder], 'INVALID_ARGUMENT'],
      [['snapshot', 'export', vol, 's1', '--output', join(dir, 'missing', 'x')], 'INVALID_ARGUMENT'],
      [['read', vol, '--output', '/dev/full'], 'NO_SPACE'],
      [['snapshot', 'read', vol, 's1', '--output', '/dev/full'], 'NO_SPACE'],
      [['snapshot', 'export', vol, 's1', '--output', '/dev/full'], 'NO_SPACE'],
      [['write', vol, '--input', '/dev/zero'], 'OUT_OF_RANGE'],
    ];
    for (const [args, code] of cases) expectRefused(await cowvol(args), code, args.join(' '));
    await expect(stat(join(dir, 'new.img'))).rejects.toThrow();
    expect((await readdir(dir)).filter((n) => n.includes('.partial-'))).toEqual([]);
    expect(await fingerprint(vol)).toBe(before);
  });

  it('a full stdout (> /dev/full) is NO_SPACE, exit 7, for data and report commands alike', async () => {
    const full = await open('/dev/full', 'w');
    try {
      const commands = [
        ['info', vol],
        ['info', vol, '--json'],
        ['snapshot', 'list', vol],
        ['read', vol],
        ['snapshot', 'read', vol, 's1'],
        ['snapshot', 'export', vol, 's1', '--output', '-'],
      ];
      for (const args of commands) expectRefused(await cowvolWith(args, { stdout: full.fd }), 'NO_SPACE', `${args.join(' ')} > /dev/full`);
    } finally {
      await full.close();
    }
    expect(await fingerprint(vol)).toBe(before);
  });

  it('a reader that closes stdout early (| head -c1) ends every data command quietly, exit 0', async () => {
    for (const args of [
      ['read', vol],
      ['snapshot', 'read', vol, 's1'],
    ]) {
      const r = await run('bash', ['-c', `set -o pipefail; "${process.execPath}" "${CLI}" ${args.map((a) => `"${a}"`).join(' ')} | head -c1 | wc -c`]);
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout.toString().trim()).toBe('1');
    }
  });

  it('an export whose reader closes stdout early fails (IO_ERROR, exit 7): a stream cut short is no backup; read to the end, it exits 0', async () => {
    // The stream (1 MiB of data) is larger than a pipe's buffer: the reader's close reaches the writer.
    const cut = await run('bash', ['-c', `"${process.execPath}" "${CLI}" snapshot export "${vol}" s1 --output - | head -c1 > /dev/null; exit \${PIPESTATUS[0]}`]);
    expect(cut.code).toBe(EXIT.IO_ERROR);
    expect(cut.stderr).toMatch(/\[IO_ERROR\]: the reader of stdout closed it before the end of the stream \(at most \d+ bytes of it reached the pipe\): the stream is incomplete/);
    const whole = await run('bash', ['-c', `"${process.execPath}" "${CLI}" snapshot export "${vol}" s1 --output - | wc -c; exit \${PIPESTATUS[0]}`]);
    expect(whole.stderr).toBe('');
    expect(whole.code).toBe(0);
    expect(Number(whole.stdout.toString().trim())).toBeGreaterThan(MiB);
  });

  it('an export removes the partial files killed exports to the same name left (process gone, untouched for an hour), and nothing else', async () => {
    const area = join(dir, 'partials');
    await mkdir(area);
    const out = join(area, 'out.cvs');
    const dead = spawnSync('true').pid; // exited: no such process now
    const hoursAgo = new Date(Date.now() - 2 * 3600 * 1000);
    const names = {
      stale: `.out.cvs.partial-${dead}-deadbeef`,
      fresh: `.out.cvs.partial-${dead}-cafebabe`,
      alive: `.out.cvs.partial-${process.pid}-01234567`,
      other: `.other.cvs.partial-${dead}-deadbeef`,
      link: `.out.cvs.partial-${dead}-0badf00d`,
    };
    for (const key of ['stale', 'fresh', 'alive', 'other'] as const) await writeFile(join(area, names[key]), 'partial stream');
    await symlink(join(dir, 'a.bin'), join(area, names.link));
    for (const key of ['stale', 'alive', 'other'] as const) await utimes(join(area, names[key]), hoursAgo, hoursAgo);
    await lutimes(join(area, names.link), hoursAgo, hoursAgo);
    expect((await cowvol(['snapshot', 'export', vol, 's1', '--output', out])).code).toBe(0);
    expect((await readdir(area)).sort()).toEqual([names.alive, names.fresh, names.link, names.other, 'out.cvs'].sort());
  });

  it('an --output that is a symbolic link to nothing is INVALID_ARGUMENT naming where it points, not a missing folder', async () => {
    const dangling = join(dir, 'dangling-output');
    await symlink(join(dir, 'no-such-folder', 'x'), dangling);
    for (const args of [
      ['snapshot', 'export', vol, 's1', '--output', dangling],
      ['snapshot', 'read', vol, 's1', '--output', dangling],
    ]) {
      const r = await cowvol(args);
      expect(r.code, args.join(' ')).toBe(EXIT.INVALID_ARGUMENT);
      expect(r.stderr).toContain(`--output ${dangling}: it is a symbolic link to ${join(dir, 'no-such-folder', 'x')}, which does not exist`);
    }
  });

  it('permission denied on --input and --output is IO_ERROR, exit 7', async () => {
    // Root passes every permission check: run the CLI as nobody then.
    const asRoot = process.getuid?.() === 0;
    const area = join(dir, 'perm');
    await mkdir(area);
    const pvol = join(area, 'p.img');
    expect((await cowvol(['create', pvol, '--size', '1M'])).code).toBe(0);
    expect((await cowvol(['snapshot', 'create', pvol, 'ps'])).code).toBe(0);
    await writeFile(join(area, 'secret'), 'not yours');
    await chmod(join(area, 'secret'), 0o000);
    await mkdir(join(area, 'locked'));
    await chmod(join(area, 'locked'), 0o000);
    let uid: number | undefined;
    let env: NodeJS.ProcessEnv | undefined;
    if (asRoot) {
      uid = 65534;
      await chmod(dir, 0o755);
      execFileSync('chown', ['-R', `${uid}:${uid}`, pvol, `${pvol}.cowvol`]);
      await mkdir(join(area, 'home'));
      await chown(join(area, 'home'), uid, uid);
      env = { ...process.env, HOME: join(area, 'home'), XDG_CACHE_HOME: join(area, 'home'), XDG_CONFIG_HOME: join(area, 'home'), XDG_DATA_HOME: join(area, 'home') };
    }
    const pBefore = await sha256File(pvol);
    const cases: Array<[string[], string]> = [
      [['write', pvol, '--input', join(area, 'secret')], 'IO_ERROR'],
      [['import', join(area, 'new.img'), '--input', join(area, 'secret')], 'IO_ERROR'],
      [['read', pvol, '--output', join(area, 'locked', 'out')], 'IO_ERROR'],
      [['read', pvol, '--output', join(area, 'secret')], 'IO_ERROR'],
      [['snapshot', 'read', pvol, 'ps', '--output', join(area, 'locked', 'out')], 'IO_ERROR'],
      [['snapshot', 'export', pvol, 'ps', '--output', join(area, 'locked', 'out')], 'IO_ERROR'],
    ];
    for (const [args, code] of cases) expectRefused(await cowvolWith(args, { ...(uid === undefined ? {} : { uid }), ...(env ? { env } : {}) }), code, args.join(' '));
    expect(await sha256File(pvol)).toBe(pBefore);
    await chmod(dir, 0o700);
  });
});

describe('streams as --input are read to their end', () => {
  it('write --input <FIFO>, </dev/stdin from a pipe>, <(…) write every byte and report them', async () => {
    const wvol = join(dir, 'w.img');
    expect((await cowvol(['create', wvol, '--size', '8M'])).code).toBe(0);
    const data = randomBytes(5 * MiB + 123); // more than one 4 MiB chunk
    await writeFile(join(dir, 'data.bin'), data);
    const fifo = join(dir, 'in.fifo');
    execFileSync('mkfifo', [fifo]);
    const feeding = new Promise<void>((resolve, reject) => {
      const w = createWriteStream(fifo);
      w.on('error', reject);
      w.end(data, () => resolve());
    });
    const viaFifo = await cowvol(['write', wvol, '--input', fifo, '--offset', '1M']);
    await feeding;
    expect(viaFifo.code, viaFifo.stderr).toBe(0);
    expect(viaFifo.stdout.toString()).toContain(`wrote ${data.length} bytes at offset ${MiB}`);
    expect((await cowvol(['read', wvol, '--offset', '1M', '--length', String(data.length)])).stdout.equals(data)).toBe(true);

    const small = randomBytes(70_000);
    await writeFile(join(dir, 'small.bin'), small);
    const devStdin = await run('bash', ['-c', `cat "${join(dir, 'small.bin')}" | "${process.execPath}" "${CLI}" write "${wvol}" --input /dev/stdin`]);
    expect(devStdin.code, devStdin.stderr).toBe(0);
    expect(devStdin.stdout.toString()).toContain(`wrote ${small.length} bytes`);
    const procSub = await run('bash', ['-c', `"${process.execPath}" "${CLI}" write "${wvol}" --offset 7M --input <(cat "${join(dir, 'small.bin')}")`]);
    expect(procSub.code, procSub.stderr).toBe(0);
    expect(procSub.stdout.toString()).toContain(`wrote ${small.length} bytes`);
    expect((await cowvol(['read', wvol, '--length', String(small.length)])).stdout.equals(small)).toBe(true);
    expect((await cowvol(['read', wvol, '--offset', '7M', '--length', String(small.length)])).stdout.equals(small)).toBe(true);

    // Too long for the room after --offset: refused, nothing written.
    const fullBefore = await sha256File(wvol);
    const tooLong = await run('bash', ['-c', `"${process.execPath}" "${CLI}" write "${wvol}" --offset 7M --input <(head -c 2M /dev/urandom)`]);
    expectRefused(tooLong, 'OUT_OF_RANGE', 'write of 2M at 7M of 8M');
    expect(await sha256File(wvol)).toBe(fullBefore);
  });

  // A block device reports size 0 to stat(): its length is found by reading. CI runs as root with losetup.
  const canLoop = process.getuid?.() === 0 && spawnSync('losetup', ['--version']).status === 0;
  if (process.env.CI && !canLoop) throw new Error('CI=true but this run cannot attach a loop device (needs root and losetup, util-linux)');
  it.skipIf(!canLoop)(`write --input <block device> writes the whole device${canLoop ? '' : ' [SKIPPED: needs root and losetup (util-linux)]'}`, async () => {
    const wvol = join(dir, 'b.img');
    expect((await cowvol(['create', wvol, '--size', '8M'])).code).toBe(0);
    const data = randomBytes(3 * MiB);
    await writeFile(join(dir, 'loop.bin'), data);
    const device = execFileSync('losetup', ['-f', '--show', join(dir, 'loop.bin')])
      .toString()
      .trim();
    try {
      const r = await cowvol(['write', wvol, '--input', device, '--offset', '4M']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.toString()).toContain(`wrote ${data.length} bytes at offset ${4 * MiB}`);
    } finally {
      execFileSync('losetup', ['-d', device]);
    }
    expect((await cowvol(['read', wvol, '--offset', '4M', '--length', String(data.length)])).stdout.equals(data)).toBe(true);
  });

  it('import --input <FIFO> and read --output <FIFO> stream through', async () => {
    const stream = join(dir, 's1.cvs');
    expect((await cowvol(['snapshot', 'export', vol, 's1', '--output', stream])).code).toBe(0);
    const fifo = join(dir, 'import.fifo');
    execFileSync('mkfifo', [fifo]);
    const copy = join(dir, 'copy.img');
    const feeder = run('bash', ['-c', `cat "${stream}" > "${fifo}"`]);
    const imported = await cowvol(['import', copy, '--input', fifo]);
    await feeder;
    expect(imported.code, imported.stderr).toBe(0);
    const original = await cowvol(['snapshot', 'read', vol, 's1']);
    expect((await cowvol(['snapshot', 'read', copy, 's1'])).stdout.equals(original.stdout)).toBe(true);

    const outFifo = join(dir, 'out.fifo');
    execFileSync('mkfifo', [outFifo]);
    const chunks: Buffer[] = [];
    const reading = new Promise<void>((resolve, reject) => {
      const r = createReadStream(outFifo);
      r.on('data', (d) => chunks.push(d as Buffer));
      r.on('end', () => resolve());
      r.on('error', reject);
    });
    const toFifo = await cowvol(['snapshot', 'read', vol, 's1', '--output', outFifo]);
    await reading;
    expect(toFifo.code, toFifo.stderr).toBe(0);
    expect(Buffer.concat(chunks).equals(original.stdout)).toBe(true);
    expect(await fingerprint(vol)).toBe(before);
  });

  it('- is stdin for --input and stdout for --output in every command, never a file named -; ./- is that file', async () => {
    const cwd = join(dir, 'dash');
    await mkdir(cwd);
    const dvol = join(dir, 'dash.img');
    expect((await cowvol(['create', dvol, '--size', '1M'])).code).toBe(0);
    const data = randomBytes(70_000);
    const written = await cowvol(['write', dvol, '--input', '-', '--offset', '4096'], { input: data, cwd });
    expect(written.code, written.stderr).toBe(0);
    expect(written.stdout.toString()).toContain(`wrote ${data.length} bytes at offset 4096`);
    const read = await cowvol(['read', dvol, '--offset', '4096', '--length', String(data.length), '--output', '-'], { cwd });
    expect(read.code, read.stderr).toBe(0);
    expect(read.stdout.equals(data)).toBe(true);
    expect((await cowvol(['snapshot', 'create', dvol, 'd'])).code).toBe(0);
    const snap = await cowvol(['snapshot', 'read', dvol, 'd', '--offset', '4096', '--length', String(data.length), '--output', '-'], { cwd });
    expect(snap.code, snap.stderr).toBe(0);
    expect(snap.stdout.equals(data)).toBe(true);
    const stream = await cowvol(['snapshot', 'export', dvol, 'd', '--output', '-'], { cwd });
    expect(stream.code, stream.stderr).toBe(0);
    const imported = await cowvol(['import', join(dir, 'dash-copy.img'), '--input', '-'], { input: stream.stdout, cwd });
    expect(imported.code, imported.stderr).toBe(0);
    expect(await readdir(cwd)).toEqual([]); // nothing went to a file named -
    // A file named - is reached as ./-.
    await writeFile(join(cwd, '-'), data.subarray(0, 4096));
    const fromFile = await cowvol(['write', dvol, '--input', './-'], { cwd });
    expect(fromFile.code, fromFile.stderr).toBe(0);
    expect(fromFile.stdout.toString()).toContain('wrote 4096 bytes at offset 0');
  });
});
