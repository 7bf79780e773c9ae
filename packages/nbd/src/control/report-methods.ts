import { InvalidArgumentError, type DiffExtent, type Volume } from '@cowvol/cow-core';
import type { ControlMethod } from './control-server.js';
import { stringParam } from './snapshot-methods.js';

/**
 * Most extents one `snapshot.diff` response carries: an extent is at most
 * ~210 bytes of JSON (a 128-character snapshot name), so a page stays
 * under 7 MiB, well inside MAX_CONTROL_RESPONSE_BYTES (docs/FORMAT.md §11.2).
 */
export const MAX_DIFF_PAGE_EXTENTS = 32 * 1024;

/** One page of `snapshot.diff`: the extents ending after `afterOffsetBytes`, and where the next page starts. */
export interface DiffPage {
  from: string;
  to: string | null;
  blockSizeBytes: number;
  /** At most MAX_DIFF_PAGE_EXTENTS, sorted by offset; an extent that began before `afterOffsetBytes` is cut to start there. */
  extents: DiffExtent[];
  /** The `afterOffsetBytes` of the next page, or null when this page is the last. */
  nextOffsetBytes: number | null;
}

/**
 * The extents of `extents` (sorted, non-overlapping) that end after
 * `afterOffsetBytes`, cut to start there, at most `maxExtents` of them;
 * `nextOffsetBytes` is the end of the last one when more follow. Pure.
 */
export function diffPage(extents: readonly DiffExtent[], afterOffsetBytes: number, maxExtents: number): { extents: DiffExtent[]; nextOffsetBytes: number | null } {
  const page: DiffExtent[] = [];
  let i = 0;
  while (i < extents.length && (extents[i]?.offsetBytes ?? 0) + (extents[i]?.lengthBytes ?? 0) <= afterOffsetBytes) i++;
  for (; i < extents.length && page.length < maxExtents; i++) {
    const e = extents[i]!;
    const start = Math.max(e.offsetBytes, afterOffsetBytes);
    page.push({ ...e, offsetBytes: start, lengthBytes: e.offsetBytes + e.lengthBytes - start });
  }
  const last = page.at(-1);
  return { extents: page, nextOffsetBytes: i < extents.length && last ? last.offsetBytes + last.lengthBytes : null };
}

/**
 * The control methods that report on a served volume or read it whole
 * (docs/FORMAT.md §11.2): `snapshot.diff` (paged, MAX_DIFF_PAGE_EXTENTS per
 * response), `check` (Volume.check frozen on the server, docs/ARCHITECTURE.md
 * §7.1: NBD requests wait while it runs; `repair` frees leaks in one journal
 * transaction, as offline) and
 * `volume.checkpointLive` (a served `snapshot export` asks it before it
 * looks for the volume file's holes, §15.5).
 */
export function reportMethods(volume: Volume): Record<string, ControlMethod> {
  return {
    'snapshot.diff': async (params): Promise<DiffPage> => {
      const from = stringParam(params, 'from');
      const to = params.to === undefined || params.to === null ? undefined : stringParam(params, 'to');
      const after = params.afterOffsetBytes ?? 0;
      if (typeof after !== 'number' || !Number.isSafeInteger(after) || after < 0) throw new InvalidArgumentError('params.afterOffsetBytes must be a non-negative integer');
      const diff = await volume.diff(from, to);
      return { from: diff.from, to: diff.to, blockSizeBytes: diff.blockSizeBytes, ...diffPage(diff.extents, after, MAX_DIFF_PAGE_EXTENTS) };
    },
    check: (params) => {
      const readData = params.readData ?? false;
      const repair = params.repair ?? false;
      if (typeof readData !== 'boolean') throw new InvalidArgumentError('params.readData must be a boolean');
      if (typeof repair !== 'boolean') throw new InvalidArgumentError('params.repair must be a boolean');
      return volume.check({ readData, repair });
    },
    'volume.checkpointLive': async () => {
      await volume.checkpointLive();
      return { checkpointed: true };
    },
  };
}
