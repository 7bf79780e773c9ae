import { SNAPSHOT_NAME_PATTERN } from '@cowvol/cow-core';
import { BackupArgumentError } from './errors.js';

/**
 * The object keys of a repository (docs/FORMAT.md §12, "Keys"): `config`,
 * `chunks/<id[0:2]>/<id>`, `manifests/<volume-uuid>/<snapshot-name>`,
 * `locks/…`. All relative to the store's prefix.
 */
export const CONFIG_KEY = 'config';
export const CHUNKS_PREFIX = 'chunks/';
export const MANIFESTS_PREFIX = 'manifests/';
export const LOCKS_PREFIX = 'locks/';

const CHUNK_ID = /^[0-9a-f]{64}$/;
const VOLUME_UUID = /^[0-9a-f]{32}$/;
/** A snapshot name's first `.` is written `%2E` in a key: `%` never occurs in a name (SNAPSHOT_NAME_PATTERN), so the mapping is one to one. */
const DOT_ESCAPE = '%2E';

/** True for 64 lowercase hex digits. */
export function isChunkId(id: string): boolean {
  return CHUNK_ID.test(id);
}

/** True for 32 lowercase hex digits (a cowvol volume uuid). */
export function isVolumeUuid(uuid: string): boolean {
  return VOLUME_UUID.test(uuid);
}

/** `chunks/<first two hex digits>/<id>`. @throws INVALID_ARGUMENT for a malformed id */
export function chunkObjectKey(id: string): string {
  if (!isChunkId(id)) throw new BackupArgumentError(`not a chunk id: ${JSON.stringify(id.slice(0, 80))}`);
  return `${CHUNKS_PREFIX}${id.slice(0, 2)}/${id}`;
}

/**
 * `manifests/<volume-uuid>/<snapshot-name>`. Names are `[A-Za-z0-9._:-]{1,128}`
 * (cow-core's SNAPSHOT_NAME_PATTERN); a name starting with `.` (`.`, `..`,
 * `.cowvol-tmp-x`) would be a segment no store should see, so its first `.`
 * is written `%2E` (docs/FORMAT.md §12.4).
 *
 * @throws INVALID_ARGUMENT for a malformed uuid or name
 */
export function manifestObjectKey(volumeUuid: string, snapshotName: string): string {
  if (!isVolumeUuid(volumeUuid)) throw new BackupArgumentError(`not a volume uuid: ${JSON.stringify(volumeUuid.slice(0, 80))}`);
  if (!SNAPSHOT_NAME_PATTERN.test(snapshotName)) throw new BackupArgumentError(`not a snapshot name: ${JSON.stringify(snapshotName.slice(0, 80))}`);
  const segment = snapshotName.startsWith('.') ? DOT_ESCAPE + snapshotName.slice(1) : snapshotName;
  return `${MANIFESTS_PREFIX}${volumeUuid}/${segment}`;
}

/** The volume uuid and snapshot name a manifest key names, or undefined for a key that is not one. */
export function parseManifestObjectKey(key: string): { volumeUuid: string; snapshotName: string } | undefined {
  if (!key.startsWith(MANIFESTS_PREFIX)) return undefined;
  const rest = key.slice(MANIFESTS_PREFIX.length);
  const slash = rest.indexOf('/');
  if (slash < 0) return undefined;
  const volumeUuid = rest.slice(0, slash);
  const segment = rest.slice(slash + 1);
  const snapshotName = segment.startsWith(DOT_ESCAPE) ? `.${segment.slice(DOT_ESCAPE.length)}` : segment;
  if (!isVolumeUuid(volumeUuid) || !SNAPSHOT_NAME_PATTERN.test(snapshotName)) return undefined;
  return manifestObjectKey(volumeUuid, snapshotName) === key ? { volumeUuid, snapshotName } : undefined;
}
