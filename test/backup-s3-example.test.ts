import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { S3ObjectStore } from '@cowvol/backup';
import { requireCeph } from './ceph.js';
import { run, tempDir } from './helpers.js';

/**
 * examples/backup-s3.sh, end to end against the test Ceph RADOS Gateway, as
 * README "Backups off the machine" shows it: nightly push, forget and prune
 * for several nights, then the restore drill (verify --read-data, and every
 * snapshot still on the volume restored and compared byte for byte). Knob:
 * COWVOL_BACKUP_S3_NIGHTS (default 3).
 */
const ceph = requireCeph();
if (typeof ceph === 'string') console.warn(`skipping the S3 backup example: ${ceph}`);
const env = typeof ceph === 'string' ? undefined : ceph;

describe.skipIf(env === undefined)('examples/backup-s3.sh', () => {
  if (env === undefined) return;
  const e = env;
  afterAll(() => {
    e.stop();
  });

  it('demo: nightly push, forget and prune, then the restore drill', { timeout: 600_000 }, async () => {
    const { dir, cleanup } = await tempDir('cowvol-backup-s3-example-');
    try {
      const bucket = `cowvol-example-${randomBytes(4).toString('hex')}`;
      const s = new S3ObjectStore({
        url: `s3://${bucket}`,
        endpoint: e.endpoint,
        forcePathStyle: true,
        region: e.region,
        credentials: { accessKeyId: e.accessKeyId, secretAccessKey: e.secretAccessKey },
      });
      await s.createContainer();
      s.close();
      const nights = process.env.COWVOL_BACKUP_S3_NIGHTS ?? '3';
      const r = await run('env', [
        `NIGHTS=${nights}`,
        `COWVOL_DEMO_DIR=${join(dir, 'demo')}`,
        `ENDPOINT=${e.endpoint}`,
        'PATH_STYLE=1',
        `AWS_ACCESS_KEY_ID=${e.accessKeyId}`,
        `AWS_SECRET_ACCESS_KEY=${e.secretAccessKey}`,
        `AWS_REGION=${e.region}`,
        'bash',
        resolve(import.meta.dirname, '../examples/backup-s3.sh'),
        'demo',
        `s3://${bucket}/nightly`,
        join(dir, 'backup.key'),
      ]);
      const out = r.stdout.toString();
      expect(r.code, `${out}\n${r.stderr}`).toBe(0);
      expect(out).toContain('no errors found');
      // KEEP_LAST=2 and KEEP=2 by default: the two newest nightlies are in the repository and on the volume.
      expect(out).toContain('drill: 2 snapshot(s) restored byte-identical');
      expect(out).toMatch(/forgot 1 snapshot\(s\)/);
    } finally {
      await cleanup();
    }
  });
});
