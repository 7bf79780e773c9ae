import { InvalidArgumentError, restoreSnapshot, type DeleteSelection, type RestoreOptions, type Volume } from '@cowvol/cow-core';
import type { NbdServer } from '../server.js';
import { SNAPSHOT_EXPORT_PREFIX, type VolumeExports } from '../volume-exports.js';
import { SnapshotInUseError } from '../errors.js';
import type { ControlMethod } from './control-server.js';

/**
 * The control methods of the snapshot commands that read or
 * change one snapshot's metadata (docs/FORMAT.md §11.2):
 * `snapshot.info` (its space row alone), `snapshot.delete`, `snapshot.planDelete`,
 * `snapshot.deleteSelected`, `snapshot.planDeleteSelected` (a delete by
 * filter, chosen in the core: Volume.deleteSelected), `snapshot.rename`,
 * `snapshot.label` (Volume.changeSnapshotLabels: one atomic step) and `snapshot.hold`. Each calls the
 * Volume method the offline command calls, with the same arguments, and
 * returns what the offline command's volume step returns, so the CLI
 * formats both alike. `snapshot.delete`, `snapshot.deleteSelected` and `snapshot.rename` refuse a
 * snapshot a client is attached to as `snapshot/<name>` (SNAPSHOT_IN_USE),
 * atomically with new attaches (VolumeExports.whileUnexported, §14.8).
 * `snapshot.restore` (restoreSnapshot, as offline) refuses while a client is
 * attached to `live` (EXPORT_IN_USE), and `live` does not resolve while it
 * runs (VolumeExports.whileLiveUnexported, §14.8).
 */
export function snapshotMethods(volume: Volume, server: NbdServer, exports: VolumeExports): Record<string, ControlMethod> {
  const inUse = (exportName: string): number => server.connectionsTo(exportName);
  return {
    'snapshot.info': async (params) => {
      const name = stringParam(params, 'name');
      const { snapshot, space } = await volume.snapshotInfo(name);
      return { snapshot, space, identity: await volume.snapshotIdentity(name) };
    },
    'snapshot.delete': (params) => {
      const names = namesParam(params);
      return exports.whileCatalogChanges('snapshot delete', () =>
        exports.whileUnexported(names, inUse, async () => ({ ...(await volume.deleteSnapshots(names)), blockSizeBytes: volume.blockSizeBytes })),
      );
    },
    'snapshot.planDelete': async (params) => refuseInUse(await volume.planDelete(namesParam(params)), inUse),
    'snapshot.deleteSelected': (params) => {
      const selection = selectionParam(params);
      return exports.whileCatalogChanges('snapshot delete', () =>
        exports.whileChosenUnexported(inUse, async (guard) => ({ ...(await volume.deleteSelected(selection, { guard })), blockSizeBytes: volume.blockSizeBytes })),
      );
    },
    'snapshot.planDeleteSelected': async (params) => refuseInUse(await volume.planDeleteSelected(selectionParam(params)), inUse),
    'snapshot.rename': (params) => {
      const name = stringParam(params, 'name');
      const newName = stringParam(params, 'newName');
      return exports.whileCatalogChanges('snapshot rename', () => exports.whileUnexported([name], inUse, () => volume.renameSnapshot(name, newName)));
    },
    'snapshot.label': (params) => {
      const name = stringParam(params, 'name');
      return volume.changeSnapshotLabels(name, { set: labelsParam(params, 'set'), remove: stringsParam(params, 'remove') });
    },
    'snapshot.restore': (params) => {
      const name = stringParam(params, 'name');
      return exports.whileLiveUnexported(inUse, () => restoreSnapshot(volume, name, restoreParams(params)));
    },
    'snapshot.hold': async (params) => {
      const names = namesParam(params);
      const held = params.held;
      if (typeof held !== 'boolean') throw new InvalidArgumentError('params.held must be a boolean');
      return { snapshots: await volume.holdSnapshots(names, held) };
    },
  };
}

