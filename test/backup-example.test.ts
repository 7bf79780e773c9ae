import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { run, tempDir } from './helpers.js';

/**
 * examples/backup.sh, end to end, as README "Backup workflows" shows it:
 * nightly snapshots with incremental exports and rotation, a corrupted
 * backup refused, and a restore drill into a new volume compared byte for
 * byte with the source. (CI also runs `pnpm demo:backup` with the default
 * five nights.) Knob: COWVOL_BACKUP_NIGHTS (default 3).
 */
describe('examples/backup.sh', () => {
  it('demo: nightly job for several nights, then the restore drill reproduces every snapshot still on the source', { timeout: 300_000 }, async () => {
    const { dir, cleanup } = await tempDir('cowvol-backup-example-');
    try {
      const nights = process.env.COWVOL_BACKUP_NIGHTS ?? '3';
      const r = await run('env', [`NIGHTS=${nights}`, 'KEEP=2', `COWVOL_DEMO_DIR=${dir}`, 'bash', resolve(import.meta.dirname, '../examples/backup.sh'), 'demo']);
      const out = r.stdout.toString();
      expect(r.code, `${out}\n${r.stderr}`).toBe(0);
      expect(out).toContain('backup demo OK');
      expect(out).toMatch(/refused \(exit 8\).*STREAM_CORRUPT/);
      // Rotation kept two nightly snapshots on the source; the drill compared both, and the live volume.
      expect(out.match(/drill: snapshot \S+ is identical/g)?.length).toBe(2);
      expect(out).toMatch(/drill: the rebuilt live volume is snapshot nightly-\d+-\d+/);
      expect(out).not.toContain('MISMATCH');
    } finally {
      await cleanup();
    }
  });
});
