import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import { InvalidArgumentError, restoreSnapshot, type RestoreResult } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { human } from '../../format.js';
import { createProgress, progressFlag } from '../../progress.js';

export default class SnapshotRestore extends CowvolCommand {
  static override summary = "Make the live volume the snapshot's content; newer snapshots are kept, a safety snapshot is taken first";
  static override description = [
    'Rewrites only the blocks changed since the snapshot (cost proportional to them, not the volume size), through the normal',
    'copy-on-write path: every snapshot, older and newer, stays intact. Unless --no-safety-snapshot, a snapshot of the',
    'pre-restore state (pre-restore-<time>, or --safety-name) is taken first: restoring it undoes the restore.',
    'An interrupted restore is finished by running it again (with --no-safety-snapshot if it had a --safety-name: its safety snapshot holds that name).',
    'On a served volume the server restores, and refuses (EXPORT_IN_USE) while an NBD client is attached to live.',
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
    // A safety name that would be silently ignored.
    if (!flags['safety-snapshot'] && flags['safety-name'] !== undefined) throw new InvalidArgumentError('--safety-name names the safety snapshot: it cannot be given with --no-safety-snapshot');
    const progress = createProgress(flags.progress, 'restore');
    const options = {
      safetySnapshot: flags['safety-snapshot'],
      ...(flags['safety-name'] === undefined ? {} : { safetyName: flags['safety-name'] }),
    };
    // Served (README "Serving a volume"): the server restores, refusing while a client is attached to `live` (EXPORT_IN_USE); no progress comes back.
    const result = await this.withServedVolume(
      args.volume,
      'snapshot.restore',
      { name: args.name, ...options },
      (v) => restoreSnapshot(v, args.name, { ...options, onProgress: (done, total) => progress.update(done, total) }),
      { changes: true },
    ).finally(() => progress.stop());
    this.say(
      `restored ${result.name}: ${result.restoredBytes} bytes (${human(result.restoredBytes)}) rewritten` +
        (result.safetySnapshot ? `; the previous state is snapshot ${result.safetySnapshot} (restore it to undo)` : ''),
    );
    return result;
  }
}
