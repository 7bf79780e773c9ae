import { realpath, stat } from 'node:fs/promises';
import { Flags } from '@oclif/core';
import { Args } from '../args.js';
import { hasCode } from '@cowvol/base';
import { STREAM_START_BYTES, checkStreamStart, importStream, type ImportResult } from '@cowvol/cow-core';
import { CowvolCommand, type OpenMode } from '../base-command.js';
import { human } from '../format.js';
import { openInput, spoolInput, type SizedInput } from '../io.js';
import { createProgress, progressFlag } from '../progress.js';
import { askServer, isServed, VolumeServedError } from '../served.js';
import { noteCommitting } from '../signals.js';

/** A stream input is spooled whole before it is verified; one that does not start as a stream is refused at its first bytes (NOT_A_STREAM), not once it has filled $TMPDIR. */
const STREAM_SPOOL = { start: { startBytes: STREAM_START_BYTES, checkStart: checkStreamStart } };

export default class Import extends CowvolCommand {
  static override summary = 'Apply a cowvol stream (from snapshot export): a full stream creates a new volume, an incremental one applies onto its base';
  static override description = [
    'The whole stream is verified first (every checksum, order, trailer): a corrupt stream is refused (STREAM_CORRUPT, naming the',
    'record that failed) and the target is left exactly as it was (a full stream does not even create it). A full stream creates',
    '<volume> with the size and block size of its header. An incremental stream applies only onto a volume holding a snapshot of',
    "the stream's base (by identity) whose content the live volume still holds: nothing written since, or written and restored",
    '(else BASE_MISMATCH; a suspect base too). The import ends by creating the source',
    "snapshot's name on the target. An interrupted import is continued with --resume (the same stream); stdin is spooled to a",
    'temporary file first. On a served volume the server imports from that file (no progress is shown), refusing',
    '(EXPORT_IN_USE) while an NBD client is attached to live; interrupting the command does not stop it there.',
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
    const input = await openInput(flags.input, STREAM_SPOOL);
    const progress = createProgress(flags.progress, 'import');
    const options = { resume: flags.resume, verify: flags.verify, dryRun: flags['dry-run'] };
    let result: ImportResult;
    try {
      const offline = (mode: OpenMode): Promise<ImportResult> =>
        importStream(args.volume, input, {
          ...options,
          openVolume: (p) => this.openVolume(p, mode),
          onProgress: (p) => progress.update(p.doneBytes, p.totalBytes, p.phase),
          onCommitting: noteCommitting,
        });
      result = await importOnServer(args.volume, input, options, offline);
    } finally {
      progress.stop();
      await input.close();
    }
    const what = `${result.kind} stream of ${result.snapshot}`;
    if (result.dryRun) this.say(`${what}: verified (${result.extentCount} extents, ${human(result.totalBytes)}); it applies to ${result.volume}; nothing changed (--dry-run)`);
    else if (result.alreadyImported)
      this.say(`${result.volume} already holds snapshot ${result.snapshot} from this stream; ${result.verified ? 'read back and verified against it' : 'nothing to do'}`);
    else
      this.say(
        `imported ${what} into ${result.volume}${result.created ? ' (new volume)' : ''}: ${result.appliedExtents} extents, ${human(result.totalBytes)}` +
          (result.skippedExtents > 0 ? ` (resumed: ${result.skippedExtents} extents were already applied)` : '') +
          (result.verified ? '; read back and verified' : ''),
      );
    return result;
  }
}

/**
 * Runs an import offline, or, when `cowvol serve` serves the volume, on its
 * server (`volume.import`, docs/FORMAT.md §11.2): the server reads the
 * stream from the file the input is (its real path) or was spooled to
 * (stdin, a pipe, a block device) and applies it to the volume it holds
 * open, with `live` unexported meanwhile (EXPORT_IN_USE while a client is
 * attached to it); no progress comes back. Whether it is served is asked
 * first, so the stream is verified once, by whoever applies it. A server
 * that is stopping (VOLUME_BUSY) or gone (NOT_SERVED) ran nothing: the
 * import then runs offline (`--wait` honoured).
 * @throws what importStream throws; the server's error (the same code as offline)
 */
async function importOnServer(
  volumePath: string,
  input: SizedInput,
  options: { resume: boolean; verify: boolean; dryRun: boolean },
  offline: (mode: OpenMode) => Promise<ImportResult>,
): Promise<ImportResult> {
  if (!(await isServed(volumePath))) {
    try {
      return await offline({ routeServed: true });
    } catch (err) {
      // Served meanwhile: the stream was verified here; the server verifies it again.
      if (!(err instanceof VolumeServedError)) throw err;
    }
  }
  let spooled: SizedInput | undefined;
  try {
    let streamPath = await realpath(input.path);
    if (!input.spooled && !(await stat(streamPath)).isFile()) {
      // A block device: the server reads regular files only (docs/FORMAT.md §11.2).
      spooled = await spoolInput(streamPath, STREAM_SPOOL);
      streamPath = await realpath(spooled.path);
    }
    if (!options.dryRun) noteCommitting(); // the server imports, whatever becomes of this process
    const served = (await askServer(volumePath, 'volume.import', { streamPath, ...options })) as ImportResult;
    return { ...served, volume: volumePath };
  } catch (err) {
    if (!hasCode(err, 'VOLUME_BUSY', 'NOT_SERVED')) throw err;
    return await offline({});
  } finally {
    await spooled?.close();
  }
}
