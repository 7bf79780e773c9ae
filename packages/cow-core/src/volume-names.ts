import { lstat, readFile, realpath, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { IoError } from '@cowvol/base';
import { InvalidArgumentError, VolumeExistsError } from './errors.js';
import { volumeLayout } from './layout.js';

/**
 * One file, several names (docs/ARCHITECTURE.md §9 "The owner lock"): a symbolic
 * link, a hard link or a bind mount reaches the same volume file by another
 * path. The owner lock is named after the file, so every name of an open
 * volume is busy; these checks keep `create --adopt` from giving a file that
 * is (or may be) a volume already a second sidecar, whose writes would
 * bypass the first one's copy-on-write.
 */

/** True when `path` names anything, a dangling symbolic link included. */
export async function nameExists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new IoError(`cannot stat ${path}: ${(err as Error).message}`, { cause: err, details: { path } });
  }
}

/**
 * Refuses to adopt the regular file at `path` (which has no sidecar of its
 * own) when it is reached by another name:
 * - a symbolic link (the last component): `VOLUME_EXISTS` when its target is
 *   a volume, else `INVALID_ARGUMENT` (adopt the file by its own name, so its
 *   sidecar sits beside its real name, where this check finds it);
 * - more than one hard link: `INVALID_ARGUMENT` (another name may be a
 *   volume; cowvol cannot find the other names);
 * - a file bind mount (a mount point in `/proc/self/mountinfo`): `INVALID_ARGUMENT`.
 * @throws VolumeExistsError `VOLUME_EXISTS`, InvalidArgumentError `INVALID_ARGUMENT`, IoError `IO_ERROR`
 */
export async function refuseOtherNames(path: string): Promise<void> {
  const io = (err: unknown): never => {
    throw new IoError(`cannot inspect ${path}: ${(err as Error).message}`, { cause: err, details: { path } });
  };
  const link = await lstat(path).catch(io);
  const real = await realpath(path).catch(io);
  if (link.isSymbolicLink()) {
    if (await nameExists(volumeLayout(real).sidecarPath)) {
      throw new VolumeExistsError(`${path} is a symbolic link to ${real}, which is already a cowvol volume; use that name`, path);
    }
    throw new InvalidArgumentError(`${path} is a symbolic link to ${real}; adopt the file by its own name`);
  }
  const st = await stat(path).catch(io);
  if (st.nlink > 1) {
    throw new InvalidArgumentError(
      `${path} has ${st.nlink} hard links: another name of it may already be a cowvol volume, and writes through another name would bypass the snapshots; adopt a copy with a single name`,
    );
  }
  const source = await bindMountSource(real);
  if (source !== undefined) throw new InvalidArgumentError(`${path} is a bind mount of ${source} (on its file system); adopt the file by its own name`);
}

/**
 * When the last component of `path` is a symbolic link whose target is a
 * volume (has a sidecar), the target's real path; else undefined. For the
 * `NOT_A_VOLUME` message of an open by another name.
 */
export async function volumeBehindLink(path: string): Promise<string | undefined> {
  try {
    if (!(await lstat(path)).isSymbolicLink()) return undefined;
    const real = await realpath(path);
    return (await nameExists(volumeLayout(real).sidecarPath)) ? real : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The source (root within its file system) of the mount whose mount point
 * is `realPath`, from `/proc/self/mountinfo`; undefined when `realPath` is
 * not a mount point or the table cannot be read (not Linux).
 */
async function bindMountSource(realPath: string): Promise<string | undefined> {
  const table = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const target = resolve(realPath);
  for (const line of table.split('\n')) {
    // mount id, parent id, major:minor, root, mount point, ... (proc(5)); spaces are octal-escaped.
    const fields = line.split(' ');
    if (fields.length < 5 || unescapeMountField(fields[4]!) !== target) continue;
    return unescapeMountField(fields[3]!);
  }
  return undefined;
}

function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}
