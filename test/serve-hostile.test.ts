/**
 * Hostile NBD clients against a real `cowvol serve` process
 * (docs/ARCHITECTURE.md §14.2, §11 "Other named tests"): fast-check
 * generates handshakes and requests — garbage instead of client flags and
 * options, unknown options and commands, lengths past the export or above
 * 32 MiB, requests after NBD_CMD_DISC, half-closed sockets — on two
 * connections while a well-behaved client writes and reads back on a third.
 * The server stays up, the good client never fails, and the volume's bytes
 * equal a model updated only by the valid writes. A client that sends
 * 10 000 READs of 32 MiB and never reads a reply must not grow the server's
 * VmRSS by more than the connection's in-flight bound allows. Runs:
 * COWVOL_NBD_HOSTILE_RUNS (default 15); seed: COWVOL_NBD_HOSTILE_SEED.
 */
import { readFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_CONTROL_CONNECTIONS, NBD_CMD_DISC, NBD_CMD_READ, NBD_CMD_WRITE } from '@cowvol/nbd';
import { RawClient } from '../packages/nbd/test/raw-client.js';
import { cowvol, cowvolOk, tempDir } from './helpers.js';
import { requireTools, startServe, type ServeProcess } from './nbd-peers.js';

const { missing, skipReason } = requireTools([['nbdinfo', 'libnbd-bin']]);
const RUNS = Number(process.env.COWVOL_NBD_HOSTILE_RUNS ?? 15);
const SEED = Number(process.env.COWVOL_NBD_HOSTILE_SEED ?? Date.now() % 2 ** 31);
const MiB = 1024 * 1024;
const SIZE_BYTES = 64 * MiB;
/** Each hostile connection writes only inside its own slice of [0, 1 MiB); the good client in [1 MiB, 2 MiB). */
const SLICE_BYTES = 512 * 1024;
const CHECKED_BYTES = 2 * MiB;

type Action =
  | { kind: 'write'; offsetBytes: number; lengthBytes: number; fill: number }
  | { kind: 'pastEnd'; lengthBytes: number }
  | { kind: 'hugeRead'; lengthBytes: number }
  | { kind: 'hugeWrite'; lengthBytes: number }
  | { kind: 'unknownCommand'; type: number }
  | { kind: 'discThenWrite' }
  | { kind: 'halfClose'; headerBytes: number };

const action: fc.Arbitrary<Action> = fc.oneof(
  fc.record({ kind: fc.constant('write' as const), offsetBytes: fc.nat(SLICE_BYTES - 4096), lengthBytes: fc.integer({ min: 1, max: 4096 }), fill: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('pastEnd' as const), lengthBytes: fc.integer({ min: 1, max: 8192 }) }),
  fc.record({ kind: fc.constant('hugeRead' as const), lengthBytes: fc.integer({ min: 32 * MiB + 1, max: 2 ** 32 - 1 }) }),
  fc.record({ kind: fc.constant('hugeWrite' as const), lengthBytes: fc.integer({ min: 32 * MiB + 1, max: 2 ** 32 - 1 }) }),
  fc.record({ kind: fc.constant('unknownCommand' as const), type: fc.integer({ min: 11, max: 0xffff }) }),
  fc.constant({ kind: 'discThenWrite' as const }),
  fc.record({ kind: fc.constant('halfClose' as const), headerBytes: fc.integer({ min: 0, max: 27 }) }),
);

/** A hostile handshake: garbage where client flags and options go, or an unknown option before GO. */
const handshake = fc.oneof(fc.record({ garbage: fc.uint8Array({ minLength: 1, maxLength: 64 }) }), fc.record({ unknownOption: fc.integer({ min: 12, max: 2 ** 32 - 1 }) }), fc.constant({}));

let dir: string;
let cleanup: () => Promise<void>;
let server: ServeProcess;
const model = Buffer.alloc(CHECKED_BYTES);
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-hostile-'));
  await cowvolOk(['create', join(dir, 'vol.img'), '--size', '64M']);
  server = await startServe(join(dir, 'vol.img'));
});
afterAll(async () => {
  server.child.kill('SIGTERM');
  expect(await server.exited).toBe(0);
  await cleanup();
});

async function rssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
}

/** The reply to the last request, or 'closed' when the server closed the connection instead. */
async function outcome(c: RawClient): Promise<number | 'closed'> {
  try {
    return (await c.readSimpleReply()).error;
  } catch (err) {
    if (c.closed) return 'closed';
    throw err;
  }
}

