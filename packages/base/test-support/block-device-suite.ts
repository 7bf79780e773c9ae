import { describe, expect, it } from 'vitest';
import type { BlockDevice } from '../src/index.js';

/**
 * Makes a fresh device of the implementation under test whose content is
 * `initial` (its size is `initial.length`). Each test closes what it makes.
 */
export type MakeDevice = (initial: Buffer) => Promise<BlockDevice>;

/** What an implementation offers beyond the contract every device keeps. */
export interface BlockDeviceSuiteOptions {
  /**
   * A device whose writes fail as the file system reports ENOSPC (for
   * `FileBlockDevice`, `/dev/full`): a write to it must reject with
   * `NO_SPACE` and `details.errno` `ENOSPC`. Left out where the
   * implementation maps no errno.
   */
  makeFullDevice?: () => Promise<BlockDevice>;
}

/** Bytes 0..n-1 of a fixed pattern (no two neighbouring bytes equal, so a shifted read shows). */
function pattern(n: number, salt = 0): Buffer {
  return Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + salt * 13 + 1) % 251));
}

/**
 * The `BlockDevice` contract (docs/ARCHITECTURE.md §1 "packages/base", "The
 * block-device contract"), as tests every implementation runs — production's
 * `FileBlockDevice` and each test double — in abstract-level's pattern of one
 * shared suite: `blockDeviceSuite('MemoryDevice', (b) => …)` registers a
 * `describe` block with vitest.
 *
 * The contract: `read` and `readInto` return the same bytes, zeros past the
 * end, and `readInto` touches nothing outside its target; a write is read
 * back at once and extends the size; `truncate` shrinks or extends with
 * zeros; `sync` resolves on a device with nothing pending; `close` resolves
 * only after every read and write in flight has settled, a second `close` is
 * harmless, and every call after `close` rejects with `IO_ERROR`.
 */
export function blockDeviceSuite(name: string, makeDevice: MakeDevice, options: BlockDeviceSuiteOptions = {}): void {
  describe(`BlockDevice contract: ${name}`, () => {
    readWriteTests(makeDevice);
    closeTests(makeDevice);
    const { makeFullDevice } = options;
    if (makeFullDevice !== undefined) errnoTests(makeFullDevice);
  });
}

/** Reads, writes, sizes and truncation. */
/** The bytes `[offsetBytes, offsetBytes + lengthBytes)` of `content`, zeros past its end. */
function expectedRange(content: Buffer, offsetBytes: number, lengthBytes: number): Buffer {
  const want = Buffer.alloc(lengthBytes);
  content.copy(want, 0, Math.min(offsetBytes, content.length), Math.min(offsetBytes + lengthBytes, content.length));
  return want;
}

/** Runs `read` into a target with 10 guard bytes on each side: it must fill the target with `want` and touch no guard byte. */
async function expectGuardedRead(want: Buffer, label: string, read: (into: Buffer) => void | Promise<void>): Promise<void> {
  const into = Buffer.alloc(want.length + 20, 0xff);
  await read(into.subarray(10, 10 + want.length));
  expect(into.subarray(10, 10 + want.length).equals(want), label).toBe(true);
  expect(into.subarray(0, 10).equals(Buffer.alloc(10, 0xff)) && into.subarray(10 + want.length).equals(Buffer.alloc(10, 0xff)), `${label}: nothing outside the target is touched`).toBe(true);
}

