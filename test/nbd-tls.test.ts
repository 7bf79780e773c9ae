/**
 * `cowvol serve --tls-psk` against real TLS clients from Debian packages:
 * libnbd-bin (nbdinfo, nbdcopy; `nbds+unix://` and `nbds://` URIs with
 * `tls-psk-file`), python3-libnbd (nbdsh, for a plain client) and
 * qemu-utils (qemu-img with a `tls-creds-psk` object). The key files are
 * written here in psktool's format (no psktool needed). The tests run in
 * order against one server; the last ones start their own.
 *
 * Under CI=true a missing tool is a failure; elsewhere the suite is skipped
 * with the packages to install in its name.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, run, runOk, tempDir } from './helpers.js';
import { requireTools, startServe } from './nbd-peers.js';

const TOOLS: Array<[string, string]> = [
  ['nbdinfo', 'libnbd-bin'],
  ['nbdcopy', 'libnbd-bin'],
  ['nbdsh', 'python3-libnbd'],
  ['qemu-img', 'qemu-utils'],
];
const { missing, skipReason } = requireTools(TOOLS);

const SIZE = 8 * 1024 * 1024;
/** nbdsh runs `python3` from PATH: Debian's, which has the libnbd module. */
const PYTHON_ENV = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

/** A running `cowvol serve`: its stdout URI, the `tcpUri` it logged, its log so far. */
interface Served {
  child: ChildProcess;
  uri: string;
  tcpUri: string | undefined;
  log: () => string;
  stop: () => Promise<number | null>;
}

async function serve(vol: string, args: string[]): Promise<Served> {
  const { child, uriLine, log, exited } = await startServe(vol, args);
  const serving = JSON.parse(
    log()
      .split('\n')
      .find((l) => l.includes('"msg":"serving"'))!,
  ) as { tcpUri?: string };
  return {
    child,
    uri: uriLine,
    tcpUri: serving.tcpUri,
    log,
    stop: () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Runs an nbdsh script with Debian's python3 first on PATH. */
function runNbdsh(script: string): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('nbdsh', ['-c', script], { env: PYTHON_ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout: Buffer.concat(out), stderr: err }));
  });
}

function pskLine(username: string, key: Buffer): string {
  return `${username}:${key.toString('hex')}\n`;
}

