import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, readFile, readdir, rm, stat, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { CowvolError, holderGone, IoError, NoSpaceError, processSpace } from '@cowvol/base';
import { MetadataDb } from './metadata-db.js';
import { metadataOpenError, refuseSpecialFiles } from './sidecar-damage.js';
import { errnoCode, errorMessage } from './files.js';
import { trackTemporaryPath } from './temp-paths.js';

/**
 * The metadata database of a read-only open (docs/ARCHITECTURE.md,
 * "Read-only opens"). LevelDB (classic-level) has no read-only mode: every
 * open writes LOCK, LOG, a new MANIFEST and a new log file, and replays the
 * old log into a table. So a read-only open works on a private copy in a
 * fresh folder under the temporary directory (`TMPDIR`), which it may
 * change at will, and the sidecar is never written:
 *
 * - table files (`*.ldb`, `*.sst`) are immutable in LevelDB: they are
 *   symlinked, not copied (LevelDB only reads them, and deleting an obsolete
 *   one in the copy unlinks the link);
 * - `CURRENT`, the MANIFEST it names and the log files (`*.log`) are copied:
 *   LevelDB starts a new MANIFEST at every open and switches to a new log
 *   once the log reaches its write buffer (4 MiB), so the copy is a few
 *   MiB at most, whatever the size of the metadata.
 *
 * The open then writes into the copy: a table of the copied log, a new
 * MANIFEST, and whatever compaction LevelDB schedules (at worst new tables
 * of the size of the levels it merges). `close()` removes the folder, and
 * so does the host's signal handler if the process is stopped first: the
 * folder is registered (temp-paths.ts) before it is made.
 */
export class PrivateMetadata {
  private constructor(
    readonly db: MetadataDb,
    /** The private folder. */
    readonly path: string,
    /** Bytes copied (the symlinked tables not counted). */
    readonly copiedBytes: number,
    private readonly untrack: () => void,
  ) {}

  /**
   * Copies the metadata of `metaPath` as above and opens the copy.
   * @throws NOT_A_VOLUME (no LevelDB database there), NO_SPACE (no room under TMPDIR), IO_ERROR
   */
  static async open(metaPath: string): Promise<PrivateMetadata> {
    let names: string[];
    let manifest: string;
    await refuseSpecialFiles(metaPath); // before anything in it is read or copied
    try {
      names = await readdir(metaPath);
      manifest = (await readFile(join(metaPath, 'CURRENT'), 'utf8')).trim();
    } catch (err) {
      // No CURRENT in a folder that held a database is damage; no folder at all is not a volume (sidecar-damage.ts).
      throw await metadataOpenError(metaPath, Object.assign(new Error(`${metaPath}/CURRENT does not exist (create_if_missing is false)`), { cause: err }));
    }
    const { dir, untrack } = await makePrivateFolder();
    try {
      let copiedBytes = 0;
      for (const name of names) {
        const from = resolve(metaPath, name);
        if (/^\d+\.(ldb|sst)$/.test(name)) {
          await symlink(from, join(dir, name)).catch((err: unknown) => {
            throw copyError(err, dir);
          });
        } else if (name === 'CURRENT' || name === manifest || /^\d+\.log$/.test(name)) {
          await copyFile(from, join(dir, name)).catch((err: unknown) => {
            throw copyError(err, dir);
          });
          copiedBytes += (await stat(from)).size;
        }
      }
      const db = await MetadataDb.open(dir, false, metaPath).catch(async (err: unknown) => {
        throw await metadataOpenError(metaPath, err); // NO_SPACE, IO_ERROR (level-errors.ts), CORRUPT_METADATA or NOT_A_VOLUME
      });
      return new PrivateMetadata(db, dir, copiedBytes, untrack);
    } catch (err) {
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
      untrack();
      throw err;
    }
  }

  /** Closes the database and removes the private folder. */
  async close(): Promise<void> {
    try {
      await this.db.close();
    } finally {
      await rm(this.path, { recursive: true, force: true });
      this.untrack();
    }
  }
}

