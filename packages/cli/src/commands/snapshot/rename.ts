import { Args } from '../../args.js';
import type { SnapshotInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';

export default class SnapshotRename extends CowvolCommand {
  static override summary = 'Rename a snapshot (its content, identity, labels and hold are kept)';
  static override examples = ['<%= config.bin %> snapshot rename vol.img nightly before-upgrade'];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'current snapshot name', required: true }),
    newName: Args.string({ name: 'new-name', description: 'new snapshot name', required: true }),
  };

  async run(): Promise<SnapshotInfo> {
    const { args } = await this.parse(SnapshotRename);
    const snapshot = await this.withServedVolume(args.volume, 'snapshot.rename', { name: args.name, newName: args.newName }, (v) => v.renameSnapshot(args.name, args.newName), { changes: true });
    this.say(`renamed snapshot ${args.name} to ${snapshot.name}`);
    return snapshot;
  }
}
