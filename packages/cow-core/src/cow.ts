import { assert } from '@cowvol/base';
import { performance } from 'node:perf_hooks';
import { type Handle } from '@cowvol/journal';
import { TARGET_STORE } from './layout.js';
import type { SnapshotRecord } from './metadata.js';
import type { Extent } from './allocator.js';
import type { SnapshotMap } from './snapshot-map.js';
import { maxMapRunBlocks, type MetaRecord } from './meta-record.js';
import { storeBlockCrc } from './store-crc.js';
import { endWhenSettled, type CowTicket } from './pending-cow.js';
import type { VolumeContext } from './volume-context.js';
import { addShared, countMapped, olderNeighbour, sharedRecord } from './space-accounting.js';

/**
 * The COW (Next3's copy-on-write into the active snapshot, with pending-COW
 * markers; docs/ARCHITECTURE.md §7.2): makes sure every block a write is
 * about to overwrite has its old content copied into the active snapshot,
 * or is being copied by this task, before the overwrite may reach the
 * volume file.
 */

/** One batch of blocks this task copies: claimed, reserved, copied, logged in one handle. */
interface CowBatch {
  readonly active: SnapshotRecord;
  readonly map: SnapshotMap;
  readonly blocks: number[];
  readonly storeBlocks: number[];
  readonly crcs: number[];
  /** How many of `blocks` the active snapshot's older neighbour maps (its shared count grows by that, space-accounting.ts). */
  sharedBlocks: number;
}

/**
 * Makes sure every block in [first, last] is copied, or being copied by
 * this task, into the active snapshot (pending-COW protocol). Blocks
 * nobody is copying are claimed by this task (it is their COWing task:
 * copied to the store, mapping handed to the journal); blocks another task
 * is copying are waited for; then everything is re-checked, because a
 * cancelled COW leaves its blocks uncopied and someone must retry.
 *
 * Resolves with one ticket per COW batch this task started: each ticket's
 * `published` settles when the mapping is committed and published, and
 * its `end()` must be called afterwards (it ends the pending markers).
 * On failure, tickets already started end by themselves once settled.
 * @throws IO_ERROR, NO_SPACE, JOURNAL_ABORTED (a COW that could not be made)
 */
export async function cowRange(ctx: VolumeContext, first: number, last: number): Promise<CowTicket[]> {
  const tickets: CowTicket[] = [];
  const claimed = new Set<number>();
  try {
    for (;;) {
      const chain = ctx.cowChain();
      if (!chain) return tickets;
      const maps = await ctx.maps.chain(chain, first, last);
      const isCopied = (b: number): boolean => maps.some((m) => m.has(b));
      const mine: number[] = [];
      const waits: Array<Promise<void>> = [];
      for (let b = first; b <= last; b++) {
        if (isCopied(b) || claimed.has(b)) continue;
        const p = ctx.pending.get(b);
        if (p) waits.push(p.done);
        else mine.push(b);
      }
      if (mine.length === 0 && waits.length === 0) return tickets;
      if (mine.length > 0) {
        const [active] = chain;
        const [activeMap] = maps;
        assert(active !== undefined && activeMap !== undefined, 'a COW chain starts with the active snapshot');
        const ticket = await cowBlocks(ctx, active, activeMap, mine, isCopied);
        if (ticket) {
          tickets.push(ticket);
          for (const b of ticket.blocks) claimed.add(b);
        }
      }
      // Waiting while holding claims cannot deadlock: a claim ends when
      // its commit settles and its overwrite lands, never on a waiter.
      if (waits.length > 0) await waitForOthers(ctx, waits);
    }
  } catch (err) {
    endWhenSettled(tickets);
    throw err;
  }
}

async function waitForOthers(ctx: VolumeContext, waits: Array<Promise<void>>): Promise<void> {
  const started = performance.now();
  ctx.stats.pendingWaits += waits.length;
  await Promise.all(waits);
  ctx.stats.maxPendingWaitMs = Math.max(ctx.stats.maxPendingWaitMs, performance.now() - started);
}

/** Waits for COW tickets to commit and publish, then ends their pending markers (no write-back: journal mode, write-through). */
export async function awaitCows(tickets: CowTicket[]): Promise<void> {
  try {
    await Promise.all(tickets.map((t) => t.published));
  } finally {
    for (const t of tickets) t.end();
  }
}

/**
 * This task is the COWing task for `candidates`: claims them (pending
 * markers), reserves store blocks, copies the old content to the store
 * and logs the mappings in one handle, whose commit is requested — or
 * cancels on failure. Returns undefined when another task got there
 * first. The returned ticket's `published` settles once the commit is
 * durable (the journal syncs the store first: ordered data) and the
 * mappings are published ({@link publishCow}); a failed commit cancels the
 * reservation. The caller calls `end()` once its overwrite landed.
 */
