import { CowvolError } from '@cowvol/base';
import { failedRangesError } from './failed-ranges.js';
import { type Handle } from '@cowvol/journal';
import { TARGET_VOLUME } from './layout.js';
import { WriteBackStage } from './write-back.js';
import { awaitCows, cowRange } from './cow.js';
import { endWhenSettled } from './pending-cow.js';
import type { VolumeContext } from './volume-context.js';

/**
 * The write path (docs/ARCHITECTURE.md §4.1): a write cut into pieces, each
 * piece COWed (cow.ts), then its overwrite written in place, held in the
 * write-back stage until its COW commits (data=ordered), or journaled
 * whole under block locks (data=journal).
 */

/** Chunks of one request processed in parallel. */
const CHUNKS_IN_FLIGHT = 4;

/**
 * Writes `data` at `offsetBytes` of the live volume in pieces of at most
 * `ctx.pieceBytes()` from the start of the write: in journal mode each
 * piece is one handle, so a write of up to pieceBytes is atomic whatever
 * its alignment; in both modes a piece's COW fits one handle.
 * @throws what {@link allChunks} throws
 */
export async function writePieces(ctx: VolumeContext, offsetBytes: number, data: Buffer): Promise<void> {
  const chunks: Array<{ offsetBytes: number; data: Buffer }> = [];
  const piece = ctx.pieceBytes();
  for (let pos = 0; pos < data.length; pos += piece) chunks.push({ offsetBytes: offsetBytes + pos, data: data.subarray(pos, Math.min(data.length, pos + piece)) });
  await allChunks(chunks, (c) => writeChunk(ctx, c.offsetBytes, c.data), 'write');
}

/**
 * Runs `fn` on every chunk with bounded parallelism and waits for all of
 * them, even after a failure (per-block completion, docs/ARCHITECTURE.md
 * §7.5). Throws the first failure's code with every failed byte range in
 * `details.failedRanges`.
 */
export async function allChunks<C extends { offsetBytes: number; data?: Buffer; lengthBytes?: number }>(chunks: C[], fn: (c: C) => Promise<void>, what: string): Promise<void> {
  const failures: Array<{ chunk: C; error: unknown }> = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let chunk = chunks[next++]; chunk !== undefined; chunk = chunks[next++]) {
      try {
        await fn(chunk);
      } catch (error) {
        failures.push({ chunk, error });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CHUNKS_IN_FLIGHT, chunks.length) }, worker));
  failures.sort((a, b) => a.chunk.offsetBytes - b.chunk.offsetBytes);
  const first = failures[0]?.error;
  if (failures.length === 0) return;
  // Not a CowvolError: a bug, rethrown as it is (INTERNAL at the CLI).
  if (!(first instanceof CowvolError)) throw first;
  const failedRanges = failures.map((f) => ({ offsetBytes: f.chunk.offsetBytes, lengthBytes: f.chunk.data?.length ?? f.chunk.lengthBytes ?? 0 }));
  throw failedRangesError(first, failedRanges, (ranges) => `${what} failed for byte ranges ${ranges} (the other ranges completed)`);
}

/** One piece: COW first, then the overwrite as the data mode and the write-back bound say. */
async function writeChunk(ctx: VolumeContext, offsetBytes: number, data: Buffer): Promise<void> {
  const bs = ctx.blockSizeBytes;
  const first = Math.floor(offsetBytes / bs);
  const last = Math.floor((offsetBytes + data.length - 1) / bs);
  const tickets = await cowRange(ctx, first, last);
  if (ctx.journaled) {
    await awaitCows(tickets);
    await writeJournaled(ctx, offsetBytes, data, first, last);
    return;
  }
  if (tickets.length > 0 && ctx.writeBack.maxBytes === 0) {
    // Write-through: the overwrite waits for the commit, errors come back
    // here. The stage is never used, so there is nothing to be admitted past.
    await awaitCows(tickets);
    await ctx.home.writeLive(offsetBytes, data);
    return;
  }
  if (tickets.length === 0) {
    // No COW needed: straight to the volume file (the file system does the
    // read-modify-write of partial blocks; a COW copies whole blocks) —
    // once an earlier acknowledged overwrite of these blocks still in the
    // stage has landed, so overwrites reach the volume in call order.
    // Admission starts the write in the same step as its overlap check (a
    // synchronous one, §4.14, has even ended there).
    await ctx.writeBack.admit(first, last, 0, () => ctx.home.writeLive(offsetBytes, data));
    return;
  }
  // data=ordered with a COW in flight: the overwrite may reach the volume
  // only once the mapping is committed (guarantee 3). Hold it in the
  // write-back stage and return; the commit overlaps the next writes.
  // Admission is atomic with the overlap check: two writes in flight that
  // share a block never both hold an entry for it (§3.3, admission).
  try {
    // The stage keeps its own copy of the bytes (§3.4); it ends the tickets' markers once the overwrite landed.
    await ctx.writeBack.admit(first, last, data.length, () => ctx.writeBack.add(offsetBytes, data, tickets));
  } catch (err) {
    // Not admitted (a violated invariant): the markers still end, once
    // their commits settle, so no waiter and no freeze hangs on them.
    endWhenSettled(tickets);
    throw err;
  }
}

