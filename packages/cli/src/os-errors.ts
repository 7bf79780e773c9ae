import { lstatSync, readlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { CowvolError, IoError, NoSpaceError } from '@cowvol/base';
import { InvalidArgumentError } from '@cowvol/cow-core';

/** `INPUT_NOT_FOUND`: the --input file (or a folder on its path) does not exist. */
export class InputNotFoundError extends CowvolError {
  constructor(path: string, options?: { cause?: unknown }) {
    super('INPUT_NOT_FOUND', `input file ${path} does not exist`, { ...options, details: { path, role: 'input' } });
  }
}

/** Which side of a command a user's path is on: what it reads (`input`) or what it writes (`output`). */
export type PathRole = 'input' | 'output';

/** True for an error the operating system raised (it carries an errno code such as `ENOENT`). */
export function isErrnoError(err: unknown): err is NodeJS.ErrnoException & { code: string } {
  if (!(err instanceof Error) || err instanceof CowvolError) return false;
  const { code } = err as NodeJS.ErrnoException;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code);
}

/**
 * The documented error for an operating-system error on a path the user
 * named (README "Paths given to --input and --output"):
 *   ENOENT        INPUT_NOT_FOUND (input) / INVALID_ARGUMENT (output: its folder is missing)
 *   EISDIR, ENOTDIR, ELOOP, ENAMETOOLONG, ENXIO   INVALID_ARGUMENT (the path names no usable file)
 *   ENOSPC, EDQUOT  NO_SPACE
 *   anything else (EACCES, EPERM, EROFS, EIO, …)  IO_ERROR
 * `details` carry `path`, `role` and `errno`. A `CowvolError` or a
 * non-OS error is returned unchanged.
 */
export function userPathError(err: unknown, path: string, role: PathRole): unknown {
  if (!isErrnoError(err)) return err;
  const flag = `--${role}`;
  const details = { path, role, errno: err.code };
  switch (err.code) {
    case 'ENOENT':
      if (role === 'input') return new InputNotFoundError(path, { cause: err });
      return new InvalidArgumentError(`${flag} ${path}: ${danglingTarget(path) ?? `the folder ${dirname(path)} does not exist`}`, { cause: err, details });
    case 'EISDIR':
      return new InvalidArgumentError(`${flag} ${path} is a directory, not a file`, { cause: err, details });
    case 'ENOTDIR':
      return new InvalidArgumentError(`${flag} ${path}: a part of the path before the last is not a directory`, { cause: err, details });
    case 'ELOOP':
      return new InvalidArgumentError(`${flag} ${path}: too many levels of symbolic links`, { cause: err, details });
    case 'ENAMETOOLONG':
      return new InvalidArgumentError(`${flag} ${path}: the name is too long`, { cause: err, details });
    case 'ENXIO':
      return new InvalidArgumentError(`${flag} ${path}: no such device, or a FIFO/socket with no process on its other end`, { cause: err, details });
    case 'ENOSPC':
    case 'EDQUOT':
      return new NoSpaceError(`no space left writing ${flag} ${path} (${err.code})`, { cause: err, details });
    case 'EACCES':
    case 'EPERM':
      return new IoError(`${flag} ${path}: permission denied (${err.code})`, { cause: err, details });
    default:
      return new IoError(`${flag} ${path}: ${err.message}`, { cause: err, details });
  }
}

/**
 * Last resort for an OS error that reached the command without a path of its
 * own role (for example on the volume path): `NO_SPACE` for ENOSPC/EDQUOT,
 * `IO_ERROR` otherwise — the operating system failed, not cowvol.
 */
export function osError(err: NodeJS.ErrnoException & { code: string }): CowvolError {
  const details = { errno: err.code, ...(err.path === undefined ? {} : { path: err.path }), ...(err.syscall === undefined ? {} : { syscall: err.syscall }) };
  if (err.code === 'ENOSPC' || err.code === 'EDQUOT') return new NoSpaceError(err.message, { cause: err, details });
  return new IoError(err.message, { cause: err, details });
}

/** For a `path` that is a symbolic link to nothing, what it points at, in words; else undefined (an error path only: synchronous). */
function danglingTarget(path: string): string | undefined {
  try {
    if (!lstatSync(path).isSymbolicLink()) return undefined;
    return `it is a symbolic link to ${readlinkSync(path)}, which does not exist`;
  } catch {
    return undefined;
  }
}
