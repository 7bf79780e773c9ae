import { Args, Flags } from '@oclif/core';
import { importStream, type ImportResult } from '@cowvol/cow-core';
import { CowvolCommand } from '../base-command.js';
import { human } from '../format.js';
import { openInput } from '../io.js';
import { createProgress, progressFlag } from '../progress.js';
import { VolumeServedError } from '../served.js';

export default class Import extends CowvolCommand {
  static override summary = 'Apply a cowvol stream (from snapshot export): a full stream creates a new volume, an incremental one applies onto its base';
  static override description = [
    'The whole stream is verified first (every checksum, order, trailer): a corrupt stream is refused (STREAM_CORRUPT, naming the',
    'record that failed) and the target is left exactly as it was (a full stream does not even create it). A full stream creates',
    '<volume> with the size and block size of its header. An incremental stream applies only onto a volume whose newest snapshot',
    "is the stream's base (by identity) with nothing written since (else BASE_MISMATCH). The import ends by creating the source",
    "snapshot's name on the target. An interrupted import is continued with --resume (the same stream); stdin is spooled to a",
    'temporary file first.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> import restored.img --input monday.cvs',
    '<%= config.bin %> import restored.img --input tuesday.cvs --verify',
    '<%= config.bin %> import restored.img --input tuesday.cvs --resume',
  ];
  static override args = { volume: Args.string({ description: 'path of the target volume', required: true }) };
  static override flags = {
    input: Flags.string({ description: 'stream file, or - for stdin (default: stdin)', helpValue: '<file|->' }),
    resume: Flags.boolean({ description: 'continue an interrupted import of the same stream from what the target already holds' }),
    verify: Flags.boolean({ description: 'after applying, read the new snapshot back and compare it with the stream (VERIFY_FAILED on a difference)' }),
    'dry-run': Flags.boolean({ description: "verify the stream and the target's preconditions only; change nothing" }),
    ...progressFlag,
  };

  async run(): Promise<ImportResult> {
    const { args, flags } = await this.parse(Import);
    const input = await openInput(flags.input === undefined || flags.input === '-' ? undefined : flags.input);
    const progress = createProgress(flags.progress, 'import');
    let result: ImportResult;
    try {
      result = await importStream(args.volume, input, {
        resume: flags.resume,
        verify: flags.verify,
        dryRun: flags['dry-run'],
        // README "Serving a volume": an import onto a served volume is refused, the stream cannot go over the control channel.
        openVolume: (p) =>
          this.openVolume(p).catch((err: unknown) => {
            if (!(err instanceof VolumeServedError)) throw err;
            throw new VolumeServedError(err.path, err.pid, {
              cause: err,
              note: 'import applies a stream onto the volume the server holds open (it checks that nothing was written since the base, then writes it): stop the server first, then import',
            });
          }),
        onProgress: (p) => progress.update(p.doneBytes, p.totalBytes, p.phase),
      });
    } finally {
      progress.stop();
      await input.close();
    }
    const what = `${result.kind} stream of ${result.snapshot}`;
    if (result.dryRun) this.say(`${what}: verified (${result.extentCount} extents, ${human(result.totalBytes)}); it applies to ${result.volume}; nothing changed (--dry-run)`);
    else if (result.alreadyImported) this.say(`${result.volume} already holds snapshot ${result.snapshot} from this stream; nothing to do`);
    else
      this.say(
        `imported ${what} into ${result.volume}${result.created ? ' (new volume)' : ''}: ${result.appliedExtents} extents, ${human(result.totalBytes)}` +
          (result.skippedExtents > 0 ? ` (resumed: ${result.skippedExtents} extents were already applied)` : '') +
          (result.verified ? '; read back and verified' : ''),
      );
    return result;
  }
}