function readWriteTests(makeDevice: MakeDevice): void {
  it('read and readInto agree: the bytes, zeros past the end, nothing outside the target touched', async () => {
    const content = pattern(10_000);
    const dev = await makeDevice(content);
    expect(await dev.sizeBytes()).toBe(content.length);
    for (const [offsetBytes, lengthBytes] of [
      [0, 4096],
      [4096, 8192],
      [12_000, 100],
      [9_999, 1],
      [0, 0],
    ] as const) {
      const want = expectedRange(content, offsetBytes, lengthBytes);
      await expectGuardedRead(want, `readInto ${offsetBytes}+${lengthBytes}`, (into) => dev.readInto(offsetBytes, into));
      expect((await dev.read(offsetBytes, lengthBytes)).equals(want), `read ${offsetBytes}+${lengthBytes}`).toBe(true);
    }
    await dev.close();
  });

  it('readIntoSync, where offered, reads what readInto reads (zeros past the end), and after close throws IO_ERROR', async () => {
    const content = pattern(10_000);
    const dev = await makeDevice(content);
    if (dev.readIntoSync === undefined) {
      await dev.close();
      return; // optional: a device without it is read with readInto only
    }
    await dev.write(2000, pattern(300, 3)); // a write reads back synchronously too
    const now = Buffer.from(content);
    pattern(300, 3).copy(now, 2000);
    for (const [offsetBytes, lengthBytes] of [
      [0, 4096],
      [1990, 320],
      [8192, 4096],
      [12_000, 100],
      [0, 0],
    ] as const) {
      const readSync = dev.readIntoSync.bind(dev);
      await expectGuardedRead(expectedRange(now, offsetBytes, lengthBytes), `readIntoSync ${offsetBytes}+${lengthBytes}`, (into) => {
        readSync(offsetBytes, into);
      });
    }
    await dev.close();
    expect(() => dev.readIntoSync?.(0, Buffer.alloc(10))).toThrow(expect.objectContaining({ code: 'IO_ERROR' }) as Error);
  });

  it('writeSync, where offered, writes what write writes: read back at once, neighbours alone, the size extended; after close it throws IO_ERROR', async () => {
    const content = pattern(8192);
    const dev = await makeDevice(content);
    if (dev.writeSync === undefined) {
      await dev.close();
      return; // optional: a device without it is written with write only
    }
    const writeSync = dev.writeSync.bind(dev);
    const data = pattern(1000, 4);
    writeSync(3000, data);
    expect((await dev.read(3000, 1000)).equals(data), 'read back at once').toBe(true);
    expect((await dev.read(2990, 10)).equals(content.subarray(2990, 3000)), 'bytes before the write').toBe(true);
    expect((await dev.read(4000, 10)).equals(content.subarray(4000, 4010)), 'bytes after the write').toBe(true);
    writeSync(20_000, data.subarray(0, 100));
    expect(await dev.sizeBytes()).toBe(20_100);
    expect((await dev.read(8192, 20_000 - 8192)).equals(Buffer.alloc(20_000 - 8192)), 'the gap reads as zeros').toBe(true);
    data.fill(0);
    expect((await dev.read(3000, 1000)).equals(pattern(1000, 4)), 'the device keeps no reference to the caller’s buffer').toBe(true);
    await dev.close();
    expect(() => dev.writeSync?.(0, Buffer.alloc(10))).toThrow(expect.objectContaining({ code: 'IO_ERROR' }) as Error);
  });

  it('a write reads back at once, leaves its neighbours alone, and a write past the end extends the size (the gap reads as zeros)', async () => {
    const dev = await makeDevice(pattern(8192));
    const data = pattern(1000, 1);
    await dev.write(3000, data);
    expect((await dev.read(3000, 1000)).equals(data)).toBe(true);
    expect((await dev.read(2990, 10)).equals(pattern(8192).subarray(2990, 3000)), 'bytes before the write').toBe(true);
    expect((await dev.read(4000, 10)).equals(pattern(8192).subarray(4000, 4010)), 'bytes after the write').toBe(true);
    await dev.write(20_000, data.subarray(0, 100));
    expect(await dev.sizeBytes()).toBe(20_100);
    expect((await dev.read(8192, 20_000 - 8192)).equals(Buffer.alloc(20_000 - 8192)), 'the gap reads as zeros').toBe(true);
    expect((await dev.read(20_000, 100)).equals(data.subarray(0, 100))).toBe(true);
    await dev.sync();
    expect((await dev.read(3000, 1000)).equals(data), 'sync keeps what was written').toBe(true);
    await dev.close();
  });

  it('the device does not keep the caller’s buffer: changing it after the write resolves changes nothing', async () => {
    const dev = await makeDevice(Buffer.alloc(0));
    const data = pattern(512, 2);
    await dev.write(0, data);
    data.fill(0);
    expect((await dev.read(0, 512)).equals(pattern(512, 2))).toBe(true);
    await dev.close();
  });

  it('truncate shrinks and extends; an extended tail reads as zeros', async () => {
    const dev = await makeDevice(pattern(8192));
    await dev.truncate(1000);
    expect(await dev.sizeBytes()).toBe(1000);
    expect((await dev.read(0, 2000)).equals(Buffer.concat([pattern(8192).subarray(0, 1000), Buffer.alloc(1000)]))).toBe(true);
    await dev.truncate(5000);
    expect(await dev.sizeBytes()).toBe(5000);
    expect((await dev.read(1000, 4000)).equals(Buffer.alloc(4000)), 'the old bytes past the shrink do not come back').toBe(true);
    await dev.sync();
    await dev.close();
  });
}

