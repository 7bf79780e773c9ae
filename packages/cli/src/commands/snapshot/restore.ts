import { Args, Flags } from '@oclif/core';
import { restoreSnapshot, type RestoreResult } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { human } from '../../format.js';
import { createProgress, progressFlag } from '../../progress.js';
import { VolumeServedError } from '../../served.js';

export default class SnapshotRestore extends CowvolCommand {
  static override summary = "Make the live volume the snapshot's content; newer snapshots are kept, a safety snapshot is taken first";
  static override description = [
    'Rewrites only the blocks changed since the snapshot (cost proportional to them, not the volume size), through the normal',
    'copy-on-write path: every snapshot, older and newer, stays intact. Unless --no-safety-snapshot, a snapshot of the',
    'pre-restore state (pre-restore-<time>, or --safety-name) is taken first: restoring it undoes the restore.',
    'An interrupted restore is finished by running it again.',
  ].join('\n');
  static override examples = ['<%= config.bin %> snapshot restore vol.img nightly-2026-11-21', '<%= config.bin %> snapshot restore vol.img nightly --no-safety-snapshot'];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot to restore', required: true }),
  };
  static override flags = {
    'safety-snapshot': Flags.boolean({ description: 'take a safety snapshot of the pre-restore state first (default; --no-safety-snapshot to skip)', allowNo: true, default: true }),
    'safety-name': Flags.string({ description: 'name of the safety snapshot (default pre-restore-<ISO time>)', helpValue: '<name>' }),
    ...progressFlag,
  };

  async run(): Promise<RestoreResult> {
    const { args, flags } = await this.parse(SnapshotRestore);
    const progress = createProgress(flags.progress, 'restore');
    const result = await this.withVolume(args.volume, (v) =>
      restoreSnapshot(v, args.name, {
        safetySnapshot: flags['safety-snapshot'],
        ...(flags['safety-name'] === undefined ? {} : { safetyName: flags['safety-name'] }),
        onProgress: (done, total) => progress.update(done, total),
      }),
    )
      .catch((err: unknown) => {
        // README "Serving a volume": a restore rewrites the live volume in many writes under its clients.
        if (!(err instanceof VolumeServedError)) throw err;
        throw new VolumeServedError(err.path, err.pid, { cause: err, note: RESTORE_SERVED_NOTE });
      })
      .finally(() => progress.stop());
    this.say(
      `restored ${result.name}: ${result.restoredBytes} bytes (${human(result.restoredBytes)}) rewritten` +
        (result.safetySnapshot ? `; the previous state is snapshot ${result.safetySnapshot} (restore it to undo)` : ''),
    );
    return result;
  }
}

/**
 * Why `snapshot restore` refuses a served volume (README "Serving a
 * volume", docs/ARCHITECTURE.md §14.10): it rewrites the blocks changed
 * since the snapshot in many writes, and a client of `live` (a mounted
 * filesystem, a VM) would see its disk change under it, blocks it cached
 * no longer matching the disk.
 */
export const RESTORE_SERVED_NOTE =
  'snapshot restore rewrites the live volume under its NBD clients (a filesystem or VM on it would see its disk change beneath it): stop the server (and its clients) first, then restore';