async function cowBlocks(ctx: VolumeContext, active: SnapshotRecord, map: SnapshotMap, candidates: number[], isCopied: (b: number) => boolean): Promise<CowTicket | undefined> {
  // Lock order: the handle (log space, may wait for a checkpoint) before any block lock.
  const handle = await ctx.startHandle(ctx.journaled ? 2 * candidates.length : candidates.length);
  // Re-check after the wait: another task may have claimed or copied some blocks meanwhile.
  const blocks = candidates.filter((b) => !isCopied(b) && !ctx.pending.has(b));
  if (blocks.length === 0) {
    handle.abandon();
    return undefined;
  }
  const end = ctx.pending.claim(blocks);
  const batch: CowBatch = { active, map, blocks, storeBlocks: [], crcs: new Array<number>(blocks.length), sharedBlocks: 0 };
  let extents: Extent[] = [];
  const cancel = (): void => {
    // The reservation was never committed; give it back. Waiters retry.
    for (const e of extents) ctx.allocator.free(e);
    extents = [];
    ctx.stats.cancelledCows += blocks.length;
  };
  try {
    await ctx.withBlockLocks(blocks.length, async () => {
      extents = ctx.allocator.allocate(blocks.length);
      for (const e of extents) for (let i = 0; i < e.lengthBlocks; i++) batch.storeBlocks.push(e.startBlock + i);
      assert(batch.storeBlocks.length === blocks.length, 'allocator returned the wrong number of blocks');
      await copyRuns(ctx, batch, handle);
      // The older neighbour changes only in a frozen delete step: stable until this commit (docs/ARCHITECTURE.md §15.3).
      const older = olderNeighbour(ctx, active);
      batch.sharedBlocks = older && older.ownedBlocks > 0 ? await countMapped(ctx, older.id, blocks) : 0;
      for (const r of sharedRecord(active.id, batch.sharedBlocks)) handle.log(r);
      // Ordered data: the journal syncs the store before it writes the commit
      // block (one sync for every COW in the same group commit).
      if (!ctx.journaled) handle.orderedData(ctx.parts.store.device);
    });
  } catch (err) {
    handle.abandon();
    cancel();
    end();
    throw err;
  }
  const published = ctx.commitHandle(handle).then(
    () => publishCow(ctx, batch),
    (err: unknown) => {
      cancel();
      throw err;
    },
  );
  // Nobody may be left with an unobserved rejection; callers await `published` themselves.
  published.catch(() => undefined);
  return { blocks, published, end };
}

/**
 * Copies the batch's blocks to their store blocks and logs their mappings.
 * One pass over the runs consecutive both in the volume and in the store:
 * each run is copied with one read and one write, and mapped by one `mapx`
 * record (a lone block: one `map`). A run is bounded so its record fits one
 * journal block (a sequential first write: about one run per piece). In
 * journal mode the copy travels in the same transaction as its mapping.
 */
async function copyRuns(ctx: VolumeContext, batch: CowBatch, handle: Handle): Promise<void> {
  const bs = ctx.blockSizeBytes;
  const { active, blocks, storeBlocks, crcs } = batch;
  const maxRun = maxMapRunBlocks(bs);
  const at = (list: number[], k: number): number => list[k]!;
  for (let i = 0; i < blocks.length;) {
    let j = i + 1;
    while (j < blocks.length && j - i < maxRun && at(blocks, j) === at(blocks, j - 1) + 1 && at(storeBlocks, j) === at(storeBlocks, j - 1) + 1) j++;
    // The old content passes through a pooled buffer (§3.4): nothing keeps
    // it once the store write has settled (logImage takes its own copy).
    const data = ctx.buffers.take((j - i) * bs);
    let written: Promise<void> | undefined;
    try {
      await ctx.home.readLiveInto(at(blocks, i) * bs, data);
      // Ordered mode: the store write runs (in the thread pool) while the
      // checksums are computed here; both only read `data`, and the write is
      // awaited before this COW goes on, so its failure is this write's.
      // (Should a checksum throw, `finally` still awaits the write in this same turn: never unhandled.)
      written = ctx.journaled ? undefined : ctx.parts.store.write(at(storeBlocks, i), data);
      const copyOf = (k: number): Buffer => data.subarray((k - i) * bs, (k - i + 1) * bs);
      for (let k = i; k < j; k++) crcs[k] = storeBlockCrc({ snapshotId: active.id, volumeBlock: at(blocks, k), storeBlock: at(storeBlocks, k) }, copyOf(k));
      if (written !== undefined) await written;
      // Journal mode: atomic with its mapping, no separate store sync.
      else for (let k = i; k < j; k++) handle.logImage(TARGET_STORE, at(storeBlocks, k) + 1, copyOf(k));
    } finally {
      await written?.catch(() => undefined); // a buffer goes back only once no write reads it
      ctx.buffers.give(data);
    }
    if (j - i === 1) handle.log({ o: 'map', id: active.id, b: at(blocks, i), p: at(storeBlocks, i), crc: at(crcs, i) } satisfies MetaRecord);
    else {
      const run = Buffer.allocUnsafe(4 * (j - i));
      for (let k = i; k < j; k++) run.writeUInt32LE(at(crcs, k), 4 * (k - i));
      handle.log({ o: 'mapx', id: active.id, b: at(blocks, i), p: at(storeBlocks, i), crcs: run } satisfies MetaRecord);
    }
    i = j;
  }
}

/**
 * The one place a committed COW becomes visible (docs/ARCHITECTURE.md
 * §7.2, "Publication"): the batch's mappings enter the live view (the
 * active snapshot's map, its owned count), which every writer and snapshot
 * reader consults. Runs once the commit is durable and applied to the
 * committed state (guarantee 2: never before its data).
 */
function publishCow(ctx: VolumeContext, batch: CowBatch): void {
  const { blocks, storeBlocks, crcs } = batch;
  for (let k = 0; k < blocks.length; k++) batch.map.set(blocks[k]!, storeBlocks[k]!, crcs[k]!);
  batch.active.ownedBlocks += blocks.length;
  addShared(batch.active, batch.sharedBlocks);
  ctx.stats.cows += blocks.length;
  ctx.stats.cowBatches += 1;
}
