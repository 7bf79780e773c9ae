/**
 * Zeros as holes over NBD (docs/ARCHITECTURE.md §14.11), against real
 * clients: a READ of bytes that are all zero is answered with an
 * OFFSET_HOLE chunk (nbdsh's `pread_structured` chunk callback sees
 * `READ_HOLE`), a mixed read is cut into hole and data chunks covering it
 * exactly, DF keeps one chunk; `base:allocation` (nbdinfo --map) reports
 * NBD_STATE_ZERO for exactly the blocks that read as zeros, on `live` and
 * on a snapshot export, never NBD_STATE_HOLE. The expected bytes are a
 * model of every write the test made.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvolOk, prng, runOk, tempDir } from './helpers.js';
import { nbdsh, requireTools, startServe, killServer } from './nbd-peers.js';

const { missing, skipReason } = requireTools([
  ['nbdinfo', 'libnbd-bin'],
  ['nbdsh', 'python3-libnbd'],
]);

const SIZE = 8 * 1024 * 1024;
const BLOCK = 4096;
const SEED = Number(process.env.NBD_ZEROS_SEED ?? Date.now() % 2 ** 31);

interface Range {
  offsetBytes: number;
  lengthBytes: number;
}

/** Merged block-aligned ranges of the blocks of `content` that are all zero. */
function zeroBlocks(content: Buffer): Range[] {
  const out: Range[] = [];
  const zero = Buffer.alloc(BLOCK);
  for (let at = 0; at < content.length; at += BLOCK) {
    if (!content.subarray(at, at + BLOCK).equals(zero)) continue;
    const last = out[out.length - 1];
    if (last && last.offsetBytes + last.lengthBytes === at) last.lengthBytes += BLOCK;
    else out.push({ offsetBytes: at, lengthBytes: BLOCK });
  }
  return out;
}

