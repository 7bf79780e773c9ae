import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import { SnapshotNotFoundError } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { copyRangeOut, rangeFlags } from '../../range.js';
import { progressFlag } from '../../progress.js';
import { askServer } from '../../served.js';
import { snapshotExportName, withVolumeData, type VolumeData } from '../../served-nbd.js';

export default class SnapshotRead extends CowvolCommand {
  static override summary = 'Read a snapshot (the whole snapshot when no offset/length) to a file or stdout';
  static override description = 'Works on a served volume too: the snapshot is then read through the NBD socket of its server (export snapshot/<name>).';
  static override examples = ['<%= config.bin %> snapshot read vol.img nightly --output nightly.img'];
  static override enableJsonFlag = false;
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name', required: true }),
  };
  static override flags = {
    ...rangeFlags,
    output: Flags.string({ description: 'file to write, or - for stdout (default: stdout)', helpValue: '<file|->' }),
    ...progressFlag,
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(SnapshotRead);
    const copy = (data: Pick<VolumeData, 'sizeBytes' | 'read'>): Promise<void> => copyRangeOut(data, flags, args.volume, 'snapshot read');
    await withVolumeData({
      waitMs: this.waitMs(),
      volumePath: args.volume,
      exportName: snapshotExportName(args.name),
      offline: (mode) =>
        this.withVolume(
          args.volume,
          async (volume) => {
            // Check the name before creating the output file.
            await volume.snapshotInfo(args.name); // SNAPSHOT_NOT_FOUND
            await copy({ sizeBytes: volume.sizeBytes, read: (o, l) => volume.readSnapshot(args.name, o, l) });
          },
          { ...mode, readOnly: true },
        ),
      // Served: the same check, asked of the server, before the output file is created.
      before: async () => {
        await askServer(args.volume, 'snapshot.info', { name: args.name }); // SNAPSHOT_NOT_FOUND from the server
      },
      unknownExport: () => new SnapshotNotFoundError(args.name),
      served: copy,
    });
  }
}
