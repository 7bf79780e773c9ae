import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import type { VerifyReport } from '@cowvol/backup';
import type { ErrorCode } from '@cowvol/base';
import { loadBackup, repositoryFlags, withRepository } from '../../backup-repo.js';
import { CowvolCommand } from '../../base-command.js';
import { createProgress, progressFlag } from '../../progress.js';

/** Exit codes of `cowvol backup verify`, like `check`'s: 0 clean, 2 damaged, 1 could not check (README "Backups off the machine"). */
export const VERIFY_EXIT = { clean: 0, damaged: 2, couldNotCheck: 1 } as const;

export default class BackupVerify extends CowvolCommand {
  static override summary = 'Check a backup repository: every manifest, every chunk they name, and with --read-data every chunk’s content (exit 0 clean, 2 damaged, 1 could not check)';
  static override description = [
    'Reads and authenticates every manifest, and checks that every chunk a manifest names is stored with the size its content gives (one listing of the chunks, no download).',
    'With --read-data every such chunk is downloaded and authenticated too (its GCM tag, and that its content hashes to its id): as long as downloading the whole repository once.',
    'Each damaged or missing chunk is named with every snapshot (volume/name) that needs it; a manifest that does not open is named as a damaged snapshot.',
    'A repository that cannot be checked (store unreachable, access denied, wrong key: BAD_KEY) exits 1.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> backup verify s3://backups/cowvol --key-file ~/.config/cowvol/backup.key',
    '<%= config.bin %> backup verify s3://backups/cowvol --key-file backup.key --read-data --json',
  ];
  static override args = { url: Args.string({ description: 'the repository: s3://bucket/prefix or file:///absolute/path', required: true }) };
  static override flags = {
    ...repositoryFlags,
    'read-data': Flags.boolean({ description: 'also download and authenticate every chunk the manifests name' }),
    ...progressFlag,
  };

  async run(): Promise<VerifyReport> {
    const { args, flags } = await this.parse(BackupVerify);
    const { verifyRepository } = await loadBackup();
    const progress = createProgress(flags.progress, 'backup verify', 'blocks');
    const report = await withRepository(
      args.url,
      flags,
      (repo) =>
        verifyRepository(repo, {
          readData: flags['read-data'],
          jobs: flags.jobs,
          onUnlocked: (why) => this.warnUser(why),
          onProgress: (done, total, phase) => progress.update(done, total ?? done, phase),
        }),
      (message) => this.warnUser(message),
    ).finally(() => progress.stop());
    if (!this.jsonEnabled()) {
      const lines = [
        `${args.url}: ${report.status === 'clean' ? 'no errors found' : `${String(report.damagedManifests.length + report.damagedChunks.length)} problem(s) found`}`,
        `manifests ${String(report.manifests)}, chunks referenced ${String(report.chunksReferenced)}${report.dataChecked ? `, chunks read and authenticated ${String(report.chunksRead)}` : ' (content not read: --read-data reads it)'}`,
      ];
      for (const m of report.damagedManifests) lines.push(`damaged manifest ${m.key} (snapshot ${m.volumeUuid}/${m.snapshotName}): ${m.message}`);
      for (const c of report.damagedChunks) {
        const needed = c.snapshots.map((s) => `${s.volumeUuid}/${s.snapshotName}`).join(', ');
        lines.push(`${c.problem} chunk ${c.chunkId}: ${c.message}; needed by ${needed || '(no snapshot)'}`);
      }
      if (report.affectedSnapshots.length > 0) {
        lines.push(`snapshots that cannot be restored: ${report.affectedSnapshots.map((s) => `${s.volumeUuid}/${s.snapshotName}`).join(', ')}`);
        lines.push('the next incremental push would inherit the damage: push a new snapshot with --full to store a complete copy again (it replaces a damaged chunk it needs)');
      }
      this.say(lines.join('\n'));
    }
    process.exitCode = VERIFY_EXIT[report.status === 'clean' ? 'clean' : 'damaged'];
    return report;
  }

  /**
   * A check that cannot complete exits 1, as `check`'s does, except a usage
   * error (2, as everywhere) and a damaged `config` (damage found: 2).
   */
  protected override exitCodeOf(code: ErrorCode): number {
    if (code === 'USAGE' || code === 'BACKUP_CORRUPT') return VERIFY_EXIT.damaged;
    return VERIFY_EXIT.couldNotCheck;
  }
}
