import { open, rm } from 'node:fs/promises';
import { errnoCode, errorMessage, pathExists } from './files.js';
import { constants } from 'node:fs';
import { IoError, NoSpaceError } from '@cowvol/base';

/**
 * The space reserve (docs/FORMAT.md, "Sidecar"; docs/ARCHITECTURE.md, "A
 * full disk"): `<sidecar>/reserve`, a file of zeros written (not sparse)
 * when the volume is created, like ext4's reserved blocks. A delete
 * releases it before it opens anything, so that on a full file system the
 * delete has room for what it must write — LevelDB's new MANIFEST and log,
 * the journal blocks of its transactions (the journal file is sparse until
 * written), the tables of its metadata. A writable close puts it back when
 * there is room again (best effort: a full disk leaves it released).
 */
export const RESERVE_BYTES = 2 * 1024 * 1024;

const CHUNK_BYTES = 256 * 1024;

/**
 * Writes the reserve file (zeros, synced) unless it is there already.
 * `bestEffort`: on a full file system, removes what it wrote and returns
 * false instead of throwing. Returns true when the reserve is in place.
 * @throws NO_SPACE, IO_ERROR (not with `bestEffort` for a full disk)
 */
export async function writeReserve(path: string, sizeBytes: number, bestEffort = false): Promise<boolean> {
  if (sizeBytes === 0) return true;
  if (await pathExists(path)) return true;
  let handle;
  try {
    handle = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    const zeros = Buffer.alloc(Math.min(CHUNK_BYTES, sizeBytes));
    for (let at = 0; at < sizeBytes;) {
      const { bytesWritten } = await handle.write(zeros, 0, Math.min(zeros.length, sizeBytes - at), at);
      if (bytesWritten === 0) throw Object.assign(new Error('no space left on device (short write)'), { code: 'ENOSPC' });
      at += bytesWritten; // a short write is followed by ENOSPC on the next one
    }
    await handle.datasync();
    await handle.close();
    return true;
  } catch (err) {
    await handle?.close().catch(() => undefined);
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return true;
    await rm(path, { force: true }).catch(() => undefined);
    if (code === 'ENOSPC' || code === 'EDQUOT') {
      if (bestEffort) return false;
      throw new NoSpaceError(`no room for the ${sizeBytes}-byte space reserve ${path}`, { cause: err, details: { path } });
    }
    if (bestEffort && code === 'EROFS') return false;
    throw new IoError(`cannot write the space reserve ${path}: ${(err as Error).message}`, { cause: err, details: { path, errno: code } });
  }
}

/** Removes the reserve file (its space is free again); nothing when absent. @throws IO_ERROR */
export async function releaseReserve(path: string): Promise<void> {
  await rm(path, { force: true }).catch((err: unknown) => {
    // Not a file (a directory put in its place): nothing of cowvol's to release, and nothing to remove.
    if (errnoCode(err) === 'EISDIR' || errnoCode(err) === 'ERR_FS_EISDIR') return;
    throw new IoError(`cannot release the space reserve ${path}: ${errorMessage(err)}`, { cause: err, details: { path, errno: errnoCode(err) } });
  });
}
