import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import type { PushResult, PushSource } from '@cowvol/backup';
import { SnapshotNotFoundError } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { loadBackup, repositoryFlags, withRepository } from '../../backup-repo.js';
import { human } from '../../format.js';
import { createProgress, progressFlag } from '../../progress.js';
import { snapshotExportName, withVolumeData } from '../../served-nbd.js';
import { servedPushSource } from '../../served-reports.js';

export default class BackupPush extends CowvolCommand {
  static override summary = 'Store a snapshot in a backup repository: only the chunks changed since the last snapshot pushed, only those the repository lacks';
  static override description = [
    'The first push of a volume reads every chunk that can hold data; later pushes read only the chunks changed since the newest',
    'snapshot of the volume already in the repository that the volume still has (changed-block tracking, as snapshot diff).',
    'Chunks are deduplicated by content across volumes; the manifest is written last. Re-running an interrupted push uploads only',
    'what is missing; pushing a snapshot already there does nothing. On a served volume the push reads through the server (its NBD export and control channel).',
  ].join('\n');
  static override examples = ['<%= config.bin %> backup push vol.img nightly --to s3://backups/cowvol --key-file backup.key --endpoint http://127.0.0.1:7480 --path-style'];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot to push', required: true }),
  };
  static override flags = {
    to: Flags.string({ description: 'the repository: s3://bucket/prefix or file:///absolute/path', helpValue: '<url>', required: true }),
    full: Flags.boolean({
      description:
        'read every chunk that can hold data, without a parent; store those missing, read back those already stored and replace the damaged ones: repairs what verify reports (a lost or damaged chunk, a damaged parent manifest), which later incremental pushes would inherit',
    }),
    ...repositoryFlags,
    ...progressFlag,
  };

  async run(): Promise<PushResult> {
    const { args, flags } = await this.parse(BackupPush);
    const { pushSnapshot, parseManifestObjectKey } = await loadBackup();
    const progress = createProgress(flags.progress, 'backup push');
    const result = await withRepository(
      flags.to,
      flags,
      (repo) => {
        const push = (volume: PushSource): Promise<PushResult> =>
          pushSnapshot(repo, volume, args.name, {
            jobs: flags.jobs,
            full: flags.full,
            onProgress: (p) => progress.update(p.readBytes, p.plannedBytes, 'read', { uploadedBytes: p.uploadedBytes, deduplicatedBytes: p.deduplicatedBytes }),
          });
        // Served: the snapshot's data through the NBD export snapshot/<name> (which also keeps it from being deleted meanwhile), its
        // changed blocks and identities from the control channel (docs/ARCHITECTURE.md §14.10) — the same push, the same manifest.
        return withVolumeData({
          waitMs: this.waitMs(),
          volumePath: args.volume,
          exportName: snapshotExportName(args.name),
          offline: (mode) => this.withVolume(args.volume, push, { ...mode, readOnly: true }),
          unknownExport: () => new SnapshotNotFoundError(args.name),
          served: async (data) => push(await servedPushSource(args.volume, args.name, data)),
        });
      },
      (message) => this.warnUser(message),
    ).finally(() => progress.stop());
    if (result.alreadyPushed) this.say(`${result.snapshot} is in ${flags.to} already (${result.manifest}); nothing to do`);
    else
      this.say(
        `pushed ${result.snapshot} to ${flags.to}${result.parent ? ` (changes since ${parseManifestObjectKey(result.parent)?.snapshotName ?? result.parent})` : ' (full)'}: ` +
          `${String(result.chunksRead)} of ${String(result.chunksTotal)} chunks read (${human(result.bytesRead)}), ${String(result.chunksUploaded)} uploaded (${human(result.bytesUploaded)}), ` +
          `${String(result.chunksDeduplicated)} already stored${result.chunksReplaced > 0 ? `, ${String(result.chunksReplaced)} damaged ones replaced` : ''}, in ${result.seconds.toFixed(1)} s`,
      );
    return result;
  }
}
