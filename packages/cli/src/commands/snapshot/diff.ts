import { Args } from '../../args.js';
import { CowvolCommand } from '../../base-command.js';
import { human, table } from '../../format.js';
import { servedDiff } from '../../served-reports.js';

/** `snapshot diff --json` (README "JSON shapes"). Offsets and lengths are bytes. */
export interface DiffJson {
  from: string;
  to: string | null;
  blockSizeBytes: number;
  extents: Array<{ offset: number; length: number; snapshot: string }>;
  bytes: number;
  blocks: number;
}

export default class SnapshotDiff extends CowvolCommand {
  static override summary = 'The byte extents written between two snapshots, or between a snapshot and the live volume';
  static override description = [
    'Lists, as sorted block-aligned extents, every block written between snapshot <from> and snapshot <to> (or the live volume when <to> is absent),',
    'each naming the snapshot map it came from. Computed from the snapshot maps alone: the cost is proportional to the blocks changed, not the volume size, and no data is read.',
    'A block rewritten with the same bytes counts as written, so the extents cover every byte that differs and may cover more.',
  ].join('\n');
  static override examples = ['<%= config.bin %> snapshot diff vol.img monday tuesday', '<%= config.bin %> snapshot diff vol.img monday --json'];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    from: Args.string({ description: 'one snapshot (usually the older; the extents are the same in either order)', required: true }),
    to: Args.string({ description: 'the other snapshot (default: the live volume)' }),
  };

  async run(): Promise<DiffJson> {
    const { args } = await this.parse(SnapshotDiff);
    // Served: asked of the server page by page (docs/FORMAT.md §11.2, `snapshot.diff`).
    const diff = await this.withServedVolumeVia(
      args.volume,
      () => servedDiff(args.volume, args.from, args.to),
      (v) => v.diff(args.from, args.to),
      { readOnly: true },
    );
    const json: DiffJson = {
      from: diff.from,
      to: diff.to,
      blockSizeBytes: diff.blockSizeBytes,
      extents: diff.extents.map((e) => ({ offset: e.offsetBytes, length: e.lengthBytes, snapshot: e.snapshot })),
      bytes: diff.bytes,
      blocks: diff.blocks,
    };
    if (!this.jsonEnabled()) {
      const rows = json.extents.map((e) => [String(e.offset), String(e.length), human(e.length), e.snapshot]);
      const head = `${json.extents.length} extents, ${json.bytes} bytes (${human(json.bytes)}) written between ${json.from} and ${json.to ?? 'the live volume'}`;
      this.say(json.extents.length === 0 ? head : `${table(['OFFSET', 'LENGTH', 'SIZE', 'FROM MAP'], rows)}\n${head}`);
    }
    return json;
  }
}
