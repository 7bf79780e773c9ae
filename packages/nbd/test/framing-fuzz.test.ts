/**
 * Fuzz of the wire parsers and the option phase (fast-check): random bytes
 * and mutated valid handshakes, cut into random chunks, never make them
 * throw anything but NbdFramingError, and an incomplete message never holds
 * more than its header and its limit. A server-level run sends the same
 * kind of input to a real server and checks it keeps serving a good client.
 *
 * Knobs: COWVOL_FUZZ_RUNS (default 300; the server-level run uses a tenth),
 * COWVOL_SEED (replay a seed; fast-check prints the seed of a failure).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ByteQueue,
  MAX_OPTION_BYTES,
  MAX_PAYLOAD_BYTES,
  NBD_CMD_READ,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NbdFramingError,
  NbdServer,
  Negotiation,
  OPTION_HEADER_BYTES,
  parseClientFlags,
  parseOption,
  parseRequest,
  REQUEST_HEADER_BYTES,
} from '../src/index.js';
import { infoRequest, MemoryCatalog, MemoryExport, metaRequest, RawClient } from './raw-client.js';

const RUNS = Number(process.env.COWVOL_FUZZ_RUNS ?? 300);
const SEED = process.env.COWVOL_SEED === undefined ? undefined : Number(process.env.COWVOL_SEED);
const params = (numRuns: number) => ({ numRuns, ...(SEED === undefined ? {} : { seed: SEED }), verbose: 1 as const });

function option(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

/** A valid client handshake as real clients send it (flags, options, GO), then a READ. */
function validHandshake(): Buffer {
  const read = Buffer.alloc(28);
  read.writeUInt32BE(0x25609513, 0);
  read.writeUInt16BE(NBD_CMD_READ, 6);
  read.writeUInt32BE(512, 24);
  return Buffer.concat([
    Buffer.from([0, 0, 0, 3]),
    option(NBD_OPT_STRUCTURED_REPLY),
    option(NBD_OPT_LIST),
    option(NBD_OPT_LIST_META_CONTEXT, metaRequest('live', [])),
    option(NBD_OPT_SET_META_CONTEXT, metaRequest('live', ['base:allocation'])),
    option(NBD_OPT_INFO, infoRequest('snapshot/a', [0, 1, 2, 3])),
    option(NBD_OPT_GO, infoRequest('live', [3])),
    read,
  ]);
}

/** Random bytes, or a valid handshake with bytes overwritten, cut, or spliced in. */
const input = fc.oneof(
  fc.uint8Array({ maxLength: 600 }).map((a) => Buffer.from(a)),
  fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 2 })), { minLength: 1, maxLength: 8 }).map((mutations) => {
    let b = validHandshake();
    for (const [at, value, kind] of mutations) {
      const i = at % b.length;
      if (kind === 0) b[i] = value;
      else if (kind === 1) b = b.subarray(0, i);
      else b = Buffer.concat([b.subarray(0, i), Buffer.from([value, value, value, value]), b.subarray(i)]);
      if (b.length === 0) b = validHandshake();
    }
    return b;
  }),
);

/** Cuts `bytes` into chunks at the given points. */
function chunks(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    out.push(bytes.subarray(from, p));
    from = p;
  }
  return out;
}

/** Feeds `parts` through the option phase, then requests, as a connection does; returns how far it got. */
async function drive(parts: Buffer[]): Promise<string> {
  const catalog = new MemoryCatalog([new MemoryExport('live', 1 << 20), new MemoryExport('snapshot/a', 1 << 20, true)]);
  const queue = new ByteQueue();
  let phase: 'flags' | 'options' | 'transmission' | 'closed' = 'flags';
  let negotiation: Negotiation | undefined;
  for (const part of parts) {
    queue.push(part);
    for (;;) {
      if (phase === 'flags') {
        const flags = parseClientFlags(queue);
        if (flags === undefined) break;
        negotiation = new Negotiation(catalog, (flags & 2) !== 0);
        phase = 'options';
      } else if (phase === 'options') {
        const message = parseOption(queue);
        if (!message) {
          expect(queue.length).toBeLessThan(OPTION_HEADER_BYTES + MAX_OPTION_BYTES);
          break;
        }
        const step = await negotiation!.handle(message);
        for (const r of step.replies) expect(Buffer.isBuffer(r)).toBe(true);
        if (step.next === 'close') phase = 'closed';
        if (step.next === 'transmission') phase = 'transmission';
      } else if (phase === 'transmission') {
        const request = parseRequest(queue);
        if (!request) {
          expect(queue.length).toBeLessThan(REQUEST_HEADER_BYTES + MAX_PAYLOAD_BYTES);
          break;
        }
      } else return phase;
    }
  }
  return phase;
}

describe('framing fuzz', () => {
  it('random and mutated client bytes, in random chunks: only NbdFramingError, bounded accumulation', async () => {
    await fc.assert(
      fc.asyncProperty(input, fc.array(fc.nat(), { maxLength: 12 }), async (bytes, cuts) => {
        try {
          await drive(chunks(bytes, cuts));
        } catch (err) {
          if (!(err instanceof NbdFramingError)) throw err;
        }
      }),
      params(RUNS),
    );
  });

  it('the unmutated handshake reaches transmission (the generator is not vacuous)', async () => {
    expect(await drive([validHandshake()])).toBe('transmission');
  });

  it('a real server fed the same input keeps serving a good client and changes no byte', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cowvol-nbd-fuzz-'));
    const live = new MemoryExport('live', 1 << 20);
    const server = new NbdServer({ catalog: new MemoryCatalog([live, new MemoryExport('snapshot/a', 1 << 20, true)]) });
    const socketPath = join(dir, 'nbd.sock');
    try {
      await server.listen({ socketPath });
      const good = await RawClient.connect(socketPath);
      await good.open('live');
      let cookie = 0n;
      await fc.assert(
        fc.asyncProperty(input, async (bytes) => {
          const bad = await RawClient.connect(socketPath);
          bad.write(bytes.subarray(4)); // after the greeting the client sends from its flags on
          bad.end();
          await bad.waitClosed().catch(() => undefined);
          good.sendRequest({ type: NBD_CMD_READ, cookie: ++cookie, offsetBytes: 0, lengthBytes: 4096 });
          const reply = await good.readSimpleReply();
          expect(reply.error).toBe(0);
        }),
        params(Math.max(1, Math.floor(RUNS / 10))),
      );
      // Every non-zero byte of the export lies inside a range the server was asked to write by a valid WRITE.
      const written = new Uint8Array(live.sizeBytes);
      for (const w of live.writeLog) written.fill(1, w.offsetBytes, w.offsetBytes + w.lengthBytes);
      expect(live.data.findIndex((b, i) => b !== 0 && written[i] === 0)).toBe(-1);
    } finally {
      await server.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
