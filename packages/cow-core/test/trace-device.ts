import { basename } from 'node:path';
import { FileBlockDevice, IoError, NoSpaceError, type BlockDevice, type DeviceOpener } from '@cowvol/base';

/** One I/O as seen at the block-device seam. */
export interface TraceEntry {
  file: string;
  op: 'write' | 'sync' | 'truncate';
  offsetBytes: number;
  lengthBytes: number;
}

/**
 * Records every write/sync/truncate at the block-device seam (file names are
 * basenames: `vol.img`, `store`, `journal`), and can fail chosen I/Os — the
 * same seam production uses over node:fs.
 */
export class TraceOpener implements DeviceOpener {
  readonly trace: TraceEntry[] = [];
  /** When it returns an error for an I/O, that I/O fails with it instead of running. */
  failWhen: ((entry: TraceEntry) => Error | undefined) | undefined;

  async open(path: string, options: { create: boolean }): Promise<BlockDevice> {
    const inner = await FileBlockDevice.open(path, options);
    const file = basename(path);
    const seen = (entry: TraceEntry): void => {
      const err = this.failWhen?.(entry);
      if (err) throw err;
      this.trace.push(entry);
    };
    return {
      name: inner.name,
      read: (o, l) => inner.read(o, l),
      readInto: (o, into) => inner.readInto(o, into),
      write: async (o, d) => {
        seen({ file, op: 'write', offsetBytes: o, lengthBytes: d.length });
        await inner.write(o, d);
      },
      sync: async () => {
        seen({ file, op: 'sync', offsetBytes: 0, lengthBytes: 0 });
        await inner.sync();
      },
      truncate: async (s) => {
        seen({ file, op: 'truncate', offsetBytes: s, lengthBytes: 0 });
        await inner.truncate(s);
      },
      sizeBytes: () => inner.sizeBytes(),
      close: () => inner.close(),
    };
  }
}

export const ioError = (what: string): IoError => new IoError(`injected failure: ${what}`);
export const noSpace = (what: string): NoSpaceError => new NoSpaceError(`injected ENOSPC: ${what}`);
