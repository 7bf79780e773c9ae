import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import { IoError } from '@cowvol/base';
import { InvalidArgumentError, SnapshotNotFoundError, exportSnapshot, type ExportResult, type ExportSource } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { human } from '../../format.js';
import { openAtomicFileSink, openStdoutSink } from '../../io.js';
import { STDIO_PATH } from '../../input.js';
import { protectedFilesOf } from '../../output-guard.js';
import { createProgress, progressFlag } from '../../progress.js';
import { snapshotExportName, withVolumeData } from '../../served-nbd.js';
import { servedExportSource } from '../../served-reports.js';

export default class SnapshotExport extends CowvolCommand {
  static override summary = 'Write a snapshot as a self-checking cowvol stream: full, or incremental since an older snapshot';
  static override description = [
    'The stream (docs/FORMAT.md, "Snapshot stream") has a header (volume size, block size, source and base snapshot identities),',
    'extents each with a CRC32C, and a trailer; every byte is covered by a checksum. A full stream holds every non-zero block;',
    'with --since <base>, only the blocks changed between <base> and <name> (cost proportional to them).',
    'Apply it with `cowvol import`. A file output is written under a temporary name and renamed when complete.',
  ].join('\n');
  static override examples = [
    '<%= config.bin %> snapshot export vol.img monday --output monday.cvs',
    '<%= config.bin %> snapshot export vol.img tuesday --since monday --output - | ssh backup cowvol import copy.img --input -',
  ];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot to export', required: true }),
  };
  static override flags = {
    since: Flags.string({ description: 'base snapshot (older than <name>): write an incremental stream of the blocks changed since it', helpValue: '<base>' }),
    output: Flags.string({ description: 'file to write, or - for stdout', helpValue: '<file|->', required: true }),
    ...progressFlag,
  };

  async run(): Promise<ExportResult & { output: string }> {
    const { args, flags } = await this.parse(SnapshotExport);
    if (flags.output === STDIO_PATH && this.jsonEnabled()) throw new InvalidArgumentError('--json needs --output <file>: with --output - stdout carries the stream');
    const progress = createProgress(flags.progress, 'export');
    const write = async (volume: ExportSource): Promise<ExportResult> => {
      // Check the names before creating the output.
      const names = new Set((await volume.listSnapshots()).map((s) => s.name));
      for (const n of [args.name, flags.since]) if (n !== undefined && !names.has(n)) throw new SnapshotNotFoundError(n);
      const options = { ...(flags.since ? { since: flags.since } : {}), onProgress: (d: number, t: number) => progress.update(d, t) };
      if (flags.output === STDIO_PATH) {
        const sink = openStdoutSink(await protectedFilesOf(args.volume));
        // A stream cut short is no backup: a reader that closes stdout early (EPIPE) fails the export (IO_ERROR, exit 7),
        // where a data command like `read` stops quietly (README "For scripts").
        // Bytes handed to stdout: an upper bound of what the reader got (Node and the pipe buffer some).
        let writtenBytes = 0;
        const cutShort = (): IoError =>
          new IoError(`the reader of stdout closed it before the end of the stream (at most ${writtenBytes} bytes of it reached the pipe): the stream is incomplete`, {
            details: { path: '-', role: 'output', writtenBytes },
          });
        try {
          const r = await exportSnapshot(
            volume,
            args.name,
            async (b) => {
              if (sink.closedByReader) throw cutShort();
              await sink.write(b);
              writtenBytes += b.length;
            },
            options,
          );
          await sink.drained();
          if (sink.closedByReader) throw cutShort();
          return r;
        } finally {
          await sink.close();
        }
      }
      const sink = await openAtomicFileSink(flags.output, await protectedFilesOf(args.volume));
      try {
        const r = await exportSnapshot(volume, args.name, (b) => sink.write(b), options);
        await sink.commit();
        return r;
      } catch (err) {
        await sink.abort();
        throw err;
      }
    };
    // Served: the same encoder, fed by the server (snapshot data through the NBD export snapshot/<name>, docs/ARCHITECTURE.md §14.10).
    const result = await withVolumeData({
      waitMs: this.waitMs(),
      volumePath: args.volume,
      exportName: snapshotExportName(args.name),
      offline: (mode) => this.withVolume(args.volume, write, { ...mode, readOnly: true }),
      unknownExport: () => new SnapshotNotFoundError(args.name),
      served: async (data) => write(await servedExportSource(args.volume, args.name, data)),
    }).finally(() => progress.stop());
    if (flags.output !== STDIO_PATH) {
      this.say(
        `exported ${result.kind} stream of ${result.name}${result.since ? ` since ${result.since}` : ''} to ${flags.output}: ` +
          `${result.extentCount} extents, ${human(result.totalBytes)} of volume data (${human(result.dataBytes)} carried), stream ${human(result.streamBytes)}`,
      );
    }
    return { ...result, output: flags.output };
  }
}
