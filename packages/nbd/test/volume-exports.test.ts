import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Volume } from '@cowvol/cow-core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { NBD_CMD_FLAG_FUA, NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_EPERM, NbdServer, VolumeExports } from '../src/index.js';
import { ZERO_PIECE_BYTES } from '@cowvol/cow-core';
import { RawClient } from './raw-client.js';

const SIZE = 8 * 1024 * 1024;
let dir: string;
let volume: Volume;
let original: Buffer;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-nbd-vol-'));
  volume = await Volume.create(join(dir, 'vol.img'), { sizeBytes: SIZE, journalSizeBytes: 4 * 1024 * 1024 });
  original = randomBytes(SIZE);
  original.fill(0, 6 * 1024 * 1024); // the last 2 MiB read as zeros
  await volume.write(0, original);
  await volume.createSnapshot('s');
});

afterEach(async () => {
  await volume.close();
  await rm(dir, { recursive: true, force: true });
});

describe('VolumeExports', () => {
  it('resolves live (and the empty name), snapshot/<name>, nothing else; lists them with descriptions', async () => {
    const exports = new VolumeExports(volume);
    expect((await exports.resolve(''))?.name).toBe('live');
    expect((await exports.resolve('live'))?.readOnly).toBe(false);
    const snap = await exports.resolve('snapshot/s');
    expect([snap?.name, snap?.readOnly, snap?.sizeBytes, snap?.preferredBlockBytes]).toEqual(['snapshot/s', true, SIZE, 4096]);
    expect(await exports.resolve('snapshot/none')).toBeUndefined();
    expect(await exports.resolve('s')).toBeUndefined();
    const listed = await exports.list();
    expect(listed.map((e) => e.name)).toEqual(['live', 'snapshot/s']);
    expect(listed[1]!.description).toMatch(/^snapshot s taken \d{4}-.*, read-only$/);
    expect((await new VolumeExports(volume, { readOnly: true }).resolve('live'))?.readOnly).toBe(true);
  });

  it('a restore or import rewriting live and a catalog change (snapshot create, delete, rename, accept-changes) never overlap: the later one is VOLUME_BUSY; live is unavailable meanwhile, saying why', async () => {
    const exports = new VolumeExports(volume);
    let finish: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (finish = resolve));
    const restore = exports.whileLiveUnexported(
      () => 0,
      async () => {
        await gate;
        return 'restored';
      },
    );
    await expect(exports.whileCatalogChanges('snapshot create', () => volume.createSnapshot('during'))).rejects.toMatchObject({
      code: 'VOLUME_BUSY',
      message: expect.stringContaining('a snapshot restore is rewriting the live volume on the server, so snapshot create waits for none') as unknown,
    });
    expect((await volume.listSnapshots()).map((x) => x.name)).toEqual(['s']);
    expect(await exports.resolve('live')).toBeUndefined();
    expect(exports.unavailable('live')).toMatch(/being rewritten by a snapshot restore/);
    expect(exports.unavailable('')).toMatch(/being rewritten/);
    expect(exports.unavailable('snapshot/s')).toBeUndefined();
    // A second restore or import says which one runs (not EXPORT_IN_USE with no connection).
    await expect(
      exports.whileLiveUnexported(
        () => 0,
        () => Promise.resolve('x'),
        'import',
      ),
    ).rejects.toMatchObject({
      code: 'VOLUME_BUSY',
      message: expect.stringContaining('a snapshot restore is rewriting the live volume on the server, so import waits for none') as unknown,
    });
    finish();
    expect(await restore).toBe('restored');
    expect(exports.unavailable('live')).toBeUndefined();
    // The other way round: a catalog change running keeps a restore or import from starting.
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    const rename = exports.whileCatalogChanges('snapshot rename', async () => {
      await held;
      return 'renamed';
    });
    await expect(
      exports.whileLiveUnexported(
        () => 0,
        () => Promise.resolve('x'),
        'import',
      ),
    ).rejects.toMatchObject({ code: 'VOLUME_BUSY' });
    release();
    expect(await rename).toBe('renamed');
    expect(
      await exports.whileLiveUnexported(
        () => 0,
        () => Promise.resolve('x'),
        'import',
      ),
    ).toBe('x');
  });

  it('a server of live read-only (serve --read-only) refuses a restore or import, which would rewrite live: VOLUME_READ_ONLY, nothing run', async () => {
    const exports = new VolumeExports(volume, { readOnly: true });
    let ran = false;
    const change = (): Promise<void> => {
      ran = true;
      return Promise.resolve();
    };
    await expect(exports.whileLiveUnexported(() => 0, change)).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
    await expect(exports.whileLiveUnexported(() => 0, change, 'import')).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY', message: expect.stringContaining('an import would rewrite it') as unknown });
    expect(ran).toBe(false);
  });

  it('WRITE_ZEROES is one operation of the volume: a snapshot created while it runs holds all of it or none of it (10 rounds)', async () => {
    const exports = new VolumeExports(volume);
    const live = await exports.resolve('live');
    expect(live).toBeDefined();
    const zeros = Buffer.alloc(SIZE);
    const first = Buffer.alloc(4096);
    for (let round = 0; round < 10; round++) {
      const data = randomBytes(SIZE);
      await volume.write(0, data);
      // 6 MiB of data to zero (6 pieces); the snapshot is asked for once the first piece reads as zeros: mid-request, when a
      // piece-by-piece zeroing would let it in between two pieces.
      const zeroing = live!.writeZeroes(0, 6 * 1024 * 1024, { fua: false });
      const state = { done: false };
      void zeroing.then(() => (state.done = true));
      while (!state.done && !(await volume.read(0, 4096)).equals(first)) await new Promise((resolve) => setImmediate(resolve));
      const created = volume.createSnapshot(`mid-${String(round)}`);
      await Promise.all([zeroing, created]);
      const mid = await volume.readSnapshot(`mid-${String(round)}`, 0, SIZE);
      const zeroed = Buffer.concat([zeros.subarray(0, 6 * 1024 * 1024), data.subarray(6 * 1024 * 1024)]);
      expect(mid.equals(data) || mid.equals(zeroed), `round ${String(round)}: the snapshot holds the whole zeroing or none of it`).toBe(true);
      expect((await volume.read(0, SIZE)).equals(zeroed)).toBe(true);
    }
  });

  it('whileUnexported: snapshot/<name> does not resolve while the change runs, a claimed export refuses it (SNAPSHOT_IN_USE) and changes nothing', async () => {
    const exports = new VolumeExports(volume);
    let finish: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (finish = resolve));
    const change = exports.whileUnexported(
      ['s'],
      () => 0,
      async () => {
        await gate;
        return 'done';
      },
    );
    expect(await exports.resolve('snapshot/s')).toBeUndefined();
    expect((await exports.resolve('live'))?.name).toBe('live');
    finish();
    expect(await change).toBe('done');
    expect((await exports.resolve('snapshot/s'))?.name).toBe('snapshot/s');
    let ran = false;
    const seen: string[] = [];
    const refused = exports.whileUnexported(
      ['s'],
      (name) => (seen.push(name), 2),
      async () => {
        ran = true;
        await volume.deleteSnapshots(['s']);
      },
    );
    await expect(refused).rejects.toMatchObject({ code: 'SNAPSHOT_IN_USE', details: { name: 's', connections: 2 } });
    expect([ran, seen, (await volume.listSnapshots()).map((x) => x.name)]).toEqual([false, ['snapshot/s'], ['s']]);
    expect((await exports.resolve('snapshot/s'))?.name).toBe('snapshot/s');
  });

  it('zeroing through live COWs first: the snapshot keeps every byte, live reads zeros, a range already zero is not copied', async () => {
    const live = (await new VolumeExports(volume).resolve('live'))!;
    const before = (await volume.listSnapshots())[0]!.ownedBlocks;
    await live.writeZeroes(6 * 1024 * 1024, 2 * 1024 * 1024, { fua: false });
    expect((await volume.listSnapshots())[0]!.ownedBlocks).toBe(before); // already zero: no copy, no write
    const from = 1000;
    const length = 2 * ZERO_PIECE_BYTES + 12345; // pieces, partial blocks at both ends
    await live.writeZeroes(from, length, { fua: true });
    const now = await volume.read(0, SIZE);
    expect(now.subarray(from, from + length).every((b) => b === 0)).toBe(true);
    expect(now.subarray(0, from).equals(original.subarray(0, from))).toBe(true);
    expect(now.subarray(from + length).equals(original.subarray(from + length))).toBe(true);
    expect((await volume.readSnapshot('s', 0, SIZE)).equals(original)).toBe(true);
  });

  it('over NBD: TRIM and WRITE_ZEROES of the whole volume in one request each leave the snapshot export byte-identical', async () => {
    const server = new NbdServer({ catalog: new VolumeExports(volume) });
    const socketPath = join(dir, 'nbd.sock');
    await server.listen({ socketPath });
    try {
      const live = await RawClient.connect(socketPath);
      await live.open('live');
      live.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offsetBytes: 4096, lengthBytes: 4, payload: Buffer.from([1, 2, 3, 4]), flags: NBD_CMD_FLAG_FUA });
      expect((await live.readSimpleReply()).error).toBe(0);
      live.sendRequest({ type: NBD_CMD_TRIM, cookie: 2n, offsetBytes: 0, lengthBytes: SIZE / 2 });
      live.sendRequest({ type: NBD_CMD_WRITE_ZEROES, cookie: 3n, offsetBytes: SIZE / 2, lengthBytes: SIZE / 2, flags: NBD_CMD_FLAG_FUA });
      expect([(await live.readSimpleReply()).error, (await live.readSimpleReply()).error]).toEqual([0, 0]);
      expect((await volume.read(0, SIZE)).every((b) => b === 0)).toBe(true);
      const snap = await RawClient.connect(socketPath);
      await snap.open('snapshot/s');
      snap.sendRequest({ type: NBD_CMD_WRITE, cookie: 1n, offsetBytes: 0, lengthBytes: 1, payload: Buffer.from([9]) });
      expect((await snap.readSimpleReply()).error).toBe(NBD_EPERM);
      const parts: Buffer[] = [];
      for (let at = 0; at < SIZE; at += 1 << 20) {
        snap.sendRequest({ type: NBD_CMD_READ, cookie: BigInt(at), offsetBytes: at, lengthBytes: 1 << 20 });
        parts.push((await snap.readSimpleReply()).data!);
      }
      expect(Buffer.concat(parts).equals(original)).toBe(true);
    } finally {
      await server.stop();
    }
  });
});
