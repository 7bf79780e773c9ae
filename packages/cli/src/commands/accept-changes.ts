import { Args } from '../args.js';
import { isoNs, type AcceptChangesReport, type StampChange } from '@cowvol/cow-core';
import { CowvolCommand } from '../base-command.js';

export default class AcceptChanges extends CowvolCommand {
  static override summary = 'Take a volume file changed outside cowvol as it is now; mark the snapshots that read live blocks suspect';
  static override description = [
    'Writes must go through cowvol. A volume file written, resized, replaced, touched or chmod-ed by another program is refused',
    "by every command with VOLUME_MODIFIED_OUTSIDE. This command takes the live content as it is now, records the file's new",
    'identity and change stamps, and marks every snapshot that reads blocks through to the live volume `suspect` (shown by',
    '`snapshot list`, `snapshot info` and `info`): it may read bytes written outside cowvol. A file whose size changed must be',
    'restored to the volume size first (VOLUME_SIZE_MISMATCH). Without a change it does nothing.',
    'On a served volume the server compares the file with its stamp again and accepts what it finds: a change made while served',
    "shows only until the server's first write (then only size and identity are compared); a file replaced under the server",
    'is VOLUME_BUSY (stop the server first).',
  ].join('\n');
  static override examples = ['<%= config.bin %> accept-changes vol.img', '<%= config.bin %> accept-changes vol.img --json'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };

  async run(): Promise<AcceptChangesReport & { volume: string }> {
    const { args } = await this.parse(AcceptChanges);
    // Served (README "Serving a volume"): the server compares the file with its stamp again, frozen, and accepts what it finds
    // (docs/FORMAT.md §11.2, `volume.acceptChanges`).
    const report = await this.withServedVolume(args.volume, 'volume.acceptChanges', {}, (v) => v.acceptOutsideChanges(), { outsideChanges: 'hold', changes: true });
    if (!report.accepted) this.say(`${args.volume}: nothing to accept: the file is as cowvol left it`);
    else {
      this.say(
        [
          `${args.volume}: accepted changes made outside cowvol: ${report.changes.map(describe).join('; ')}`,
          report.suspectSnapshots.length === 0 ? 'no snapshot reads the live volume: none marked suspect' : `marked suspect: ${report.suspectSnapshots.join(', ')}`,
          ...(report.abandonedImport ? ['the interrupted import is abandoned (the live volume is no longer its stream alone): import the stream again — a full stream into a new volume'] : []),
        ].join('\n'),
      );
    }
    return { volume: args.volume, ...report };
  }
}

function describe(c: StampChange): string {
  const value = (x: string): string => (c.field === 'mtime' || c.field === 'ctime' ? isoNs(x) : x);
  return `${c.field} ${value(c.recorded)} → ${value(c.found)}`;
}
