import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import type { PruneReport } from '@cowvol/backup';
import { loadBackup, repositoryFlags, withRepository } from '../../backup-repo.js';
import { CowvolCommand } from '../../base-command.js';
import { parseDuration } from '../../duration.js';
import { human } from '../../format.js';

export default class BackupPrune extends CowvolCommand {
  static override summary = 'Delete the chunks of a backup repository that no remaining snapshot needs, under the exclusive repository lock';
  static override description = [
    'Takes the exclusive repository lock (REPOSITORY_LOCKED while a push, forget or verify holds a live lock; an expired lease is stale and removed), reads every manifest, then deletes each chunk no manifest names',
    'that was stored no later than the cutoff: the store time of prune’s own lock less --grace, and before the start of any stale lock found (a push whose lease lapsed keeps what it uploaded until the next prune).',
    'An object under chunks/ at a key no chunk has (moved there by hand: no restore reads it) is deleted by the same cutoff rule.',
    'A manifest that does not open stops prune before anything is deleted (BACKUP_CORRUPT): run `cowvol backup verify`, then `cowvol backup forget --damaged` to remove the manifests that are damaged.',
  ].join('\n');
  static override examples = ['<%= config.bin %> backup prune s3://backups/cowvol --key-file backup.key', '<%= config.bin %> backup prune s3://backups/cowvol --key-file backup.key --dry-run --json'];
  static override args = { url: Args.string({ description: 'the repository: s3://bucket/prefix or file:///absolute/path', required: true }) };
  static override flags = {
    ...repositoryFlags,
    'dry-run': Flags.boolean({ description: 'count what would be deleted; delete nothing, take no lock' }),
    grace: Flags.string({ description: 'also keep unreferenced chunks stored less than this long before prune started (e.g. 1h, 2d)', default: '0s' }),
  };

  async run(): Promise<PruneReport> {
    const { args, flags } = await this.parse(BackupPrune);
    const graceMs = parseDuration(flags.grace, '--grace');
    const { pruneRepository } = await loadBackup();
    const report = await withRepository(
      args.url,
      flags,
      (repo) => pruneRepository(repo, { dryRun: flags['dry-run'], graceMs, jobs: flags.jobs }),
      (message) => this.warnUser(message),
    );
    this.say(
      [
        `${report.dryRun ? 'would delete' : 'deleted'} ${String(report.chunksDeleted)} chunk(s), ${human(report.bytesDeleted)}`,
        `chunks ${String(report.chunks)}, referenced by ${String(report.manifests)} manifest(s): ${String(report.chunksReferenced)}; unreferenced but stored after the cutoff ${report.cutoff}: ${String(report.chunksKeptRecent)}`,
        ...(report.staleLocks > 0 ? [`stale locks ${report.dryRun ? 'found' : 'removed'}: ${String(report.staleLocks)}`] : []),
        ...(report.strayObjects > 0
          ? [
              `objects under chunks/ at a key no chunk has (no restore reads them): ${String(report.strayObjects)}, ${report.dryRun ? 'would delete' : 'deleted'} ${String(report.strayObjectsDeleted)} (the others were stored after the cutoff)`,
            ]
          : []),
      ].join('\n'),
    );
    return report;
  }
}
