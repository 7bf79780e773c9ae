import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import type { ForgetReport } from '@cowvol/backup';
import { loadBackup, repositoryFlags, withRepository } from '../../backup-repo.js';
import { CowvolCommand } from '../../base-command.js';
import { table } from '../../format.js';

export default class BackupForget extends CowvolCommand {
  static override summary = 'Remove snapshots from a backup repository by retention rules (restic’s --keep-last, --keep-daily, --keep-weekly); data is freed by prune';
  static override description = [
    'Per volume, walks its snapshots newest first (by the time each was taken):',
    '--keep-last N keeps the N newest; --keep-daily N the newest of each of the N newest UTC days that have a snapshot; --keep-weekly N the newest of each of the N newest ISO weeks (UTC, Monday to Sunday) that have one.',
    'A snapshot kept by any rule stays; the manifests of the others are deleted. Their chunks stay until `cowvol backup prune`.',
    'At least one rule is required, unless --damaged is given. A manifest that does not open is never forgotten by a rule (see `backup verify`); --damaged forgets those that fail their checks (read a second time first), keeping any of a newer format version. Takes a shared repository lock: it never runs during a prune (REPOSITORY_LOCKED).',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> backup forget s3://backups/cowvol --key-file backup.key --keep-daily 7 --keep-weekly 4',
    '<%= config.bin %> backup forget file:///mnt/backup/repo --key-file backup.key --keep-last 3 --volume 0123456789abcdef0123456789abcdef --dry-run',
    '<%= config.bin %> backup forget s3://backups/cowvol --key-file backup.key --damaged',
  ];
  static override args = { url: Args.string({ description: 'the repository: s3://bucket/prefix or file:///absolute/path', required: true }) };
  static override flags = {
    ...repositoryFlags,
    'keep-last': Flags.integer({ description: 'keep the N newest snapshots of each volume', min: 0, max: Number.MAX_SAFE_INTEGER }),
    'keep-daily': Flags.integer({ description: 'keep the newest snapshot of each of the N newest days (UTC) that have one', min: 0, max: Number.MAX_SAFE_INTEGER }),
    'keep-weekly': Flags.integer({ description: 'keep the newest snapshot of each of the N newest ISO weeks (UTC) that have one', min: 0, max: Number.MAX_SAFE_INTEGER }),
    volume: Flags.string({ description: 'only this volume’s snapshots (its uuid: 32 hex digits)' }),
    damaged: Flags.boolean({
      description: 'also forget the snapshots whose manifest fails its checks (a damaged manifest stops every prune; `backup verify` names them); with no --keep rule, only those',
    }),
    'dry-run': Flags.boolean({ description: 'say what would be forgotten; delete nothing, take no lock' }),
  };

  async run(): Promise<ForgetReport> {
    const { args, flags } = await this.parse(BackupForget);
    const policy = {
      ...(flags['keep-last'] === undefined ? {} : { keepLast: flags['keep-last'] }),
      ...(flags['keep-daily'] === undefined ? {} : { keepDaily: flags['keep-daily'] }),
      ...(flags['keep-weekly'] === undefined ? {} : { keepWeekly: flags['keep-weekly'] }),
    };
    const { forgetSnapshots } = await loadBackup();
    const report = await withRepository(
      args.url,
      flags,
      (repo) => forgetSnapshots(repo, { policy, dryRun: flags['dry-run'], damaged: flags.damaged, jobs: flags.jobs, ...(flags.volume === undefined ? {} : { volumeUuid: flags.volume }) }),
      (message) => this.warnUser(message),
    );
    const rows = [
      ...report.kept.map((e) => [e.volumeUuid, e.snapshotName, e.createdAt, 'keep', e.reasons.join(', ')]),
      ...report.forgotten.map((e) => [e.volumeUuid, e.snapshotName, e.createdAt, report.dryRun ? 'would forget' : 'forgotten', '']),
    ].sort((a, b) => `${a[0] ?? ''}${a[2] ?? ''}`.localeCompare(`${b[0] ?? ''}${b[2] ?? ''}`));
    if (rows.length > 0) this.say(table(['VOLUME', 'SNAPSHOT', 'CREATED', 'ACTION', 'KEPT BY'], rows));
    for (const d of report.damagedForgotten) this.say(`${report.dryRun ? 'would forget' : 'forgotten'}, damaged: ${d.key} (${d.message})`);
    for (const d of report.damaged) this.say(`kept, does not open: ${d.key} (${d.message})${d.code === 'BACKUP_CORRUPT' ? '' : ' (--damaged keeps a manifest of another format version)'}`);
    const damagedNote = report.damagedForgotten.length > 0 ? ` and ${String(report.damagedForgotten.length)} damaged manifest(s)` : '';
    this.say(`${report.dryRun ? 'would forget' : 'forgot'} ${String(report.forgotten.length)} snapshot(s)${damagedNote}, kept ${String(report.kept.length)}`);
    return report;
  }
}
