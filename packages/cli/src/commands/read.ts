import { Flags } from '@oclif/core';
import { Args } from '../args.js';
import { CowvolCommand } from '../base-command.js';
import { copyRangeOut, rangeFlags } from '../range.js';
import { progressFlag } from '../progress.js';
import { LIVE_EXPORT_NAME, withVolumeData, type VolumeData } from '../served-nbd.js';

export default class Read extends CowvolCommand {
  static override summary = 'Read live data to a file or stdout';
  static override description = 'Works on a served volume too: the data is then read through the NBD socket of its server (README "Serving a volume").';
  static override examples = ['<%= config.bin %> read vol.img --output copy.img', '<%= config.bin %> read vol.img --offset 4K --length 512 | xxd'];
  static override enableJsonFlag = false;
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };
  static override flags = {
    ...rangeFlags,
    output: Flags.string({ description: 'file to write, or - for stdout (default: stdout)', helpValue: '<file|->' }),
    ...progressFlag,
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Read);
    const copy = (data: Pick<VolumeData, 'sizeBytes' | 'read'>): Promise<void> => copyRangeOut(data, flags, args.volume, 'read');
    await withVolumeData({
      waitMs: this.waitMs(),
      volumePath: args.volume,
      exportName: LIVE_EXPORT_NAME,
      offline: (mode) => this.withVolume(args.volume, copy, { ...mode, readOnly: true }),
      served: copy,
    });
  }
}
