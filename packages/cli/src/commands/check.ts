import { Flags } from '@oclif/core';
import { Args } from '../args.js';
import { CowvolError, hasCode, type ErrorCode } from '@cowvol/base';
import { escapeTerminalText, metadataDamageReport, repairVolumeJournal, type CheckReport, type VolumeJournalRepair } from '@cowvol/cow-core';
import { noteCommitting } from '../signals.js';
import { CowvolCommand } from '../base-command.js';
import { VolumeServedError } from '../served.js';
import { table } from '../format.js';
import { createProgress, progressFlag } from '../progress.js';

/**
 * Exit codes of `cowvol check`, in the style of `qemu-img check`;
 * `journalRepaired`: `--repair` discarded damaged journal transactions and
 * the volume is consistent now (README "check").
 */
export const CHECK_EXIT = { clean: 0, corrupt: 2, leaks: 3, journalRepaired: 4 } as const;

/** `check --json` output: the check report, plus what a journal repair did. */
export type CheckOutput = CheckReport & { journalRepair?: VolumeJournalRepair };

export default class Check extends CowvolCommand {
  static override summary = "Check a volume's metadata, and with --read-data its store data: leaks versus corruption (exit 0 clean, 2 corruption, 3 leaks only, 1 could not check)";
  static override description = [
    'Rebuilds from every snapshot map which store blocks are in use and compares them with the allocator and the snapshot catalog.',
    'Leaks (store blocks allocated but mapped by no snapshot) are harmless and freed by --repair.',
    'Corruption (a block mapped twice, mapped but free, a map beyond the store, a map of an unknown snapshot, owned-block counts that disagree, a journal not cleanly recovered, a LevelDB table or log block that fails its checksum) is reported, never guessed at.',
    'Without --read-data no store block is read: a damaged copy is found only when a read needs it. --read-data reads every mapped store block (the whole used store: as long as reading that much data) and checks it against its checksum, naming every snapshot that reads a damaged block.',
    'A volume file changed outside cowvol (VOLUME_MODIFIED_OUTSIDE) is corruption too: see `cowvol accept-changes`.',
  ].join('\n');
  static override examples = ['<%= config.bin %> check vol.img', '<%= config.bin %> check vol.img --repair --json', '<%= config.bin %> check vol.img --read-data'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };
  static override flags = {
    repair: Flags.boolean({ description: 'free leaked store blocks (only when no corruption was found); repair a damaged journal (replay what verifies, discard the rest)' }),
    'read-data': Flags.boolean({ description: 'also read every mapped store block and check it against its checksum (reads the whole used store)' }),
    ...progressFlag,
  };

  /**
   * `check --repair` offline: a read-only check first, and the repair only
   * when it found no metadata file failing its checksums (README "check").
   * A writable open lets LevelDB compact its tables, which copies a table
   * that fails its checksums into one with fresh ones: repairing first would
   * make the damage invisible to this check and every later one. The
   * read-only check reads a private copy of the metadata (docs/ARCHITECTURE.md
   * §4.10), which nothing compacts — except after a crash that left block
   * images to write home: a read-only open then recovers through a writable
   * one, as every read-only command does. With `--read-data` the data is
   * read once: by the repairing check, or, when the look found damage, by a
   * second read-only check. Served, one request: the server's LevelDB was
   * opened, and may have compacted, when it started.
   */
  private async checkBeforeRepair(volume: string, readData: boolean, onProgress: (d: number, t: number, phase?: string) => void): Promise<CheckReport> {
    // A repair changes the volume: a signal after it started is OUTCOME_UNKNOWN (exit 9), not "nothing was done".
    const repairing = (): Promise<CheckReport> =>
      this.withServedVolume(volume, 'check', { readData, repair: true }, (v) => v.check({ repair: true, readData, onProgress }), { changes: true, verifyMetadata: true });
    let looked: CheckReport;
    try {
      looked = await this.withVolume(volume, (v) => v.check({ readData: false, onProgress }), { readOnly: true, routeServed: true, verifyMetadata: true });
    } catch (err) {
      if (err instanceof VolumeServedError) return repairing();
      return damagedMetadata(err); // nothing is repaired over damaged tables
    }
    if (!looked.corruptions.some((c) => c.kind === 'metadata-checksum')) return repairing();
    return readData ? this.withVolume(volume, (v) => v.check({ readData: true, onProgress }), { readOnly: true, verifyMetadata: true }) : looked;
  }

