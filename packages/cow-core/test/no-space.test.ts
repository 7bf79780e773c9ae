import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileBlockDevice, NoSpaceError, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { Volume, importStream, restoreSnapshot } from '../src/index.js';
import { exportToBuffer, memorySource, prng, randomBuffer } from './backup-helpers.js';

/**
 * A full disk, simulated through the block-device seam: the files named in
 * `files` share `budgetBytes` of free space; a write that would grow a file
 * past its current size by more than what is left fails with NO_SPACE
 * (ENOSPC), before anything is written — like a file system that is full.
 * (Writes inside a file's current size are taken as already allocated.)
 */
class FullDiskOpener implements DeviceOpener {
  /** Ranges of sparse files written through this opener (already allocated). */
  private readonly allocated = new Map<string, Set<number>>();

  /**
   * @param sparseFiles files preallocated only in size (the journal): every
   *   first write to a 4 KiB block of them needs new disk space too
   */
  constructor(
    public budgetBytes: number,
    private readonly files: string[],
    private readonly sparseFiles: string[] = [],
  ) {}

  async open(path: string, options: { create: boolean }): Promise<BlockDevice> {
    const inner = await FileBlockDevice.open(path, options);
    const file = basename(path);
    const limited = this.files.includes(file);
    return {
      name: inner.name,
      read: (o, l) => inner.read(o, l),
      readInto: (o, into) => inner.readInto(o, into),
      write: async (o, d) => {
        if (limited) {
          let grow = Math.max(0, o + d.length - (await inner.sizeBytes()));
          if (this.sparseFiles.includes(file)) {
            const seen = this.allocated.get(file) ?? new Set<number>();
            this.allocated.set(file, seen);
            grow = 0;
            for (let b = Math.floor(o / 4096); b <= Math.floor((o + d.length - 1) / 4096); b++) if (!seen.has(b)) grow += 4096;
            if (grow <= this.budgetBytes) for (let b = Math.floor(o / 4096); b <= Math.floor((o + d.length - 1) / 4096); b++) seen.add(b);
          }
          if (grow > this.budgetBytes) throw new NoSpaceError(`no space left writing ${d.length} bytes at offset ${o} of ${inner.name}`, { details: { device: inner.name } });
          this.budgetBytes -= grow;
        }
        await inner.write(o, d);
      },
      sync: () => inner.sync(),
      truncate: (s) => inner.truncate(s),
      sizeBytes: () => inner.sizeBytes(),
      close: () => inner.close(),
    };
  }
}

const BS = 4096;
const BLOCKS = 64;
let dir: string;
let path: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-nospace-'));
  path = join(dir, 'v.img');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A volume with three snapshots of different content; returns the model. */
async function threeSnapshots(): Promise<{ live: Buffer; snaps: Map<string, Buffer> }> {
  const rnd = prng(5);
  const v = await Volume.create(path, { sizeBytes: BLOCKS * BS });
  const live = randomBuffer(rnd, BLOCKS * BS);
  await v.write(0, live);
  const snaps = new Map<string, Buffer>();
  for (const name of ['a', 'b', 'c']) {
    await v.createSnapshot(name);
    snaps.set(name, Buffer.from(live));
    const data = randomBuffer(rnd, 6 * BS);
    const off = Math.floor(rnd() * (BLOCKS - 6)) * BS;
    await v.write(off, data);
    data.copy(live, off);
  }
  await v.close();
  return { live, snaps };
}

async function expectAll(v: Volume, snaps: Map<string, Buffer>, live: Buffer, when: string): Promise<void> {
  for (const [name, content] of snaps) expect((await v.readSnapshot(name, 0, content.length)).equals(content), `snapshot ${name} readable and intact ${when}`).toBe(true);
  expect((await v.read(0, live.length)).equals(live), `live ${when}`).toBe(true);
}

