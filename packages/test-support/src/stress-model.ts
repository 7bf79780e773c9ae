import { assert } from '@cowvol/base';

/**
 * The content model of the stress runner (docs/ARCHITECTURE.md §7.9).
 *
 * The volume is cut into units of `UNIT_BYTES` (64 bytes: eight to a
 * 512-byte sector, so a unit never straddles a sector). Every write covers
 * whole units and fills each with one 32-bit tag repeated, unique to the
 * write. A unit's history lists the writes that covered it with their start
 * and end on a logical clock. What a read may see in a unit follows the
 * rule a disk with several requests in flight obeys:
 *
 * - the value of a write that started before the read ended, and
 * - that was not superseded before the read began: no other write of the
 *   unit started after it ended and itself ended before the read began.
 *
 * The initial content (zeros) is write 0, ended at time 0. Writes that
 * overlap in time may land in either order; writes that do not overlap land
 * in call order. A snapshot is a read spanning its `createSnapshot` call
 * (writes in flight either drain into it or wait for it).
 */
export const UNIT_BYTES = 64;

interface UnitWrite {
  tag: number;
  start: number;
  end: number | undefined;
}

/** A write in progress: call {@link ContentModel.end} once it resolved. */
export interface ModelWrite {
  readonly tag: number;
  readonly firstUnit: number;
  readonly units: number;
  readonly start: number;
}

/** Bound on a unit's history: far above what the pruning leaves with 64 writers, catches a pruning bug instead of growing without end. */
const MAX_HISTORY = 4096;

export class ContentModel {
  private clock = 1;
  private nextTag = 1;
  private readonly history: UnitWrite[][];
  /** Starts of the reads in progress: history a read may still need is kept. */
  private readonly activeReads = new Map<number, number>();
  private nextRead = 0;

  constructor(readonly totalUnits: number) {
    this.history = Array.from({ length: totalUnits }, () => [{ tag: 0, start: 0, end: 0 }]);
  }

  /** Starts a write of `units` units from `firstUnit`: returns its tag and bookkeeping. */
  begin(firstUnit: number, units: number): ModelWrite {
    assert(units >= 1 && firstUnit >= 0 && firstUnit + units <= this.totalUnits, 'model write out of range');
    const tag = this.nextTag++ >>> 0;
    assert(tag !== 0, 'stress model ran out of tags');
    const start = this.clock++;
    for (let u = firstUnit; u < firstUnit + units; u++) this.history[u]!.push({ tag, start, end: undefined });
    return { tag, firstUnit, units, start };
  }

  /** The write resolved: record its end and drop history no read can need any more. */
  end(w: ModelWrite): void {
    const end = this.clock++;
    for (let u = w.firstUnit; u < w.firstUnit + w.units; u++) {
      const h = this.history[u]!;
      const entry = h.find((e) => e.tag === w.tag);
      assert(entry !== undefined && entry.end === undefined, 'model write ended twice');
      entry.end = end;
      this.prune(h);
    }
  }

  /** Marks the start of a read (or snapshot create); pass the result to {@link allowed} and {@link finishRead}. */
  beginRead(): { id: number; start: number } {
    const id = this.nextRead++;
    const start = this.clock++;
    this.activeReads.set(id, start);
    return { id, start };
  }

  /** Tags unit `u` may hold for a read that began at `readStart` and ends now. */
  allowed(u: number, readStart: number): number[] {
    const now = this.clock;
    const h = this.history[u]!;
    const out: number[] = [];
    for (const w of h) {
      if (w.start >= now) continue;
      const end = w.end;
      if (end !== undefined && h.some((x) => x.start > end && x.end !== undefined && x.end < readStart)) continue;
      out.push(w.tag);
    }
    return out;
  }

  finishRead(read: { id: number }): void {
    this.activeReads.delete(read.id);
    this.clock++;
  }

  /** Removes writes superseded before the oldest read in progress began (no read can see them). */
  private prune(h: UnitWrite[]): void {
    let horizon = this.clock;
    for (const s of this.activeReads.values()) horizon = Math.min(horizon, s);
    for (let i = h.length - 1; i >= 0; i--) {
      const end = h[i]!.end;
      if (end !== undefined && h.some((x) => x.start > end && x.end !== undefined && x.end < horizon)) h.splice(i, 1);
    }
    assert(h.length <= MAX_HISTORY, 'stress model history unbounded');
  }
}

/** Fills `buf` (whole units) with `tag` repeated. */
export function fillTag(buf: Buffer, tag: number): void {
  for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE(tag >>> 0, i);
}

/**
 * Checks that each unit of `data` (units from `firstUnit`) is one write's
 * bytes — the same tag throughout, none torn — and a tag `allowedOf` allows.
 * Returns a description of each unit that is not, in unit order.
 */
export function checkUnits(data: Buffer, firstUnit: number, allowedOf: (u: number) => number[]): string[] {
  const bad: string[] = [];
  for (let i = 0; i < data.length / UNIT_BYTES; i++) {
    const at = i * UNIT_BYTES;
    const tag = data.readUInt32LE(at);
    for (let k = 4; k < UNIT_BYTES; k += 4) {
      if (data.readUInt32LE(at + k) !== tag) {
        bad.push(`unit ${firstUnit + i} (byte ${(firstUnit + i) * UNIT_BYTES}) is torn: ${tag.toString(16)} then ${data.readUInt32LE(at + k).toString(16)}`);
        break;
      }
    }
    const ok = allowedOf(firstUnit + i);
    if (!ok.includes(tag)) bad.push(`unit ${firstUnit + i} (byte ${(firstUnit + i) * UNIT_BYTES}) holds ${tag.toString(16)}, allowed ${ok.map((t) => t.toString(16)).join(' or ')}`);
  }
  return bad;
}
