/**
 * The control channel of `cowvol serve` (docs/ARCHITECTURE.md §14.8,
 * docs/FORMAT.md §11) through the CLI: status, stop, snapshot create and
 * list on a served volume give what they give offline; other commands get
 * VOLUME_BUSY naming the server; bad control clients leave the server up;
 * and snapshots taken while an nbdsh (libnbd) program writes at queue
 * depth 32 hold every write acknowledged before their create started and
 * none issued after it returned, each read over its own `snapshot/<name>`
 * export. The create pause the writers saw is printed, not asserted.
 * Needs nbdsh with Debian's python3-libnbd (under CI=true a missing one fails).
 */
import { createConnection } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, jsonOf, tempDir } from './helpers.js';
import { nbdsh, requireTools, serveCowvol, type PeerServer } from './nbd-peers.js';

const { missing, skipReason } = requireTools([
  ['nbdsh', 'python3-libnbd'],
  ['nbdinfo', 'libnbd-bin'],
]);

let dir: string;
let cleanup: () => Promise<void>;
const running = new Set<PeerServer>();

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-serve-control-'));
});
afterAll(async () => {
  await Promise.all([...running].map((s) => s.stop()));
  await cleanup();
});

async function newVolume(name: string, size = '1M'): Promise<string> {
  const vol = join(dir, name);
  await cowvolOk(['create', vol, '--size', size]);
  return vol;
}

async function served(vol: string): Promise<PeerServer & { socket: string }> {
  const server = await serveCowvol(vol);
  running.add(server);
  return server;
}

/** Sends raw bytes to the control socket and resolves with everything it answers until it closes or `waitMs` passed. */
function rawControl(vol: string, bytes: Buffer, waitMs = 300, end = true): Promise<string> {
  return new Promise((resolve) => {
    const socket = createConnection(join(`${vol}.cowvol`, 'control.sock'));
    let out = '';
    socket.on('data', (d: Buffer) => (out += d.toString()));
    socket.on('error', () => undefined);
    socket.once('connect', () => {
      socket.write(bytes);
      if (end) socket.end();
    });
    const done = (): void => {
      socket.destroy();
      resolve(out);
    };
    socket.once('close', done);
    setTimeout(done, waitMs).unref();
  });
}

