import { Args } from '@oclif/core';
import type { SnapshotInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';

export default class SnapshotRelease extends CowvolCommand {
  static override summary = 'Release held snapshots so they can be deleted again';
  static override examples = ['<%= config.bin %> snapshot release vol.img nightly-2026-11-21'];
  static override strict = false;
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name (several may follow)', required: true }),
  };

  async run(): Promise<{ snapshots: SnapshotInfo[] }> {
    const { args, argv } = await this.parse(SnapshotRelease);
    const names = (argv as string[]).slice(1);
    const snapshots = await this.withVolume(args.volume, async (v) => {
      const out: SnapshotInfo[] = [];
      for (const name of names) out.push(await v.holdSnapshot(name, false));
      return out;
    });
    this.say(`released ${names.join(', ')}`);
    return { snapshots };
  }
}
