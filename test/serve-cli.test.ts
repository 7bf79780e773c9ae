/**
 * `cowvol serve` as a command: endpoints, refusals and exit codes. The
 * NBD clients it serves are tested in nbd-clients.test.ts; here only
 * nbdinfo is needed (libnbd-bin: under CI=true a missing nbdinfo fails).
 */
import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isLoopback, parseListen } from '@cowvol/cli';
import { cowvol, cowvolOk, runOk, tempDir } from './helpers.js';
import { startServe } from './nbd-peers.js';

const haveNbdinfo = spawnSync('nbdinfo', ['--version'], { stdio: 'ignore' }).error === undefined;
if (process.env.CI && !haveNbdinfo) throw new Error('CI=true but nbdinfo is not installed (apt-get install libnbd-bin)');
const skipReason = haveNbdinfo ? '' : ' [SKIPPED: apt-get install libnbd-bin]';

let dir: string;
let cleanup: () => Promise<void>;
let vol: string;

// One volume for the file: no test writes to it.
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-serve-'));
  vol = join(dir, 'vol.img');
  await cowvolOk(['create', vol, '--size', '1M']);
});
afterAll(() => cleanup());

/** Starts `cowvol serve`, resolves once it printed its URI line. */
async function serve(args: string[]): Promise<{ uri: string; log: () => string; stop: (signal: NodeJS.Signals) => Promise<number | null> }> {
  const { child, uriLine, log, exited } = await startServe(vol, args);
  return {
    uri: uriLine,
    log,
    stop: (signal) => {
      child.kill(signal);
      return exited;
    },
  };
}

describe('cowvol serve: arguments', () => {
  it('parseListen accepts loopback host:port forms and refuses others naming --tls-psk, which admits any host', () => {
    expect(parseListen('127.0.0.1:10809')).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(parseListen('[::1]:0')).toEqual({ host: '::1', port: 0 });
    expect(parseListen('localhost:1')).toEqual({ host: 'localhost', port: 1 });
    expect(isLoopback('::ffff:127.0.0.1')).toBe(true);
    expect(isLoopback('0:0:0:0:0:0:0:1')).toBe(true);
    for (const remote of ['0.0.0.0:10809', '192.168.1.2:1', '[::]:1', 'example.com:1']) {
      expect(() => parseListen(remote)).toThrow(/without --tls-psk only loopback/);
      expect(parseListen(remote, true).port).toBe(Number(remote.slice(remote.lastIndexOf(':') + 1)));
    }
    for (const bad of ['127.0.0.1', '127.0.0.1:99999', ':1', '127.0.0.1:x']) expect(() => parseListen(bad)).toThrow(/--listen/);
  });

  it('a non-loopback --listen is INVALID_ARGUMENT (exit 2) and leaves the volume free', async () => {
    const r = await cowvol(['serve', vol, '--listen', '0.0.0.0:10809']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('[INVALID_ARGUMENT]');
    expect(r.stderr).toContain('without --tls-psk only loopback');
    await cowvolOk(['info', vol]);
  });

  it('a file in the way of the socket is ENDPOINT_IN_USE (exit 4); the volume is released', async () => {
    const path = join(dir, 'not-a-socket');
    await writeFile(path, 'x');
    const r = await cowvol(['serve', vol, '--socket', path]);
    expect(r.code).toBe(4);
    expect(r.stderr).toContain('[ENDPOINT_IN_USE]');
    await cowvolOk(['info', vol]);
  });
});

describe('cowvol serve: endpoints that cannot be used', () => {
  it('a TCP port in use is ENDPOINT_IN_USE (exit 4); a socket in a missing folder INVALID_ARGUMENT (exit 2); never INTERNAL', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const { port } = blocker.address() as AddressInfo;
    try {
      const r = await cowvol(['serve', vol, '--listen', `127.0.0.1:${port}`]);
      expect([r.code, r.stderr]).toEqual([4, expect.stringContaining('[ENDPOINT_IN_USE]')]);
    } finally {
      blocker.close();
    }
    const r = await cowvol(['serve', vol, '--socket', join(dir, 'missing', 'nbd.sock')]);
    expect([r.code, r.stderr]).toEqual([2, expect.stringContaining('[INVALID_ARGUMENT]')]);
    await cowvolOk(['info', vol]);
  });
});

describe.skipIf(!haveNbdinfo)(`cowvol serve: endpoints${skipReason}`, () => {
  it('--socket, --listen on loopback TCP, --read-only; SIGINT exits 0 and replaces nothing', async () => {
    const socket = join(dir, 'custom.sock');
    const s = await serve(['--socket', socket, '--listen', '127.0.0.1:0', '--read-only']);
    expect(s.uri).toBe(`nbd+unix:///?socket=${socket}`);
    const serving = JSON.parse(
      s
        .log()
        .split('\n')
        .find((l) => l.includes('"serving"'))!,
    ) as { tcpUri: string };
    expect(serving.tcpUri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/$/);
    for (const uri of [s.uri, serving.tcpUri]) {
      const info = JSON.parse((await runOk('nbdinfo', ['--json', uri])).stdout.toString()) as { exports: Array<{ is_read_only: boolean; 'export-size': number }> };
      expect([info.exports[0]!.is_read_only, info.exports[0]!['export-size']]).toEqual([true, 1024 * 1024]);
    }
    expect(await s.stop('SIGINT')).toBe(0);
    await cowvolOk(['info', vol]);
  });

  it('a second server on a live socket: the volume is busy (VOLUME_BUSY, exit 5)', async () => {
    const s = await serve([]);
    const r = await cowvol(['serve', vol]);
    expect(r.code).toBe(5);
    expect(await s.stop('SIGTERM')).toBe(0);
  });
});

describe.skipIf(!haveNbdinfo)(`cowvol serve: signals after cowvol stop${skipReason}`, () => {
  it('SIGTERM delivered again and again after `cowvol stop` returned, through the exit window: the server still exits 0, not by signal', async () => {
    const { child, exited } = await startServe(vol, []);
    await cowvolOk(['stop', vol]);
    const state = { done: false };
    void exited.then(() => (state.done = true));
    while (!state.done && child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect([await exited, child.signalCode]).toEqual([0, null]);
  });
});