/** Runs one hostile action; false once the connection is gone. Valid writes update the model. */
async function act(c: RawClient, a: Action, sliceBytes: number, cookie: bigint): Promise<boolean> {
  const header = (type: number, offsetBytes: number, lengthBytes: number): { type: number; cookie: bigint; offsetBytes: number; lengthBytes: number } => ({ type, cookie, offsetBytes, lengthBytes });
  if (a.kind === 'write') {
    const payload = Buffer.alloc(a.lengthBytes, a.fill);
    c.sendRequest({ ...header(NBD_CMD_WRITE, sliceBytes + a.offsetBytes, a.lengthBytes), payload });
    expect(await outcome(c)).toBe(0);
    payload.copy(model, sliceBytes + a.offsetBytes);
    return true;
  }
  if (a.kind === 'pastEnd') {
    c.sendRequest({ ...header(NBD_CMD_WRITE, SIZE_BYTES - 4096, a.lengthBytes + 4096), payload: Buffer.alloc(a.lengthBytes + 4096, 0xee) });
  } else if (a.kind === 'hugeRead') c.sendRequest(header(NBD_CMD_READ, 0, a.lengthBytes));
  else if (a.kind === 'hugeWrite') c.sendRequest(header(NBD_CMD_WRITE, 0, a.lengthBytes));
  else if (a.kind === 'unknownCommand') c.sendRequest(header(a.type, 0, 512));
  else if (a.kind === 'discThenWrite') {
    c.sendRequest(header(NBD_CMD_DISC, 0, 0));
    c.sendRequest({ ...header(NBD_CMD_WRITE, sliceBytes, 4096), payload: Buffer.alloc(4096, 0xdd) });
    await c.waitClosed();
    return false;
  } else {
    const h = Buffer.alloc(28, 0xab);
    h.writeUInt32BE(0x25609513, 0);
    c.write(h.subarray(0, a.headerBytes));
    c.end();
    await c.waitClosed();
    return false;
  }
  const result = await outcome(c);
  if (result === 'closed') return false;
  expect(result).not.toBe(0);
  return true;
}

async function hostileConnection(hs: { garbage?: Uint8Array; unknownOption?: number }, actions: Action[], sliceBytes: number): Promise<void> {
  const c = await RawClient.connect(server.socket);
  if (hs.garbage) {
    await c.take(18);
    c.write(Buffer.from(hs.garbage));
    c.end();
    await c.waitClosed();
    return;
  }
  if (hs.unknownOption !== undefined) {
    await c.handshake();
    c.sendOption(hs.unknownOption);
    const r = await c.readOptionReply();
    expect(r.type >= 2 ** 31 || r.type === 1).toBe(true);
    c.socket.destroy();
  }
  const client = hs.unknownOption === undefined ? c : await RawClient.connect(server.socket);
  await client.open('');
  let cookie = 1n;
  for (const a of actions) if (!(await act(client, a, sliceBytes, cookie++))) return;
  client.socket.destroy();
}

/** The well-behaved client: writes and reads back in [1 MiB, 2 MiB) until `stop.done`; every reply must be right. */
async function goodClient(stop: { done: boolean }): Promise<number> {
  const c = await RawClient.connect(server.socket);
  await c.open('');
  let rounds = 0;
  for (let cookie = 1n; !stop.done; cookie += 2n) {
    const offsetBytes = MiB + ((rounds * 4096) % MiB);
    const payload = Buffer.alloc(4096, (rounds % 250) + 1);
    c.sendRequest({ type: NBD_CMD_WRITE, cookie, offsetBytes, lengthBytes: 4096, payload });
    expect((await c.readSimpleReply()).error).toBe(0);
    payload.copy(model, offsetBytes);
    c.sendRequest({ type: NBD_CMD_READ, cookie: cookie + 1n, offsetBytes, lengthBytes: 4096 });
    expect((await c.readSimpleReply()).data).toEqual(payload);
    rounds++;
  }
  c.end();
  return rounds;
}

async function volumeBytes(): Promise<Buffer> {
  const c = await RawClient.connect(server.socket);
  await c.open('');
  c.sendRequest({ type: NBD_CMD_READ, cookie: 1n, offsetBytes: 0, lengthBytes: CHECKED_BYTES });
  const head = (await c.readSimpleReply()).data!;
  c.sendRequest({ type: NBD_CMD_READ, cookie: 2n, offsetBytes: SIZE_BYTES - MiB, lengthBytes: MiB });
  const tail = (await c.readSimpleReply()).data!;
  c.end();
  expect(tail.every((b) => b === 0)).toBe(true);
  return head;
}

