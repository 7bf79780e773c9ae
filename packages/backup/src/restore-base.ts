import { hasCode } from '@cowvol/base';
import { BaseMismatchError, sameIdentity, type SnapshotIdentity } from '@cowvol/cow-core';
import type { Manifest } from './manifest.js';
import { manifestObjectKey } from './object-keys.js';
import type { Repository } from './repository.js';

/** Ancestors of a manifest `restore --into` looks through for a base the target holds, at most; also the manifests of the volume read when the chain is broken. */
export const MAX_PARENT_HOPS = 4096;

/** A manifest `restore --into` restores on top of: one whose snapshot the target holds. */
export interface RestoreBase {
  key: string;
  manifest: Manifest;
}

/**
 * The manifest `restore --into` builds its incremental stream from
 * (docs/ARCHITECTURE.md §17, "Restore"): first the target's newest
 * snapshot, when it is one of this volume's manifests — what the target's
 * live volume holds unless written since, and so the base its import
 * accepts, whether or not it is an ancestor (a target restored to a
 * sibling of the chain); else the newest ancestor of `manifest`
 * (its `parent` keys) whose identity a snapshot of the target has. When the
 * chain is broken — an ancestor forgotten (`backup forget` deletes
 * manifests, and a nightly rotation forgets the middle of every chain) — or
 * ends without one, every manifest of the volume is a candidate: each holds
 * its snapshot's whole chunk map, so any one the target holds is a base; the
 * one with the highest snapshot id is taken. A manifest forgotten while this
 * reads is passed over.
 *
 * @param held the identities of the target's snapshots
 * @throws BASE_MISMATCH when the target holds none · BACKUP_CORRUPT · STORE_UNAVAILABLE · …
 */
export async function findRestoreBase(repo: Repository, manifest: Manifest, targetPath: string, held: readonly SnapshotIdentity[]): Promise<RestoreBase> {
  const isHeld = (m: Manifest): boolean => held.some((h) => sameIdentity(h, m.identity));
  const newest = held.at(-1);
  if (newest?.volumeUuid === manifest.volumeUuid && newest.name !== manifest.snapshotName) {
    const newestKey = manifestObjectKey(manifest.volumeUuid, newest.name);
    const pushed = await manifestIfPresent(repo, newestKey);
    if (pushed !== undefined && sameIdentity(pushed.identity, newest)) return { key: newestKey, manifest: pushed };
  }
  let key = manifest.parent;
  for (let hops = 0; key !== null && hops < MAX_PARENT_HOPS; hops++) {
    const ancestor = await manifestIfPresent(repo, key);
    if (ancestor === undefined) break; // forgotten: the chain is broken here
    if (isHeld(ancestor)) return { key, manifest: ancestor };
    key = ancestor.parent;
  }
  const found = await newestHeld(repo, manifest, isHeld);
  if (found) return found;
  throw new BaseMismatchError(`${targetPath} holds no snapshot of the volume ${manifestObjectKey(manifest.volumeUuid, manifest.snapshotName)} was pushed from; restore it into a new volume instead`, {
    details: { path: targetPath },
  });
}

/** Of the manifests of `manifest`'s volume (at most MAX_PARENT_HOPS read), the held one with the highest snapshot id. */
async function newestHeld(repo: Repository, manifest: Manifest, isHeld: (m: Manifest) => boolean): Promise<RestoreBase | undefined> {
  const own = manifestObjectKey(manifest.volumeUuid, manifest.snapshotName);
  let best: RestoreBase | undefined;
  let read = 0;
  for await (const ref of repo.listManifests(manifest.volumeUuid)) {
    if (ref.key === own) continue;
    if (++read > MAX_PARENT_HOPS) break;
    const candidate = await manifestIfPresent(repo, ref.key);
    if (candidate === undefined || !isHeld(candidate)) continue;
    if (best === undefined || candidate.identity.snapshotId > best.manifest.identity.snapshotId) best = { key: ref.key, manifest: candidate };
  }
  return best;
}

/** The manifest under `key`, or undefined when it is gone (forgotten). */
async function manifestIfPresent(repo: Repository, key: string): Promise<Manifest | undefined> {
  try {
    return await repo.getManifest(key);
  } catch (err) {
    if (hasCode(err, 'OBJECT_NOT_FOUND')) return undefined;
    throw err;
  }
}