/**
 * A delete's dry run says what the delete would say: SNAPSHOT_IN_USE when a
 * snapshot it would delete has a client attached (the real delete refuses
 * the whole batch then), else the plan.
 * @throws SNAPSHOT_IN_USE
 */
function refuseInUse<P extends { snapshots: ReadonlyArray<{ name: string }> }>(plan: P, inUse: (exportName: string) => number): P {
  for (const { name } of plan.snapshots) {
    const connections = inUse(SNAPSHOT_EXPORT_PREFIX + name);
    if (connections > 0) throw new SnapshotInUseError(name, connections);
  }
  return plan;
}

/** @throws INVALID_ARGUMENT when params[key] is not a string */
export function stringParam(params: Record<string, unknown>, key: string): string {
  const value = params[key];
  if (typeof value !== 'string') throw new InvalidArgumentError(`params.${key} must be a string`);
  return value;
}

/** params of a restore: `safetySnapshot` (boolean, default true), `safetyName` (string, optional). @throws INVALID_ARGUMENT */
function restoreParams(params: Record<string, unknown>): RestoreOptions {
  const { safetySnapshot, safetyName } = params;
  if (safetySnapshot !== undefined && typeof safetySnapshot !== 'boolean') throw new InvalidArgumentError('params.safetySnapshot must be a boolean');
  if (safetyName !== undefined && typeof safetyName !== 'string') throw new InvalidArgumentError('params.safetyName must be a string');
  return { ...(safetySnapshot !== undefined ? { safetySnapshot } : {}), ...(safetyName !== undefined ? { safetyName } : {}) };
}

/** @throws INVALID_ARGUMENT when params[key] is present and not an array of strings (absent: []) */
function stringsParam(params: Record<string, unknown>, key: string): string[] {
  const value = params[key] ?? [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) throw new InvalidArgumentError(`params.${key} must be an array of strings`);
  return value as string[];
}

/** params.names: 1 to 1024 snapshot names (the core checks each: INVALID_SNAPSHOT_NAME, SNAPSHOT_NOT_FOUND). @throws INVALID_ARGUMENT */
function namesParam(params: Record<string, unknown>): string[] {
  const names = stringsParam(params, 'names');
  if (names.length === 0 || names.length > 1024) throw new InvalidArgumentError('params.names must name 1 to 1024 snapshots');
  return names;
}

/** @throws INVALID_ARGUMENT when params[key] is present and not an object of strings (the core then checks keys and values: INVALID_LABEL) */
export function labelsParam(params: Record<string, unknown>, key = 'labels'): Record<string, string> {
  const labels = params[key] ?? {};
  if (typeof labels !== 'object' || Array.isArray(labels) || Object.values(labels).some((v) => typeof v !== 'string')) {
    throw new InvalidArgumentError(`params.${key} must be an object of string values`);
  }
  return labels as Record<string, string>;
}

/**
 * params of a delete by filter: `olderThanMs` (number), `labels` ([key, value] pairs), `keepNewest` (integer);
 * the core checks the rest (Volume.deleteSelected: INVALID_ARGUMENT, INVALID_LABEL).
 * @throws INVALID_ARGUMENT
 */
function selectionParam(params: Record<string, unknown>): DeleteSelection {
  const { olderThanMs, keepNewest, labels } = params;
  if (olderThanMs !== undefined && typeof olderThanMs !== 'number') throw new InvalidArgumentError('params.olderThanMs must be a number');
  if (keepNewest !== undefined && typeof keepNewest !== 'number') throw new InvalidArgumentError('params.keepNewest must be a number');
  if (labels !== undefined && !Array.isArray(labels)) throw new InvalidArgumentError('params.labels must be an array of [key, value] pairs');
  return {
    ...(olderThanMs !== undefined ? { olderThanMs } : {}),
    ...(keepNewest !== undefined ? { keepNewest } : {}),
    ...(labels !== undefined ? { labels: labels as Array<[string, string]> } : {}),
  };
}
