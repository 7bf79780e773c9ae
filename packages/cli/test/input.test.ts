import { execFileSync } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OutOfRangeError } from '@cowvol/cow-core';
import { mulberry32 } from '@cowvol/test-support';
import { openInput, probeLengthBytes } from '../src/input.js';

/** `--input` kinds (README "Paths given to --input and --output"): every byte of a stream is read, whatever stat() says. */
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-input-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function readAll(path: string | undefined, options?: Parameters<typeof openInput>[1]): Promise<{ bytes: Buffer; spooled: boolean }> {
  const input = await openInput(path, options);
  try {
    return { bytes: await input.read(0, input.lengthBytes), spooled: input.spooled };
  } finally {
    await input.close();
  }
}

describe('openInput', () => {
  it('a FIFO (stat size 0) is read to its end, through a spool file removed at close', async () => {
    const fifo = join(dir, 'in.fifo');
    execFileSync('mkfifo', [fifo]);
    const data = randomBytes(300_000);
    const w = createWriteStream(fifo);
    w.end(data);
    const before = (await readdir(tmpdir())).filter((n) => n.startsWith('cowvol-stdin-')).length;
    const { bytes, spooled } = await readAll(fifo);
    expect(spooled).toBe(true);
    expect(bytes.equals(data)).toBe(true);
    expect((await readdir(tmpdir())).filter((n) => n.startsWith('cowvol-stdin-')).length).toBe(before);
  });

  it('a /proc file (a regular file whose stat size is 0) is read as a stream', async () => {
    const { bytes, spooled } = await readAll('/proc/self/mounts');
    expect(spooled).toBe(true);
    expect(bytes.length).toBeGreaterThan(0);
    expect(bytes.toString()).toMatch(/ \/ /);
  });

  it('a stream longer than maxBytes is refused with tooLong() as soon as spooling passes it', async () => {
    const err = await readAll('/dev/zero', { maxBytes: 100_000, tooLong: (seen) => new OutOfRangeError(0, seen, 100_000) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OutOfRangeError);
  });

  it('a regular file is read in place', async () => {
    const data = randomBytes(10_000);
    await writeFile(join(dir, 'plain'), data);
    const { bytes, spooled } = await readAll(join(dir, 'plain'));
    expect(spooled).toBe(false);
    expect(bytes.equals(data)).toBe(true);
  });
});

describe('probeLengthBytes (the length of a block device, whose stat size is 0)', () => {
  it('finds the exact length of inputs of every size class', async () => {
    const seed = Number(process.env.COWVOL_SEED ?? Date.now() % 1_000_000);
    console.log(`probeLengthBytes seed ${seed}`);
    const random = mulberry32(seed);
    const lengths = [0, 1, 2, 3, 511, 512, 4095, 4096, 4097, 1 << 20, (1 << 20) + 1, ...Array.from({ length: 6 }, () => Math.floor(random() * (64 << 20)))];
    const path = join(dir, 'probe');
    for (const length of lengths) {
      const h = await open(path, 'w+');
      try {
        await h.truncate(length); // sparse: content does not matter, length does
        expect(await probeLengthBytes(h), `length ${length} (seed ${seed})`).toBe(length);
      } finally {
        await h.close();
      }
    }
  });
});