describe('NO_SPACE: the store never silently invalidates a snapshot', () => {
  it('when the store cannot grow, the write that needed a COW fails with NO_SPACE, nothing is overwritten, every snapshot stays readable; freed space is reused', async () => {
    const { live, snaps } = await threeSnapshots();
    const disk = new FullDiskOpener(2 * BS, ['store']); // room for two more copies
    const v = await Volume.open(path, { opener: disk });
    // Fill the store: writes of fresh blocks until one needs more than is left.
    const fileBefore = (await v.info()).store.fileBytes;
    await v.write(40 * BS, Buffer.alloc(2 * BS, 0xaa)); // two copies: fits exactly
    Buffer.alloc(2 * BS, 0xaa).copy(live, 40 * BS);
    const err = await v.write(50 * BS, Buffer.alloc(3 * BS, 0xbb)).then(
      () => undefined,
      (e: unknown) => e as { code: string; message: string },
    );
    expect(err?.code, 'the write needing a COW fails').toBe('NO_SPACE');
    expect(err?.message).toMatch(/no space/);
    await expectAll(v, snaps, live, 'after NO_SPACE (the failed write changed nothing)');
    expect((await v.checkConsistency()).leakedBlocks, 'the cancelled COW leaked nothing').toBe(0);
    // Writes to blocks already copied need no space and still work.
    await v.write(40 * BS + 1, Buffer.from('ok'));
    Buffer.from('ok').copy(live, 40 * BS + 1);
    // Delete the oldest snapshot: its blocks are freed; the same write now succeeds without growing the store.
    const freed = (await v.deleteSnapshots(['a'])).freedBlocks;
    snaps.delete('a');
    expect(freed).toBeGreaterThanOrEqual(3);
    await v.write(50 * BS, Buffer.alloc(3 * BS, 0xbb));
    Buffer.alloc(3 * BS, 0xbb).copy(live, 50 * BS);
    expect((await v.info()).store.fileBytes, 'freed store blocks were reused').toBe(fileBefore + 2 * BS);
    await expectAll(v, snaps, live, 'after the retry');
    expect((await v.check()).status).toBe('clean');
    await v.close();
  });

  it('when the journal cannot get disk space (its file is sparse), the write (at its flush) fails with NO_SPACE and the volume stops (JOURNAL_ABORTED) until reopened; then every snapshot reads back', async () => {
    const { live, snaps } = await threeSnapshots();
    const disk = new FullDiskOpener(0, ['journal'], ['journal']);
    const v = await Volume.open(path, { opener: disk });
    // The COW's commit fails: reported by the flush that drains the write-back stage.
    await expect(v.write(45 * BS, Buffer.alloc(BS, 1)).then(() => v.flush())).rejects.toMatchObject({ code: 'NO_SPACE' });
    // The refusal says why, not only that the journal aborted.
    await expect(v.readSnapshot('a', 0, BS)).rejects.toMatchObject({ code: 'JOURNAL_ABORTED', message: expect.stringMatching(/first failure: no space left/i) as unknown });
    await v.close();
    const r = await Volume.open(path);
    await expectAll(r, snaps, live, 'after reopen');
    expect((await r.check()).status).toBe('clean');
    await r.close();
  });

  it('a restore or an import that runs out of space fails with NO_SPACE, every snapshot stays readable, and it completes once space is freed', async () => {
    const { live, snaps } = await threeSnapshots();
    // Restore: rewriting blocks COWs them into the safety snapshot, which needs store space.
    const disk = new FullDiskOpener(BS, ['store']);
    const v = await Volume.open(path, { opener: disk });
    await expect(restoreSnapshot(v, 'a', { safetyName: 'safety' })).rejects.toMatchObject({ code: 'NO_SPACE' });
    const all = new Map(snaps);
    all.set('safety', Buffer.from(live));
    for (const [name, content] of all) expect((await v.readSnapshot(name, 0, content.length)).equals(content), `${name} after a failed restore`).toBe(true);
    disk.budgetBytes = 1024 * 1024;
    // Run again as it was (the same safety name): refused before any write, saying how to finish.
    const half = await v.read(0, live.length);
    const again = await restoreSnapshot(v, 'a', { safetyName: 'safety' }).then(
      () => undefined,
      (err: unknown) => err as Error & { code?: string },
    );
    expect(again?.code).toBe('SNAPSHOT_EXISTS');
    expect(again?.message).toContain('it is the safety snapshot of an earlier restore of "a": if that restore was interrupted and nothing wrote the volume since, finish it with --no-safety-snapshot');
    expect((await v.read(0, live.length)).equals(half)).toBe(true);
    expect((await v.listSnapshots()).map((s) => s.name)).toEqual([...snaps.keys(), 'safety']);
    await restoreSnapshot(v, 'a', { safetySnapshot: false }); // run again: finishes the job
    expect((await v.read(0, live.length)).equals(snaps.get('a')!)).toBe(true);
    for (const [name, content] of all) expect((await v.readSnapshot(name, 0, content.length)).equals(content), `${name} after the restore`).toBe(true);
    // Import of an incremental stream onto a full disk: NO_SPACE, then --resume.
    const full = await exportToBuffer(v, 'b');
    const stream = await exportToBuffer(v, 'c', { since: 'b' });
    await v.close();
    const target = join(dir, 't.img');
    await importStream(target, memorySource(full));
    await expect(importStream(target, memorySource(stream), { opener: new FullDiskOpener(0, ['store']) })).rejects.toMatchObject({ code: 'NO_SPACE' });
    const t = await Volume.open(target);
    expect((await t.readSnapshot('b', 0, BLOCKS * BS)).equals(snaps.get('b')!), 'the base stays intact').toBe(true);
    await t.close();
    const r = await importStream(target, memorySource(stream), { resume: true, verify: true });
    expect(r.snapshot).toBe('c');
    expect(r.resumed).toBe(true);
  });
});
