/**
 * `cowvol serve` against real NBD clients from Debian packages: libnbd-bin
 * (nbdinfo, nbdcopy), python3-libnbd (nbdsh), qemu-utils (qemu-img,
 * qemu-io) and fio. One server process serves a 32 MiB volume with a
 * snapshot `base` taken before it started; the tests run in order.
 *
 * Under CI=true a missing tool is a failure; elsewhere the suite is skipped
 * with the packages to install in its name.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, run, runOk, tempDir } from './helpers.js';
import { requireTools, startServe, killServer } from './nbd-peers.js';

const TOOLS: Array<[string, string]> = [
  ['nbdinfo', 'libnbd-bin'],
  ['nbdcopy', 'libnbd-bin'],
  ['nbdsh', 'python3-libnbd'],
  ['qemu-img', 'qemu-utils'],
  ['qemu-io', 'qemu-utils'],
  ['fio', 'fio'],
];
const { missing, skipReason } = requireTools(TOOLS);

const SIZE = 32 * 1024 * 1024;
/** nbdsh runs `python3` from PATH: Debian's, which has the libnbd module. */
const PYTHON_ENV = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

/** Runs a program with `env`, collecting stdout and stderr. */
function runWithEnv(cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr: err }));
  });
}

describe.skipIf(missing)(`cowvol serve with real NBD clients${skipReason}`, () => {
  let dir: string;
  let cleanup: (() => Promise<void>) | undefined; // undefined until beforeAll gets that far
  let vol: string;
  let server: ChildProcess | undefined; // likewise
  let uri: string;
  let socket: string;
  let serverLog: () => string = () => '';
  let base: Buffer;
  const liveUri = () => `nbd+unix:///live?socket=${socket}`;
  const snapUri = () => `nbd+unix:///snapshot/base?socket=${socket}`;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-nbd-clients-'));
    vol = join(dir, 'vol.img');
    base = randomBytes(SIZE);
    await writeFile(join(dir, 'base.raw'), base);
    await cowvolOk(['create', vol, '--size', String(SIZE)]);
    await cowvolOk(['write', vol, '--input', join(dir, 'base.raw')]);
    await cowvolOk(['snapshot', 'create', vol, 'base']);
    const started = await startServe(vol);
    server = started.child;
    serverLog = started.log;
    uri = started.uriLine;
    socket = started.socket;
  });

  afterAll(async () => {
    await killServer(server);
    await cleanup?.();
  });

  it('prints the NBD URI of a 0600 socket in the sidecar; a command not routed to the server (a second serve) gets VOLUME_BUSY', async () => {
    expect(uri).toBe(`nbd+unix:///?socket=${vol}.cowvol/nbd.sock`);
    const mode = spawnSync('stat', ['-c', '%a', socket]).stdout.toString().trim();
    expect(mode).toBe('600');
    const busy = await cowvol(['serve', vol]);
    expect(busy.code).toBe(5);
    expect(busy.stderr).toContain('VOLUME_BUSY');
  });

  it('nbdinfo --list shows live and snapshot/base with descriptions; --map reports base:allocation', async () => {
    const list = (await runOk('nbdinfo', ['--list', '--json', uri])).stdout.toString();
    const exports = (JSON.parse(list) as { exports: Array<{ 'export-name': string; description: string; is_read_only: boolean; 'export-size': number }> }).exports;
    expect(exports.map((e) => [e['export-name'], e.is_read_only, e['export-size']])).toEqual([
      ['live', false, SIZE],
      ['snapshot/base', true, SIZE],
    ]);
    expect(exports[1]!.description).toMatch(/^snapshot base taken .*, read-only$/);
    const map = (await runOk('nbdinfo', ['--map', liveUri()])).stdout.toString().trim();
    expect(map.split(/\s+/)).toEqual(['0', String(SIZE), '0', 'data']);
  });

  it('qemu-img: info, convert into live and back out, compare', async () => {
    const info = JSON.parse((await runOk('qemu-img', ['info', '--output=json', liveUri()])).stdout.toString()) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(SIZE);
    const src = join(dir, 'qemu-src.raw');
    await writeFile(src, randomBytes(SIZE));
    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, liveUri()]);
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, liveUri()]);
    const out = join(dir, 'qemu-out.raw');
    await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', liveUri(), out]);
    expect((await readFile(out)).equals(await readFile(src))).toBe(true);
    // The snapshot still holds what it was taken with.
    await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir, 'base.raw'), snapUri()]);
  });

  it('qemu-io: many aio writes and reads in flight, patterns verified', async () => {
    const cmds: string[] = [];
    for (let i = 0; i < 16; i++) cmds.push('-c', `aio_write -P ${0x10 + i} ${i * 1024 * 1024 + 512} 65536`);
    cmds.push('-c', 'aio_flush');
    for (let i = 0; i < 16; i++) cmds.push('-c', `aio_read -P ${0x10 + i} ${i * 1024 * 1024 + 512} 65536`);
    cmds.push('-c', 'aio_flush');
    const r = await runOk('qemu-io', ['-f', 'raw', ...cmds, liveUri()]);
    const out = r.stdout.toString() + r.stderr;
    expect(out).not.toMatch(/fail|error/i);
    expect(out.match(/^read 65536\/65536 bytes/gm)?.length).toBe(16);
  });

  it('nbdcopy both ways, with and without --flush', async () => {
    const src = join(dir, 'copy-src.raw');
    const data = randomBytes(SIZE);
    data.fill(0, 4 << 20, 12 << 20); // a zero run becomes WRITE_ZEROES
    await writeFile(src, data);
    await runOk('nbdcopy', ['--flush', src, liveUri()]);
    const out = join(dir, 'copy-out.raw');
    await runOk('nbdcopy', [liveUri(), out]);
    expect((await readFile(out)).equals(data)).toBe(true);
    await runOk('nbdcopy', [snapUri(), out]);
    expect((await readFile(out)).equals(base)).toBe(true);
  });

  it('fio --ioengine=nbd: 4 KiB random writes at iodepth 32 verified with crc32c', async () => {
    const r = await run(
      'fio',
      [
        '--name=cowvol',
        '--ioengine=nbd',
        `--uri=${liveUri()}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=32',
        '--size=8M',
        '--verify=crc32c',
        '--verify_fatal=1',
        '--do_verify=1',
        '--randseed=12345',
        '--verify_state_save=0',
        '--output-format=json',
      ],
      { cwd: dir },
    );
    expect(r.code, r.stderr).toBe(0);
    const job = (JSON.parse(r.stdout.toString().slice(r.stdout.indexOf('{'))) as { jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }> }).jobs[0]!;
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(8 * 1024 * 1024);
    expect(job.read.io_bytes).toBe(8 * 1024 * 1024); // every block read back and verified
  });

  it('nbdsh: STARTTLS gets ERR_POLICY (no --tls-psk), an unknown export ERR_UNKNOWN, then EPERM on the snapshot, EINVAL out of range, the connection stays usable', async () => {
    const script = `
import nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.set_tls(nbd.TLS_ALLOW)  # libnbd asks for STARTTLS first, which this server (no --tls-psk) refuses
h.connect_unix(${JSON.stringify(socket)})
print("tls", h.get_tls_negotiated())
h.set_export_name("no-such-export")
try:
    h.opt_info()
    raise SystemExit("opt_info of an unknown export succeeded")
except nbd.Error as e:
    print("unknown-export", e.errno)
h.set_export_name("snapshot/base")
h.opt_go()
h.set_strict_mode(0)
try:
    h.pwrite(b"x" * 512, 0)
    raise SystemExit("write to a snapshot succeeded")
except nbd.Error as e:
    print("write-snapshot", e.errno)
try:
    h.pread(512, h.get_size() - 256)
    raise SystemExit("read past the end succeeded")
except nbd.Error as e:
    print("read-past-end", e.errno)
print("read-after", h.pread(4, 0).hex())
h.shutdown()
`;
    const r = await runWithEnv('nbdsh', ['-c', script], PYTHON_ENV);
    const out = r.stdout.toString();
    expect(r.code, r.stderr + out).toBe(0);
    expect(out).toContain('tls False');
    // STARTTLS (option 5) was answered NBD_REP_ERR_POLICY and the handshake went on.
    expect(serverLog()).toMatch(/"option":5,"replyType":"0x80000002".*"msg":"option refused"/);
    expect(out).toContain('unknown-export ENOENT'); // libnbd's errno for NBD_REP_ERR_UNKNOWN
    expect(out).toContain('write-snapshot EPERM');
    expect(out).toContain('read-past-end EINVAL');
    expect(out).toContain(`read-after ${base.subarray(0, 4).toString('hex')}`);
  });

  it('the snapshot export reads back byte-identical while the live export is being written', async () => {
    const writer = run('fio', ['--name=w', '--ioengine=nbd', `--uri=${liveUri()}`, '--rw=randwrite', '--bs=64k', '--iodepth=16', '--size=32M', '--randseed=7', '--output-format=terse'], { cwd: dir });
    const out = join(dir, 'snap-during.raw');
    await runOk('nbdcopy', ['--connections=2', snapUri(), out]);
    expect((await writer).code).toBe(0);
    expect((await readFile(out)).equals(base)).toBe(true);
  });

  it('SIGTERM: finishes, flushes, closes the volume and exits 0; the volume is consistent and holds the last writes', async () => {
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 4096', liveUri()]);
    const child = server!;
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    expect(code, serverLog()).toBe(0);
    const logLines = serverLog()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { msg: string });
    expect(logLines.map((l) => l.msg)).toContain('stopped; closing the volume');
    expect((await cowvol(['check', vol])).code).toBe(0);
    const head = (await cowvolOk(['read', vol, '--length', '4096'])).stdout;
    expect(head.equals(Buffer.alloc(4096, 0x5a))).toBe(true);
  });
});
