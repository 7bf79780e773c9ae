import { Args } from '@oclif/core';
import type { SnapshotInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { snapshotTable } from '../../format.js';

export default class SnapshotList extends CowvolCommand {
  static override summary = 'List snapshots, oldest first: name, createdAt, blocks owned';
  static override examples = ['<%= config.bin %> snapshot list vol.img', '<%= config.bin %> snapshot list vol.img --json'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };

  async run(): Promise<{ snapshots: SnapshotInfo[] }> {
    const { args } = await this.parse(SnapshotList);
    const snapshots = await this.withVolume(args.volume, (v) => v.listSnapshots());
    this.say(snapshotTable(snapshots));
    return { snapshots };
  }
}
