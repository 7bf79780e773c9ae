import { stat } from 'node:fs/promises';
import { Flags } from '@oclif/core';
import { Args } from '../args.js';
import { hasCode, IoError } from '@cowvol/base';
import { ImportPendingError, OutOfRangeError, VolumeNotFoundError } from '@cowvol/cow-core';
import { CowvolCommand } from '../base-command.js';
import { parseSize } from '../size.js';
import { openInput } from '../io.js';
import { copyIn } from '../copy-in.js';
import { isErrnoError, osError } from '../os-errors.js';
import { createProgress, progressFlag } from '../progress.js';
import { LIVE_EXPORT_NAME, servedPendingImport, withVolumeData, type VolumeData } from '../served-nbd.js';

/** `OUT_OF_RANGE` for a stream input found longer than the room after --offset while it was spooled (its full length is unknown). */
class StreamTooLongError extends OutOfRangeError {
  constructor(offsetBytes: number, seenBytes: number, sizeBytes: number) {
    super(offsetBytes, seenBytes, sizeBytes);
    this.message = `the input is longer than the ${Math.max(0, sizeBytes - offsetBytes)} bytes from offset ${offsetBytes} to the end of the volume (${sizeBytes} bytes; stopped reading it after ${seenBytes} bytes); nothing was written`;
  }
}

export default class Write extends CowvolCommand {
  static override summary = 'Write bytes from a file (or stdin) into the live volume; durable when it exits';
  static override description = [
    'A regular file or a block device is read in place. A pipe, FIFO, process substitution <(...), /dev/stdin or a character device',
    'is read to its end first, into a temporary file under $TMPDIR (removed afterwards), so that an input too long for the volume',
    'is refused (OUT_OF_RANGE) before anything is written.',
    'Works on a served volume too: the bytes are then written through the NBD socket of its server, followed by a flush.',
  ].join('\n');
  static override examples = ['<%= config.bin %> write vol.img --input disk.img', 'echo hello | <%= config.bin %> write vol.img --offset 1M'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };
  static override flags = {
    offset: Flags.string({ description: 'byte offset to write at (bytes, or K/M/G/T suffix)', helpValue: '<size>' }),
    input: Flags.string({ description: 'file, device or FIFO to read from, or - for stdin (default: stdin)', helpValue: '<file|->' }),
    ...progressFlag,
  };

  async run(): Promise<{ offsetBytes: number; lengthBytes: number }> {
    const { args, flags } = await this.parse(Write);
    const offsetBytes = flags.offset === undefined ? 0 : parseSize(flags.offset, '--offset');
    // The volume file's size is the volume's size: it bounds how much of a stream is spooled.
    const volumeBytes = await stat(args.volume).then(
      (st) => st.size,
      (err: unknown) => {
        if (isErrnoError(err) && err.code === 'ENOENT') throw new VolumeNotFoundError(args.volume, { cause: err });
        throw isErrnoError(err) ? osError(err) : err;
      },
    );
    const input = await openInput(flags.input, {
      maxBytes: Math.max(0, volumeBytes - offsetBytes),
      tooLong: (seenBytes) => new StreamTooLongError(offsetBytes, seenBytes, volumeBytes),
    });
    const progress = createProgress(flags.progress, 'write');
    try {
      const lengthBytes = input.lengthBytes;
      const copy = async (volume: VolumeData): Promise<void> => {
        // Refuse before touching anything: the whole input must fit.
        if (offsetBytes + lengthBytes > volume.sizeBytes) throw new OutOfRangeError(offsetBytes, lengthBytes, volume.sizeBytes);
        // Several writes in flight while the next chunk is read (copy-in.ts); every write has settled when it returns.
        const pos = await copyIn(input, volume, offsetBytes, lengthBytes, (done, total) => progress.update(done, total));
        // Durable when the command returns, served or not (NBD_CMD_FLUSH on a served volume).
        await volume.flush();
        if (pos < lengthBytes) {
          throw new IoError(
            `the input ${input.path} ended after ${pos} of its ${lengthBytes} bytes (it shrank while being read): ${pos} bytes were written at offset ${offsetBytes}, the rest was not`,
            {
              details: { path: input.path, role: 'input', writtenBytes: pos, expectedBytes: lengthBytes, offsetBytes },
            },
          );
        }
      };
      await withVolumeData({
        waitMs: this.waitMs(),
        volumePath: args.volume,
        exportName: LIVE_EXPORT_NAME,
        // Write-through: copyIn keeps WRITES_IN_FLIGHT writes in flight, which overlaps the COW
        // commits as the write-back stage would, without its copy of every byte (docs/PERFORMANCE.md
        // "The CLI write path"). Durability is the same: everything is flushed before it returns.
        offline: (mode) => this.withVolume(args.volume, copy, { ...mode, writeBackBytes: 0 }),
        served: (data) =>
          copy(data).catch(async (err: unknown) => {
            // NBD carries an errno, not a reason: an EIO from a volume whose import is pending is that import's refusal.
            if (!hasCode(err, 'IO_ERROR')) throw err;
            const pending = await servedPendingImport(args.volume).catch(() => null);
            if (pending === null) throw err;
            throw new ImportPendingError(
              `an import into ${args.volume} (of snapshot ${pending.source.name}) is in progress or was interrupted; the server refuses writes until it is finished (the same import with --resume, or the same backup restore) or abandoned (cowvol snapshot restore)`,
              { details: { path: args.volume }, cause: err },
            );
          }),
      });
      this.say(`wrote ${lengthBytes} bytes at offset ${offsetBytes}`);
      return { offsetBytes, lengthBytes };
    } finally {
      progress.stop();
      await input.close();
    }
  }
}