describe.skipIf(missing)(`zeros answered as holes over NBD${skipReason}`, () => {
  let dir: string;
  let cleanup: (() => Promise<void>) | undefined;
  let server: ChildProcess | undefined;
  let socket: string;
  /** What live holds, and what snapshot `s` holds. */
  const live = Buffer.alloc(SIZE);
  let snap: Buffer;
  const uri = (name: string) => `nbd+unix:///${name}?socket=${socket}`;

  /** Writes through NBD (nbdsh), keeping the model in step. */
  async function write(writes: Array<{ offsetBytes: number; data: Buffer }>): Promise<void> {
    // The bytes go through a file: a script carrying them would pass the argument size limit.
    const file = join(dir, 'writes.bin');
    await writeFile(file, Buffer.concat(writes.map((w) => w.data)));
    let at = 0;
    const lines = writes.map((w) => `h.pwrite(data[${at}:${(at += w.data.length)}], ${w.offsetBytes})`);
    await nbdsh(`data = open(${JSON.stringify(file)}, 'rb').read()\nh.connect_uri(${JSON.stringify(uri('live'))})\n${lines.join('\n')}\nh.flush()\nh.shutdown()`);
    for (const w of writes) w.data.copy(live, w.offsetBytes);
  }

  /** nbdinfo --map (base:allocation) of `name`: the merged ranges flagged ZERO; asserts full coverage and no HOLE flag. */
  async function zeroMap(name: string): Promise<Range[]> {
    const out = await runOk('nbdinfo', ['--map', '--json', uri(name)]);
    const map = JSON.parse(out.stdout.toString()) as Array<{ offset: number; length: number; type: number }>;
    expect(map.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
    expect(map.filter((e) => (e.type & 1) !== 0)).toEqual([]);
    const ranges: Range[] = [];
    for (const e of map.filter((x) => (x.type & 2) !== 0)) {
      const last = ranges[ranges.length - 1];
      if (last && last.offsetBytes + last.lengthBytes === e.offset) last.lengthBytes += e.length;
      else ranges.push({ offsetBytes: e.offset, lengthBytes: e.length });
    }
    return ranges;
  }

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-nbd-zeros-'));
    const vol = join(dir, 'vol.img');
    await cowvolOk(['create', vol, '--size', String(SIZE)]);
    const started = await startServe(vol);
    server = started.child;
    socket = started.socket;
    const rand = prng(SEED);
    const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => 1 + Math.floor(rand() * 255)));
    const writes = [
      { offsetBytes: 0, data: bytes(64 * 1024) },
      { offsetBytes: 100 * BLOCK + 10, data: bytes(100) }, // partial: the rest of its block stays zero
      { offsetBytes: 1024 * 1024, data: bytes(3 * BLOCK) },
    ];
    // Random writes stay above 3 MiB: the reads below rely on block 200 (800 KiB) holding zeros
    // and on 0.5–1.5 MiB holding both zeros and data, whatever the seed.
    const RANDOM_FROM = 3 * 1024 * 1024;
    for (let i = 0; i < 5; i++) {
      writes.push({ offsetBytes: RANDOM_FROM + Math.floor(rand() * (SIZE - RANDOM_FROM - 20_000)), data: bytes(1 + Math.floor(rand() * 20_000)) });
    }
    await write(writes);
    await cowvolOk(['snapshot', 'create', vol, 's']);
    snap = Buffer.from(live);
    // After the snapshot: zeros written over data (as bytes), and more data.
    await write([
      { offsetBytes: 4 * BLOCK, data: Buffer.alloc(4 * BLOCK) },
      { offsetBytes: 2 * 1024 * 1024, data: bytes(BLOCK) },
    ]);
  });

  afterAll(async () => {
    await killServer(server);
    await cleanup?.();
  });

  it(`base:allocation (nbdinfo --map) reports ZERO for exactly the zero blocks of live and of a snapshot (seed ${SEED})`, async () => {
    expect(await zeroMap('live')).toEqual(zeroBlocks(live));
    expect(await zeroMap('snapshot/s')).toEqual(zeroBlocks(snap));
  });

  it(`a structured READ of zeros is one OFFSET_HOLE chunk; a mixed READ is hole and data chunks covering it exactly; DF keeps one chunk (seed ${SEED})`, async () => {
    const script = `
import json
h.connect_uri(${JSON.stringify(uri('live'))})
def chunks(count, offset, flags=0):
    seen = []
    def cb(subbuf, off, status, err):
        seen.append([off, len(subbuf), status, bytes(subbuf).hex() if status == nbd.READ_DATA else ''])
        return 0
    buf = h.pread_structured(count, offset, cb, flags)
    return {"chunks": sorted(seen), "data": bytes(buf).hex()}
out = {
  "zero4k": chunks(4096, 200 * 4096),
  "zero4kDF": chunks(4096, 200 * 4096, nbd.CMD_FLAG_DF),
  "mixed": chunks(1024 * 1024, 512 * 1024),
  "mixedDF": chunks(1024 * 1024, 512 * 1024, nbd.CMD_FLAG_DF),
  "unaligned": chunks(5 * 4096 + 123, 99 * 4096 + 7),
}
h.shutdown()
print(json.dumps(out))
`;
    type Chunk = [offset: number, length: number, status: number, hex: string];
    const out = JSON.parse(await nbdsh(script)) as Record<string, { chunks: Chunk[]; data: string }>;
    const DATA = 1;
    const HOLE = 2;
    expect(live.subarray(200 * BLOCK, 201 * BLOCK).equals(Buffer.alloc(BLOCK)), 'block 200 is zeros in the model').toBe(true);
    expect(out.zero4k!.chunks).toEqual([[200 * BLOCK, BLOCK, HOLE, '']]);
    expect(out.zero4kDF!.chunks).toEqual([[200 * BLOCK, BLOCK, HOLE, '']]);
    const cases: Array<[string, number, number]> = [
      ['mixed', 512 * 1024, 1024 * 1024],
      ['mixedDF', 512 * 1024, 1024 * 1024],
      ['unaligned', 99 * BLOCK + 7, 5 * BLOCK + 123],
    ];
    for (const [name, offsetBytes, lengthBytes] of cases) {
      const { chunks, data } = out[name]!;
      const expected = live.subarray(offsetBytes, offsetBytes + lengthBytes);
      expect(Buffer.from(data, 'hex').equals(expected), `${name}: the bytes read`).toBe(true);
      // Chunks tile the range in order; holes are zeros in the model, data chunks carry the model's bytes.
      let at = offsetBytes;
      for (const [off, len, status, hex] of chunks) {
        expect(off, `${name}: chunk at ${off}`).toBe(at);
        const part = live.subarray(off, off + len);
        if (status === HOLE) expect(part.equals(Buffer.alloc(len)), `${name}: hole at ${off} is zeros`).toBe(true);
        else expect(status === DATA && Buffer.from(hex, 'hex').equals(part), `${name}: data at ${off}`).toBe(true);
        at += len;
      }
      expect(at).toBe(offsetBytes + lengthBytes);
    }
    // 0.5–1.5 MiB holds data at 1 MiB and zeros around it: cut into hole and data chunks, one data chunk under DF.
    expect(new Set(out.mixed!.chunks.map((c) => c[2]))).toEqual(new Set([DATA, HOLE]));
    expect(out.mixedDF!.chunks.map((c) => c[2])).toEqual([DATA]);
  });
});
