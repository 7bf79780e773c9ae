import { Flags } from '@oclif/core';
import { Args } from '../args.js';
import { InvalidArgumentError, Volume, type VolumeInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../base-command.js';
import { parseSize } from '../size.js';
import { human } from '../format.js';

export default class Create extends CowvolCommand {
  static override summary = 'Create a volume: a new sparse raw file, or adopt an existing raw image';
  static override description = 'Makes <volume> a cowvol volume with its sidecar <volume>.cowvol/ (snapshot store, journal, metadata). Refuses to overwrite anything.';
  static override examples = ['<%= config.bin %> create vol.img --size 1G', '<%= config.bin %> create disk.raw --adopt'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };
  static override flags = {
    size: Flags.string({ description: 'size of a new volume (bytes, or K/M/G/T suffix)', helpValue: '<size>', exactlyOne: ['size', 'adopt'] }),
    'block-size': Flags.string({ description: 'block size in bytes: power of two, 512 to 64K (default 4096)', helpValue: '<bytes>' }),
    adopt: Flags.boolean({ description: 'take an existing raw image as the live volume (size from the file)', exactlyOne: ['size', 'adopt'] }),
    'data-mode': Flags.string({
      description: 'ordered: live data written in place, metadata journaled (default); journal: live data journaled too, each write of up to 4 MiB atomic across a crash',
      options: ['ordered', 'journal'],
      default: 'ordered',
    }),
    'journal-size': Flags.string({ description: 'journal file size (default 64M)', helpValue: '<size>' }),
  };

  async run(): Promise<VolumeInfo> {
    const { args, flags } = await this.parse(Create);
    const blockSizeBytes = flags['block-size'] === undefined ? undefined : parseSize(flags['block-size'], '--block-size');
    const sizeBytes = flags.size === undefined ? undefined : parseSize(flags.size, '--size');
    if (sizeBytes === 0) throw new InvalidArgumentError('--size must be greater than zero');
    const journalSizeBytes = flags['journal-size'] === undefined ? undefined : parseSize(flags['journal-size'], '--journal-size');
    const volume = await Volume.create(args.volume, {
      adopt: flags.adopt,
      dataMode: flags['data-mode'] as 'ordered' | 'journal',
      ...(sizeBytes === undefined ? {} : { sizeBytes }),
      ...(blockSizeBytes === undefined ? {} : { blockSizeBytes }),
      ...(journalSizeBytes === undefined ? {} : { journalSizeBytes }),
    });
    try {
      const info = await volume.info();
      this.say(`${flags.adopt ? 'adopted' : 'created'} ${info.path}: ${human(info.sizeBytes)} (${info.sizeBytes} bytes), block size ${info.blockSizeBytes}, data mode ${info.dataMode}`);
      return info;
    } finally {
      await volume.close();
    }
  }
}
