import type { BigIntStats } from 'node:fs';
import { lstat, readdir, readlink, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { InvalidArgumentError, volumeLayout } from '@cowvol/cow-core';
import { isErrnoError, userPathError } from './os-errors.js';

/** A file's identity: device and inode (the same file under any name, symlink or hard link). */
export function identityOf(st: BigIntStats): string {
  return `${st.dev}:${st.ino}`;
}

/**
 * The files an output must never be (README "Paths given to --input and
 * --output"): the volume file and everything in its sidecar, by identity.
 */
export interface ProtectedFiles {
  volumePath: string;
  /** Identities of the volume file and of every file and folder in the sidecar, each with its path. */
  files: Map<string, string>;
  /** Identities of the sidecar folder and every folder in it (a new file there is refused). */
  folders: Set<string>;
}

/** Collects the identities of `volumePath` and its sidecar (a missing sidecar contributes nothing). */
export async function protectedFilesOf(volumePath: string): Promise<ProtectedFiles> {
  const files = new Map<string, string>();
  const folders = new Set<string>();
  const volume = await stat(volumePath, { bigint: true }).catch(() => undefined);
  if (volume) files.set(identityOf(volume), volumePath);
  const walk = async (folder: string, depth: number): Promise<void> => {
    const st = await stat(folder, { bigint: true }).catch(() => undefined);
    if (!st?.isDirectory()) return;
    folders.add(identityOf(st));
    files.set(identityOf(st), folder);
    const names = await readdir(folder).catch(() => [] as string[]);
    for (const name of names) {
      const child = await stat(join(folder, name), { bigint: true }).catch(() => undefined);
      if (child === undefined) continue;
      if (child.isDirectory() && depth < 8) await walk(join(folder, name), depth + 1);
      else files.set(identityOf(child), join(folder, name));
    }
  };
  await walk(volumeLayout(volumePath).sidecarPath, 0);
  return { volumePath, files, folders };
}

function refuse(output: string, guard: ProtectedFiles, what: string): InvalidArgumentError {
  return new InvalidArgumentError(`--output ${output} ${what}: writing there would destroy the volume or its snapshots; choose another file`, {
    details: { path: output, role: 'output', volume: guard.volumePath },
  });
}

/** Refuses an open output whose identity is a protected file. @throws INVALID_ARGUMENT */
export function assertNotProtected(output: string, st: BigIntStats, guard: ProtectedFiles): void {
  const hit = guard.files.get(identityOf(st));
  if (hit === undefined) return;
  throw refuse(output, guard, hit === guard.volumePath ? `is the volume ${guard.volumePath} (the same file, by device and inode)` : `is ${hit}, a file of the volume's sidecar`);
}

/**
 * Where `output` leads: the absolute path of the file it names once every
 * symlink is followed (a dangling symlink leads to the file it would create).
 * @throws INVALID_ARGUMENT (a folder missing, a symlink loop), IO_ERROR
 */
export async function resolveOutputPath(output: string): Promise<string> {
  let path = resolve(output);
  for (let hops = 0; hops < 40; hops++) {
    const st = await lstat(path).catch((err: unknown) => {
      if (isErrnoError(err) && err.code === 'ENOENT') return undefined;
      throw userPathError(err, output, 'output');
    });
    if (st === undefined) {
      const folder = await realpath(dirname(path)).catch((err: unknown) => {
        throw userPathError(err, output, 'output');
      });
      return join(folder, basename(path));
    }
    if (!st.isSymbolicLink())
      return realpath(path).catch((err: unknown) => {
        throw userPathError(err, output, 'output');
      });
    path = resolve(dirname(path), await readlink(path));
  }
  throw userPathError(Object.assign(new Error('too many symbolic links'), { code: 'ELOOP' }), output, 'output');
}

/**
 * Checks an output path before anything is created or truncated: refused
 * when it leads (through any symlinks, or as a hard link) to the volume or
 * a file of its sidecar, or when it would create a new file inside the
 * sidecar. Returns the resolved path (see resolveOutputPath).
 * @throws INVALID_ARGUMENT, IO_ERROR
 */
export async function checkOutputPath(output: string, guard: ProtectedFiles): Promise<string> {
  const target = await resolveOutputPath(output);
  const existing = await stat(target, { bigint: true }).catch(() => undefined);
  if (existing) assertNotProtected(output, existing, guard);
  const folder = await stat(dirname(target), { bigint: true }).catch((err: unknown) => {
    throw userPathError(err, output, 'output');
  });
  if (guard.folders.has(identityOf(folder))) throw refuse(output, guard, `is inside the sidecar ${volumeLayout(guard.volumePath).sidecarPath} of the volume`);
  return target;
}
