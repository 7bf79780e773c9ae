import { Args } from '../../args.js';
import type { StoreSpace } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { servedSnapshotList } from '../../served-reports.js';
import { snapshotTable, storeLine, withSpace, type SnapshotWithSpace } from '../../format.js';

export default class SnapshotList extends CowvolCommand {
  static override summary = 'List snapshots, oldest first: name, createdAt, store space owned, space deleting it would free, hold, labels';
  static override description = [
    "OWNED is the store space the snapshot's own copies take. FREES is what deleting it alone would free:",
    'blocks its older neighbour read through to are handed over to that neighbour and free nothing.',
  ].join('\n');
  static override examples = ['<%= config.bin %> snapshot list vol.img', '<%= config.bin %> snapshot list vol.img --json'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };

  async run(): Promise<{ snapshots: SnapshotWithSpace[]; store: StoreSpace }> {
    const { args } = await this.parse(SnapshotList);
    // Served: asked of the server page by page (docs/FORMAT.md §11.2, `snapshot.list`).
    const { snapshots, space } = await this.withServedVolumeVia(
      args.volume,
      () => servedSnapshotList(args.volume),
      async (v) => ({ snapshots: await v.listSnapshots(), space: await v.spaceUsage() }),
      { readOnly: true },
    );
    const rows = withSpace(snapshots, space);
    this.say(() => `${snapshotTable(rows)}\n${storeLine(space)}`);
    return { snapshots: rows, store: space.store };
  }
}
