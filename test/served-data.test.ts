/**
 * `cowvol read`, `write` and `snapshot read` on a served volume (through
 * the server's own NBD socket, docs/ARCHITECTURE.md §14.10) give the same
 * stdout bytes, --json and exit code as offline on an identical volume.
 * Table-driven: each case runs on `off.img` (offline) and `on.img` (served).
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, prng, run, sha256, tempDir, type RunResult } from './helpers.js';
import { requireTools, serveCowvol, type PeerServer } from './nbd-peers.js';

const tools = requireTools([['qemu-io', 'qemu-utils']]);

const SEED = Number(process.env.SERVED_DATA_SEED ?? Date.now() % 2 ** 31);
console.log(`served-data.test.ts seed ${SEED} (SERVED_DATA_SEED to repeat)`);

function randomBytes(n: number, seed: number): Buffer {
  const next = prng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(next() * 2 ** 32) >>> 0, i);
  return b;
}

let dir: string;
let cleanup: () => Promise<void>;
let server: (PeerServer & { socket: string }) | undefined;
let input: string;
const stdinData = randomBytes(5000, SEED + 1);

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-served-data-'));
  input = join(dir, 'in.bin');
  await writeFile(input, randomBytes(300_000, SEED));
  for (const name of ['off.img', 'on.img']) {
    const vol = join(dir, name);
    await cowvolOk(['create', vol, '--size', '2M']);
    await cowvolOk(['write', vol, '--input', input, '--offset', '4096']);
    await cowvolOk(['snapshot', 'create', vol, 'first']);
    await cowvolOk(['write', vol, '--offset', '8192'], randomBytes(1000, SEED + 2));
  }
  server = await serveCowvol(join(dir, 'on.img'));
}, 60_000);

afterAll(async () => {
  expect(await server?.stop()).toBe(0);
  await cleanup();
});

/** The same command on both volumes: [offline, served]. */
async function both(args: (vol: string) => string[], stdin?: Buffer): Promise<[RunResult, RunResult]> {
  const off = await cowvol(args(join(dir, 'off.img')), stdin === undefined ? {} : { input: stdin });
  const on = await cowvol(args(join(dir, 'on.img')), stdin === undefined ? {} : { input: stdin });
  return [off, on];
}

/** stdout with the volume path normalised (JSON error details name it). */
function comparable(r: RunResult): { code: number; stdout: string; error: string } {
  const text = r.stdout.toString('latin1').replaceAll('on.img', 'VOL').replaceAll('off.img', 'VOL');
  return { code: r.code, stdout: sha256(Buffer.from(text, 'latin1')), error: /error \[([A-Z_]+)\]/.exec(r.stderr)?.[1] ?? '' };
}

const cases: Array<{ name: string; args: (vol: string) => string[]; stdin?: Buffer; code: number }> = [
  { name: 'read: the whole volume', args: (v) => ['read', v], code: 0 },
  { name: 'read: a range', args: (v) => ['read', v, '--offset', '4000', '--length', '70000'], code: 0 },
  { name: 'read: past the end', args: (v) => ['read', v, '--offset', '2M', '--length', '1'], code: 2 },
  { name: 'snapshot read: existing', args: (v) => ['snapshot', 'read', v, 'first'], code: 0 },
  { name: 'snapshot read: a range', args: (v) => ['snapshot', 'read', v, 'first', '--offset', '8000', '--length', '4096'], code: 0 },
  { name: 'snapshot read: unknown', args: (v) => ['snapshot', 'read', v, 'nope'], code: 3 },
  { name: 'write: a file, --json', args: (v) => ['write', v, '--input', input, '--offset', '1M', '--json'], code: 0 },
  { name: 'read after write: the range written', args: (v) => ['read', v, '--offset', '1M', '--length', '300000'], code: 0 },
  { name: 'write: stdin', args: (v) => ['write', v, '--offset', '12345'], stdin: stdinData, code: 0 },
  { name: 'read after write: the whole volume', args: (v) => ['read', v], code: 0 },
  { name: 'write: past the end, --json', args: (v) => ['write', v, '--input', input, '--offset', '1900K', '--json'], code: 2 },
  { name: 'read after refused write: unchanged', args: (v) => ['read', v], code: 0 },
];

describe('offline and served give the same bytes, JSON and exit codes', () => {
  for (const c of cases) {
    it(c.name, async () => {
      const [off, on] = await both(c.args, c.stdin);
      expect(off.code).toBe(c.code);
      expect(comparable(on)).toEqual(comparable(off));
    });
  }
});

describe.skipIf(tools.missing)(`served reads while another NBD client writes${tools.skipReason}`, () => {
  it('a 64 MiB read completes while another client writes the live export', async () => {
    const vol = join(dir, 'big.img');
    await cowvolOk(['create', vol, '--size', '64M']);
    const big = await serveCowvol(vol);
    try {
      // The other client: qemu-io writing 4 MiB pieces of the first 32 MiB, over and over, until the read is done.
      const state = { stop: false };
      let writes = 0;
      const writing = (async () => {
        while (!state.stop) {
          const w = await run('qemu-io', ['-f', 'raw', big.uri, '-c', `write -P 0x5a ${(writes % 8) * 4}M 4M`, '-c', 'flush']);
          expect(w.code, w.stderr).toBe(0);
          writes++;
        }
      })();
      const r = await cowvol(['read', vol]);
      state.stop = true;
      await writing;
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.length).toBe(64 << 20);
      expect(writes).toBeGreaterThan(0);
      // Past what the writer touched, the volume is still zeros.
      expect(r.stdout.subarray(32 << 20).every((b) => b === 0)).toBe(true);
      // Each byte the writer touched reads as zero (before) or 0x5a (after).
      expect(r.stdout.subarray(0, 32 << 20).every((b) => b === 0 || b === 0x5a)).toBe(true);
    } finally {
      expect(await big.stop()).toBe(0);
    }
  }, 120_000);
});
