import { Args } from '../args.js';
import { escapeTerminalText, type SpaceReport, type StoreSpace, type VolumeInfo } from '@cowvol/cow-core';
import { CowvolCommand } from '../base-command.js';
import { servedInfo } from '../served-reports.js';
import { human, snapshotTable, withSpace, type SnapshotWithSpace } from '../format.js';

export default class Info extends CowvolCommand {
  static override summary = 'Show size, block size, snapshots, store usage and format version';
  static override examples = ['<%= config.bin %> info vol.img', '<%= config.bin %> info vol.img --json'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };

  async run(): Promise<Omit<VolumeInfo, 'snapshots' | 'store'> & { snapshots: SnapshotWithSpace[]; store: VolumeInfo['store'] & StoreSpace }> {
    const { args } = await this.parse(Info);
    // Served: the server's `info` and the further pages of its snapshots give the same two values (docs/FORMAT.md §11.2).
    const { info: base, space } = await this.withServedVolumeVia<{ info: VolumeInfo; space: SpaceReport }>(
      args.volume,
      () => servedInfo(args.volume),
      async (v) => ({ info: await v.info(), space: await v.spaceUsage() }),
      { readOnly: true },
    );
    const info = { ...base, snapshots: withSpace(base.snapshots, space), store: { ...base.store, ...space.store } };
    this.say(() =>
      [
        `volume:         ${info.path}`,
        `size:           ${human(info.sizeBytes)} (${info.sizeBytes} bytes)`,
        `block size:     ${info.blockSizeBytes}`,
        `format version: ${info.formatVersion}`,
        `data mode:      ${info.dataMode}${info.dataMode === 'journal' ? ` (writes up to ${human(info.maxAtomicWriteBytes)} atomic)` : ''}`,
        `journal:        ${human(info.journal.sizeBytes)}, ${human(info.journal.uncheckpointedBytes)} not checkpointed`,
        `uuid:           ${info.uuid}`,
        `store:          ${human(info.store.usedBytes)} in use, ${info.store.freeBlocks} free blocks (${human(info.store.freeBytes)}), file ${human(info.store.fileBytes)}; snapshots own ${human(info.store.ownedBytes)}`,
        `snapshots:      ${info.snapshots.length}`,
        ...(info.pendingImport
          ? [
              `import:         pending — of snapshot ${escapeTerminalText(info.pendingImport.source.name)}, ${info.pendingImport.nextExtent} of ${info.pendingImport.extentCount} extents durable; writes are refused until it is finished (the same import with --resume, or the same backup restore) or abandoned (snapshot restore)`,
            ]
          : []),
        '',
        snapshotTable(info.snapshots),
      ].join('\n'),
    );
    return info;
  }
}
