/**
 * ControlServer in process (docs/ARCHITECTURE.md §14.8): requests of one
 * connection run at most MAX_CONTROL_IN_FLIGHT at once and are all
 * answered; a method's CowvolError keeps its code; drain() refuses new
 * requests with VOLUME_BUSY, waits for those in flight, and leaves exempt
 * methods running.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { SnapshotExistsError } from '@cowvol/cow-core';
import { ControlServer, MAX_CONTROL_IN_FLIGHT, encodeControlRequest, type ControlMethod } from '@cowvol/nbd';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-control-'));
});
afterEach(() => rm(dir, { recursive: true, force: true }));

/** A method that runs until release() is called, counting how many run at once. */
function gate(): { method: ControlMethod; release: () => void; peak: () => number; started: () => number } {
  let running = 0;
  let peak = 0;
  let started = 0;
  let open: () => void = () => undefined;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return {
    method: async () => {
      started++;
      peak = Math.max(peak, ++running);
      await opened;
      running--;
      return { ok: true };
    },
    release: () => open(),
    peak: () => peak,
    started: () => started,
  };
}

function connect(path: string): Promise<{ socket: Socket; lines: () => Array<Record<string, unknown>> }> {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    let text = '';
    socket.on('data', (d: Buffer) => (text += d.toString()));
    socket.once('connect', () =>
      resolve({
        socket,
        lines: () =>
          text
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as Record<string, unknown>),
      }),
    );
  });
}

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  expect(condition()).toBe(true);
}

it('runs at most MAX_CONTROL_IN_FLIGHT requests of a connection at once, answers them all, and keeps error codes', async () => {
  const path = join(dir, 'control.sock');
  const slow = gate();
  const server = await ControlServer.listen(path, { slow: slow.method, fail: () => Promise.reject(new SnapshotExistsError('a')), crash: () => Promise.reject(new Error('boom')) }, 'vol.img');
  expect((await stat(path)).mode & 0o777).toBe(0o600);
  const client = await connect(path);
  for (let id = 1; id <= MAX_CONTROL_IN_FLIGHT + 2; id++) client.socket.write(encodeControlRequest({ id, method: 'slow', params: {} }));
  await until(() => slow.started() === MAX_CONTROL_IN_FLIGHT);
  await new Promise((resolve) => setTimeout(resolve, 50));
  expect(slow.started()).toBe(MAX_CONTROL_IN_FLIGHT);
  slow.release();
  await until(() => client.lines().length === MAX_CONTROL_IN_FLIGHT + 2);
  expect(slow.peak()).toBe(MAX_CONTROL_IN_FLIGHT);
  expect(
    client
      .lines()
      .map((l) => l.id)
      .sort(),
  ).toEqual([1, 2, 3, 4, 5, 6]);
  client.socket.write(Buffer.concat([encodeControlRequest({ id: 'f', method: 'fail', params: {} }), encodeControlRequest({ id: 'c', method: 'crash', params: {} })]));
  await until(() => client.lines().length === MAX_CONTROL_IN_FLIGHT + 4);
  const errors = client.lines().slice(-2);
  expect(errors.find((l) => l.id === 'f')).toMatchObject({ error: { code: 'SNAPSHOT_EXISTS' } });
  expect(errors.find((l) => l.id === 'c')).toMatchObject({ error: { code: 'INTERNAL', message: 'boom' } });
  client.socket.destroy();
  await server.close();
});

it('drain() refuses new requests with VOLUME_BUSY, waits for those in flight, and leaves exempt methods running', async () => {
  const path = join(dir, 'control.sock');
  const slow = gate();
  const stop = gate();
  const server = await ControlServer.listen(path, { slow: slow.method, stop: stop.method, status: () => Promise.resolve({}) }, 'vol.img');
  const client = await connect(path);
  client.socket.write(Buffer.concat([encodeControlRequest({ id: 1, method: 'slow', params: {} }), encodeControlRequest({ id: 2, method: 'stop', params: {} })]));
  await until(() => slow.started() === 1 && stop.started() === 1);
  let drained = false;
  const draining = server.drain(['stop']).then(() => (drained = true));
  client.socket.write(encodeControlRequest({ id: 3, method: 'status', params: {} }));
  await until(() => client.lines().length === 1);
  expect(client.lines()[0]).toMatchObject({ id: 3, error: { code: 'VOLUME_BUSY' } });
  expect(drained).toBe(false);
  slow.release();
  await draining;
  await until(() => client.lines().length === 2);
  expect(client.lines().map((l) => l.id)).toEqual([3, 1]);
  stop.release();
  await server.drain();
  await until(() => client.lines().length === 3);
  client.socket.destroy();
  await server.close();
});