/** `close`: waits for I/O in flight, is idempotent, and refuses every later call. */
function closeTests(makeDevice: MakeDevice): void {
  it('close resolves only after every read in flight, each with its bytes; a second close is harmless', async () => {
    const content = pattern(1 << 20);
    const dev = await makeDevice(content);
    const targets = Array.from({ length: 32 }, () => Buffer.alloc(64 << 10));
    const events: string[] = [];
    const reads = targets.map((t, i) => dev.readInto((i % 16) << 16, t).then(() => void events.push('read')));
    await dev.close();
    events.push('close');
    await Promise.all(reads);
    expect(events.indexOf('close'), 'close resolved only after every read in flight').toBe(targets.length);
    targets.forEach((t, i) => expect(t.equals(content.subarray((i % 16) << 16, ((i % 16) + 1) << 16)), `read ${i}`).toBe(true));
    await dev.close();
  });

  it('close resolves only after every write in flight', async () => {
    const dev = await makeDevice(Buffer.alloc(0));
    const writes = Array.from({ length: 16 }, (_, i) => dev.write(i << 12, pattern(4096, i)));
    const settled: boolean[] = [];
    for (const w of writes)
      void w.then(
        () => settled.push(true),
        () => settled.push(false),
      );
    await dev.close();
    expect(settled.length, 'every write settled before close resolved').toBe(writes.length);
    await Promise.all(writes);
  });

  it('every call after close rejects with IO_ERROR', async () => {
    const dev = await makeDevice(pattern(4096));
    await dev.close();
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['read', () => dev.read(0, 10)],
      ['readInto', () => dev.readInto(0, Buffer.alloc(10))],
      ['write', () => dev.write(0, Buffer.alloc(10))],
      ['sync', () => dev.sync()],
      ['truncate', () => dev.truncate(0)],
      ['sizeBytes', () => dev.sizeBytes()],
    ];
    for (const [what, call] of calls) await expect(call(), what).rejects.toMatchObject({ code: 'IO_ERROR' });
  });
}

/** Errno mapping, where the implementation has it. */
function errnoTests(makeFullDevice: () => Promise<BlockDevice>): void {
  it('a full file system (ENOSPC) is NO_SPACE, naming the range', async () => {
    const dev = await makeFullDevice();
    await expect(dev.write(4096, Buffer.alloc(512))).rejects.toMatchObject({ code: 'NO_SPACE', details: { offsetBytes: 4096, lengthBytes: 512, errno: 'ENOSPC' } });
    // A synchronous write, where offered, fails the same way.
    if (dev.writeSync !== undefined) {
      const writeSync = dev.writeSync.bind(dev);
      expect(() => writeSync(4096, Buffer.alloc(512))).toThrow(
        expect.objectContaining({ code: 'NO_SPACE', details: expect.objectContaining({ offsetBytes: 4096, lengthBytes: 512, errno: 'ENOSPC' }) as unknown }) as Error,
      );
    }
    await dev.close();
  });
}
