import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import { parseLabels, type SnapshotInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { formatLabels } from '../../format.js';

export default class SnapshotLabel extends CowvolCommand {
  static override summary = "Set or remove a snapshot's labels";
  static override examples = ['<%= config.bin %> snapshot label vol.img nightly kind=nightly keep=yes', '<%= config.bin %> snapshot label vol.img nightly --remove keep'];
  static override strict = false;
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name', required: true }),
    labels: Args.string({ description: 'labels key=value to set (several may follow)' }),
  };
  static override flags = {
    remove: Flags.string({ description: 'a label key to remove (repeatable)', helpValue: '<key>', multiple: true }),
  };

  async run(): Promise<SnapshotInfo> {
    const { args, argv, flags } = await this.parse(SnapshotLabel);
    const labels = parseLabels((argv as string[]).slice(2));
    const remove = [...new Set(flags.remove ?? [])];
    // One core call, atomic on the volume (Volume.changeSnapshotLabels); the server runs the same (docs/FORMAT.md §11.2, `snapshot.label`).
    const snapshot = await this.withServedVolume(args.volume, 'snapshot.label', { name: args.name, set: labels, remove }, (v) => v.changeSnapshotLabels(args.name, { set: labels, remove }), {
      changes: true,
    });
    this.say(`labels of ${snapshot.name}: ${formatLabels(snapshot.labels) || '(none)'}`);
    return snapshot;
  }
}
