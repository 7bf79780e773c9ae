import { assert, CowvolError } from '@cowvol/base';
import type { NbdClient } from '@cowvol/nbd';
import { realpath } from 'node:fs/promises';
import type { PushSource, RestoreTarget } from '@cowvol/backup';
import type { DiffExtent, DiffResult, ExportSource, ImportResult, SnapshotIdentity, SnapshotInfo, SpaceReport, VolumeInfo } from '@cowvol/cow-core';
import { askServer } from './served.js';
import { servedNbd, snapshotExportName, type VolumeData } from './served-nbd.js';

/** Most `snapshot.diff` pages one diff asks for (with MAX_DIFF_PAGE_EXTENTS of @cowvol/nbd: 2^31 extents, more than a volume of 2^32 blocks holds apart). */
const MAX_DIFF_PAGES = 65536;

interface DiffPageJson {
  from: string;
  to: string | null;
  blockSizeBytes: number;
  extents: DiffExtent[];
  nextOffsetBytes: number | null;
}

/**
 * Volume.diff asked of the server of `volumePath`, page after page
 * (`snapshot.diff`, docs/FORMAT.md §11.2), as one DiffResult. Each page is
 * computed afresh: on a live volume written meanwhile, the whole holds every
 * block written before the first page (like one diff at that moment) and
 * may hold blocks written during the paging.
 * @throws SNAPSHOT_NOT_FOUND; NOT_SERVED, VOLUME_BUSY (the server is gone or stopping)
 */
export async function servedDiff(volumePath: string, from: string, to?: string): Promise<DiffResult> {
  const extents: DiffExtent[] = [];
  let first: DiffPageJson | undefined;
  let after = 0;
  for (let page = 0; page < MAX_DIFF_PAGES; page++) {
    const got = (await askServer(volumePath, 'snapshot.diff', { from, ...(to === undefined ? {} : { to }), afterOffsetBytes: after })) as DiffPageJson;
    first ??= got;
    extents.push(...got.extents);
    if (got.nextOffsetBytes === null) break;
    assert(got.nextOffsetBytes > after, 'a diff page moves forward');
    after = got.nextOffsetBytes;
  }
  assert(first !== undefined, 'a diff has a first page');
  const bytes = extents.reduce((n, e) => n + e.lengthBytes, 0);
  return { from: first.from, to: first.to, blockSizeBytes: first.blockSizeBytes, extents, bytes, blocks: bytes / first.blockSizeBytes };
}

/** Most `snapshot.list` pages one list asks for: every page but the last holds at least one snapshot, and a volume holds at most 65,536 (MAX_SNAPSHOTS). */
const MAX_LIST_PAGES = 65537;

/** One page of `snapshot.list` or of `info` (docs/FORMAT.md §11.2). */
export interface ListPageJson {
  snapshots: SnapshotInfo[];
  space: SpaceReport;
  /** The `afterId` of the next page; null (or absent, from a server that does not page) when this is the last. */
  nextAfterId?: number | null;
}

/**
 * Every snapshot of the served volume at `volumePath` with the space
 * report, asked page after page (`snapshot.list` with `afterId`,
 * docs/FORMAT.md §11.2): what Volume.listSnapshots and spaceUsage give
 * offline. `first`: a page already asked (the first page `info` carries).
 * Each page is computed afresh: a snapshot created or deleted meanwhile
 * shows or not, as in a list taken at each page's moment; the store
 * totals are the first page's.
 * @throws NOT_SERVED, VOLUME_BUSY (the server is gone or stopping)
 */
export async function servedSnapshotList(volumePath: string, first?: ListPageJson): Promise<{ snapshots: SnapshotInfo[]; space: SpaceReport }> {
  let page = first ?? ((await askServer(volumePath, 'snapshot.list')) as ListPageJson);
  const snapshots: SnapshotInfo[] = [];
  const rows: SpaceReport['snapshots'] = [];
  const space = page.space;
  for (let n = 1; ; n++) {
    for (const s of page.snapshots) snapshots.push(s);
    for (const r of page.space.snapshots) rows.push(r);
    const after = page.nextAfterId ?? null;
    if (after === null) break;
    assert(n < MAX_LIST_PAGES && page.snapshots.length > 0, 'a snapshot list ends within MAX_SNAPSHOTS pages');
    page = (await askServer(volumePath, 'snapshot.list', { afterId: after })) as ListPageJson;
    assert(
      page.snapshots.every((s) => s.id > after),
      'a list page moves forward',
    );
  }
  return { snapshots, space: { ...space, snapshots: rows } };
}

/**
 * `info` of the served volume at `volumePath` with every snapshot: the
 * server's `info` (its first page of snapshots), then the other pages as
 * {@link servedSnapshotList} asks them — what Volume.info and spaceUsage
 * give offline.
 * @throws NOT_SERVED, VOLUME_BUSY (the server is gone or stopping)
 */
export async function servedInfo(volumePath: string): Promise<{ info: VolumeInfo; space: SpaceReport }> {
  const first = (await askServer(volumePath, 'info')) as { info: VolumeInfo; space: SpaceReport; nextAfterId?: number | null };
  const { snapshots, space } = await servedSnapshotList(volumePath, { snapshots: first.info.snapshots, space: first.space, nextAfterId: first.nextAfterId ?? null });
  return { info: { ...first.info, snapshots }, space };
}

