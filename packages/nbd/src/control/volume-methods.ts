import { hasCode } from '@cowvol/base';
import type { Volume } from '@cowvol/cow-core';
import type { NbdServer } from '../server.js';
import { LIVE_EXPORT, SNAPSHOT_EXPORT_PREFIX, type VolumeExports } from '../volume-exports.js';
import type { ControlMethod } from './control-server.js';
import { changeMethods } from './change-methods.js';
import { reportMethods } from './report-methods.js';
import { listMethods, listPage, MAX_LIST_PAGE_SNAPSHOTS } from './list-pages.js';
import { labelsParam, snapshotMethods, stringParam } from './snapshot-methods.js';

/** What `serve` gives the control methods besides the volume and the NBD server. */
export interface ServeControl {
  /** The volume file as given to `serve`. */
  volumePath: string;
  readOnly: boolean;
  /** The server's catalog: deletes and renames hold a snapshot's export unresolvable meanwhile (§14.8). */
  exports: VolumeExports;
  /** Starts the clean stop (as SIGTERM) and resolves once the volume is closed and its owner lock released. */
  stop: () => Promise<void>;
}

/** Whether the catalog lists export `name`: `live`, or `snapshot/<name>` of a live snapshot. */
async function exportListed(volume: Volume, name: string): Promise<boolean> {
  if (name === LIVE_EXPORT) return true;
  if (!name.startsWith(SNAPSHOT_EXPORT_PREFIX)) return false;
  try {
    await volume.snapshotIdentity(name.slice(SNAPSHOT_EXPORT_PREFIX.length));
    return true;
  } catch (err) {
    if (hasCode(err, 'SNAPSHOT_NOT_FOUND')) return false;
    throw err;
  }
}

/**
 * The control methods of a served volume (docs/FORMAT.md §11.2):
 * `status`, `stop` and `snapshot.create`, and those of ./list-pages.ts
 * (`snapshot.list` and `info`, paged), ./snapshot-methods.ts (`snapshot.info`, delete, delete by
 * filter, rename, label, hold, restore), ./report-methods.ts (`snapshot.diff`,
 * `check`, `volume.checkpointLive`) and ./change-methods.ts (`volume.import`,
 * `volume.acceptChanges`). Each runs on
 * the opened volume as the offline command would, so results (and error
 * codes) are the same; `snapshot.create` freezes the volume under its
 * NBD clients (docs/ARCHITECTURE.md §4.4) and its `snapshot/<name>`
 * export can be attached as soon as it returned (exports are resolved
 * per option, §14.1).
 */
export function volumeMethods(volume: Volume, server: NbdServer, serve: ServeControl): Record<string, ControlMethod> {
  return {
    status: async (params) => {
      const served = server.status();
      const base = { served: true, pid: process.pid, volume: serve.volumePath, readOnly: serve.readOnly, endpoints: served.endpoints, connections: served.connections };
      // `exports: false`: the server's identity alone (the CLI's routing asks it before every served command), not a list that grows with snapshots.
      if (params.exports === false) return base;
      // Paged as `snapshot.list` is (FORMAT.md §11.2 "Paged lists"): 65,536 snapshots of long names are more than one response carries.
      const page = await listPage(volume, params);
      const names = [...(page.afterId === 0 ? [LIVE_EXPORT] : []), ...page.snapshots.map((s) => SNAPSHOT_EXPORT_PREFIX + s.name)];
      const unused = { connections: 0, requests: 0, readBytes: 0, writtenBytes: 0, errors: 0 };
      const counted = new Map(served.exports.map((e) => [e.name, e]));
      const exports = names.map((name) => counted.get(name) ?? { name, ...unused });
      if (page.nextAfterId === null) {
        // The last page adds the exports no longer listed (a deleted snapshot's, attached since the server started), with their counters.
        // Looked up by name (the catalog's name index), not by listing every snapshot again; bounded like a page.
        const gone: typeof served.exports = [];
        for (const e of served.exports) if (!(await exportListed(volume, e.name))) gone.push(e);
        exports.push(...gone.slice(-MAX_LIST_PAGE_SNAPSHOTS));
      }
      return { ...base, exports, nextAfterId: page.nextAfterId };
    },
    stop: async () => {
      await serve.stop();
      return { stopped: true, pid: process.pid };
    },
    'snapshot.create': (params) => serve.exports.whileCatalogChanges('snapshot create', () => volume.createSnapshot(stringParam(params, 'name'), { labels: labelsParam(params) })),
    ...listMethods(volume),
    ...snapshotMethods(volume, server, serve.exports),
    ...reportMethods(volume),
    ...changeMethods(volume, server, serve.exports, serve.volumePath),
  };
}
