import { lstat, open, readFile, readdir, rename, rm } from 'node:fs/promises';
import { syncDirectory } from '@cowvol/base';
import { isRegularFile, pathExists } from './files.js';
import { VolumeExistsError } from './errors.js';
import { dirname, join, resolve } from 'node:path';
import type { VolumeLayout } from './layout.js';
import { keys } from './metadata.js';
import { MetadataDb } from './metadata-db.js';
import { metadataError } from './sidecar-damage.js';
import { OwnerLock, fileIdentity } from './owner-lock.js';

/**
 * The create intent (docs/FORMAT.md §2, "Create order"): `<sidecar>/creating`,
 * written right after the sidecar folder is made and the owner lock taken,
 * before anything else of a new volume exists, and removed once the volume
 * record is durable. It says whether this create makes the volume file,
 * and — rewritten once that file is made — which file it made. A sidecar
 * that holds it but no volume record is what a create killed half-way
 * left, and the next create of the same path removes it (and the volume
 * file, if it is still exactly the file that create made) instead of
 * refusing with `VOLUME_EXISTS` — so a re-run finishes what the killed one
 * started, and a file the user put at the path since is never touched.
 */

/**
 * The file a create made, as `lstat` (bigint) saw it once made, extended
 * and synced: device, inode and status-change time in nanoseconds (decimal
 * strings: they exceed 2^53) and size. A file at the path that differs in
 * any of them is not that file — another one put there since (its inode
 * number may be the freed one's), or that one written to since.
 */
export interface CreatedFile {
  dev: string;
  ino: string;
  ctimeNs: string;
  sizeBytes: number;
}

/** What `<sidecar>/creating` records. */
export interface CreateIntent {
  v: 1;
  /** True when the create makes the volume file (not `--adopt`). */
  createdFile: boolean;
  pid: number;
  /** The file it made, once made (`recordCreatedFile`): the only file a reclaim removes. */
  file?: CreatedFile;
}

export function intentPath(layout: VolumeLayout): string {
  return `${layout.sidecarPath}/creating`;
}

/** Writes the intent with an exclusive create, syncs it and the sidecar folder. */
export async function writeCreateIntent(layout: VolumeLayout, createdFile: boolean): Promise<void> {
  await writeIntentFile(intentPath(layout), { v: 1, createdFile, pid: process.pid });
  await syncDirectory(layout.sidecarPath);
}

/**
 * Records in the intent the volume file this create just made (at
 * `volumePath`, extended and synced): a new intent written beside it, synced,
 * renamed over it, the folder synced. A kill before the rename leaves the
 * intent without `file`, and a reclaim then leaves the file where it is
 * (it cannot prove the create made it): the re-run says VOLUME_EXISTS.
 */
export async function recordCreatedFile(layout: VolumeLayout, volumePath: string): Promise<void> {
  const st = await lstat(volumePath, { bigint: true });
  const file: CreatedFile = { dev: String(st.dev), ino: String(st.ino), ctimeNs: String(st.ctimeNs), sizeBytes: Number(st.size) };
  const next = `${intentPath(layout)}.next`;
  await rm(next, { force: true });
  await writeIntentFile(next, { v: 1, createdFile: true, pid: process.pid, file });
  await rename(next, intentPath(layout));
  await syncDirectory(layout.sidecarPath);
}

