import { Args, Flags } from '@oclif/core';
import { CowvolCommand } from '../base-command.js';
import { copyOut, openSink } from '../io.js';
import { protectedFilesOf } from '../output-guard.js';
import { rangeFlags, resolveRange } from '../range.js';
import { createProgress, progressFlag } from '../progress.js';

export default class Read extends CowvolCommand {
  static override summary = 'Read live data to a file or stdout';
  static override examples = ['<%= config.bin %> read vol.img --output copy.img', '<%= config.bin %> read vol.img --offset 4K --length 512 | xxd'];
  static override enableJsonFlag = false;
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };
  static override flags = {
    ...rangeFlags,
    output: Flags.string({ description: 'file to write (default: stdout)', helpValue: '<file>' }),
    ...progressFlag,
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Read);
    await this.withVolume(
      args.volume,
      async (volume) => {
        const { offsetBytes, lengthBytes } = resolveRange(flags, volume.sizeBytes);
        const sink = await openSink(flags.output, await protectedFilesOf(args.volume));
        const progress = createProgress(flags.progress, 'read');
        try {
          await copyOut(
            (o, l) => volume.read(o, l),
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
