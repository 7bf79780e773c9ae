import { Args } from './args.js';
import type { SnapshotInfo } from '@cowvol/cow-core';
import { CowvolCommand } from './base-command.js';

/**
 * The one implementation of `snapshot hold` and `snapshot release`
 * (docs/ARCHITECTURE.md §15.4): sets the hold of the named snapshots in one step (all or none) through
 * `Volume.holdSnapshots`, on a served volume through its `snapshot.hold` control method. A subclass says which way (`held`).
 * @throws SNAPSHOT_NOT_FOUND, INVALID_SNAPSHOT_NAME, and what opening the volume throws
 */
export abstract class HoldCommand extends CowvolCommand {
  static override strict = false;
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name (several may follow)', required: true }),
  };

  /** True: hold the snapshots; false: release them. */
  protected abstract readonly held: boolean;

  async run(): Promise<{ snapshots: SnapshotInfo[] }> {
    const { args, argv } = await this.parse(HoldCommand);
    const names = [...new Set((argv as string[]).slice(1))]; // a name given twice is one snapshot, held once (as delete does)
    const { snapshots } = await this.withServedVolume(args.volume, 'snapshot.hold', { names, held: this.held }, async (v) => ({ snapshots: await v.holdSnapshots(names, this.held) }), {
      changes: true,
    });
    this.say(`${this.held ? 'held' : 'released'} ${names.join(', ')}`);
    return { snapshots };
  }
}