/** One intent file, created with O_EXCL (mode 0600), one line of JSON, synced. */
async function writeIntentFile(path: string, intent: CreateIntent): Promise<void> {
  const fh = await open(path, 'wx', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(intent)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Whether the file at `path` (not followed if a link) is exactly `file`. */
async function isCreatedFile(path: string, file: CreatedFile): Promise<boolean> {
  const st = await lstat(path, { bigint: true }).catch(() => undefined);
  return st !== undefined && st.isFile() && String(st.dev) === file.dev && String(st.ino) === file.ino && String(st.ctimeNs) === file.ctimeNs && Number(st.size) === file.sizeBytes;
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
  // Anything but a regular file (a FIFO: its read would block until a writer came) is no intent, as a torn one.
  if (!(await isRegularFile(intentPath(layout)))) return undefined;
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
  if (typeof v !== 'object' || v === null || !('v' in v) || v.v !== 1 || !('createdFile' in v) || typeof v.createdFile !== 'boolean') return false;
  return !('file' in v) || v.file === undefined || isCreatedFileRecord(v.file);
}

function isCreatedFileRecord(f: unknown): f is CreatedFile {
  if (typeof f !== 'object' || f === null) return false;
  const r = f as Record<string, unknown>;
  const digits = (x: unknown): boolean => typeof x === 'string' && /^[0-9]{1,40}$/.test(x);
  return digits(r.dev) && digits(r.ino) && digits(r.ctimeNs) && typeof r.sizeBytes === 'number' && Number.isSafeInteger(r.sizeBytes) && r.sizeBytes >= 0;
}

/**
 * True when the metadata database holds a volume record (the create got
 * past its commit point). A database that does not open holds none only
 * when nothing was ever written to it — no table, every log empty: a
 * create killed while LevelDB made it. Anything written (a create writes
 * its first batch, then `sb`, docs/FORMAT.md §2 "Create order") may be a
 * volume's, so the open's error is the answer — damage, no space — and
 * nothing is reclaimed: a sidecar is never removed on a guess.
 * @throws CORRUPT_METADATA, NO_SPACE, IO_ERROR (a database with writes in it that does not open)
 */
async function hasVolumeRecord(layout: VolumeLayout): Promise<boolean> {
  if (!(await pathExists(layout.metaPath))) return false;
  let db: MetadataDb;
  try {
    db = await MetadataDb.open(layout.metaPath, false);
  } catch (err) {
    if (await holdsWrites(layout.metaPath)) throw metadataError(err, layout.metaPath);
    return false; // never got as far as a database with anything in it
  }
  try {
    return (await db.get(keys.volume)) !== undefined;
  } finally {
    await db.close();
  }
}

/** Whether the LevelDB folder `metaPath` holds a table, or a log with bytes in it (lstat: a link or FIFO counts as what it is). */
async function holdsWrites(metaPath: string): Promise<boolean> {
  for (const name of await readdir(metaPath).catch(() => [] as string[])) {
    if (/^\d+\.(ldb|sst)$/.test(name)) return true;
    if (/^\d+\.log$/.test(name) && ((await lstat(join(metaPath, name)).catch(() => undefined))?.size ?? 0) > 0) return true;
  }
  return false;
}

/**
 * Whether the sidecar of `layout` is what a killed create left: it holds
 * the create intent (or a torn one) and no volume record.
 * @throws VOLUME_EXISTS (a `creating` that is not a regular file), CORRUPT_METADATA, NO_SPACE, IO_ERROR (a database with writes in it that does not open: hasVolumeRecord)
 */
export async function isIncompleteCreate(layout: VolumeLayout): Promise<boolean> {
  const present = await pathExists(intentPath(layout));
  if (!present) return false;
  // A `creating` that is not a regular file (a FIFO, a folder, a device) is nothing a create made: the folder is not
  // cowvol's to take over.
  if (!(await isRegularFile(intentPath(layout)))) {
    throw new VolumeExistsError(
      `${layout.sidecarPath} holds a \`creating\` that is not a file, which no create of cowvol's makes: the folder is not taken over; remove it if it is not yours, then run the command again`,
      layout.volumePath,
    );
  }
  return !(await hasVolumeRecord(layout));
}

/**
 * Removes what a killed create of this path left (see the module comment),
 * under the owner lock, so a create still running elsewhere is never
 * touched (`VOLUME_BUSY`). Does nothing when the sidecar is absent or is
 * not an incomplete create. When the killed create was making the volume
 * file but had not named it yet, and a file is at the path, that file may
 * be the one it made or one put there since: it stays, and so does the
 * sidecar with its intent, so every re-run says the same until the user
 * removes the file — or takes it (`adopt`: the sidecar goes, the file is
 * adopted).
 * @throws VOLUME_EXISTS (that unknown file, without `adopt`), VOLUME_BUSY, IO_ERROR
 */
export async function reclaimIncompleteCreate(layout: VolumeLayout, options: { adopt?: boolean } = {}): Promise<void> {
  if (!(await isIncompleteCreate(layout))) return;
  const lock = await OwnerLock.acquire(layout.sidecarPath, await fileIdentity(layout.sidecarPath));
  try {
    if (!(await isIncompleteCreate(layout))) return; // finished (or reclaimed) while we waited for the lock
    const intent = await readIntent(layout);
    // Only the very file this create made goes: not one put at the path since, not one written to since. A torn intent was
    // cut before the file could be made; an intent without `file`, while it was being made (then it stays: VOLUME_EXISTS).
    if (intent?.file !== undefined && (await isCreatedFile(layout.volumePath, intent.file))) await rm(layout.volumePath, { force: true });
    else if (intent?.createdFile === true && intent.file === undefined && options.adopt !== true && (await pathExists(layout.volumePath))) {
      throw new VolumeExistsError(
        `${layout.volumePath} exists, and a create of it was interrupted while it made that file: it may be the empty file that create made, or a file put there since; remove it if it is not yours (or take it with create --adopt), then run the command again`,
        layout.volumePath,
      );
    }
  } finally {
    await lock.unlock().catch(() => undefined);
  }
  await rm(layout.sidecarPath, { recursive: true, force: true });
  await syncDirectory(dirname(resolve(layout.sidecarPath)));
}