/**
 * Journal mode: the chunk's blocks become full images (partial edges
 * read-modify-write, under block locks so two writers of one block cannot
 * lose each other's bytes) logged in one handle — atomic across a crash —
 * and committed before returning. The image reaches the volume file at
 * checkpoint; reads see it through the journal's image cache meanwhile.
 */
async function writeJournaled(ctx: VolumeContext, offsetBytes: number, data: Buffer, first: number, last: number): Promise<void> {
  const count = last - first + 1;
  const handle = await ctx.startHandle(count); // lock order: handle (log space) before block locks
  const unlock = await lockBlocks(ctx, first, last);
  try {
    await ctx.withBlockLocks(count, () => logImages(ctx, handle, offsetBytes, data, first, last));
  } catch (err) {
    handle.abandon();
    throw err;
  } finally {
    unlock();
  }
}

/** The full images of blocks [first, last] with `data` laid over, logged into `handle` and committed. */
async function logImages(ctx: VolumeContext, handle: Handle, offsetBytes: number, data: Buffer, first: number, last: number): Promise<void> {
  const bs = ctx.blockSizeBytes;
  const count = last - first + 1;
  const start = first * bs;
  const full = Buffer.alloc(count * bs);
  if (offsetBytes % bs !== 0) (await ctx.home.readLive(start, bs)).copy(full, 0);
  if ((offsetBytes + data.length) % bs !== 0 && (last !== first || offsetBytes % bs === 0)) (await ctx.home.readLive(last * bs, bs)).copy(full, (count - 1) * bs);
  data.copy(full, offsetBytes - start);
  for (let i = 0; i < count; i++) handle.logImage(TARGET_VOLUME, first + i, full.subarray(i * bs, (i + 1) * bs));
  await ctx.commitHandle(handle);
}

/** Locks blocks [first, last] in ascending order (journal-mode read-modify-write); resolves with the unlock. */
async function lockBlocks(ctx: VolumeContext, first: number, last: number): Promise<() => void> {
  const held = ctx.blockLocks;
  const mine: Array<() => void> = [];
  for (let b = first; b <= last; b++) {
    for (let other = held.get(b); other; other = held.get(b)) await other;
    let release: () => void = () => undefined;
    held.set(b, new Promise<void>((r) => (release = r)));
    mine.push(() => {
      held.delete(b);
      release();
    });
  }
  return () => {
    for (const unlock of mine) unlock();
  };
}

/**
 * What a reader of the live volume sees (docs/ARCHITECTURE.md §4.2): the
 * volume file overlaid with the write-back stage (acknowledged overwrites
 * still held back). The entries are picked before the file is read; an
 * entry landing in between holds the same bytes the file then has.
 */
export async function readCurrent(ctx: VolumeContext, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  if (lengthBytes === 0) return Buffer.alloc(0);
  const bs = ctx.blockSizeBytes;
  const entries = ctx.writeBack.overlapping(Math.floor(offsetBytes / bs), Math.floor((offsetBytes + lengthBytes - 1) / bs));
  // Pinned: an entry that lands during the read keeps its bytes until they are laid over (§3.4).
  ctx.writeBack.pin(entries);
  try {
    const data = await ctx.home.readLive(offsetBytes, lengthBytes);
    WriteBackStage.overlay(entries, offsetBytes, data);
    return data;
  } finally {
    ctx.writeBack.unpin(entries);
  }
}

/**
 * Bytes of one span of `Volume.writeZeroes` (32 MiB, NBD's largest WRITE
 * payload): one operation of the freeze gate, all in a snapshot or none.
 */
export const ZERO_SPAN_BYTES = 32 * 1024 * 1024;
/** Bytes of one piece of {@link zeroPieces}: read, compared, and written as zeros when not. */
export const ZERO_PIECE_BYTES = 1024 * 1024;
const ZERO_PIECE = Buffer.alloc(ZERO_PIECE_BYTES);

/**
 * Writes zeros over `lengthBytes` at `offsetBytes`, a piece of
 * {@link ZERO_PIECE_BYTES} at a time; a piece that reads as zeros already
 * is not written (no COW of a block that holds zeros). The caller holds one
 * entry of the freeze gate for the whole range (at most
 * {@link ZERO_SPAN_BYTES}), so a snapshot holds all of it or none
 * (docs/ARCHITECTURE.md §14.9).
 */
export async function zeroPieces(ctx: VolumeContext, offsetBytes: number, lengthBytes: number): Promise<void> {
  for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += ZERO_PIECE_BYTES) {
    const pieceBytes = Math.min(ZERO_PIECE_BYTES, offsetBytes + lengthBytes - at);
    const zeros = ZERO_PIECE.subarray(0, pieceBytes);
    const current = await readCurrent(ctx, at, pieceBytes);
    if (!current.equals(zeros)) await writePieces(ctx, at, zeros);
  }
}