describe.skipIf(missing)(`cowvol serve --tls-psk with real NBD clients${skipReason}`, () => {
  let dir: string;
  let cleanup: (() => Promise<void>) | undefined; // undefined until beforeAll gets that far
  let vol: string;
  let keys: string;
  let qemuDir: string;
  let base: Buffer;
  let server: Served;
  let started: ChildProcess | undefined; // the server's process, once beforeAll got that far
  let socket: string;
  const tlsUnix = (exportName: string, keyFile = keys, user = 'alice') => `nbds+unix://${user}@/${exportName}?socket=${socket}&tls-psk-file=${keyFile}`;
  const qemuObject = () => `tls-creds-psk,id=tls0,endpoint=client,dir=${qemuDir},username=alice`;
  const qemuNbd = (exportName: string) => `driver=nbd,server.type=unix,server.path=${socket},export=${exportName},tls-creds=tls0`;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-nbd-tls-'));
    vol = join(dir, 'vol.img');
    base = randomBytes(SIZE);
    await writeFile(join(dir, 'base.raw'), base);
    await cowvolOk(['create', vol, '--size', String(SIZE)]);
    await cowvolOk(['write', vol, '--input', join(dir, 'base.raw')]);
    await cowvolOk(['snapshot', 'create', vol, 'base']);
    const key = randomBytes(32);
    keys = join(dir, 'keys.psk');
    await writeFile(keys, pskLine('alice', key), { mode: 0o600 });
    await writeFile(join(dir, 'wrong.psk'), pskLine('alice', randomBytes(32)), { mode: 0o600 });
    qemuDir = join(dir, 'qemu-creds'); // qemu reads <dir>/keys.psk
    await mkdir(qemuDir, { mode: 0o700 });
    await writeFile(join(qemuDir, 'keys.psk'), pskLine('alice', key), { mode: 0o600 });
    server = await serve(vol, ['--tls-psk', keys, '--listen', '127.0.0.1:0']);
    started = server.child;
    socket = decodeURIComponent(server.uri.slice(server.uri.indexOf('socket=') + 'socket='.length));
  });

  afterAll(async () => {
    const child = started;
    if (child?.exitCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    await cleanup?.();
  });

  it('prints an nbds+unix URI; nbdinfo lists the exports inside TLS over the socket and over nbds:// TCP', async () => {
    expect(server.uri).toBe(`nbds+unix:///?socket=${vol}.cowvol/nbd.sock`);
    expect(server.tcpUri).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/$/);
    const list = JSON.parse((await runOk('nbdinfo', ['--list', '--json', tlsUnix('')])).stdout.toString()) as { protocol: string; exports: Array<{ 'export-name': string }> };
    expect(list.exports.map((e) => e['export-name'])).toEqual(['live', 'snapshot/base']);
    const tcp = server.tcpUri!.replace('nbds://', 'nbds://alice@');
    const size = (await runOk('nbdinfo', ['--size', `${tcp}snapshot/base?tls-psk-file=${keys}`])).stdout.toString().trim();
    expect(size).toBe(String(SIZE));
    expect(server.log()).toMatch(/"protocol":"TLSv1\.[23]","cipher":"[^"]+","msg":"TLS started"/);
  });

  it('qemu-img convert writes live and compare reads it back over TLS; nbdcopy reads both exports over TLS', async () => {
    const data = randomBytes(SIZE);
    await writeFile(join(dir, 'new.raw'), data);
    await runOk('qemu-img', ['convert', '-n', '-f', 'raw', join(dir, 'new.raw'), '--object', qemuObject(), '--target-image-opts', qemuNbd('live')]);
    const compared = await runOk('qemu-img', ['compare', '--object', qemuObject(), '--image-opts', `driver=raw,file.filename=${join(dir, 'new.raw')}`, qemuNbd('live')]);
    expect(compared.stdout.toString()).toContain('Images are identical');
    await runOk('nbdcopy', [tlsUnix('live'), join(dir, 'live-copy.raw')]);
    expect((await readFile(join(dir, 'live-copy.raw'))).equals(data)).toBe(true);
    await runOk('nbdcopy', [tlsUnix('snapshot/base'), join(dir, 'base-copy.raw')]);
    expect((await readFile(join(dir, 'base-copy.raw'))).equals(base)).toBe(true);
  });

  it('a wrong key or an unknown username fails the TLS handshake; the server goes on serving', async () => {
    const wrong = await run('nbdinfo', ['--size', tlsUnix('live', join(dir, 'wrong.psk'))]);
    expect(wrong.code, wrong.stderr).not.toBe(0);
    expect(wrong.stderr).toMatch(/handshake|TLS/i);
    const qemuWrong = await run('qemu-img', ['info', '--object', qemuObject().replace('username=alice', 'username=mallory'), '--image-opts', qemuNbd('live')]);
    expect(qemuWrong.code).not.toBe(0);
    expect(server.log()).toContain('"msg":"TLS handshake failed: closing the connection"');
    expect((await runOk('nbdinfo', ['--size', tlsUnix('live')])).stdout.toString().trim()).toBe(String(SIZE));
  });

  it('a plain client gets NBD_REP_ERR_TLS_REQD for every option, and plain nbdinfo fails', async () => {
    const script = `
import nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.set_tls(nbd.TLS_DISABLE)
h.connect_unix(${JSON.stringify(socket)})
for name, call in [("list", lambda: h.opt_list(lambda n, d: 0)), ("info", h.opt_info), ("go", h.opt_go)]:
    try:
        call()
        raise SystemExit(name + " succeeded without TLS")
    except nbd.Error as e:
        print(name, "refused", e.errno)
h.opt_abort()
`;
    const r = await runNbdsh(script);
    const out = r.stdout.toString();
    expect(r.code, r.stderr + out).toBe(0);
    expect(out).toMatch(/list refused[\s\S]*info refused[\s\S]*go refused/);
    for (const option of [3, 6, 7]) expect(server.log()).toMatch(new RegExp(`"option":${option},"replyType":"0x80000005".*"msg":"option refused"`));
    const plain = await run('nbdinfo', ['--size', `nbd+unix:///live?socket=${socket}`]);
    expect(plain.code).not.toBe(0);
  });

  it('a data command on the TLS-only served volume is VOLUME_BUSY saying why, and lists only the commands that work there', async () => {
    const r = await cowvol(['read', vol, '--length', '4096']);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toContain('takes only TLS clients');
    expect(r.stderr).toContain('cowvol snapshot list');
    expect(r.stderr).not.toMatch(/cowvol (read|write|snapshot read|snapshot export|backup push)\b/);
    const info = await cowvol(['snapshot', 'list', vol, '--json']);
    expect(info.code, info.stderr).toBe(0);
  });

  it('SIGTERM exits 0; the volume holds what qemu-img wrote', async () => {
    expect(await server.stop()).toBe(0);
    expect((await cowvol(['check', vol])).code).toBe(0);
    expect((await cowvolOk(['read', vol, '--length', '4096'])).stdout.equals((await readFile(join(dir, 'new.raw'))).subarray(0, 4096))).toBe(true);
  });

  it('a key file readable by others, or a symlink, is INVALID_ARGUMENT (exit 2) and leaves the volume free; without --tls-psk a non-loopback --listen is refused', async () => {
    await writeFile(join(dir, 'open.psk'), pskLine('alice', randomBytes(32)), { mode: 0o644 });
    await symlink(keys, join(dir, 'link.psk'));
    for (const [file, why] of [
      ['open.psk', 'group or others'],
      ['link.psk', 'symbolic link'],
      ['none.psk', 'ENOENT'],
    ] as const) {
      const r = await cowvol(['serve', vol, '--tls-psk', join(dir, file)]);
      expect([r.code, r.stderr], file).toEqual([2, expect.stringContaining('[INVALID_ARGUMENT]')]);
      expect(r.stderr).toContain(why);
    }
    const r = await cowvol(['serve', vol, '--listen', '0.0.0.0:0']);
    expect([r.code, r.stderr]).toEqual([2, expect.stringContaining('without --tls-psk only loopback')]);
    await cowvolOk(['info', vol]);
  });

  it('with --tls-psk any address is served; a client that never finishes its handshake is closed after --handshake-timeout', async () => {
    const s = await serve(vol, ['--tls-psk', keys, '--listen', '0.0.0.0:0', '--handshake-timeout', '1']);
    try {
      expect(s.tcpUri).toMatch(/^nbds:\/\/0\.0\.0\.0:\d+\/$/);
      const path = decodeURIComponent(s.uri.slice(s.uri.indexOf('socket=') + 'socket='.length));
      const idle = connect(path);
      let received = 0;
      idle.on('data', (d: Buffer) => (received += d.length));
      await new Promise<void>((resolve) => idle.once('close', () => resolve())); // the server closes it: this client sends nothing
      expect(received).toBe(18); // the greeting, then nothing
      expect(s.log()).toContain('"msg":"handshake not finished in time: closing the connection"');
    } finally {
      expect(await s.stop()).toBe(0);
    }
  });
});
