import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IoError } from '@cowvol/base';
import { Volume } from '@cowvol/cow-core';
import { mulberry32 } from '@cowvol/test-support';
import { copyIn, WRITES_IN_FLIGHT, type CopyTarget } from '../src/copy-in.js';
import { openInput, STREAM_CHUNK_BYTES } from '../src/input.js';

/**
 * copyIn (`cowvol write`'s copy, docs/ARCHITECTURE.md "packages/cli"): a
 * real input file into a real volume, several writes in flight; what is
 * written is always a prefix of the input, and no write outlives the copy.
 * Seeded: COWVOL_SEED replays a printed seed.
 */
const SEED = process.env.COWVOL_SEED === undefined ? (Date.now() >>> 0) % 1_000_000 : Number(process.env.COWVOL_SEED);
const VOLUME_BYTES = 32 * 1024 * 1024;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-copy-in-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function bytes(n: number, rnd: () => number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

/** The volume as a CopyTarget, counting the writes in flight (the most seen, and how many are in flight now). */
function counted(volume: Volume, fail?: (atBytes: number) => boolean): CopyTarget & { maxInFlight: number; inFlight: number } {
  const t = {
    maxInFlight: 0,
    inFlight: 0,
    async write(offsetBytes: number, data: Buffer): Promise<void> {
      t.inFlight += 1;
      t.maxInFlight = Math.max(t.maxInFlight, t.inFlight);
      try {
        await new Promise((resolve) => setTimeout(resolve, 5)); // keep the write in flight while the next chunk is read
        if (fail?.(offsetBytes)) throw new IoError(`injected write failure at ${offsetBytes}`);
        await volume.write(offsetBytes, data);
      } finally {
        t.inFlight -= 1;
      }
    },
  };
  return t;
}

async function withVolume(name: string, fn: (volume: Volume, old: Buffer) => Promise<void>): Promise<void> {
  const volume = await Volume.create(join(dir, name), { sizeBytes: VOLUME_BYTES });
  try {
    const old = Buffer.alloc(VOLUME_BYTES, 0x5a);
    await volume.write(0, old);
    await volume.createSnapshot('before'); // every write below is a first write after a snapshot (COW)
    await fn(volume, old);
  } finally {
    await volume.close();
  }
}

describe('copyIn', () => {
  it(`copies an input of several chunks at an offset, with up to WRITES_IN_FLIGHT writes in flight (seed ${SEED}: COWVOL_SEED replays it)`, async () => {
    const rnd = mulberry32(SEED);
    const lengthBytes = 4 * STREAM_CHUNK_BYTES + 1 + Math.floor(rnd() * STREAM_CHUNK_BYTES);
    const offsetBytes = 1 + Math.floor(rnd() * (VOLUME_BYTES - lengthBytes - 1));
    const data = bytes(lengthBytes, rnd);
    await writeFile(join(dir, 'in-1'), data);
    await withVolume('v1.img', async (volume, old) => {
      const input = await openInput(join(dir, 'in-1'));
      const target = counted(volume);
      const progress: number[] = [];
      try {
        expect(await copyIn(input, target, offsetBytes, lengthBytes, (done) => progress.push(done))).toBe(lengthBytes);
      } finally {
        await input.close();
      }
      expect(target.inFlight).toBe(0);
      expect(target.maxInFlight).toBeGreaterThan(1);
      expect(target.maxInFlight).toBeLessThanOrEqual(WRITES_IN_FLIGHT);
      expect(progress.at(-1)).toBe(lengthBytes);
      const now = await volume.read(0, VOLUME_BYTES);
      expect(now.subarray(offsetBytes, offsetBytes + lengthBytes).equals(data)).toBe(true);
      expect(now.subarray(0, offsetBytes).equals(old.subarray(0, offsetBytes))).toBe(true);
      expect(now.subarray(offsetBytes + lengthBytes).equals(old.subarray(offsetBytes + lengthBytes))).toBe(true);
      expect((await volume.readSnapshot('before', 0, VOLUME_BYTES)).equals(old)).toBe(true);
    });
  });

  it(`an input that shrinks while being read: the returned count is a prefix of it, and only that prefix was written (seed ${SEED})`, async () => {
    const rnd = mulberry32(SEED + 1);
    const lengthBytes = 5 * STREAM_CHUNK_BYTES;
    const data = bytes(lengthBytes, rnd);
    const path = join(dir, 'in-2');
    await writeFile(path, data);
    const cutBytes = 2 * STREAM_CHUNK_BYTES + 12_345;
    await withVolume('v2.img', async (volume, old) => {
      const input = await openInput(path);
      const inner = counted(volume);
      let cut = false;
      const target: CopyTarget = {
        async write(offsetBytes, chunk) {
          if (!cut) {
            cut = true;
            await truncate(path, cutBytes); // the input shrinks under the copy
          }
          await inner.write(offsetBytes, chunk);
        },
      };
      let copied: number;
      try {
        copied = await copyIn(input, target, 0, lengthBytes);
      } finally {
        await input.close();
      }
      expect(copied).toBeLessThan(lengthBytes);
      expect(copied).toBeGreaterThanOrEqual(STREAM_CHUNK_BYTES); // the first chunk was read before the cut
      const now = await volume.read(0, VOLUME_BYTES);
      expect(now.subarray(0, copied).equals(data.subarray(0, copied))).toBe(true);
      expect(now.subarray(copied).equals(old.subarray(copied))).toBe(true);
    });
  });

  it(`a failing write: copyIn rejects with its error once every other write in flight has settled, and reads no further (seed ${SEED})`, async () => {
    const rnd = mulberry32(SEED + 2);
    const lengthBytes = 6 * STREAM_CHUNK_BYTES;
    await writeFile(join(dir, 'in-3'), bytes(lengthBytes, rnd));
    await withVolume('v3.img', async (volume) => {
      const input = await openInput(join(dir, 'in-3'));
      const failAt = STREAM_CHUNK_BYTES;
      const target = counted(volume, (at) => at === failAt);
      try {
        await expect(copyIn(input, target, 0, lengthBytes)).rejects.toMatchObject({ code: 'IO_ERROR', message: `injected write failure at ${failAt}` });
      } finally {
        await input.close();
      }
      expect(target.inFlight, 'no write outlives the copy').toBe(0);
    });
  });
});
