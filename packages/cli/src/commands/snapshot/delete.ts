import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import { assert } from '@cowvol/base';
import { InvalidArgumentError, parseLabel, type DeletePlan, type DeleteResult, type DeleteSelection, type MultiDeleteResult } from '@cowvol/cow-core';
import { CowvolCommand, type OpenMode } from '../../base-command.js';
import { parseDuration } from '../../duration.js';
import { human } from '../../format.js';
import { createProgress, progressFlag, type Progress } from '../../progress.js';

/** JSON of a delete of several snapshots, a filter or a dry run (README "JSON shapes"). */
export interface MultiDeleteJson {
  dryRun: boolean;
  /** Oldest first. */
  /** `unfinished`: committed, hand-over left to the next open (see `DeleteResult.unfinished`). */
  deleted: Array<{ name: string; freedBlocks: number; freedBytes: number; handedOverBlocks: number; unfinished?: boolean }>;
  /** Held snapshots a filter matched and left alone. */
  skippedHeld: string[];
  freedBlocks: number;
  freedBytes: number;
  handedOverBlocks: number;
}

export default class SnapshotDelete extends CowvolCommand {
  static override summary = 'Delete snapshots (several names, or a filter) in one atomic step; their blocks pass to the next older snapshot or are freed';
  static override description = [
    'All the snapshots chosen are checked first (a missing or held one refuses the whole delete: nothing is deleted), then marked',
    'for deletion in one journal transaction: from then on the delete of every one of them completes, across a crash too.',
    'Choose by names, or by filters: --older-than <duration> (created before now minus it), --label key=value (only snapshots',
    'with that label), --keep-newest <n> (of the snapshots the label filter matches, never the newest n). Filters skip held',
    'snapshots (listed as skippedHeld). --dry-run shows what would be deleted and the bytes it would free, changing nothing.',
    'With exactly one name and no --dry-run, --json prints { name, freedBlocks, handedOverBlocks } as before.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> snapshot delete vol.img nightly-2026-11-01',
    '<%= config.bin %> snapshot delete vol.img a b c --dry-run',
    '<%= config.bin %> snapshot delete vol.img --older-than 14d --label kind=nightly',
    '<%= config.bin %> snapshot delete vol.img --label kind=nightly --keep-newest 7',
  ];
  static override strict = false;
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name (several may follow)' }),
  };
  static override flags = {
    'older-than': Flags.string({ description: 'delete the snapshots created longer ago than this (90s, 12h, 7d, 2w)', helpValue: '<duration>' }),
    label: Flags.string({ description: 'with a filter: only snapshots carrying this label key=value (repeatable: all must match)', helpValue: '<key=value>', multiple: true }),
    'keep-newest': Flags.integer({ description: 'with a filter: never delete the newest <n> snapshots the label filter matches', helpValue: '<n>', min: 0, max: Number.MAX_SAFE_INTEGER }),
    'dry-run': Flags.boolean({ description: 'show what would be deleted and the bytes it would free; change nothing' }),
    ...progressFlag,
  };

  async run(): Promise<DeleteResult | MultiDeleteJson> {
    const { args, argv, flags } = await this.parse(SnapshotDelete);
    const names = (argv as string[]).slice(1);
    const filtered = flags['older-than'] !== undefined || flags['keep-newest'] !== undefined || (flags.label ?? []).length > 0;
    if (names.length > 0 && filtered) throw new InvalidArgumentError('give snapshot names or filters (--older-than, --label, --keep-newest), not both');
    if (names.length === 0 && !filtered) throw new InvalidArgumentError('name the snapshots to delete, or choose them with --older-than / --keep-newest');
    if (filtered && flags['older-than'] === undefined && flags['keep-newest'] === undefined) {
      throw new InvalidArgumentError('--label only narrows a filter: add --older-than <duration> or --keep-newest <n>');
    }
    const olderThanMs = flags['older-than'] === undefined ? undefined : parseDuration(flags['older-than'], '--older-than');
    const labels = (flags.label ?? []).map(parseLabel);
    const progress = createProgress(flags.progress, 'delete', 'blocks');

    const single = names.length === 1 && !flags['dry-run'];
    try {
      // Both go to the server of a served volume (docs/FORMAT.md §11.2); a filter chooses in the core, frozen with the delete (Volume.deleteSelected).
      const json = filtered
        ? await this.deleteFiltered(
            args.volume,
            flags['dry-run'],
            { ...(olderThanMs === undefined ? {} : { olderThanMs }), labels, ...(flags['keep-newest'] === undefined ? {} : { keepNewest: flags['keep-newest'] }) },
            progress,
          )
        : await this.deleteNamed(args.volume, names, flags['dry-run'], progress);
      if (single) {
        const [r] = json.deleted;
        assert(r !== undefined, 'deleting one named snapshot reports it deleted');
        this.say(
          `deleted snapshot ${r.name}: ${r.freedBlocks} blocks freed, ${r.handedOverBlocks} handed over to the next older snapshot${r.unfinished ? ' (the rest finishes at the next open)' : ''}`,
        );
        return { name: r.name, freedBlocks: r.freedBlocks, handedOverBlocks: r.handedOverBlocks, ...(r.unfinished ? { unfinished: true } : {}) };
      }
      const verb = json.dryRun ? 'would delete' : 'deleted';
      const lines = json.deleted.map((d) => `${verb} ${d.name}: frees ${human(d.freedBytes)} (${d.freedBlocks} blocks), ${d.handedOverBlocks} blocks handed over`);
      lines.push(`${json.dryRun ? 'would free' : 'freed'} ${json.freedBytes} bytes (${human(json.freedBytes)}) in all${json.deleted.length === 0 ? ' (nothing matched)' : ''}`);
      if (json.skippedHeld.length > 0) lines.push(`skipped held: ${json.skippedHeld.join(', ')}`);
      this.say(lines.join('\n'));
      return json;
    } finally {
      progress.stop();
    }
  }

  /** Deletes (or plans the delete of) the snapshots named, through the server of a served volume (`snapshot.delete`, `snapshot.planDelete`). */
  private async deleteNamed(path: string, names: string[], dryRun: boolean | undefined, progress: Progress): Promise<MultiDeleteJson> {
    if (dryRun) return planJson(await this.withServedVolume(path, 'snapshot.planDelete', { names }, (v) => v.planDelete(names), modeOf(true)), []);
    const r = await this.withServedVolume(
      path,
      'snapshot.delete',
      { names },
      async (v) => ({ ...(await v.deleteSnapshots(names, { onProgress: (d, t) => progress.update(d, t) })), blockSizeBytes: v.blockSizeBytes }),
      modeOf(false),
    );
    return deleteJson(r, []);
  }

  /** Deletes (or plans the delete of) the snapshots a filter chooses, in the core (Volume.deleteSelected), through the server of a served volume (`snapshot.deleteSelected`, `snapshot.planDeleteSelected`). */
  private async deleteFiltered(path: string, dryRun: boolean | undefined, selection: DeleteSelection, progress: Progress): Promise<MultiDeleteJson> {
    if (dryRun) {
      const plan = await this.withServedVolume(path, 'snapshot.planDeleteSelected', { ...selection }, (v) => v.planDeleteSelected(selection), modeOf(true));
      return planJson(plan, plan.skippedHeld);
    }
    const r = await this.withServedVolume(
      path,
      'snapshot.deleteSelected',
      { ...selection },
      async (v) => ({ ...(await v.deleteSelected(selection, { onProgress: (d, t) => progress.update(d, t) })), blockSizeBytes: v.blockSizeBytes }),
      modeOf(false),
    );
    return deleteJson(r, r.skippedHeld);
  }
}

