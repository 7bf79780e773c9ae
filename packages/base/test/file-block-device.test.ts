import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { blockDeviceSuite } from '../test-support/block-device-suite.js';
import { FileBlockDevice, fileDeviceOpener } from '../src/index.js';

let fileCount = 0;
const suiteDir = await mkdtemp(join(tmpdir(), 'cowvol-device-suite-'));
afterAll(async () => {
  await rm(suiteDir, { recursive: true, force: true });
});

/** The production device runs the shared contract (docs/ARCHITECTURE.md §1 "packages/base"), with ENOSPC from /dev/full. */
blockDeviceSuite(
  'FileBlockDevice',
  async (initial) => {
    const path = join(suiteDir, `file-${(fileCount += 1)}`);
    await writeFile(path, initial);
    return fileDeviceOpener.open(path, { create: false });
  },
  { makeFullDevice: () => FileBlockDevice.open('/dev/full') },
);

describe('FileBlockDevice opens', () => {
  it('create refuses an existing file (IO_ERROR, errno EEXIST); a missing file is IO_ERROR with ENOENT', async () => {
    const path = join(suiteDir, 'exists');
    await writeFile(path, 'x');
    await expect(FileBlockDevice.open(path, { create: true })).rejects.toMatchObject({ code: 'IO_ERROR', details: { errno: 'EEXIST', op: 'open' } });
    await expect(FileBlockDevice.open(join(suiteDir, 'missing'))).rejects.toMatchObject({ code: 'IO_ERROR', details: { errno: 'ENOENT', op: 'open' } });
  });

  it('a read-only device reads, and refuses write and truncate with IO_ERROR', async () => {
    const path = join(suiteDir, 'read-only');
    await writeFile(path, Buffer.alloc(100, 7));
    const dev = await FileBlockDevice.open(path, { create: false, readOnly: true });
    expect((await dev.read(0, 100)).equals(Buffer.alloc(100, 7))).toBe(true);
    await expect(dev.write(0, Buffer.alloc(1))).rejects.toMatchObject({ code: 'IO_ERROR', details: { op: 'write' } });
    await expect(dev.truncate(0)).rejects.toMatchObject({ code: 'IO_ERROR', details: { op: 'truncate' } });
    await dev.close();
  });
});

/** FileBlockDevice reads: `read` and `readInto` agree, zeros past the end of the file, and close never pulls the descriptor from under a read. */
describe('FileBlockDevice reads', () => {
  let dir: string;
  let path: string;
  const content = Buffer.from(Array.from({ length: 10_000 }, (_, i) => (i * 7) % 256));
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cowvol-device-'));
    path = join(dir, 'file');
    await writeFile(path, content);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('readInto fills the target with the file bytes and zeros past the end of the file, like read', async () => {
    const dev = await FileBlockDevice.open(path);
    for (const [offset, length] of [
      [0, 4096],
      [4096, 8192], // crosses the end of the file
      [12_000, 100], // wholly past it
      [9_999, 1],
    ] as const) {
      const want = Buffer.alloc(length);
      content.copy(want, 0, Math.min(offset, content.length), Math.min(offset + length, content.length));
      const into = Buffer.alloc(length + 20, 0xff);
      await dev.readInto(offset, into.subarray(10, 10 + length));
      expect(into.subarray(10, 10 + length).equals(want), `readInto ${offset}+${length}`).toBe(true);
      expect(into.subarray(0, 10).equals(Buffer.alloc(10, 0xff)) && into.subarray(10 + length).equals(Buffer.alloc(10, 0xff)), 'nothing outside the target is touched').toBe(true);
      expect((await dev.read(offset, length)).equals(want), `read ${offset}+${length}`).toBe(true);
    }
    await dev.close();
  });

  it('close resolves only after every read in flight (the descriptor is never closed, and its number reused, under a read); a read after close is IO_ERROR', async () => {
    const big = join(dir, 'big');
    const bytes = Buffer.alloc(8 << 20, 0x6b);
    await writeFile(big, bytes);
    const dev = await FileBlockDevice.open(big);
    const targets = Array.from({ length: 64 }, () => Buffer.alloc(1 << 20));
    const events: string[] = [];
    const reads = targets.map((t, i) => dev.readInto((i % 8) << 20, t).then(() => void events.push('read')));
    await dev.close();
    events.push('close');
    await Promise.all(reads);
    expect(events.indexOf('close'), 'close resolved only after every read in flight').toBe(targets.length);
    for (const t of targets) expect(t.equals(bytes.subarray(0, 1 << 20))).toBe(true);
    await expect(dev.readInto(0, Buffer.alloc(10))).rejects.toMatchObject({ code: 'IO_ERROR' });
  });
});
