/**
 * The test TCP fault proxy (test/tcp-fault-proxy.ts) against a local echo
 * server: it passes bytes through unchanged, cuts connections mid-stream in
 * both directions, delays replies without reordering them, replays its
 * decisions from a seed, and stops faulting when told. Seed:
 * COWVOL_FAULT_PROXY_SEED (printed).
 */
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy, type FaultProxy, type FaultProxyOptions } from './tcp-fault-proxy.js';

const SEED = Number(process.env.COWVOL_FAULT_PROXY_SEED ?? Math.floor(Math.random() * 2 ** 31));

let echo: Server;
let echoPort = 0;

beforeAll(async () => {
  echo = createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve));
  const a = echo.address();
  echoPort = typeof a === 'object' && a !== null ? a.port : 0;
});
afterAll(async () => {
  await new Promise<void>((resolve) => echo.close(() => resolve()));
});

function proxy(extra: Partial<FaultProxyOptions>): Promise<FaultProxy> {
  return startFaultProxy({ targetHost: '127.0.0.1', targetPort: echoPort, seed: SEED, log: () => undefined, ...extra });
}

/** Sends `payload` through port, half-closes, and collects what comes back until the connection ends or breaks. */
function roundTrip(port: number, payload: Buffer): Promise<{ received: Buffer; broken: boolean }> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let broken = false;
    const s = connect(port, '127.0.0.1', () => {
      // Writes in 64 KiB pieces, so a cut can fall between and inside them.
      for (let o = 0; o < payload.length; o += 65_536) s.write(payload.subarray(o, o + 65_536));
      s.end();
    });
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('error', () => {
      broken = true;
    });
    s.on('close', () => {
      resolve({ received: Buffer.concat(parts), broken });
    });
  });
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe(`tcp fault proxy (seed ${String(SEED)}, COWVOL_FAULT_PROXY_SEED)`, () => {
  it('passes bytes through unchanged when it does not fault', async () => {
    const p = await proxy({ cutProbability: 0, delayProbability: 0 });
    const payload = randomBytes(3 * 1024 * 1024 + 17);
    const { received, broken } = await roundTrip(p.port, payload);
    await p.close();
    expect(broken).toBe(false);
    expect(sha(received)).toBe(sha(payload));
    expect(p.stats.bytesUp).toBe(payload.length);
    expect(p.stats.bytesDown).toBe(payload.length);
  });

  it('cuts every connection mid-stream, and what did arrive is a prefix of what was sent', async () => {
    const p = await proxy({ cutProbability: 1, cutWithinBytes: 1024 * 1024, delayProbability: 0 });
    const payload = randomBytes(2 * 1024 * 1024);
    for (let i = 0; i < 8; i++) {
      const { received } = await roundTrip(p.port, payload);
      expect(received.length, `round ${String(i)}`).toBeLessThan(payload.length);
      expect(received.equals(payload.subarray(0, received.length)), `round ${String(i)}: a prefix`).toBe(true);
    }
    await p.close();
    expect(p.stats.cutsUp + p.stats.cutsDown).toBe(8);
  });

  it('cuts requests and replies both, over enough connections', async () => {
    const p = await proxy({ cutProbability: 1, cutWithinBytes: 256 * 1024, delayProbability: 0 });
    const payload = randomBytes(512 * 1024);
    for (let i = 0; i < 40; i++) await roundTrip(p.port, payload);
    await p.close();
    expect(p.stats.cutsUp, `seed ${String(SEED)}`).toBeGreaterThan(0);
    expect(p.stats.cutsDown, `seed ${String(SEED)}`).toBeGreaterThan(0);
  });

  it('delays replies without reordering them', async () => {
    const p = await proxy({ cutProbability: 0, delayProbability: 0.5, maxDelayMs: 5 });
    const payload = randomBytes(2 * 1024 * 1024);
    const { received, broken } = await roundTrip(p.port, payload);
    await p.close();
    expect(broken).toBe(false);
    expect(sha(received)).toBe(sha(payload));
    expect(p.stats.delays).toBeGreaterThan(0);
  });

  it('makes the same decisions from the same seed', async () => {
    const payload = randomBytes(1024 * 1024);
    const runs: string[] = [];
    for (let run = 0; run < 2; run++) {
      const p = await proxy({ cutProbability: 0.5, cutWithinBytes: 512 * 1024, delayProbability: 0.3, maxDelayMs: 2 });
      let fates = '';
      for (let i = 0; i < 12; i++) {
        const before = { up: p.stats.cutsUp, down: p.stats.cutsDown };
        await roundTrip(p.port, payload);
        // Which connections are cut, and in which direction, depends on the seed alone.
        fates += p.stats.cutsUp > before.up ? 'u' : p.stats.cutsDown > before.down ? 'd' : '-';
      }
      await p.close();
      runs.push(fates);
    }
    expect(runs[1], `seed ${String(SEED)}`).toBe(runs[0]);
  });

  it('with cutFirstConnection, cuts the first connection of every faulting phase mid-request, whatever the seed', async () => {
    const p = await proxy({ cutProbability: 0, delayProbability: 0, cutFirstConnection: true });
    const payload = randomBytes(64 * 1024);
    const results = [];
    for (let i = 0; i < 3; i++) results.push(await roundTrip(p.port, payload));
    expect(p.stats).toMatchObject({ cutsUp: 1, cutsDown: 0 });
    expect(results.map((r) => r.broken)).toEqual([true, false, false]);
    expect(results[0]?.received.length, 'nothing came back from the cut request').toBe(0);
    p.setFaulting(false);
    await roundTrip(p.port, payload);
    p.setFaulting(true);
    const again = await roundTrip(p.port, payload);
    await p.close();
    expect(again.broken, 'a new faulting phase cuts its first connection').toBe(true);
    expect(p.stats).toMatchObject({ cutsUp: 2, cutsDown: 0 });
  });

  it('stops faulting when told', async () => {
    const p = await proxy({ cutProbability: 1, cutWithinBytes: 1024, delayProbability: 1, maxDelayMs: 2 });
    p.setFaulting(false);
    const payload = randomBytes(1024 * 1024);
    const { received, broken } = await roundTrip(p.port, payload);
    await p.close();
    expect(broken).toBe(false);
    expect(sha(received)).toBe(sha(payload));
    expect(p.stats.cutsUp + p.stats.cutsDown + p.stats.delays).toBe(0);
  });
});
