/**
 * `cowvol serve --max-connections 1` with its one connection taken (a
 * qemu-io session held open on stdin): a second client is told why it is
 * refused (ARCHITECTURE §14.6, "Connections over the limit") — qemu-img
 * prints the server's text, the CLI's data commands say VOLUME_BUSY
 * (exit 5) — and is served once the first closes.
 *
 * Under CI=true a missing tool is a failure; elsewhere the suite is skipped
 * with the packages to install in its name.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, jsonOf, run, tempDir } from './helpers.js';
import { requireTools, startServe, type ServeProcess } from './nbd-peers.js';

const { missing, skipReason } = requireTools([
  ['qemu-img', 'qemu-utils'],
  ['qemu-io', 'qemu-utils'],
]);

describe.skipIf(missing)(`a served volume with every connection taken${skipReason}`, () => {
  let dir: string;
  let cleanup: (() => Promise<void>) | undefined;
  let vol: string;
  let server: ServeProcess | undefined;
  let holder: ChildProcess | undefined;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-nbd-limit-'));
    vol = join(dir, 'vol.img');
    await cowvolOk(['create', vol, '--size', '4M']);
    server = await startServe(vol, ['--max-connections', '1']);
  });

  afterAll(async () => {
    holder?.kill('SIGKILL');
    const child = server?.child;
    if (child?.exitCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    await cleanup?.();
  });

  /** The server's count of open connections (`cowvol status --json`). */
  async function connections(): Promise<number> {
    return jsonOf<{ connections: number }>(await cowvolOk(['status', vol, '--json'])).connections;
  }

  /** Attaches qemu-io to `live`, taking the one connection (it stays attached while its stdin is open); resolves once the server counts it, with the client and the deadline it waited against. */
  async function attachHolder(): Promise<{ child: ChildProcess; deadline: number }> {
    const child = spawn('qemu-io', ['-f', 'raw', `nbd+unix:///live?socket=${server!.socket}`], { stdio: ['pipe', 'ignore', 'pipe'] });
    holder = child; // killed by afterAll if a test fails
    const deadline = Date.now() + 20_000;
    while ((await connections()) < 1) {
      expect(Date.now(), 'qemu-io did not attach').toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 50));
    }
    return { child, deadline };
  }

  it('a second client is refused with a reason naming the limit, and served once the first one closes', async () => {
    const uri = `nbd+unix:///live?socket=${server!.socket}`;
    const { child, deadline } = await attachHolder();

    const info = await run('qemu-img', ['info', uri]);
    expect(info.code).not.toBe(0);
    expect(info.stderr).toContain('too many connections: this server serves at most 1 at once');

    const read = await cowvol(['read', vol, '--offset', '0', '--length', '4096', '--output', join(dir, 'out')]);
    expect(read.code).toBe(5);
    expect(read.stderr).toContain('VOLUME_BUSY');
    expect(read.stderr).toContain('at most 1 at once');
    expect(await connections()).toBe(1); // the refused ones held no slot

    child.stdin!.end(); // qemu-io quits at end of input and disconnects
    await new Promise((r) => child.once('exit', r));
    while ((await connections()) > 0) {
      expect(Date.now(), 'qemu-io did not disconnect').toBeLessThan(deadline + 20_000);
      await new Promise((r) => setTimeout(r, 50));
    }
    await cowvolOk(['read', vol, '--offset', '0', '--length', '4096', '--output', join(dir, 'out')]);
  });

  it('with --wait, a command refused for the limit tries again and is served once the other client closes; without it, refused at once', async () => {
    const { child } = await attachHolder();
    const out = join(dir, 'waited');
    const waiting = cowvol(['read', vol, '--offset', '0', '--length', '4096', '--output', out, '--wait', '60']);
    // The waiting command holds no slot while it waits: a command without --wait is still refused for the limit.
    await new Promise((r) => setTimeout(r, 500));
    const refused = await cowvol(['read', vol, '--offset', '0', '--length', '4096', '--output', join(dir, 'refused')]);
    expect([refused.code, refused.stderr]).toEqual([5, expect.stringContaining('at most 1 at once')]);
    child.stdin!.end();
    const waited = await waiting;
    expect(waited.code, waited.stderr).toBe(0);
    expect((await readFile(out)).length).toBe(4096);
  });
});
