import { Args } from '../args.js';
import { CowvolCommand } from '../base-command.js';
import { askServer, assertVolumeExists } from '../served.js';

export default class Stop extends CowvolCommand {
  static override summary = 'Stop the cowvol serve of a volume cleanly and wait until the volume is released';
  static override description =
    'The server refuses new requests, finishes those in flight, flushes, checkpoints the journal and closes the volume; the command returns once the owner lock is released (exit 0). NOT_SERVED (exit 3) when no server answers.';
  static override examples = ['<%= config.bin %> stop vol.img'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };

  async run(): Promise<{ stopped: true; pid: number }> {
    const { args } = await this.parse(Stop);
    await assertVolumeExists(args.volume);
    const result = (await askServer(args.volume, 'stop')) as { stopped: true; pid: number };
    this.say(`stopped serving ${args.volume} (process ${result.pid}); the volume is released`);
    return result;
  }
}
