import { Args, Flags } from '@oclif/core';
import { OutOfRangeError } from '@cowvol/cow-core';
import { CowvolCommand } from '../base-command.js';
import { parseSize } from '../size.js';
import { STREAM_CHUNK_BYTES, openInput } from '../io.js';
import { createProgress, progressFlag } from '../progress.js';

export default class Write extends CowvolCommand {
  static override summary = 'Write bytes from a file (or stdin) into the live volume; durable when it exits';
  static override examples = ['<%= config.bin %> write vol.img --input disk.img', 'echo hello | <%= config.bin %> write vol.img --offset 1M'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };
  static override flags = {
    offset: Flags.string({ description: 'byte offset to write at (bytes, or K/M/G/T suffix)', helpValue: '<size>' }),
    input: Flags.string({ description: 'file to read from (default: stdin)', helpValue: '<file>' }),
    ...progressFlag,
  };

  async run(): Promise<{ offsetBytes: number; lengthBytes: number }> {
    const { args, flags } = await this.parse(Write);
    const offsetBytes = flags.offset === undefined ? 0 : parseSize(flags.offset, '--offset');
    const input = await openInput(flags.input);
    const progress = createProgress(flags.progress, 'write');
    try {
      const lengthBytes = input.lengthBytes;
      await this.withVolume(args.volume, async (volume) => {
        // Refuse before touching anything: the whole input must fit.
        if (offsetBytes + lengthBytes > volume.sizeBytes) throw new OutOfRangeError(offsetBytes, lengthBytes, volume.sizeBytes);
        let pos = 0;
        while (pos < lengthBytes) {
          const chunk = await input.read(pos, Math.min(STREAM_CHUNK_BYTES, lengthBytes - pos));
          if (chunk.length === 0) break;
          await volume.write(offsetBytes + pos, chunk);
          pos += chunk.length;
          progress.update(pos, lengthBytes);
        }
        await volume.flush();
      });
      this.say(`wrote ${lengthBytes} bytes at offset ${offsetBytes}`);
      return { offsetBytes, lengthBytes };
    } finally {
      progress.stop();
      await input.close();
    }
  }
}