  /** Whether the volume's journal fails to open (JOURNAL_CORRUPT) once a change made outside cowvol is held, not refused. */
  private async journalDamaged(volume: string): Promise<boolean> {
    try {
      await this.withVolume(volume, async () => undefined, { readOnly: true, outsideChanges: 'hold', verifyMetadata: true });
      return false;
    } catch (err) {
      return hasCode(err, 'JOURNAL_CORRUPT');
    }
  }

  async run(): Promise<CheckOutput> {
    const { args, flags } = await this.parse(Check);
    const progress = createProgress(flags.progress, 'check', 'blocks');
    const onProgress = (d: number, t: number, phase?: string): void => progress.update(d, t, phase);
    // Served: the server checks its open volume, frozen (docs/FORMAT.md §11.2, `check`); --repair frees leaks there
    // through its journal. Its journal was recovered when it opened the volume: a journal repair is offline only.
    const check = (): Promise<CheckReport> =>
      flags.repair
        ? this.checkBeforeRepair(args.volume, flags['read-data'], onProgress)
        : this.withServedVolume(args.volume, 'check', { readData: flags['read-data'], repair: false }, (v) => v.check({ readData: flags['read-data'], onProgress }), {
            readOnly: true,
            verifyMetadata: true,
          });
    let journalRepair: VolumeJournalRepair | undefined;
    const report: CheckOutput = await check()
      .catch(damagedMetadata)
      .catch(async (err: unknown) => {
        // Changed outside cowvol, and perhaps a damaged journal behind it, which accept-changes cannot open past: the
        // journal is repaired first (its report on stderr), then the refusal stands and accept-changes takes the file.
        if (flags.repair && hasCode(err, 'VOLUME_MODIFIED_OUTSIDE') && (await this.journalDamaged(args.volume))) {
          noteCommitting();
          const repaired = await repairVolumeJournal(args.volume);
          process.stderr.write(`${journalRepairLines(repaired).join('\n')}\n`);
        }
        throw err;
      })
      .catch(async (err: unknown) => {
        // A journal that no longer verifies: with --repair, replay what verifies, discard the rest, check again.
        if (!flags.repair || !hasCode(err, 'JOURNAL_CORRUPT')) throw err;
        noteCommitting(); // the journal repair writes from here on (README "Interrupting a command")
        journalRepair = await repairVolumeJournal(args.volume);
        return check();
      })
      .finally(() => progress.stop());
    if (journalRepair) report.journalRepair = journalRepair;
    const status = report.status;
    if (!this.jsonEnabled()) {
      const lines = [
        ...(journalRepair ? journalRepairLines(journalRepair) : []),
        `${args.volume}: ${report.status === 'clean' ? 'no errors found' : report.status === 'leaks' ? `${report.leakedBlocks} leaked store blocks` : `${report.corruptions.length} corruption(s) found`}`,
        `snapshots ${report.snapshots}, mapped blocks ${report.mappedBlocks}, store high-water ${report.storeHighWaterBlocks}, free ${report.freeBlocks}`,
      ];
      if (report.dataChecked)
        lines.push(
          `store data: ${report.damagedBlocks === 0 ? 'every mapped block verified' : `${report.damagedBlocks} damaged block(s); snapshots affected: ${report.affectedSnapshots.join(', ') || '(none listed)'}`}`,
        );
      if (report.corruptions.length > 0)
        lines.push(
          '',
          table(
            ['KIND', 'PROBLEM'],
            report.corruptions.map((c) => [c.kind, c.message]),
          ),
        );
      if (report.leaks.length > 0) lines.push('', `leaked extents: ${report.leaks.map((e) => `${e.startBlock}+${e.lengthBlocks}`).join(', ')}`);
      if (report.repairedCounts > 0) lines.push(`repaired: recounted the shared blocks of ${report.repairedCounts} snapshots`);
      if (report.repairedIndexKeys > 0) lines.push(`repaired: rewrote ${report.repairedIndexKeys} keys of the catalog index`);
      if (report.repairedBlocks > 0) lines.push(`repaired: freed ${report.repairedBlocks} leaked store blocks`);
      else if (report.status === 'leaks') lines.push('run with --repair to free them');
      this.say(lines.join('\n'));
    }
    // Repaired journal and nothing left to report: its own code, so a script knows transactions were discarded.
    // Lost block images (journal data mode) are damage the repair cannot undo: corruption.
    if (journalRepair?.imagesMayBeLost) process.exitCode = CHECK_EXIT.corrupt;
    else process.exitCode = journalRepair && status !== 'corrupt' && (status === 'clean' || report.repairedBlocks > 0) ? CHECK_EXIT.journalRepaired : CHECK_EXIT[status];
    return report;
  }