function modeOf(dryRun: boolean | undefined): OpenMode {
  return dryRun ? { readOnly: true } : { releaseReserve: true, changes: true };
}

function planJson(plan: DeletePlan, skippedHeld: string[]): MultiDeleteJson {
  return {
    dryRun: true,
    deleted: plan.snapshots.map(({ name, freedBlocks, freedBytes, handedOverBlocks }) => ({ name, freedBlocks, freedBytes, handedOverBlocks })),
    skippedHeld,
    freedBlocks: plan.freedBlocks,
    freedBytes: plan.freedBytes,
    handedOverBlocks: plan.handedOverBlocks,
  };
}

function deleteJson(r: MultiDeleteResult & { blockSizeBytes: number }, skippedHeld: string[]): MultiDeleteJson {
  return {
    dryRun: false,
    deleted: r.deleted.map((d) => ({
      name: d.name,
      freedBlocks: d.freedBlocks,
      freedBytes: d.freedBlocks * r.blockSizeBytes,
      handedOverBlocks: d.handedOverBlocks,
      ...(d.unfinished ? { unfinished: true } : {}),
    })),
    skippedHeld,
    freedBlocks: r.freedBlocks,
    freedBytes: r.freedBytes,
    handedOverBlocks: r.handedOverBlocks,
  };
}
