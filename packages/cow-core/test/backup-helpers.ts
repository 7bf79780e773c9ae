import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { Level } from 'level';
import { FileBlockDevice, IoError, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { exportSnapshot, type ExportOptions, type StreamSource, type Volume } from '../src/index.js';

/** Small deterministic PRNG (mulberry32): a seed replays a run exactly. */
export { mulberry32 as prng } from './prng.js';

/** Positive integer from the environment, or the default. */
export function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

/** A stream held in memory, as a StreamSource. */
export function memorySource(buf: Buffer): StreamSource {
  return { lengthBytes: buf.length, read: async (o, l) => buf.subarray(o, Math.min(buf.length, o + l)) };
}

/** Exports a snapshot into one Buffer. */
export async function exportToBuffer(volume: Volume, name: string, options: ExportOptions = {}): Promise<Buffer> {
  const parts: Buffer[] = [];
  await exportSnapshot(volume, name, async (b) => void parts.push(Buffer.from(b)), options);
  return Buffer.concat(parts);
}

/**
 * Hash of a closed volume: the volume file, the store and journal files, and
 * LevelDB's logical content (LevelDB rewrites its own files on open).
 */
export async function fingerprint(volumePath: string): Promise<string> {
  const h = createHash('sha256');
  h.update(await readFile(volumePath));
  const sidecar = `${volumePath}.cowvol`;
  for (const f of ['store', 'journal']) h.update(await readFile(join(sidecar, f)));
  const db = new Level<string, Buffer>(join(sidecar, 'meta'), { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    for await (const [k, v] of db.iterator()) h.update(`${k}=${v.toString('hex')}\n`);
  } finally {
    await db.close();
  }
  return h.digest('hex');
}

/** Random bytes from a PRNG. */
export function randomBuffer(rnd: () => number, length: number): Buffer {
  const b = Buffer.alloc(length);
  let i = 0;
  for (; i + 4 <= length; i += 4) b.writeUInt32LE(Math.floor(rnd() * 2 ** 32), i);
  for (; i < length; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

/**
 * Counts reads and writes per file at the block-device seam and can fail the
 * n-th write of one file (an interrupted import).
 */
export class CountingOpener implements DeviceOpener {
  readonly reads = new Map<string, number>();
  readonly writes = new Map<string, number>();
  readonly writtenBytes = new Map<string, number>();
  /** Fail the write with this 1-based number of the file with this basename. */
  failWrite: { file: string; n: number } | undefined;

  async open(path: string, options: { create: boolean }): Promise<BlockDevice> {
    const inner = await FileBlockDevice.open(path, options);
    const file = basename(path);
    const bump = (m: Map<string, number>, by = 1): number => {
      const n = (m.get(file) ?? 0) + by;
      m.set(file, n);
      return n;
    };
    return {
      name: inner.name,
      read: (o, l) => {
        bump(this.reads);
        return inner.read(o, l);
      },
      readInto: (o, into) => {
        bump(this.reads);
        return inner.readInto(o, into);
      },
      write: async (o, d) => {
        const n = bump(this.writes);
        if (this.failWrite?.file === file && this.failWrite.n === n) throw new IoError(`injected failure of write ${n} of ${file}`);
        bump(this.writtenBytes, d.length);
        await inner.write(o, d);
      },
      sync: () => inner.sync(),
      truncate: (s) => inner.truncate(s),
      sizeBytes: () => inner.sizeBytes(),
      close: () => inner.close(),
    };
  }
}