/**
 * The ExportSource of snapshot `name` of a served volume
 * (docs/ARCHITECTURE.md §14.10): its data read through the NBD export
 * `snapshot/<name>` (`data`), the rest asked of the server's control
 * channel (`snapshot.list`, `snapshot.info`, `snapshot.diff`,
 * `volume.checkpointLive`, `info`); the volume file's holes are found in
 * `volumePath` itself, as offline. exportSnapshot of @cowvol/cow-core
 * then writes the stream it writes offline.
 * @throws what the control requests throw (SNAPSHOT_NOT_FOUND, …)
 */
export async function servedExportSource(volumePath: string, name: string, data: Pick<VolumeData, 'sizeBytes' | 'read'>): Promise<ExportSource> {
  const { info } = (await askServer(volumePath, 'info', { maxSnapshots: 1 })) as { info: { blockSizeBytes: number } };
  return {
    sizeBytes: data.sizeBytes,
    blockSizeBytes: info.blockSizeBytes,
    listSnapshots: async () => (await servedSnapshotList(volumePath)).snapshots,
    snapshotIdentity: async (snapshot) => ((await askServer(volumePath, 'snapshot.info', { name: snapshot })) as { identity: SnapshotIdentity }).identity,
    diff: (from, to) => servedDiff(volumePath, from, to),
    readSnapshot: (snapshot, offsetBytes, lengthBytes) => {
      // exportSnapshot reads only the snapshot it exports: the one `data` is attached to.
      assert(snapshot === name, `a served export of ${name} reads only it, not ${snapshot}`);
      return data.read(offsetBytes, lengthBytes);
    },
    checkpointLive: async () => {
      await askServer(volumePath, 'volume.checkpointLive');
    },
    info: () => Promise.resolve({ path: volumePath }),
  };
}

/**
 * The PushSource of snapshot `name` of a served volume (`backup push` while
 * served, docs/ARCHITECTURE.md §14.10): the export's source, plus the
 * volume's identity and catalog from the server's `info` — the same
 * figures an offline push reads from `Volume.info()`. The path stays the
 * one the user gave (its holes are read there, as for an export).
 * @throws what the control requests throw (SNAPSHOT_NOT_FOUND, …)
 */
export async function servedPushSource(volumePath: string, name: string, data: Pick<VolumeData, 'sizeBytes' | 'read'>): Promise<PushSource> {
  const source = await servedExportSource(volumePath, name, data);
  return {
    ...source,
    info: async () => ({ ...(await servedInfo(volumePath)).info, path: volumePath }),
  };
}

/**
 * The RestoreTarget of a served volume (`backup restore --into`, docs/ARCHITECTURE.md
 * §14.10): the identities of its snapshots from `info` and `snapshot.list` pages,
 * the spooled stream applied by the server (`volume.import`, as `cowvol import`
 * does: EXPORT_IN_USE while a client holds `live`), and the read-back of
 * `--verify` through the NBD export `snapshot/<name>`, one connection for all of it.
 * @param busy the VOLUME_BUSY to throw when the server has no plain unix endpoint for the read-back
 * @throws what the control requests throw (BASE_MISMATCH, EXPORT_IN_USE, …)
 */
export function servedRestoreTarget(volumePath: string, busy: CowvolError, waitMs = 0): RestoreTarget {
  let client: NbdClient | undefined;
  let attached: string | undefined;
  return {
    state: async () => {
      // Volume.snapshotIdentity from the list: its origin when imported, else this volume's uuid, its id and creation time.
      const { info } = await servedInfo(volumePath);
      const uuid = info.uuid;
      return {
        pendingImport: info.pendingImport,
        origins: info.snapshots.flatMap((s) => (s.origin ? [{ origin: { ...s.origin }, name: s.name, suspect: s.suspect }] : [])),
        identities: info.snapshots.map((s): SnapshotIdentity => (s.origin ? { ...s.origin } : { volumeUuid: uuid, snapshotId: s.id, createdAt: s.createdAt, name: s.name })),
      };
    },
    importFile: async (streamPath, resume) => {
      const params = { streamPath: await realpath(streamPath), resume, verify: false, dryRun: false };
      return { ...((await askServer(volumePath, 'volume.import', params)) as ImportResult), volume: volumePath };
    },
    readSnapshot: async (name, offsetBytes, lengthBytes) => {
      assert(attached === undefined || attached === name, `a served restore reads back only ${String(attached)}, not ${name}`);
      attached = name;
      client ??= await servedNbd(volumePath, snapshotExportName(name), busy, undefined, waitMs);
      return client.read(offsetBytes, lengthBytes);
    },
    close: async () => {
      await client?.close();
      client = undefined;
    },
    beforeDownload: async () => {
      // The server refuses the import when it serves `live` read-only: said before the download, not after it.
      const status = (await askServer(volumePath, 'status', { exports: false })) as { readOnly?: unknown };
      if (status.readOnly === true) {
        throw new CowvolError(
          'VOLUME_READ_ONLY',
          'this server serves live read-only (serve --read-only): a backup restore would rewrite it; serve the volume without --read-only, or stop the server',
          { details: { served: true, operation: 'backup restore' } },
        );
      }
    },
  };
}