  /**
   * A check that cannot complete exits 1 (qemu-img style), except a usage
   * error (2, as everywhere) and a volume that cannot even be opened because
   * its metadata is corrupt: that is corruption found (2).
   */
  protected override exitCodeOf(code: ErrorCode): number {
    if (code === 'USAGE' || CORRUPTION_CODES.has(code)) return CHECK_EXIT.corrupt;
    return 1;
  }
}

/** Open failures that are corruption found: damaged metadata, and a volume file changed outside cowvol (its snapshots may read changed data). */
const CORRUPTION_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['CORRUPT_METADATA', 'STORE_CORRUPT', 'JOURNAL_CORRUPT', 'VOLUME_MODIFIED_OUTSIDE']);

/** What a journal repair did, for people. */
function journalRepairLines(r: VolumeJournalRepair): string[] {
  const lines = [
    r.superblockDamaged
      ? `journal repaired: its superblock was unreadable (${r.superblockError ?? 'no reason recorded'}); the log was discarded unread`
      : `journal repaired: replayed ${r.replayedTransactions} transaction(s) up to ${r.lastReplayedSequence}; the log stopped at the next one (${r.stopReason})`,
  ];
  if (r.discarded.length === 0) lines.push('discarded: nothing found beyond the damage');
  else {
    lines.push(`discarded ${r.discarded.length} transaction(s): ${r.discarded.map((d) => d.sequence).join(', ')}`);
    const kept = r.discarded.filter((d) => d.inMetadata).length;
    if (kept > 0) lines.push(`  ${kept} of them had been applied to the metadata, which keeps their changes`);
    if (r.imagesMayBeLost)
      lines.push(
        '  journal data mode: their block images (live writes, COW copies) never reached the volume and store files; data they held is lost (snapshot reads of such copies fail with STORE_CORRUPT)',
      );
    const images = r.discarded.flatMap((d) => d.images.map((i) => `${d.sequence}:${i.target === 0 ? 'volume' : 'store'}#${i.homeBlock}`));
    if (images.length > 0) lines.push(`  block images discarded (transaction:file#block): ${images.slice(0, 32).join(', ')}${images.length > 32 ? `, … (${images.length} in all)` : ''}`);
  }
  lines.push(`the journal was reset (next transaction ${r.newTailSequence})`, '');
  return lines;
}

/**
 * The report of a check whose metadata files failed their checksums before
 * LevelDB opened them (`verifyMetadata`: CORRUPT_METADATA with
 * `details.problems`): `metadata-checksum` findings, exit 2, and the error
 * on stderr as for a sidecar too damaged to open (it is: nothing else was
 * read). Any other error is thrown again.
 */
function damagedMetadata(err: unknown): CheckReport {
  const problems = err instanceof CowvolError && err.code === 'CORRUPT_METADATA' ? (err.details as { problems?: unknown } | undefined)?.problems : undefined;
  if (!Array.isArray(problems) || !problems.every((p) => typeof p === 'string')) throw err;
  process.stderr.write(`cowvol: error [CORRUPT_METADATA]: ${escapeTerminalText((err as Error).message)}\n`);
  return metadataDamageReport(problems);
}
