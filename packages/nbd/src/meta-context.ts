import { assert } from '@cowvol/base';
import type { BlockExport } from './block-export.js';
import { BASE_ALLOCATION, BASE_ALLOCATION_ID, NBD_STATE_DIRTY } from './constants.js';
import type { Extent } from './replies.js';

/**
 * Metadata contexts (NBD spec "Metadata querying"; docs/ARCHITECTURE.md
 * §14.9, docs/FORMAT.md §10): `base:allocation` and, on an export that
 * tracks changes, `qemu:dirty-bitmap:<snapshot>` per snapshot (qemu
 * docs/interop/nbd.rst: bit 0 set = the block was written since the
 * snapshot was taken).
 */

/** Namespace of the dirty bitmaps: `qemu:dirty-bitmap:<snapshot name>`. */
export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
/**
 * Most extent descriptors in one BLOCK_STATUS chunk: 128 Ki descriptors of
 * 8 bytes, 1 MiB per chunk. A reply that would need more ends early and the
 * client asks again from where it ended (the spec allows fewer extents than
 * the range).
 */
export const MAX_STATUS_EXTENTS = 128 * 1024;

/**
 * Extent descriptors one BLOCK_STATUS *reply* carries at most, across all
 * its contexts: each of n selected contexts gets `floor(this / n)` (at
 * least 1; {@link statusExtentsPerContext}). A client that selected every
 * dirty bitmap of a volume with many snapshots asks for no more work and
 * memory per request than one with one bitmap — the reply is shorter, and
 * it asks again from where it ended.
 */
export const STATUS_REPLY_EXTENTS = MAX_STATUS_EXTENTS;

/** Descriptors each context of a reply with `contexts` contexts may carry: at least 1, at most {@link MAX_STATUS_EXTENTS}. */
export function statusExtentsPerContext(contexts: number): number {
  assert(Number.isSafeInteger(contexts) && contexts >= 1, 'a BLOCK_STATUS reply has a context');
  return Math.max(1, Math.min(MAX_STATUS_EXTENTS, Math.floor(STATUS_REPLY_EXTENTS / contexts)));
}

/**
 * Bytes a BLOCK_STATUS reply with `contexts` contexts can take at most:
 * per context a chunk header (20 bytes), its context id (4) and its
 * descriptors (8 each). What the connection charges against its in-flight
 * bytes while the request runs (connection.ts), as it charges a READ its
 * length.
 */
export function statusReplyBytes(contexts: number): number {
  return contexts * (STATUS_CHUNK_OVERHEAD_BYTES + 8 * statusExtentsPerContext(contexts));
}

/** Chunk header and context id of one BLOCK_STATUS chunk (docs/FORMAT.md §10.4). */
const STATUS_CHUNK_OVERHEAD_BYTES = 24;

/** A selected context: the id it carries in BLOCK_STATUS chunks, and what it reports. */
export type MetaContext = { id: number; name: string; kind: 'allocation' } | { id: number; name: string; kind: 'dirty'; snapshot: string };

/**
 * The contexts `queries` name on `found` (NBD_OPT_LIST_META_CONTEXT when
 * `listing`, else NBD_OPT_SET_META_CONTEXT). LIST: no query lists every
 * context, `base:` lists `base:allocation`, `qemu:` or `qemu:dirty-bitmap:`
 * lists every bitmap; SET selects exact names only, and a name that is not
 * there (an unknown snapshot) selects nothing. `base:allocation` keeps
 * BASE_ALLOCATION_ID; bitmaps are numbered from BASE_ALLOCATION_ID + 1 in the
 * order selected (ids are per connection). LIST replies carry id 0 for bitmaps.
 */
export async function matchContexts(found: BlockExport, queries: readonly string[], listing: boolean): Promise<MetaContext[]> {
  const snapshots = found.dirtyBitmaps ? await found.dirtyBitmaps() : [];
  const everything = listing && queries.length === 0;
  const out: MetaContext[] = [];
  const wantsAllocation = everything || queries.some((q) => q === BASE_ALLOCATION || (listing && q === 'base:'));
  if (wantsAllocation) out.push({ id: BASE_ALLOCATION_ID, name: BASE_ALLOCATION, kind: 'allocation' });
  const wantsEveryBitmap = everything || (listing && queries.some((q) => q === 'qemu:' || q === DIRTY_BITMAP_PREFIX));
  const seen = new Set<string>();
  let nextId = BASE_ALLOCATION_ID + 1;
  for (const snapshot of snapshots) {
    const name = DIRTY_BITMAP_PREFIX + snapshot;
    if (!wantsEveryBitmap && !queries.includes(name)) continue;
    if (seen.has(name)) continue;
    seen.add(name);
    out.push({ id: listing ? 0 : nextId++, name, kind: 'dirty', snapshot });
  }
  return out;
}

/**
 * Dirty-bitmap extents of [offsetBytes, offsetBytes + lengthBytes) from
 * `changed` (sorted, non-overlapping byte ranges written since the
 * snapshot): alternating clean (flags 0) and dirty (NBD_STATE_DIRTY) runs
 * covering the range from its first byte, none of zero length, at most
 * `maxExtents` of them (the last may then end before the range does).
 */
export function dirtyExtents(changed: ReadonlyArray<{ offsetBytes: number; lengthBytes: number }>, offsetBytes: number, lengthBytes: number, maxExtents = MAX_STATUS_EXTENTS): Extent[] {
  const endBytes = offsetBytes + lengthBytes;
  const out: Extent[] = [];
  let at = offsetBytes;
  const push = (toBytes: number, flags: number): void => {
    if (toBytes <= at) return;
    const last = out[out.length - 1];
    if (last?.flags === flags) last.lengthBytes += toBytes - at;
    else out.push({ lengthBytes: toBytes - at, flags });
    at = toBytes;
  };
  for (const c of firstOverlapping(changed, offsetBytes)) {
    if (at >= endBytes || out.length >= maxExtents) break;
    if (c.offsetBytes >= endBytes) break;
    push(Math.min(c.offsetBytes, endBytes), 0);
    if (out.length >= maxExtents && at < endBytes) break;
    push(Math.min(c.offsetBytes + c.lengthBytes, endBytes), NBD_STATE_DIRTY);
  }
  if (out.length < maxExtents) push(endBytes, 0);
  return out.length > maxExtents ? out.slice(0, maxExtents) : out;
}

/** The ranges of `changed` from the first that ends after `offsetBytes` (binary search). */
function* firstOverlapping<T extends { offsetBytes: number; lengthBytes: number }>(changed: readonly T[], offsetBytes: number): Generator<T> {
  let lo = 0;
  let hi = changed.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const c = changed[mid]!;
    if (c.offsetBytes + c.lengthBytes <= offsetBytes) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < changed.length; i++) yield changed[i]!;
}
