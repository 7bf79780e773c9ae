import { randomBytes } from 'node:crypto';
import { constants, promises as fsp } from 'node:fs';
import { dirname } from 'node:path';
import { assert, errnoCode, errorMessage, IoError, NoSpaceError, syncDirectory } from '@cowvol/base';
import { BackupArgumentError, BadKeyError } from './errors.js';

/** Bytes of key material a key file holds (docs/FORMAT.md §12.1). */
export const KEY_FILE_KEY_BYTES = 32;
/** A key file is 64 hex digits and at most one trailing newline. */
const KEY_FILE_MAX_BYTES = KEY_FILE_KEY_BYTES * 2 + 1;
const HEX_KEY = /^[0-9a-fA-F]{64}\n?$/;

/**
 * Reads the repository key from a key file (docs/FORMAT.md §12.1): exactly
 * 64 hex digits (32 bytes), optionally followed by one `\n`. The file must
 * be a regular file (not a symlink: checked with lstat, then opened with
 * O_NOFOLLOW and compared by device and inode), owned by this user, with no
 * permission bits beyond the owner's read and write (0600 or stricter) —
 * the rule ssh applies to private keys.
 *
 * @returns the 32 key bytes
 * @throws BAD_KEY (details.path) for a missing, linked, shared or malformed key file
 * @throws IO_ERROR when reading fails
 */
export async function loadKeyFile(path: string): Promise<Buffer> {
  const linkStat = await fsp.lstat(path).catch((err: unknown) => {
    throw new BadKeyError(`key file ${path}: ${errorMessage(err)}`, { cause: err, details: { path } });
  });
  if (linkStat.isSymbolicLink()) throw new BadKeyError(`key file ${path} is a symlink: name the file itself`, { details: { path } });
  if (!linkStat.isFile()) throw new BadKeyError(`key file ${path} is not a regular file`, { details: { path } });
  const handle = await fsp.open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: unknown) => {
    throw new BadKeyError(`key file ${path}: ${errorMessage(err)}`, { cause: err, details: { path } });
  });
  try {
    const stat = await handle.stat();
    if (stat.ino !== linkStat.ino || stat.dev !== linkStat.dev) throw new BadKeyError(`key file ${path} was replaced while it was opened`, { details: { path } });
    const mode = stat.mode & 0o777;
    if ((mode & 0o177) !== 0) {
      throw new BadKeyError(`key file ${path} has mode 0${mode.toString(8)}: it must be 0600 or stricter (chmod 600)`, { details: { path, mode } });
    }
    const uid = process.getuid?.();
    if (uid !== undefined && stat.uid !== uid) throw new BadKeyError(`key file ${path} is owned by uid ${String(stat.uid)}, not by this user`, { details: { path } });
    if (stat.size > KEY_FILE_MAX_BYTES) throw new BadKeyError(`key file ${path} is ${String(stat.size)} bytes: a key file is 64 hex digits`, { details: { path } });
    const buf = Buffer.alloc(KEY_FILE_MAX_BYTES + 1);
    const { bytesRead } = await handle.read(buf, 0, buf.length, 0);
    const text = buf.subarray(0, bytesRead).toString('latin1');
    if (!HEX_KEY.test(text)) throw new BadKeyError(`key file ${path} is not 64 hex digits`, { details: { path } });
    const key = Buffer.from(text.slice(0, KEY_FILE_KEY_BYTES * 2), 'hex');
    assert(key.length === KEY_FILE_KEY_BYTES, 'a key file decodes to 32 bytes');
    return key;
  } finally {
    await handle.close();
  }
}

/**
 * Creates a new key file of 32 random bytes as 64 hex digits and a newline
 * (docs/FORMAT.md §12.1): created with O_EXCL and mode 0600, never over an
 * existing file, synced, and its directory synced.
 *
 * @returns the 32 key bytes written
 * @throws INVALID_ARGUMENT when `path` already exists
 * @throws IO_ERROR, NO_SPACE when creating, writing or syncing fails
 */
export async function generateKeyFile(path: string): Promise<Buffer> {
  const key = randomBytes(KEY_FILE_KEY_BYTES);
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  const handle = await fsp.open(path, flags, 0o600).catch((err: unknown) => {
    if (errnoCode(err) === 'EEXIST') throw new BackupArgumentError(`key file ${path} already exists: it is never overwritten`, { cause: err, details: { path } });
    throw new IoError(`create key file ${path}: ${errorMessage(err)}`, { cause: err, details: { path } });
  });
  try {
    const text = Buffer.from(`${key.toString('hex')}\n`, 'latin1');
    assert(text.length === KEY_FILE_MAX_BYTES, 'a key file is 65 bytes');
    await handle.write(text, 0, text.length, 0);
    await handle.chmod(0o600); // the umask cannot have widened it, but a default ACL could
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await fsp.unlink(path).catch(() => undefined);
    const message = `write key file ${path}: ${errorMessage(err)}`;
    const errno = errnoCode(err);
    throw errno === 'ENOSPC' || errno === 'EDQUOT' ? new NoSpaceError(message, { cause: err, details: { path } }) : new IoError(message, { cause: err, details: { path } });
  }
  await handle.close();
  await syncDirectory(dirname(path));
  return key;
}
