import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { CowvolError, IoError } from '@cowvol/base';
import { InvalidArgumentError, importStream, type ImportResult, type StreamSource, type Volume } from '@cowvol/cow-core';
import type { NbdServer } from '../server.js';
import type { VolumeExports } from '../volume-exports.js';
import type { ControlMethod } from './control-server.js';
import { stringParam } from './snapshot-methods.js';

/** Longest `streamPath` `volume.import` takes, in bytes of UTF-8 (PATH_MAX of Linux). */
export const MAX_STREAM_PATH_BYTES = 4096;

/**
 * `VOLUME_BUSY` for `accept-changes` on a served volume whose path names
 * another file now than the one the server holds open (it was replaced):
 * the server goes on with the file it has open, so the new one can only be
 * taken once the server is stopped (docs/ARCHITECTURE.md §13, §14.8).
 */
export class VolumeReplacedError extends CowvolError {
  constructor(volumePath: string) {
    super(
      'VOLUME_BUSY',
      `volume ${volumePath} is busy: served by cowvol serve (process ${process.pid}), which holds open the file that was at this path; the path now names another file (replaced outside cowvol): stop the server first (cowvol stop ${volumePath}), then accept-changes`,
      { details: { path: volumePath, pid: process.pid, served: true, replaced: true } },
    );
  }
}

/**
 * The control methods that change a served volume whole, as the offline
 * commands do (docs/FORMAT.md §11.2): `volume.import` (importStream of
 * @cowvol/cow-core into the open volume, which it keeps open; while it
 * applies, `live` is unexported: EXPORT_IN_USE while a client is attached,
 * as `snapshot.restore`, VolumeExports.whileLiveUnexported, §14.8) and
 * `volume.acceptChanges` (Volume.acceptOutsideChanges after comparing the
 * file with its stamp again, frozen: docs/ARCHITECTURE.md §13).
 */
export function changeMethods(volume: Volume, server: NbdServer, exports: VolumeExports, volumePath: string): Record<string, ControlMethod> {
  const inUse = (exportName: string): number => server.connectionsTo(exportName);
  return {
    'volume.import': async (params): Promise<ImportResult> => {
      const streamPath = stringParam(params, 'streamPath');
      const flags = importFlags(params);
      const stream = await openStreamFile(streamPath);
      try {
        const run = (): Promise<ImportResult> => importStream(volumePath, stream.source, { ...flags, volume });
        // A dry run changes nothing: live stays exported (its answer is that of the moment it checks).
        return await (flags.dryRun ? run() : exports.whileLiveUnexported(inUse, run, 'import'));
      } finally {
        await stream.handle.close();
      }
    },
    'volume.acceptChanges': () => exports.whileCatalogChanges('accept-changes', () => volume.acceptOutsideChanges({ recheck: { replaced: () => new VolumeReplacedError(volumePath) } })),
  };
}

/** params `resume`, `verify`, `dryRun`: booleans, default false. @throws INVALID_ARGUMENT */
function importFlags(params: Record<string, unknown>): { resume: boolean; verify: boolean; dryRun: boolean } {
  const flag = (key: string): boolean => {
    const value = params[key] ?? false;
    if (typeof value !== 'boolean') throw new InvalidArgumentError(`params.${key} must be a boolean`);
    return value;
  };
  return { resume: flag('resume'), verify: flag('verify'), dryRun: flag('dryRun') };
}

/**
 * Opens the stream file a client named: an absolute path of at most
 * MAX_STREAM_PATH_BYTES, opened read-only without following a symlink at
 * its end (O_NOFOLLOW), and only a regular file (checked on the open
 * handle: what is read is what was checked). The server reads it as its
 * own user.
 * @throws INVALID_ARGUMENT (relative, too long, a symlink, not a regular file), IO_ERROR (cannot be opened: missing, permission)
 */
export async function openStreamFile(streamPath: string): Promise<{ handle: FileHandle; source: StreamSource }> {
  if (!isAbsolute(streamPath) || Buffer.byteLength(streamPath) > MAX_STREAM_PATH_BYTES || streamPath.includes('\0')) {
    throw new InvalidArgumentError(`params.streamPath must be an absolute path of at most ${MAX_STREAM_PATH_BYTES} bytes`);
  }
  const handle = await open(streamPath, constants.O_RDONLY | constants.O_NOFOLLOW).catch((err: unknown) => {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') throw new InvalidArgumentError(`stream file ${streamPath} is a symbolic link: name the file itself`, { cause: err });
    throw new IoError(`the server cannot open the stream file ${streamPath}: ${err instanceof Error ? err.message : String(err)}`, { cause: err, details: { path: streamPath, role: 'input' } });
  });
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new InvalidArgumentError(`stream file ${streamPath} is not a regular file`);
    return { handle, source: { lengthBytes: st.size, read: (offsetBytes, lengthBytes) => readAt(handle, streamPath, offsetBytes, lengthBytes) } };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/** Up to `lengthBytes` at `offsetBytes` (fewer only at the end of the file). @throws IO_ERROR */
async function readAt(handle: FileHandle, path: string, offsetBytes: number, lengthBytes: number): Promise<Buffer> {
  const buf = Buffer.alloc(lengthBytes);
  let done = 0;
  while (done < lengthBytes) {
    const { bytesRead } = await handle.read(buf, done, lengthBytes - done, offsetBytes + done).catch((err: unknown) => {
      throw new IoError(`cannot read the stream file ${path}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    });
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buf.subarray(0, done);
}
