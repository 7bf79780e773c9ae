import { Args } from '@oclif/core';
import type { DeleteResult } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';

export default class SnapshotDelete extends CowvolCommand {
  static override summary = 'Delete a snapshot; its blocks pass to the next older snapshot or are freed';
  static override examples = ['<%= config.bin %> snapshot delete vol.img nightly-2026-11-01'];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name', required: true }),
  };

  async run(): Promise<DeleteResult> {
    const { args } = await this.parse(SnapshotDelete);
    const result = await this.withVolume(args.volume, (v) => v.deleteSnapshot(args.name));
    this.say(`deleted snapshot ${result.name}: ${result.freedBlocks} blocks freed, ${result.handedOverBlocks} handed over to the next older snapshot`);
    return result;
  }
}
