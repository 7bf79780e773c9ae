import { randomBytes } from 'node:crypto';
import { constants, promises as fsp, type Stats } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { IoError, NoSpaceError, errnoCode, isCowvolError, syncDirectory } from '@cowvol/base';
import { BackupArgumentError, ObjectExistsError, ObjectNotFoundError } from './errors.js';
import type { ObjectInfo, ObjectStore } from './object-store.js';
import { trackedWrite, trackTempFile } from './interrupt-cleanup.js';

/** The longest key, in bytes of UTF-8 (S3's limit; docs/ARCHITECTURE.md §17). */
export const OBJECT_KEY_MAX_BYTES = 1024;
/** Folder levels `removeStaleTemporary` descends (a key has at most 1,024 bytes, so at most 512 segments). */
const MAX_TEMP_SWEEP_DEPTH = 512;
/** Names of in-flight temporary files start with this; no key segment may. */
const TEMP_PREFIX = '.cowvol-tmp-';

/**
 * An {@link ObjectStore} in a directory of the local file system, for
 * `file:///abs/path` (docs/ARCHITECTURE.md §17): one file per object, `/` in
 * a key a subdirectory. Every put writes a private temporary file in the
 * object's directory and fsyncs it; a conditional put then link()s it to the
 * key's name — link fails with EEXIST and never replaces, the POSIX
 * counterpart of `If-None-Match: *` — an unconditional put rename()s it;
 * either way the directory is fsynced before the put resolves.
 *
 * A key cannot be both an object and a prefix of others followed by `/`
 * (`a` and `a/b`): that put is refused with INVALID_ARGUMENT.
 */
export class FileObjectStore implements ObjectStore {
  readonly url: string;
  /** A dead process's writes here have all ended (its system calls end before it does): see ObjectStore. */
  readonly writesEndWithProcess = true;
  /** The directory holding the objects. */
  readonly rootPath: string;

