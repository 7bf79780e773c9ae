import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import { parseLabels, type SnapshotInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';

export default class SnapshotCreate extends CowvolCommand {
  static override summary = 'Take a named snapshot of the volume (O(1))';
  static override description =
    'Names are 1-128 characters of A-Z a-z 0-9 . _ : - and unique per volume. Labels are key=value (keys: 1-64 characters of A-Z a-z 0-9 . _ : / -; values: up to 256 characters).';
  static override examples = ['<%= config.bin %> snapshot create vol.img nightly-2026-11-21', '<%= config.bin %> snapshot create vol.img nightly-2026-11-21 --label kind=nightly --label host=db1'];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name', required: true }),
  };
  static override flags = {
    label: Flags.string({ description: 'a label key=value (repeatable)', helpValue: '<key=value>', multiple: true }),
  };

  async run(): Promise<SnapshotInfo> {
    const { args, flags } = await this.parse(SnapshotCreate);
    const labels = parseLabels(flags.label ?? []);
    const snapshot = await this.withServedVolume(args.volume, 'snapshot.create', { name: args.name, labels }, (v) => v.createSnapshot(args.name, { labels }), { changes: true, catalog: 'lazy' });
    this.say(`created snapshot ${snapshot.name} at ${snapshot.createdAt}`);
    return snapshot;
  }
}