describe.skipIf(missing)(`cowvol serve: hostile clients${skipReason}`, () => {
  it('generated handshakes and requests: the server stays up, a good client keeps working, only valid writes change bytes', { timeout: 60_000 + RUNS * 10_000 }, async () => {
    console.log(`serve-hostile seed ${SEED} (COWVOL_NBD_HOSTILE_SEED), ${RUNS} runs (COWVOL_NBD_HOSTILE_RUNS)`);
    await fc.assert(
      fc.asyncProperty(fc.tuple(handshake, fc.array(action, { maxLength: 12 })), fc.tuple(handshake, fc.array(action, { maxLength: 12 })), async ([hs0, a0], [hs1, a1]) => {
        const stop = { done: false };
        const good = goodClient(stop);
        await Promise.all([hostileConnection(hs0, a0, 0), hostileConnection(hs1, a1, SLICE_BYTES)]);
        stop.done = true;
        expect(await good).toBeGreaterThan(0);
        expect(server.child.exitCode).toBeNull();
        expect((await volumeBytes()).equals(model), 'volume bytes equal the model of valid writes').toBe(true);
      }),
      { seed: SEED, numRuns: RUNS },
    );
  });

  it('a client that sends 10 000 READs of 32 MiB and never reads a reply: bounded VmRSS, other connections served', { timeout: 120_000 }, async () => {
    const before = await rssKiB(server.child.pid!);
    const c = await RawClient.connect(server.socket);
    await c.open('');
    c.socket.pause(); // never read a reply
    const header = Buffer.alloc(28);
    header.writeUInt32BE(0x25609513, 0);
    header.writeUInt16BE(NBD_CMD_READ, 6);
    header.writeUInt32BE(32 * MiB, 24);
    const all = Buffer.concat(Array.from({ length: 10_000 }, (_, i) => (header.writeBigUInt64BE(BigInt(i + 1), 8), Buffer.from(header))));
    c.socket.write(all);
    let peakKiB = before;
    for (let i = 0; i < 20; i++) {
      await sleep(250);
      peakKiB = Math.max(peakKiB, await rssKiB(server.child.pid!));
    }
    const stop = { done: false };
    const good = goodClient(stop);
    await sleep(500);
    stop.done = true;
    expect(await good).toBeGreaterThan(0);
    console.log(`VmRSS ${before} KiB before, peak ${peakKiB} KiB with the stalled reader`);
    // The connection holds at most maxInFlightBytes (64 MiB) plus one 32 MiB read, and the kernel's socket buffers.
    expect(peakKiB - before).toBeLessThan(256 * 1024);
    c.socket.destroy();
    expect(server.child.exitCode).toBeNull();
  });

  it(
    'a client that never reads its replies and eight idle control connections hold nothing for good: status is refused with VOLUME_BUSY, answers once they idle out, and stop ends the server',
    { timeout: 120_000 },
    async () => {
      const vol = join(dir, 'stuck.img');
      await cowvolOk(['create', vol, '--size', '64M']);
      const stuck = await startServe(vol);
      try {
        const c = await RawClient.connect(stuck.socket);
        await c.open('');
        c.socket.pause(); // a stopped process: it never takes a reply
        const header = Buffer.alloc(28);
        header.writeUInt32BE(0x25609513, 0);
        header.writeUInt16BE(NBD_CMD_READ, 6);
        header.writeUInt32BE(32 * MiB, 24);
        c.socket.write(Buffer.concat(Array.from({ length: 200 }, (_, i) => (header.writeBigUInt64BE(BigInt(i + 1), 8), Buffer.from(header)))));
        // Every control slot taken by a connection that sends nothing (CONTROL_IDLE_MS closes each).
        const idle = await Promise.all(Array.from({ length: MAX_CONTROL_CONNECTIONS }, () => connectUnix(`${vol}.cowvol/control.sock`)));
        let status = await cowvol(['status', vol]);
        // Refused while they hold every slot, saying why (VOLUME_BUSY, exit 5), not as a broken connection.
        expect([status.code, status.stderr]).toEqual([5, expect.stringMatching(/\[VOLUME_BUSY\].*8 control connections open/)]);
        // A routed command says the same, not "in use by process N" or "stop it first".
        for (const args of [
          ['snapshot', 'list', vol],
          ['snapshot', 'create', vol, 'refused'],
        ]) {
          const r = await cowvol(args);
          expect([r.code, r.stderr], args.join(' ')).toEqual([5, expect.stringMatching(/\[VOLUME_BUSY\].*8 control connections open/)]);
        }
        // With --wait the command asks the server again until it answers (the idle connections close after CONTROL_IDLE_MS).
        const waited = await cowvol(['snapshot', 'list', vol, '--wait', '60', '--json']);
        expect(waited.code, waited.stderr).toBe(0);
        for (let tries = 0; status.code !== 0 && tries < 60; tries++) {
          await sleep(500);
          status = await cowvol(['status', vol]);
        }
        expect(status.code, status.stderr).toBe(0);
        // Each closes after its own CONTROL_IDLE_MS: the first lets status in, the others follow within moments.
        for (let tries = 0; tries < 50 && !idle.every((s) => s.destroyed || s.readableEnded); tries++) await sleep(100);
        for (const s of idle) expect(s.destroyed || s.readableEnded, 'the server closed the idle control connection').toBe(true);
        // stop: the requests in flight cannot hand their replies over; the stuck client is dropped after STOP_DRAIN_MS.
        const stop = await cowvol(['stop', vol]);
        expect(stop.code, stop.stderr).toBe(0);
        expect(await stuck.exited).toBe(0);
        expect(stuck.log()).toContain('the client did not take its replies in time');
        c.socket.destroy();
        for (const s of idle) s.destroy();
      } finally {
        if (stuck.child.exitCode === null && stuck.child.signalCode === null) stuck.child.kill('SIGKILL');
      }
    },
  );
});

/** A connected Unix socket that sends nothing; it records the server's end of it. */
function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path, () => resolve(s));
    s.on('error', reject);
    s.on('data', () => undefined);
  });
}
