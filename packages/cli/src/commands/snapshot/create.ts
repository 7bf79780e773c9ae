import { Args } from '@oclif/core';
import type { SnapshotInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';

export default class SnapshotCreate extends CowvolCommand {
  static override summary = 'Take a named snapshot of the volume (O(1))';
  static override description = 'Names are 1-128 characters of A-Z a-z 0-9 . _ : - and unique per volume.';
  static override examples = ['<%= config.bin %> snapshot create vol.img nightly-2026-11-21'];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name', required: true }),
  };

  async run(): Promise<SnapshotInfo> {
    const { args } = await this.parse(SnapshotCreate);
    const snapshot = await this.withVolume(args.volume, (v) => v.createSnapshot(args.name));
    this.say(`created snapshot ${snapshot.name} at ${snapshot.createdAt}`);
    return snapshot;
  }
}
