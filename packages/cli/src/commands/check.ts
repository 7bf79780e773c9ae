import { Args, Flags } from '@oclif/core';
import type { CheckReport } from '@cowvol/cow-core';
import { CowvolCommand } from '../base-command.js';
import { table } from '../format.js';
import { createProgress, progressFlag } from '../progress.js';

/** Exit codes of `cowvol check`, in the style of `qemu-img check`. */
export const CHECK_EXIT = { clean: 0, corrupt: 2, leaks: 3 } as const;

export default class Check extends CowvolCommand {
  static override summary = 'Check a volume\'s metadata: leaks versus corruption (exit 0 clean, 2 corruption, 3 leaks only, 1 could not check)';
  static override description = [
    'Rebuilds from every snapshot map which store blocks are in use and compares them with the allocator and the snapshot catalog.',
    'Leaks (store blocks allocated but mapped by no snapshot) are harmless and freed by --repair.',
    'Corruption (a block mapped twice, mapped but free, a map beyond the store, a map of an unknown snapshot, owned-block counts that disagree, a journal not cleanly recovered) is reported, never guessed at.',
    'A volume file changed outside cowvol (VOLUME_MODIFIED_OUTSIDE) is corruption too: see `cowvol accept-changes`.',
  ].join('\n');
  static override examples = ['<%= config.bin %> check vol.img', '<%= config.bin %> check vol.img --repair --json'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };
  static override flags = {
    repair: Flags.boolean({ description: 'free leaked store blocks (only when no corruption was found)' }),
    ...progressFlag,
  };

  async run(): Promise<CheckReport> {
    const { args, flags } = await this.parse(Check);
    const progress = createProgress(flags.progress, 'check', 'blocks');
    const report = await this.withVolume(args.volume, (v) => v.check({ repair: flags.repair, onProgress: (d, t) => progress.update(d, t) })).finally(() => progress.stop());
    const status = report.status;
    if (!this.jsonEnabled()) {
      const lines = [
        `${args.volume}: ${report.status === 'clean' ? 'no errors found' : report.status === 'leaks' ? `${report.leakedBlocks} leaked store blocks` : `${report.corruptions.length} corruption(s) found`}`,
        `snapshots ${report.snapshots}, mapped blocks ${report.mappedBlocks}, store high-water ${report.storeHighWaterBlocks}, free ${report.freeBlocks}`,
      ];
      if (report.corruptions.length > 0) lines.push('', table(['KIND', 'PROBLEM'], report.corruptions.map((c) => [c.kind, c.message])));
      if (report.leaks.length > 0) lines.push('', `leaked extents: ${report.leaks.map((e) => `${e.startBlock}+${e.lengthBlocks}`).join(', ')}`);
      if (report.repairedBlocks > 0) lines.push(`repaired: freed ${report.repairedBlocks} leaked store blocks`);
      else if (report.status === 'leaks') lines.push('run with --repair to free them');
      this.say(lines.join('\n'));
    }
    process.exitCode = CHECK_EXIT[status];
    return report;
  }

  /**
   * A check that cannot complete exits 1 (qemu-img style), except a usage
   * error (2, as everywhere) and a volume that cannot even be opened because
   * its metadata is corrupt: that is corruption found (2).
   */
  protected override exitCodeOf(code: string): number {
    if (code === 'USAGE' || CORRUPTION_CODES.has(code)) return CHECK_EXIT.corrupt;
    return 1;
  }
}

/** Open failures that are corruption found: damaged metadata, and a volume file changed outside cowvol (its snapshots may read changed data). */
const CORRUPTION_CODES = new Set(['CORRUPT_METADATA', 'STORE_CORRUPT', 'JOURNAL_CORRUPT', 'VOLUME_MODIFIED_OUTSIDE']);
