import { InvalidArgumentError, type SnapshotInfo, type SnapshotPage, type Volume } from '@cowvol/cow-core';
import type { ControlMethod } from './control-server.js';

/**
 * Most snapshots one `snapshot.list` or `info` response carries
 * (docs/FORMAT.md §11.2): about 330 bytes of JSON each without labels, so
 * a full page of plain snapshots is under 3 MiB.
 */
export const MAX_LIST_PAGE_SNAPSHOTS = 8192;
/**
 * Bound on the JSON of one page's snapshots (their `snapshots` entries and
 * space rows), by {@link snapshotJsonBytesBound}: a page ends before it
 * would pass this, so a response stays far under MAX_CONTROL_RESPONSE_BYTES
 * (16 MiB) whatever the labels. One snapshot alone is at most about 30 KiB
 * (32 labels of 64-character keys and 256-character values).
 */
export const MAX_LIST_PAGE_BYTES = 4 * 1024 * 1024;

/** JSON bytes of a snapshot's entry and space row, besides its name, labels and origin: ids, counts of at most 16 digits, an ISO time, flags, field names. */
const SNAPSHOT_FIXED_JSON_BYTES = 600;

/**
 * An upper bound on the JSON bytes one snapshot adds to a page (its
 * `snapshots` entry and its `space.snapshots` row), cheap enough for every
 * snapshot of a list: names are ASCII (the snapshot name pattern); a label
 * value's UTF-16 unit is at most 3 bytes of UTF-8 or 2 escaped (control
 * characters are refused in labels); an origin's text is counted at 6 bytes
 * per unit (`\u00XX`).
 */
export function snapshotJsonBytesBound(info: SnapshotInfo): number {
  let bytes = SNAPSHOT_FIXED_JSON_BYTES + 2 * info.name.length;
  for (const [key, value] of Object.entries(info.labels)) bytes += key.length + 3 * value.length + 6;
  if (info.origin) bytes += 200 + 6 * (info.origin.name.length + info.origin.createdAt.length + info.origin.volumeUuid.length);
  return bytes;
}

/** Paging params of `snapshot.list`, `info` and `status`: `afterId` (non-negative integer, default 0) and `maxSnapshots` (1 to MAX_LIST_PAGE_SNAPSHOTS, default that). @throws INVALID_ARGUMENT */
export function pageParams(params: Record<string, unknown>): { afterId: number; maxSnapshots: number } {
  const afterId = params.afterId ?? 0;
  const maxSnapshots = params.maxSnapshots ?? MAX_LIST_PAGE_SNAPSHOTS;
  if (typeof afterId !== 'number' || !Number.isSafeInteger(afterId) || afterId < 0) throw new InvalidArgumentError('params.afterId must be a non-negative integer');
  if (typeof maxSnapshots !== 'number' || !Number.isSafeInteger(maxSnapshots) || maxSnapshots < 1 || maxSnapshots > MAX_LIST_PAGE_SNAPSHOTS) {
    throw new InvalidArgumentError(`params.maxSnapshots must be an integer from 1 to ${MAX_LIST_PAGE_SNAPSHOTS}`);
  }
  return { afterId, maxSnapshots };
}

/** One page of the volume's snapshots for `params` (and the `afterId` it starts after): at most `maxSnapshots` of them and MAX_LIST_PAGE_BYTES of JSON (the first always). @throws INVALID_ARGUMENT */
export async function listPage(volume: Volume, params: Record<string, unknown>): Promise<SnapshotPage & { afterId: number }> {
  const { afterId, maxSnapshots } = pageParams(params);
  let bytes = 0;
  const page = await volume.listSnapshotsPage(afterId, (info, taken) => {
    bytes += snapshotJsonBytesBound(info);
    return taken < maxSnapshots && bytes <= MAX_LIST_PAGE_BYTES;
  });
  return { ...page, afterId };
}

/**
 * The paged control methods that list snapshots (docs/FORMAT.md §11.2):
 * `snapshot.list` (`{ snapshots, space, nextAfterId }`) and `info`
 * (`{ info, space, nextAfterId }`, `info.snapshots` the first page). A
 * client asks again with `afterId: nextAfterId` until it is null; each
 * page is computed afresh (snapshots created or deleted between pages
 * appear or not, as in a list taken at each page's moment).
 */
export function listMethods(volume: Volume): Record<string, ControlMethod> {
  return {
    'snapshot.list': async (params) => {
      const page = await listPage(volume, params);
      return { snapshots: page.snapshots, space: page.space, nextAfterId: page.nextAfterId };
    },
    info: async (params) => {
      const page = await listPage(volume, params);
      const info = await volume.info();
      return { info: { ...info, snapshots: page.snapshots }, space: page.space, nextAfterId: page.nextAfterId };
    },
  };
}