  /**
   * @throws INVALID_ARGUMENT for a URL that is not `file:///` (or
   * `file://localhost/`) followed by an absolute path (`file:relative` would
   * name `/relative`), a path holding a
   * NUL, a `?` or `#` (a query or fragment, which the path would silently
   * drop), or the root directory (`file:///$DIR` with an empty `DIR`: a
   * repository's objects would land in `/`)
   */
  constructor(url: string) {
    const bad = (cause?: unknown): BackupArgumentError => new BackupArgumentError(`not a file:///absolute/path URL: ${url}`, cause === undefined ? {} : { cause });
    if (!/^file:\/\/(localhost)?\//i.test(url)) throw bad(); // file:///path, or its equivalent file://localhost/path
    // A URL drops its query and fragment: `file:///r/a#b` would be the repository /r/a. Spelled %23 and %3F, they name a path.
    if (url.includes('#') || url.includes('?')) throw new BackupArgumentError(`${url}: a file repository URL has no query or fragment; write # as %23 and ? as %3F in a path`);
    let rootPath: string;
    try {
      rootPath = fileURLToPath(url);
    } catch (err) {
      throw bad(err);
    }
    if (!isAbsolute(rootPath) || rootPath.includes('\0')) throw bad();
    rootPath = rootPath.replace(/\/+$/, '');
    if (rootPath === '') throw new BackupArgumentError(`${url} names the root directory; a repository needs a directory of its own`);
    this.rootPath = rootPath;
    this.url = pathToFileURL(this.rootPath).href;
  }

  /** @throws OBJECT_EXISTS (with ifNoneMatch) · INVALID_ARGUMENT · IO_ERROR · NO_SPACE */
  async put(key: string, body: Buffer, options?: { ifNoneMatch?: boolean }): Promise<void> {
    return trackedWrite(() => this.putFile(key, body, options));
  }

  private async putFile(key: string, body: Buffer, options?: { ifNoneMatch?: boolean }): Promise<void> {
    const path = this.pathOf(key);
    const dir = dirname(path);
    const temp = join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`);
    const untrack = trackTempFile(temp); // removed if the command is interrupted (interrupt-cleanup.ts)
    try {
      await makeDirectory(dir);
      await writeSynced(temp, body);
      if (options?.ifNoneMatch === true) {
        try {
          await fsp.link(temp, path);
        } catch (err) {
          if (errnoCode(err) !== 'EEXIST') throw err;
          // A directory there is a prefix of other keys, not an object: refused as every other collision of the two (§17).
          if ((await fsp.lstat(path)).isDirectory()) throw new BackupArgumentError(`${this.url} ${key} is a prefix of other keys followed by /`, { details: { key } });
          throw new ObjectExistsError(`${this.url} ${key} already exists`, { details: { key } });
        }
        await fsp.unlink(temp);
      } else {
        await fsp.rename(temp, path);
      }
      await syncDirectory(dir);
    } catch (err) {
      await fsp.unlink(temp).catch(() => undefined);
      throw this.coded(err, 'put', key);
    } finally {
      untrack();
    }
  }

  /** @throws OBJECT_NOT_FOUND · INVALID_ARGUMENT · IO_ERROR */
  async get(key: string): Promise<Buffer> {
    const path = this.pathOf(key);
    try {
      return await fsp.readFile(path);
    } catch (err) {
      const errno = errnoCode(err);
      if (errno === 'ENOENT' || errno === 'ENOTDIR' || errno === 'EISDIR') throw new ObjectNotFoundError(`${this.url} ${key} does not exist`, { details: { key } });
      throw this.coded(err, 'get', key);
    }
  }

  /** @throws INVALID_ARGUMENT · IO_ERROR */
  async head(key: string): Promise<ObjectInfo | undefined> {
    const path = this.pathOf(key);
    let stat: Stats;
    try {
      stat = await fsp.lstat(path);
    } catch (err) {
      const errno = errnoCode(err);
      if (errno === 'ENOENT' || errno === 'ENOTDIR') return undefined;
      throw this.coded(err, 'head', key);
    }
    return stat.isFile() ? { key, sizeBytes: stat.size, lastModified: stat.mtime } : undefined;
  }

  /**
   * Every object whose key starts with `prefix`, in ascending byte order of
   * keys: a depth-first walk that sorts each directory's names (a
   * subdirectory's name with its `/`), so memory is bounded by one
   * directory's listing per level, not by the number of objects.
   *
   * @throws INVALID_ARGUMENT for a prefix over 1,024 bytes or with a NUL · IO_ERROR
   */
  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    if (Buffer.byteLength(prefix, 'utf8') > OBJECT_KEY_MAX_BYTES || prefix.includes('\0')) throw new BackupArgumentError(`bad object key prefix: ${JSON.stringify(prefix.slice(0, 80))}`);
    yield* this.walk('', prefix);
  }

  /** @throws INVALID_ARGUMENT · IO_ERROR */
  async delete(key: string): Promise<void> {
    return trackedWrite(() => this.deleteFile(key));
  }

  /**
   * Removes the `.cowvol-tmp-*` files anywhere under the root last modified
   * at or before `cutoffMs`: a put killed (SIGKILL, a crash) between writing
   * its temporary file and renaming it into place leaves one, which no
   * listing shows. Real folders only (a symlink is not followed here: what
   * it leads to is not this store's to clean).
   * @throws IO_ERROR
   */
  async removeStaleTemporary(cutoffMs: number): Promise<{ removed: number; bytes: number }> {
    const out = { removed: 0, bytes: 0 };
    const visit = async (dirPath: string, depth: number): Promise<void> => {
      let entries;
      try {
        entries = await fsp.readdir(dirPath, { withFileTypes: true });
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') return;
        throw this.coded(err, 'list', dirPath);
      }
      for (const e of entries) {
        const path = join(dirPath, e.name);
        if (e.isDirectory() && depth < MAX_TEMP_SWEEP_DEPTH) await visit(path, depth + 1);
        else if (e.isFile() && e.name.startsWith(TEMP_PREFIX)) {
          const st = await fsp.lstat(path).catch(() => undefined);
          if (st === undefined || st.mtimeMs > cutoffMs) continue;
          const unlinked = await fsp.unlink(path).then(
            () => true,
            () => false, // gone meanwhile, or not ours to remove: not counted
          );
          if (!unlinked) continue;
          out.removed++;
          out.bytes += st.size;
        }
      }
    };
    await visit(this.rootPath, 0);
    return out;
  }

  private async deleteFile(key: string): Promise<void> {
    const path = this.pathOf(key);
    try {
      await fsp.unlink(path);
      await syncDirectory(dirname(path));
    } catch (err) {
      const errno = errnoCode(err);
      if (errno === 'ENOENT' || errno === 'ENOTDIR') return;
      throw this.coded(err, 'delete', key);
    }
  }

  /**
   * A symbolic link anywhere under the root is refused (INVALID_ARGUMENT
   * naming it), not followed and not passed over: `get` and `head` would
   * read through it while a listing that skipped it hid what it holds (a
   * prune would then delete the chunks of manifests it never saw), and one
   * that followed it would list an alias of another folder under other
   * keys (which a prune or `forget --damaged` would then delete through
   * the link). A folder moved elsewhere is mounted back, not linked.
   */
  private async *walk(dirKey: string, prefix: string): AsyncGenerator<ObjectInfo> {
    let entries;
    try {
      entries = await fsp.readdir(join(this.rootPath, dirKey), { withFileTypes: true });
    } catch (err) {
      // No folder at the root (or a file there): an empty store, as get finds no object in it.
      if ((errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') && dirKey === '') return;
      throw this.coded(err, 'list', dirKey);
    }
    const link = entries.find((e) => e.isSymbolicLink());
    if (link !== undefined) {
      throw new BackupArgumentError(
        `${this.url} holds a symbolic link, ${dirKey}${link.name}: a repository is read only through its own folders (a link would hide objects from a listing, or show them twice); put the folder it leads to back in its place, or mount it there`,
        { details: { key: `${dirKey}${link.name}` } },
      );
    }
    const names = entries
      .filter((e) => !e.name.startsWith(TEMP_PREFIX) && (e.isFile() || e.isDirectory()))
      .map((e) => ({ name: `${dirKey}${e.name}${e.isDirectory() ? '/' : ''}`, isDirectory: e.isDirectory() }))
      .sort((a, b) => Buffer.compare(Buffer.from(a.name, 'utf8'), Buffer.from(b.name, 'utf8')));
    for (const entry of names) {
      if (entry.isDirectory) {
        if (entry.name.startsWith(prefix) || prefix.startsWith(entry.name)) yield* this.walk(entry.name, prefix);
      } else if (entry.name.startsWith(prefix)) {
        const info = await this.head(entry.name);
        if (info !== undefined) yield info;
      }
    }
  }

  /** The file of `key`, after validating it. @throws INVALID_ARGUMENT */
  private pathOf(key: string): string {
    validateObjectKey(key);
    return join(this.rootPath, key);
  }

  private coded(err: unknown, what: string, key: string): Error {
    if (isCowvolError(err)) return err;
    const errno = errnoCode(err);
    const message = `${what} ${this.url} ${key}: ${err instanceof Error ? err.message : String(err)}`;
    if (errno === 'ENOSPC' || errno === 'EDQUOT') return new NoSpaceError(message, { cause: err, details: { key } });
    if (errno === 'ENOTDIR' || errno === 'EISDIR' || errno === 'EEXIST') {
      return new BackupArgumentError(`${message} (a key cannot be both an object and a prefix followed by /)`, { cause: err, details: { key } });
    }
    return new IoError(message, { cause: err, details: { key } });
  }
}

/**
 * Refuses a key that is empty, over 1,024 bytes of UTF-8, holds a NUL,
 * starts or ends with `/`, has an empty, `.` or `..` segment, or a segment
 * starting with `.cowvol-tmp-` (the store's temporary files).
 *
 * @throws INVALID_ARGUMENT
 */
export function validateObjectKey(key: string): void {
  const bad = (why: string): BackupArgumentError => new BackupArgumentError(`bad object key ${JSON.stringify(key.slice(0, 80))}: ${why}`, { details: { key: key.slice(0, 80) } });
  if (key.length === 0) throw bad('empty');
  if (Buffer.byteLength(key, 'utf8') > OBJECT_KEY_MAX_BYTES) throw bad('over 1,024 bytes');
  if (key.includes('\0')) throw bad('holds a NUL');
  if (key.startsWith('/') || key.endsWith('/')) throw bad('starts or ends with /');
  for (const segment of key.split('/')) {
    if (segment === '' || segment === '.' || segment === '..') throw bad('has an empty, . or .. segment');
    if (segment.startsWith(TEMP_PREFIX)) throw bad(`a segment starts with ${TEMP_PREFIX}`);
  }
}

/**
 * `mkdir -p` with mode 0700: `dir`, then its missing parents, each tried
 * once. Not `fs.mkdir(…, { recursive: true })`: on a file system that
 * answers ENOENT for a directory that cannot be made there (/proc, /sys)
 * that call retries forever at full CPU; here the depth bounds the calls,
 * and the ENOENT reaches the caller (IO_ERROR).
 */
async function makeDirectory(dir: string): Promise<void> {
  try {
    await fsp.mkdir(dir, { mode: 0o700 });
  } catch (err) {
    const errno = errnoCode(err);
    if (errno === 'EEXIST') return; // a file there fails the write below it with ENOTDIR
    const parent = dirname(dir);
    if (errno !== 'ENOENT' || parent === dir) throw err;
    await makeDirectory(parent);
    try {
      await fsp.mkdir(dir, { mode: 0o700 });
    } catch (again) {
      if (errnoCode(again) !== 'EEXIST') throw again; // another put made it meanwhile, or a real failure
    }
  }
}

async function writeSynced(path: string, body: Buffer): Promise<void> {
  const handle = await fsp.open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    let offset = 0;
    while (offset < body.length) offset += (await handle.write(body, offset, body.length - offset, offset)).bytesWritten;
    await handle.sync();
  } finally {
    await handle.close();
  }
}
