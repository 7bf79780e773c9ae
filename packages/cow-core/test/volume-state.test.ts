import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBlockDevice, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { Volume, volumeLayout } from '../src/index.js';
import { VolumeStatus } from '../src/volume-state.js';
import { TraceOpener, ioError } from './trace-device.js';

const BS = 4096;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-state-'));
  path = join(dir, 'vol.img');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A volume with snapshot `s` over 16 blocks of 1, reopened through `opener`, write-through (a failed commit is reported by the write). */
async function volumeWithSnapshot(opener: DeviceOpener): Promise<Volume> {
  const v = await Volume.create(path, { sizeBytes: 16 * BS });
  await v.write(0, Buffer.alloc(16 * BS, 1));
  await v.createSnapshot('s');
  await v.close();
  return Volume.open(path, { opener, writeBackBytes: 0 });
}

/** Every public call of a volume, each returning its promise. */
function everyCall(v: Volume): Array<[string, () => Promise<unknown>]> {
  return [
    ['write', () => v.write(0, Buffer.alloc(1))],
    ['read', () => v.read(0, BS)],
    ['readSnapshot', () => v.readSnapshot('s', 0, BS)],
    ['createSnapshot', () => v.createSnapshot('t')],
    ['listSnapshots', () => v.listSnapshots()],
    ['deleteSnapshot', () => v.deleteSnapshot('s')],
    ['deleteSnapshots', () => v.deleteSnapshots(['s'])],
    ['renameSnapshot', () => v.renameSnapshot('s', 'u')],
    ['setSnapshotLabels', () => v.setSnapshotLabels('s', { a: 'b' })],
    ['holdSnapshot', () => v.holdSnapshot('s')],
    ['snapshotIdentity', () => v.snapshotIdentity('s')],
    ['info', () => v.info()],
    ['check', () => v.check()],
    ['checkConsistency', () => v.checkConsistency()],
    ['diff', () => v.diff('s')],
    ['spaceUsage', () => v.spaceUsage()],
    ['planDelete', () => v.planDelete(['s'])],
    ['importState', () => v.importState()],
    ['setImportState', () => v.setImportState(null)],
    ['acceptOutsideChanges', () => v.acceptOutsideChanges()],
    ['flush', () => v.flush()],
  ];
}

describe('volume state: open → failed → closing → closed', () => {
  it('a new volume is open, a closed one closed, and close is idempotent', async () => {
    const v = await Volume.create(path, { sizeBytes: 16 * BS });
    expect(v.state).toBe('open');
    await v.close();
    expect(v.state).toBe('closed');
    await v.close();
    expect(v.state).toBe('closed');
    await expect(v.read(0, BS)).rejects.toMatchObject({ code: 'VOLUME_CLOSED' });
  });

  it('a failed volume refuses every call with the same error, its listeners hear it once, and close from failed works', async () => {
    const opener = new TraceOpener();
    const v = await volumeWithSnapshot(opener);
    const heard: unknown[] = [];
    v.onFailure((err) => heard.push(err));
    const unsubscribed: unknown[] = [];
    const unsubscribe = v.onFailure((err) => unsubscribed.push(err));
    unsubscribe();
    opener.failWhen = (e) => (e.file === 'journal' && e.op === 'sync' ? ioError('journal sync') : undefined);
    // The commit block was written, its flush failed: the journal aborts and the volume fails.
    await expect(v.write(2 * BS, Buffer.alloc(BS, 8))).rejects.toMatchObject({ code: 'OUTCOME_UNKNOWN' });
    opener.failWhen = undefined;
    expect(v.state).toBe('failed');
    expect(heard).toHaveLength(1);
    expect(unsubscribed).toEqual([]);
    const failure = heard[0] as { code: string; cause: { code: string } };
    expect(failure.code).toBe('JOURNAL_ABORTED');
    expect(failure.cause.code).toBe('OUTCOME_UNKNOWN');
    for (const [name, call] of everyCall(v)) {
      const err = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, `${name} on a failed volume`).toBe(failure);
    }
    expect(heard, 'listeners hear the failure once').toHaveLength(1);
    await v.close();
    expect(v.state).toBe('closed');
    await expect(v.read(0, BS)).rejects.toMatchObject({ code: 'VOLUME_CLOSED' });
    expect(heard).toHaveLength(1);
    // The reopen recovers from the journal; the snapshot is intact.
    const r = await Volume.open(path);
    expect(r.state).toBe('open');
    expect((await r.readSnapshot('s', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, 1))).toBe(true);
    await r.close();
  });

  it('illegal transitions are assertion failures', () => {
    const status = new VolumeStatus();
    expect(() => status.finishClose()).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
    expect(status.beginClose()).toBe(true);
    expect(status.beginClose(), 'a second close is no transition').toBe(false);
    status.fail(new Error('late'));
    expect(status.state, 'a failure while closing changes no state').toBe('closing');
    status.finishClose();
    expect(status.state).toBe('closed');
    expect(() => status.finishClose()).toThrow(expect.objectContaining({ code: 'ASSERTION_FAILED' }));
  });
});

describe('per-role device openers', () => {
  it('keeps the store and the journal where their openers put them, not in the sidecar', async () => {
    const elsewhere = join(dir, 'elsewhere');
    await mkdir(elsewhere);
    const opened: string[] = [];
    const redirect: DeviceOpener = {
      open: (p: string, options: { create: boolean; readOnly?: boolean }): Promise<BlockDevice> => {
        opened.push(basename(p));
        return FileBlockDevice.open(join(elsewhere, basename(p)), options);
      },
    };
    const openers = { store: redirect, journal: redirect };
    const v = await Volume.create(path, { sizeBytes: 16 * BS, openers });
    await v.write(0, Buffer.alloc(16 * BS, 1));
    await v.createSnapshot('s');
    await v.write(0, Buffer.alloc(4 * BS, 2));
    await v.close();
    const sidecar = volumeLayout(path).sidecarPath;
    const inSidecar = await readdir(sidecar);
    expect(inSidecar).not.toContain(basename(volumeLayout(path).storePath));
    expect(inSidecar).not.toContain(basename(volumeLayout(path).journalPath));
    expect((await readdir(elsewhere)).sort()).toEqual([basename(volumeLayout(path).journalPath), basename(volumeLayout(path).storePath)].sort());
    expect(opened.length).toBeGreaterThanOrEqual(4); // create and open, store and journal each
    const r = await Volume.open(path, { openers });
    expect((await r.readSnapshot('s', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, 1))).toBe(true);
    expect((await r.read(0, 4 * BS)).equals(Buffer.alloc(4 * BS, 2))).toBe(true);
    expect((await r.checkConsistency()).problems).toEqual([]);
    await r.close();
    // Without its openers the volume's store is missing: the roles are really separate.
    await expect(Volume.open(path)).rejects.toMatchObject({ code: 'STORE_CORRUPT' });
  });
});
