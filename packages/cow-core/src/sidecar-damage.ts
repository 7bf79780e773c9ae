import { readdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { CowvolError, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { JournalCorruptError } from '@cowvol/journal';
import { CorruptMetadataError, NotAVolumeError, StoreCorruptError } from './errors.js';
import { nonFileAt } from './files.js';

/**
 * Damage of a sidecar's parts, told apart from "not a volume" and from
 * I/O failures (docs/ARCHITECTURE.md §4.8 and §10).
 *
 * LevelDB's errors at the metadata boundary (docs/ARCHITECTURE.md §10,
 * "Damaged metadata"). classic-level reports a damaged database as
 * `LEVEL_CORRUPTION` ("Corruption: …"), and a table, log or manifest that
 * is missing or cut short as `LEVEL_IO_ERROR` ("IO error: <file>: No such
 * file or directory" / "Invalid argument"); a database whose `CURRENT` is
 * gone does not open ("… does not exist (create_if_missing is false)").
 * Each of these, in a sidecar that held a database, is `CORRUPT_METADATA`
 * (exit 6; `check` exits 2) — never `INTERNAL`, never `NOT_A_VOLUME`.
 */

/** The files a LevelDB database that was ever written holds (docs/FORMAT.md §6). */
const LEVELDB_FILE = /^(CURRENT|MANIFEST-\d+|\d+\.(ldb|sst|log))$/;

/** Messages of the errors in an error's `cause` chain, outermost first. */
function chain(err: unknown): Array<{ code: unknown; message: string }> {
  const out: Array<{ code: unknown; message: string }> = [];
  for (let e = err as { code?: unknown; message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 8; e = e.cause as typeof e, depth++) {
    out.push({ code: e.code, message: typeof e.message === 'string' ? e.message : '' });
  }
  return out;
}

/** True when `err` (or its cause) is LevelDB saying its files are damaged, missing or cut short. */
export function isLevelDbDamage(err: unknown): boolean {
  return chain(err).some(
    ({ code, message }) =>
      code === 'LEVEL_CORRUPTION' ||
      message.startsWith('Corruption:') ||
      (message.startsWith('IO error:') && /No such file or directory|Invalid argument|No such device|Is a directory/.test(message)) ||
      message.includes('does not exist (create_if_missing is false)'),
  );
}

/**
 * `err` as the metadata module reports it: LevelDB damage becomes
 * `CORRUPT_METADATA` (the LevelDB message in the text, the error as
 * `cause`); anything else is returned as it is.
 */
export function metadataError(err: unknown, metaPath: string): unknown {
  if (err instanceof CorruptMetadataError || !isLevelDbDamage(err)) return err;
  const inner = chain(err)
    .map((c) => c.message)
    .filter((m) => m !== '' && m !== 'Database failed to open');
  return new CorruptMetadataError(`metadata database ${metaPath} is damaged: ${inner.at(-1) ?? 'unreadable'}; restore the sidecar from a backup`, {
    cause: err,
    details: { path: metaPath },
  });
}

/**
 * Why the metadata database at `metaPath` did not open: `CORRUPT_METADATA`
 * when LevelDB reports damage and the folder holds LevelDB files (a
 * database was written there: `CURRENT` or the manifest deleted, a table
 * cut short), else `NOT_A_VOLUME` as before (no database: not a volume, or
 * a create that never got that far — the sidecar still holds the create
 * intent; or LevelDB refused for another reason, named in the cause).
 */
export async function metadataOpenError(metaPath: string, err: unknown): Promise<Error> {
  if (err instanceof CowvolError) return err; // NO_SPACE, IO_ERROR of the file system (level-errors.ts), or already classified
  const entries = await readdir(metaPath).catch(() => [] as string[]);
  // A create killed while making the database left it half-made: that is no volume yet (create-intent.ts).
  const creating = (await readdir(dirname(metaPath)).catch(() => [] as string[])).includes('creating');
  if (!creating && isLevelDbDamage(err) && entries.some((name) => LEVELDB_FILE.test(name))) return metadataError(err, metaPath) as Error;
  return new NotAVolumeError(`${metaPath} is not a readable cowvol metadata database`, { cause: err });
}

/**
 * Refuses a metadata folder where one of LevelDB's files (`CURRENT`,
 * `LOCK`, `LOG`, a manifest, a log, a table, a `.dbtmp`) is not a file or folder — a FIFO, a
 * socket or a device, directly or through a symbolic link. The open of
 * a FIFO blocks until a writer comes, in a pool thread that no signal can
 * stop and that the process's exit waits for. Cost: one listing of the
 * folder (tens of entries) and a stat per symbolic link in it.
 * @throws CORRUPT_METADATA
 */
export async function refuseSpecialFiles(metaPath: string): Promise<void> {
  const entries = await readdir(metaPath, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    // LevelDB's own files only (`<n>.dbtmp`: the next CURRENT, written then renamed; `LOG`: renamed to LOG.old, then
    // made anew — a rename that fails leaves it to be opened for writing); it ignores names it does not know.
    if (!['LOCK', 'LOG'].includes(entry.name) && !LEVELDB_FILE.test(entry.name) && !/^\d+\.dbtmp$/.test(entry.name)) continue;
    let special = entry.isFIFO() || entry.isSocket() || entry.isBlockDevice() || entry.isCharacterDevice();
    if (!special && entry.isSymbolicLink()) {
      special = await stat(join(metaPath, entry.name)).then(
        (st) => !st.isFile() && !st.isDirectory(),
        () => false,
      );
    }
    if (special) {
      throw new CorruptMetadataError(`metadata database ${metaPath} is damaged: ${entry.name} is not a regular file; restore the sidecar from a backup`, {
        details: { path: metaPath, file: entry.name },
      });
    }
  }
}

/**
 * Opens the store or journal file of a volume whose metadata loaded: a
 * missing file, or something else than a regular file in its place (a
 * directory, a loop of links, a FIFO, a socket, a device), is damage of
 * that part (`STORE_CORRUPT`, `JOURNAL_CORRUPT`), not an I/O failure.
 * @throws STORE_CORRUPT, JOURNAL_CORRUPT (missing, or not a regular file), IO_ERROR (anything else the opener throws)
 */
export async function openSidecarFile(opener: DeviceOpener, path: string, part: 'store' | 'journal', readOnly = false): Promise<BlockDevice> {
  // A directory, a loop of links, or any other thing that is not a regular file in its place: damage. A read-only open of
  // a directory succeeds and only reads fail; the open of a FIFO blocks until a writer comes, where no signal can end it.
  // A path that does not exist is the opener's to judge (a role opener may keep the file elsewhere).
  const damaged = (what: string, cause?: unknown): CowvolError => {
    const message = `the ${part} file ${path} of this volume is ${what}`;
    const options = { ...(cause === undefined ? {} : { cause }), details: { path } };
    return part === 'store' ? new StoreCorruptError(message, options) : new JournalCorruptError(message, options);
  };
  const notFile = await nonFileAt(path);
  if (notFile !== undefined) throw damaged(notFile);
  try {
    return await opener.open(path, { create: false, readOnly });
  } catch (err) {
    // Missing, or replaced by something else than a file since the check above: that part is damaged.
    const errno = ['ENOENT', 'EISDIR', 'ELOOP'].find((e) => chain(err).some(({ code, message }) => code === e || message.includes(e)));
    if (errno === undefined) throw err;
    throw damaged(errno === 'ENOENT' ? 'missing' : `not a file (${errno})`, err);
  }
}
