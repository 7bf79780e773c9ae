import { Args, Flags } from '@oclif/core';
import { SnapshotNotFoundError } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { copyOut, openSink } from '../../io.js';
import { protectedFilesOf } from '../../output-guard.js';
import { rangeFlags, resolveRange } from '../../range.js';
import { createProgress, progressFlag } from '../../progress.js';

export default class SnapshotRead extends CowvolCommand {
  static override summary = 'Read a snapshot (the whole snapshot when no offset/length) to a file or stdout';
  static override examples = ['<%= config.bin %> snapshot read vol.img nightly --output nightly.img'];
  static override enableJsonFlag = false;
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name', required: true }),
  };
  static override flags = {
    ...rangeFlags,
    output: Flags.string({ description: 'file to write (default: stdout)', helpValue: '<file>' }),
    ...progressFlag,
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(SnapshotRead);
    await this.withVolume(
      args.volume,
      async (volume) => {
        // Check the name before creating the output file.
        if (!(await volume.listSnapshots()).some((s) => s.name === args.name)) throw new SnapshotNotFoundError(args.name);
        const { offsetBytes, lengthBytes } = resolveRange(flags, volume.sizeBytes);
        const sink = await openSink(flags.output, await protectedFilesOf(args.volume));
        const progress = createProgress(flags.progress, 'snapshot read');
        try {
          await copyOut(
            (o, l) => volume.readSnapshot(args.name, o, l),
            offsetBytes,
            lengthBytes,
            sink,
            (d, t) => progress.update(d, t),
          );
        } finally {
          progress.stop();
          await sink.close();
        }
      },
      { readOnly: true },
    );
  }
}
