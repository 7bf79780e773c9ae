import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBlockDevice, processSpace, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { Volume } from '../src/index.js';

/**
 * Read-only opens (docs/ARCHITECTURE.md, "Read-only opens") and the outcome
 * of a commit whose flush fails ("Outcomes of a failed command"), on plain
 * files. The same on a full tmpfs and a read-only mount:
 * test/full-disk.test.ts.
 */
const BS = 4096;
let dir: string;
let path: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-ro-'));
  path = join(dir, 'v.img');
  const v = await Volume.create(path, { sizeBytes: 16 * BS, journalSizeBytes: 256 * BS, reserveBytes: 0 });
  await v.write(0, Buffer.alloc(16 * BS, 1));
  await v.createSnapshot('s1');
  await v.write(0, Buffer.alloc(16 * BS, 2));
  await v.close();
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Every file of the volume and its sidecar with size and change times (the owner lock's files left out). */
async function files(): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    const p = join(e.parentPath, e.name);
    if (e.isDirectory() || /\.cowvol\/(lock|owner)(\/|$)/.test(p)) continue;
    const st = await stat(p, { bigint: true });
    out.set(p, `${st.size}:${st.mtimeNs}:${st.ctimeNs}`);
  }
  return out;
}

describe('Volume.open with readOnly', () => {
  it('reads every snapshot, writes no file, refuses every change with VOLUME_READ_ONLY, and removes its private copy', async () => {
    const before = await files();
    const v = await Volume.open(path, { readOnly: true });
    expect(v.readOnly).toBe(true);
    expect((await v.readSnapshot('s1', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, 1))).toBe(true);
    expect((await v.read(0, 16 * BS)).equals(Buffer.alloc(16 * BS, 2))).toBe(true);
    expect((await v.check()).corruptions).toEqual([]);
    await expect(v.write(0, Buffer.alloc(BS))).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
    await expect(v.createSnapshot('s2')).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
    await expect(v.renameSnapshot('s1', 'r')).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
    await expect(v.holdSnapshot('s1')).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
    await expect(v.setSnapshotLabels('s1', { k: 'v' })).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
    await expect(v.deleteSnapshots(['s1'])).rejects.toMatchObject({ code: 'VOLUME_READ_ONLY' });
    const copy = (v as unknown as { ctx: { parts: { privateMeta: { path: string } } } }).ctx.parts.privateMeta.path;
    expect((await stat(copy)).isDirectory()).toBe(true);
    await v.close();
    await expect(stat(copy)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await files()).toEqual(before);
    // Nothing refused changed anything: a writable open sees the volume as it was.
    const w = await Volume.open(path);
    expect((await w.listSnapshots()).map((s) => [s.name, s.held, s.labels])).toEqual([['s1', false, {}]]);
    await w.close();
  });
});

describe('a commit whose flush fails', () => {
  it('is OUTCOME_UNKNOWN; after a reopen the change is either there or not, and every snapshot reads back', async () => {
    let failJournalSyncs = false;
    const opener: DeviceOpener = {
      async open(p, options) {
        const inner: BlockDevice = await FileBlockDevice.open(p, options);
        if (basename(p) !== 'journal') return inner;
        return Object.assign(Object.create(inner) as BlockDevice, {
          sync: async () => {
            if (failJournalSyncs) throw Object.assign(new Error('injected journal fdatasync failure'), { code: 'EIO' });
            return inner.sync();
          },
        });
      },
    };
    const v = await Volume.open(path, { opener });
    failJournalSyncs = true;
    await expect(v.createSnapshot('s2')).rejects.toMatchObject({ code: 'OUTCOME_UNKNOWN' });
    await expect(v.listSnapshots()).rejects.toMatchObject({ code: 'JOURNAL_ABORTED' });
    await v.close();
    const w = await Volume.open(path);
    const names = (await w.listSnapshots()).map((s) => s.name);
    expect([['s1'], ['s1', 's2']]).toContainEqual(names);
    expect((await w.readSnapshot('s1', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, 1))).toBe(true);
    if (names.includes('s2')) expect((await w.readSnapshot('s2', 0, 16 * BS)).equals(Buffer.alloc(16 * BS, 2))).toBe(true);
    await w.close();
  });
});

describe('private folders left by killed read-only opens', () => {
  it('the next read-only open of this process space removes those whose process is gone, and only those', async () => {
    const space = processSpace();
    expect(space, 'Linux /proc gives this process a space').toMatch(/^[0-9a-f]{16}$/);
    // A pid that was a process and is not any more: a child that has exited and been reaped.
    const dead = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
    const other = (space ?? '').replace(/^./, (c) => (c === '0' ? '1' : '0'));
    const names = {
      dead: `cowvol-meta-${String(space)}-${String(dead)}-aaaaaaaaaaaa`,
      live: `cowvol-meta-${String(space)}-${String(process.ppid)}-bbbbbbbbbbbb`,
      otherSpace: `cowvol-meta-${other}-${String(dead)}-cccccccccccc`,
      noSpace: `cowvol-meta-${String(dead)}-dddddddddddd`,
    };
    for (const name of Object.values(names)) await mkdir(join(tmpdir(), name), { mode: 0o700 });
    try {
      const r = await Volume.openForReading(path);
      await r.close();
      const left = new Set(await readdir(tmpdir()));
      expect([names.dead, names.live, names.otherSpace, names.noSpace].map((n) => left.has(n))).toEqual([false, true, true, true]);
    } finally {
      for (const name of Object.values(names)) await rm(join(tmpdir(), name), { recursive: true, force: true });
    }
  });
});
