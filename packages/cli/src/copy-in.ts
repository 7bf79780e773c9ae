import { assert } from '@cowvol/base';
import { STREAM_CHUNK_BYTES, type SizedInput } from './input.js';

/**
 * Volume writes of `cowvol write` in flight at once: the engine runs them
 * side by side (each COWs, commits and lands on its own; their COW handles
 * join one group commit), while the next chunk of the input is read
 * (docs/ARCHITECTURE.md "packages/cli", docs/PERFORMANCE.md "The CLI write
 * path"). Bounds the memory of a copy to `(WRITES_IN_FLIGHT + 1) ×
 * STREAM_CHUNK_BYTES` of reused buffers.
 */
export const WRITES_IN_FLIGHT = 4;

/** Where `copyIn` writes: the live volume, offline or through its NBD server. */
export interface CopyTarget {
  /** Writes `data` at `offsetBytes`; `data` may be reused once the promise settles. */
  write(offsetBytes: number, data: Buffer): Promise<void>;
}

/**
 * Copies `lengthBytes` of `input` (from its start) to `target` at
 * `offsetBytes`, in chunks of `STREAM_CHUNK_BYTES` read in order, with up
 * to `WRITES_IN_FLIGHT` writes in flight. A chunk's buffer is reused only
 * after its write settled. The input is read in order and nothing past a
 * short read is read or written, so what was written is always the prefix
 * of the input up to the returned count — even when the input shrank while
 * being read. Resolves with the bytes read and written (fewer than
 * `lengthBytes` only when the input ended early) once every write has
 * settled; no write is in flight when it settles. Not durable: the caller
 * flushes.
 * @throws the input's IO_ERROR; the first error of a write (after every write in flight settled)
 */
export async function copyIn(input: SizedInput, target: CopyTarget, offsetBytes: number, lengthBytes: number, onProgress?: (doneBytes: number, totalBytes: number) => void): Promise<number> {
  const free: Buffer[] = [];
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  // Set by a write's rejection between two awaits (a plain read of `failure` would be narrowed away).
  const failed = (): boolean => failure !== undefined;
  let readBytes = 0;
  let writtenBytes = 0;
  try {
    while (readBytes < lengthBytes && !failed()) {
      if (inFlight.size >= WRITES_IN_FLIGHT) await Promise.race(inFlight);
      if (failed()) break;
      const buffer = free.pop() ?? Buffer.allocUnsafe(STREAM_CHUNK_BYTES);
      const wantBytes = Math.min(STREAM_CHUNK_BYTES, lengthBytes - readBytes);
      const gotBytes = await input.readInto(readBytes, buffer.subarray(0, wantBytes));
      assert(gotBytes >= 0 && gotBytes <= wantBytes, 'input read length');
      if (gotBytes === 0) break;
      const atBytes = readBytes;
      readBytes += gotBytes;
      const write: Promise<void> = target.write(offsetBytes + atBytes, buffer.subarray(0, gotBytes)).then(
        () => {
          free.push(buffer);
          writtenBytes += gotBytes;
          onProgress?.(writtenBytes, lengthBytes);
        },
        (error: unknown) => {
          failure ??= { error };
        },
      );
      const tracked: Promise<void> = write.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      if (gotBytes < wantBytes) break; // the input ended early: read nothing past it
    }
  } finally {
    // Also when the input failed: no write may outlive the copy (the volume is closed next).
    await Promise.all(inFlight);
  }
  if (failure !== undefined) throw failure.error;
  assert(writtenBytes === readBytes, 'every chunk read was written');
  return readBytes;
}
