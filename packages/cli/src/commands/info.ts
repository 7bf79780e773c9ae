import { Args } from '@oclif/core';
import type { VolumeInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../base-command.js';
import { human, snapshotTable } from '../format.js';

export default class Info extends CowvolCommand {
  static override summary = 'Show size, block size, snapshots, store usage and format version';
  static override examples = ['<%= config.bin %> info vol.img', '<%= config.bin %> info vol.img --json'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };

  async run(): Promise<VolumeInfo> {
    const { args } = await this.parse(Info);
    const info = await this.withVolume(args.volume, (v) => v.info());
    this.say(
      [
        `volume:         ${info.path}`,
        `size:           ${human(info.sizeBytes)} (${info.sizeBytes} bytes)`,
        `block size:     ${info.blockSizeBytes}`,
        `format version: ${info.formatVersion}`,
        `data mode:      ${info.dataMode}${info.dataMode === 'journal' ? ` (writes up to ${human(info.maxAtomicWriteBytes)} atomic)` : ''}`,
        `journal:        ${human(info.journal.sizeBytes)}, ${human(info.journal.uncheckpointedBytes)} not checkpointed`,
        `uuid:           ${info.uuid}`,
        `store:          ${human(info.store.usedBytes)} in use, ${info.store.freeBlocks} free blocks, file ${human(info.store.fileBytes)}`,
        `snapshots:      ${info.snapshots.length}`,
        '',
        snapshotTable(info.snapshots),
      ].join('\n'),
    );
    return info;
  }
}