describe.skipIf(missing)(`cowvol status, stop, snapshot create and list on a served volume${skipReason}`, () => {
  it('status, snapshot create and list answer as offline; other commands get VOLUME_BUSY naming the server; stop releases the volume', async () => {
    const vol = await newVolume('a.img');
    const offlineStatus = await cowvolOk(['status', vol, '--json']);
    expect(jsonOf(offlineStatus)).toEqual({ served: false });
    const server = await served(vol);

    const status = jsonOf<{ served: boolean; pid: number; endpoints: string[]; exports: Array<{ name: string }> }>(await cowvolOk(['status', vol, '--json']));
    expect(status.served).toBe(true);
    expect(status.endpoints).toEqual([server.uri.replace('/live?', '/?')]);
    expect(status.exports.map((e) => e.name)).toEqual(['live']);
    expect((await cowvolOk(['status', vol])).stdout.toString()).toContain(`served:      yes, by process ${status.pid}`);

    const created = await cowvolOk(['snapshot', 'create', vol, 'one', '--label', 'k=v']);
    expect(created.stdout.toString()).toMatch(/^created snapshot one at \S+\n$/);
    const createdJson = jsonOf(await cowvolOk(['snapshot', 'create', vol, 'two', '--json']));
    const dup = await cowvol(['snapshot', 'create', vol, 'one', '--json']);
    expect([dup.code, jsonOf<{ error: { code: string } }>(dup).error.code]).toEqual([4, 'SNAPSHOT_EXISTS']);
    const badName = await cowvol(['snapshot', 'create', vol, 'a b']);
    expect([badName.code, badName.stderr]).toEqual([2, expect.stringContaining('[INVALID_SNAPSHOT_NAME]')]);
    const listServed = await cowvolOk(['snapshot', 'list', vol]);
    const listServedJson = await cowvolOk(['snapshot', 'list', vol, '--json']);
    expect(listServed.stdout.toString()).toContain('k=v');

    const info = await cowvol(['info', vol]);
    expect(info.code).toBe(5);
    expect(info.stderr).toContain(`[VOLUME_BUSY]: volume ${vol} is busy: served by cowvol serve (process ${status.pid})`);
    expect(info.stderr).toContain('cowvol snapshot create');

    const stopped = await cowvolOk(['stop', vol]);
    expect(stopped.stdout.toString()).toContain(`(process ${status.pid}); the volume is released`);
    expect(await server.stop()).toBe(0);
    running.delete(server);
    // Offline, right after stop returned: the lock is free and the output is the same.
    expect((await cowvolOk(['snapshot', 'list', vol])).stdout.toString()).toBe(listServed.stdout.toString());
    expect((await cowvolOk(['snapshot', 'list', vol, '--json'])).stdout.toString()).toBe(listServedJson.stdout.toString());
    const offline = jsonOf<{ snapshots: Array<Record<string, unknown>> }>(await cowvolOk(['snapshot', 'list', vol, '--json']));
    expect(offline.snapshots[1]).toMatchObject(createdJson);
  });

  it('stop and status on a volume nobody serves: NOT_SERVED (exit 3) and served: false (exit 0); a missing volume is VOLUME_NOT_FOUND', async () => {
    const vol = await newVolume('b.img');
    const stop = await cowvol(['stop', vol, '--json']);
    expect(stop.code).toBe(3);
    expect(jsonOf<{ error: { code: string } }>(stop).error.code).toBe('NOT_SERVED');
    expect((await cowvolOk(['status', vol])).stdout.toString()).toBe(`served: no (no cowvol serve answers for ${vol})\n`);
    const missingVol = await cowvol(['status', join(dir, 'nope.img')]);
    expect([missingVol.code, missingVol.stderr]).toEqual([3, expect.stringContaining('[VOLUME_NOT_FOUND]')]);
  });

  it('garbage, a line over 64 KiB, a bad version, an unknown method and a client gone mid-request get errors and leave the server up', async () => {
    const vol = await newVolume('c.img');
    const server = await served(vol);
    const garbage = await rawControl(vol, Buffer.from('\x00\xffnot json\n'));
    expect(JSON.parse(garbage)).toMatchObject({ v: 1, id: null, error: { code: 'INVALID_ARGUMENT' } });
    const huge = await rawControl(vol, Buffer.alloc(70 * 1024, 0x61), 1000, false);
    expect(JSON.parse(huge)).toMatchObject({ id: null, error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('longer than 65536 bytes') } });
    const version = await rawControl(vol, Buffer.from('{"v":9,"id":4,"method":"status"}\n'));
    expect(JSON.parse(version)).toMatchObject({ id: 4, error: { code: 'INVALID_ARGUMENT' } });
    const unknown = await rawControl(vol, Buffer.from('{"v":1,"id":"x","method":"format"}\n{"v":1,"id":5,"method":"snapshot.create","params":{"name":7}}\n'));
    expect(unknown.trim().split('\n').map((l) => JSON.parse(l) as unknown)).toEqual([
      { v: 1, id: 'x', error: { code: 'INVALID_ARGUMENT', message: 'unknown control method "format"' } },
      { v: 1, id: 5, error: { code: 'INVALID_ARGUMENT', message: 'params.name must be a string' } },
    ]);
    await rawControl(vol, Buffer.from('{"v":1,"id":6,"meth'), 50, false);
    await rawControl(vol, Buffer.from('{"v":1,"id":7,"method":"snapshot.create","params":{"name":"gone"}}\n'), 0, false);
    await sleep(200);
    const status = jsonOf<{ served: boolean; exports: Array<{ name: string }> }>(await cowvolOk(['status', vol, '--json']));
    expect(status.served).toBe(true);
    expect(status.exports.map((e) => e.name)).toEqual(['live', 'snapshot/gone']);
    await cowvolOk(['stop', vol]);
    expect(await server.stop()).toBe(0);
    running.delete(server);
  });
});