/**
 * A fresh private folder `cowvol-meta-<process space>-<pid>-<random>`
 * (`cowvol-meta-<pid>-<random>` where the space is unknown; mode 0700) under
 * TMPDIR, registered for removal on a signal before it is made (as mkdtemp
 * would make it, but with the name known first). A name that exists is
 * not ours: its registration is withdrawn and another is tried.
 * @throws NO_SPACE, IO_ERROR
 */
async function makePrivateFolder(): Promise<{ dir: string; untrack: () => void }> {
  const space = processSpace();
  if (space !== undefined) await removeDeadFolders(space);
  for (let attempt = 0; ; attempt++) {
    const dir = join(tmpdir(), `${PRIVATE_FOLDER_PREFIX}${space === undefined ? '' : `${space}-`}${process.pid}-${randomBytes(6).toString('hex')}`);
    const untrack = trackTemporaryPath(dir);
    try {
      await mkdir(dir, { mode: 0o700 });
      return { dir, untrack };
    } catch (err) {
      untrack();
      if (errnoCode(err) !== 'EEXIST' || attempt >= 8) throw copyError(err, tmpdir());
    }
  }
}

/** Name prefix of a read-only open's private folder under TMPDIR. */
const PRIVATE_FOLDER_PREFIX = 'cowvol-meta-';
/** Dead folders one open removes at most: a bound on what an open spends on others' leftovers. */
const MAX_DEAD_FOLDERS_REMOVED = 64;

/**
 * Removes the private folders (`cowvol-meta-<space>-<pid>-…`) of read-only
 * opens of this process space whose process is gone: a SIGKILL or crash
 * leaves its folder (no cleanup runs), and nothing else would remove it.
 * Only this space's (process-space.ts: elsewhere a pid means another
 * process), only where the pid is no process (ESRCH), at most
 * {@link MAX_DEAD_FOLDERS_REMOVED}; failures are ignored (another open may
 * be removing the same one).
 */
async function removeDeadFolders(space: string): Promise<void> {
  const prefix = `${PRIVATE_FOLDER_PREFIX}${space}-`;
  const names = await readdir(tmpdir()).catch(() => [] as string[]);
  let removed = 0;
  for (const name of names) {
    if (removed >= MAX_DEAD_FOLDERS_REMOVED) return;
    if (!name.startsWith(prefix)) continue;
    const pid = Number(name.slice(prefix.length).split('-')[0]);
    if (!Number.isSafeInteger(pid) || !holderGone(space, pid)) continue;
    await rm(join(tmpdir(), name), { recursive: true, force: true }).catch(() => undefined);
    removed++;
  }
}

function copyError(err: unknown, where: string): CowvolError {
  const message = `a read-only open copies the metadata journal (a few MiB) into ${where}: ${errorMessage(err)}; set TMPDIR to a writable folder with room`;
  const code = errnoCode(err);
  // role `tmpdir`: the full disk is TMPDIR's, not the volume's (deleting snapshots frees nothing there).
  if (code === 'ENOSPC' || code === 'EDQUOT') return new NoSpaceError(message, { cause: err, details: { path: where, role: 'tmpdir' } });
  return new IoError(message, { cause: err, details: { path: where, errno: code, role: 'tmpdir' } });
}

/**
 * The metadata database of an open: the sidecar's own, or with `readOnly`
 * a {@link PrivateMetadata} copy (close that one, not its `db`).
 * @throws NOT_A_VOLUME (not a LevelDB database), NO_SPACE, IO_ERROR (the file system: level-errors.ts)
 */
export async function openMetadata(metaPath: string, readOnly: boolean): Promise<{ db: MetadataDb; privateMeta?: PrivateMetadata }> {
  if (readOnly) {
    const privateMeta = await PrivateMetadata.open(metaPath);
    return { db: privateMeta.db, privateMeta };
  }
  try {
    return { db: await MetadataDb.open(metaPath, false) };
  } catch (err) {
    throw await metadataOpenError(metaPath, err);
  }
}
