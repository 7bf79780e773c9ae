import { chmod, mkdir, stat } from 'node:fs/promises';

/**
 * Permissions of the sidecar (docs/ARCHITECTURE.md, "Sidecar permissions"):
 * the sidecar holds old contents of the volume (the store), recent writes
 * (the journal) and the metadata, so it must be no more accessible than the
 * volume file itself, whatever the umask.
 *
 * - The folder gets the volume file's read and write bits, with search (x)
 *   wherever read is granted: 0600 → 0700, 0640 → 0750, 0644 → 0755.
 * - The store and journal files get the volume file's read and write bits:
 *   0600, 0640, 0644.
 * - The owner always keeps rwx / rw (cowvol runs as the owner).
 * - Modes are only ever narrowed: the umask still applies, and a chmod
 *   never grants a bit the file did not already have.
 * - LevelDB creates its own files (`meta/`) and the owner lock with the
 *   umask; the folder's mode is what keeps others out of them (a 0700
 *   folder cannot be entered by anyone else).
 */

/** The modes a volume file of mode `volumeMode` gives its sidecar (permission bits only). */
export interface SidecarModes {
  /** For the sidecar folder. */
  folderMode: number;
  /** For the store and journal files. */
  fileMode: number;
}

/** @param volumeMode `st_mode` of the volume file (type bits ignored). */
export function sidecarModes(volumeMode: number): SidecarModes {
  const fileMode = (volumeMode & 0o066) | 0o600;
  let folderMode = fileMode | 0o700;
  if (fileMode & 0o040) folderMode |= 0o010;
  if (fileMode & 0o004) folderMode |= 0o001;
  return { folderMode, fileMode };
}

/** Clears from `path`'s group and other bits every bit `allowed` lacks; never sets one. Returns the mode it has. */
export async function narrowMode(path: string, allowed: number): Promise<number> {
  const current = (await stat(path)).mode & 0o7777;
  const wanted = current & (allowed | 0o7700);
  if (wanted !== current) await chmod(path, wanted);
  return wanted;
}

/**
 * Creates the sidecar folder with the mode {@link sidecarModes} gives
 * (less whatever the umask takes away).
 * @throws the `mkdir` error (EEXIST when it exists)
 */
export async function makeSidecarFolder(path: string, modes: SidecarModes): Promise<void> {
  await mkdir(path, { mode: modes.folderMode });
  await narrowMode(path, modes.folderMode);
}

/**
 * At open: narrows an existing sidecar folder that is more open than its
 * volume file allows now (a volume made private after it was created, or a
 * sidecar made by an older cowvol). Best effort — a sidecar the caller may
 * not chmod (another owner, a read-only mount) or that is missing is left
 * to the open itself, which reports what matters.
 */
export async function tightenSidecarFolder(path: string, volumeMode: number): Promise<void> {
  await narrowMode(path, sidecarModes(volumeMode).folderMode).catch(() => undefined);
}
