import { Args, Flags } from '@oclif/core';
import { parseLabel, type SnapshotInfo } from '@cowvol/cow-core';
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
    const set = (argv as string[]).slice(2).map(parseLabel);
    const labels = Object.fromEntries(set);
    const remove = flags.remove ?? [];
    // The server merges the same way (docs/FORMAT.md §11.2, `snapshot.label`).
    const snapshot = await this.withServedVolume(args.volume, 'snapshot.label', { name: args.name, set: labels, remove }, async (v) => {
      const current = (await v.listSnapshots()).find((s) => s.name === args.name);
      const removed = new Set(remove);
      const kept = Object.fromEntries(Object.entries(current?.labels ?? {}).filter(([key]) => !removed.has(key)));
      return v.setSnapshotLabels(args.name, { ...kept, ...labels });
    });
    this.say(`labels of ${snapshot.name}: ${formatLabels(snapshot.labels) || '(none)'}`);
    return snapshot;
  }
}
