import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import type { RestoreResult } from '@cowvol/backup';
import { CowvolCommand } from '../../base-command.js';
import { loadBackup, repositoryFlags, splitSnapshotUrl, withRepository } from '../../backup-repo.js';
import { human } from '../../format.js';
import { createProgress, progressFlag } from '../../progress.js';
import { isServed, servedPid, VolumeServedError } from '../../served.js';
import { servedRestoreTarget } from '../../served-reports.js';

export default class BackupRestore extends CowvolCommand {
  static override summary = 'Restore a snapshot from a backup repository into a new volume, or --into an existing one as a new snapshot';
  static override description = [
    'Every chunk is downloaded and authenticated before the target is touched (spooled into a temporary file next to it), so a',
    'damaged repository (BACKUP_CORRUPT) leaves nothing behind. A new volume gets the snapshot and live data equal to it;',
    '--into adds the snapshot to a volume holding one of its bases, by identity, as `import` of an incremental stream (BASE_MISMATCH otherwise).',
    'The target is checked before the download (VOLUME_EXISTS, VOLUME_NOT_FOUND). A restore that was interrupted (killed, a full disk) is finished',
    'by running the same command again.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> backup restore s3://backups/cowvol/0123456789abcdef0123456789abcdef/nightly restored.img --key-file backup.key --verify',
    '<%= config.bin %> backup restore file:///mnt/usb/cowvol/0123456789abcdef0123456789abcdef/tuesday copy.img --into --key-file backup.key',
  ];
  static override args = {
    snapshot: Args.string({ description: '<repository-url>/<volume-uuid>/<snapshot-name>', required: true }),
    volume: Args.string({ description: 'path of the volume to create (or, with --into, to add the snapshot to)', required: true }),
  };
  static override flags = {
    ...repositoryFlags,
    into: Flags.boolean({ description: 'add the snapshot to the existing volume <volume>, which must hold one of its bases with nothing written since' }),
    verify: Flags.boolean({ description: "read the restored snapshot back and compare every chunk with the manifest's chunk ids (VERIFY_FAILED)" }),
    ...progressFlag,
  };

  async run(): Promise<Omit<RestoreResult, 'import'> & { extents: number }> {
    const { args, flags } = await this.parse(BackupRestore);
    const { repositoryUrl, volumeUuid, snapshotName } = splitSnapshotUrl(args.snapshot);
    const { restoreFromRepository } = await loadBackup();
    const progress = createProgress(flags.progress, 'backup restore');
    // A served volume: the server applies the spooled stream, as `cowvol import` on it (docs/ARCHITECTURE.md §14.10) — with
    // --into, or to finish this restore interrupted there; anything else is VOLUME_EXISTS, as offline (restore-target.ts).
    const pid = (await isServed(args.volume)) ? await servedPid(args.volume) : undefined;
    const target = pid === undefined ? undefined : servedRestoreTarget(args.volume, new VolumeServedError(args.volume, pid), this.waitMs());
    const result = await withRepository(
      repositoryUrl,
      flags,
      (repo) =>
        restoreFromRepository(repo, volumeUuid, snapshotName, args.volume, {
          into: flags.into,
          verify: flags.verify,
          jobs: flags.jobs,
          openVolume: (p) => this.openVolume(p),
          onUnlocked: (why) => this.warnUser(why),
          ...(target ? { target } : {}),
          onProgress: (phase, done, total) => progress.update(done, total, phase),
        }),
      (message) => this.warnUser(message),
    ).finally(() => progress.stop());
    this.say(
      (result.alreadyThere
        ? `${args.volume} holds ${snapshotName} already${result.snapshot === snapshotName ? '' : `, as ${result.snapshot}`}: nothing downloaded`
        : `restored ${snapshotName} into ${args.volume}${result.created ? ' (new volume)' : ''}${result.resumed ? ' (an interrupted restore, finished)' : ''}: ${String(result.chunksDownloaded)} chunks downloaded (${human(result.bytesDownloaded)})`) +
        (result.verified ? '; read back and verified' : ''),
    );
    const { import: imported, ...rest } = result;
    return { ...rest, extents: imported.extentCount };
  }
}
