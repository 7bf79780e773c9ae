import { mkdtemp, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Volume, importStream } from '../src/index.js';
import { exportToBuffer, memorySource } from './backup-helpers.js';

/**
 * importStream into a volume the caller keeps open (`ImportOptions.volume`,
 * as `cowvol serve` imports into the volume it serves; docs/ARCHITECTURE.md
 * §14.8): the same checks and result as a target it opens itself, and the
 * volume stays open after a success, a dry run, an already-imported stream
 * and a refusal.
 */
const BS = 4096;
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-import-open-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('importStream with an open target (ImportOptions.volume)', () => {
  it('applies onto the open volume and leaves it open, whatever the outcome', async () => {
    const src = await Volume.create(join(dir, 'src.img'), { sizeBytes: 16 * BS });
    await src.write(0, randomBytes(8 * BS));
    await src.createSnapshot('s1');
    const full = await exportToBuffer(src, 's1');
    await src.write(2 * BS, randomBytes(3 * BS));
    await src.createSnapshot('s2');
    const inc = await exportToBuffer(src, 's2', { since: 's1' });
    const s2 = await src.readSnapshot('s2', 0, 16 * BS);
    await src.close();

    const path = join(dir, 'target.img');
    await importStream(path, memorySource(full));
    const target = await Volume.open(path);
    try {
      const opts = { volume: target };
      await expect(importStream(path, memorySource(full), opts)).rejects.toMatchObject({ code: 'VOLUME_EXISTS' });
      expect(await importStream(path, memorySource(inc), { ...opts, dryRun: true })).toMatchObject({ dryRun: true, appliedExtents: 0 });
      const result = await importStream(path, memorySource(inc), { ...opts, verify: true });
      expect(result).toMatchObject({ volume: path, snapshot: 's2', kind: 'incremental', created: false, verified: true, appliedExtents: 1 });
      expect(await importStream(path, memorySource(inc), { ...opts, resume: true })).toMatchObject({ alreadyImported: true });
      await expect(importStream(path, memorySource(inc), opts)).rejects.toMatchObject({ code: 'SNAPSHOT_EXISTS' });
      // Still open after each of them: it reads, and holds the imported snapshot and its content.
      expect((await target.listSnapshots()).map((s) => s.name)).toEqual(['s1', 's2']);
      expect((await target.readSnapshot('s2', 0, 16 * BS)).equals(s2)).toBe(true);
      expect((await target.read(0, 16 * BS)).equals(s2)).toBe(true);
      expect(await target.importState()).toBeUndefined();
    } finally {
      await target.close();
    }
  });
});
