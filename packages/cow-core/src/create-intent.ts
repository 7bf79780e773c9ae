import { open, readFile, rm } from 'node:fs/promises';
import { syncDirectory } from '@cowvol/base';
import { pathExists } from './files.js';
import { dirname, resolve } from 'node:path';
import type { VolumeLayout } from './layout.js';
import { keys } from './metadata.js';
import { MetadataDb } from './metadata-db.js';
import { OwnerLock, fileIdentity } from './owner-lock.js';

/**
 * The create intent (docs/FORMAT.md §2, "Create order"): `<sidecar>/creating`,
 * written right after the sidecar folder is made and the owner lock taken,
 * before anything else of a new volume exists, and removed once the volume
 * record is durable. It says whether this create made the volume file. A
 * sidecar that holds it but no volume record is what a create killed
 * half-way left, and the next create of the same path removes it (and the
 * volume file, if that create made it) instead of refusing with
 * `VOLUME_EXISTS` — so a re-run finishes what the killed one started.
 */

/** What `<sidecar>/creating` records. */
export interface CreateIntent {
  v: 1;
  /** True when the create makes the volume file (not `--adopt`): a reclaim removes it. */
  createdFile: boolean;
  pid: number;
}

export function intentPath(layout: VolumeLayout): string {
  return `${layout.sidecarPath}/creating`;
}

/** Writes the intent with an exclusive create, syncs it and the sidecar folder. */
export async function writeCreateIntent(layout: VolumeLayout, createdFile: boolean): Promise<void> {
  const intent: CreateIntent = { v: 1, createdFile, pid: process.pid };
  const fh = await open(intentPath(layout), 'wx', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(intent)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await syncDirectory(layout.sidecarPath);
}

/** Removes the intent once the volume record is durable (the create's commit point). */
export async function clearCreateIntent(layout: VolumeLayout): Promise<void> {
  await rm(intentPath(layout), { force: true });
  await syncDirectory(layout.sidecarPath);
}

/** Removes an intent a create killed after its commit point left behind (the volume is complete); called by open, under the owner lock. */
export async function dropLeftoverCreateIntent(layout: VolumeLayout): Promise<void> {
  const present = await pathExists(intentPath(layout));
  if (present) await clearCreateIntent(layout);
}

async function readIntent(layout: VolumeLayout): Promise<CreateIntent | undefined> {
  const text = await readFile(intentPath(layout), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  try {
    const v: unknown = JSON.parse(text);
    return isCreateIntent(v) ? v : undefined;
  } catch {
    return undefined; // torn while being written: the create had made nothing else yet
  }
}

/** Whether a parsed intent file is a {@link CreateIntent} of this version. */
function isCreateIntent(v: unknown): v is CreateIntent {
  return typeof v === 'object' && v !== null && 'v' in v && v.v === 1 && 'createdFile' in v && typeof v.createdFile === 'boolean';
}

/** True when the metadata database holds a volume record (the create got past its commit point). */
async function hasVolumeRecord(layout: VolumeLayout): Promise<boolean> {
  if (!(await pathExists(layout.metaPath))) return false;
  let db: MetadataDb;
  try {
    db = await MetadataDb.open(layout.metaPath, false);
  } catch {
    return false; // never got as far as a readable database
  }
  try {
    return (await db.get(keys.volume)) !== undefined;
  } finally {
    await db.close();
  }
}

/**
 * Whether the sidecar of `layout` is what a killed create left: it holds
 * the create intent (or a torn one) and no volume record.
 */
export async function isIncompleteCreate(layout: VolumeLayout): Promise<boolean> {
  const present = await pathExists(intentPath(layout));
  return present && !(await hasVolumeRecord(layout));
}

/**
 * Removes what a killed create of this path left (see the module comment),
 * under the owner lock, so a create still running elsewhere is never
 * touched (`VOLUME_BUSY`). Does nothing when the sidecar is absent or is
 * not an incomplete create.
 * @throws VOLUME_BUSY, IO_ERROR
 */
export async function reclaimIncompleteCreate(layout: VolumeLayout): Promise<void> {
  if (!(await isIncompleteCreate(layout))) return;
  const lock = await OwnerLock.acquire(layout.sidecarPath, await fileIdentity(layout.sidecarPath));
  let intent: CreateIntent | undefined;
  try {
    if (!(await isIncompleteCreate(layout))) return; // finished (or reclaimed) while we waited for the lock
    intent = await readIntent(layout);
    // Only a file this create made goes; a torn intent was cut before the file could be made.
    if (intent?.createdFile === true) await rm(layout.volumePath, { force: true });
  } finally {
    await lock.unlock().catch(() => undefined);
  }
  await rm(layout.sidecarPath, { recursive: true, force: true });
  await syncDirectory(dirname(resolve(layout.sidecarPath)));
}
