import { stat } from 'node:fs/promises';

export { errnoCode, errorMessage } from '@cowvol/base';

/**
 * Whether `stat(path)` succeeds: anything at `path`, following symbolic
 * links. A failing `stat` (missing, no permission, a dangling link) counts as
 * absent; nothing is thrown.
 */
export async function pathExists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/**
 * What is at `path` in place of a regular file (`stat`, following symbolic
 * links): a directory, a loop of links, or a FIFO, socket or device — whose
 * open could block for good; undefined for a regular file, or when nothing
 * is there (or `stat` fails otherwise: the open that follows says why).
 */
export async function nonFileAt(path: string): Promise<'a directory' | 'a loop of symbolic links' | 'a FIFO, a socket or a device' | undefined> {
  return stat(path).then(
    (st) => (st.isDirectory() ? 'a directory' : st.isFile() ? undefined : 'a FIFO, a socket or a device'),
    (err: unknown) => ((err as NodeJS.ErrnoException).code === 'ELOOP' ? 'a loop of symbolic links' : undefined),
  );
}

/** Whether `stat(path)` names a regular file (following symbolic links); false for anything else, or when `stat` fails. */
export async function isRegularFile(path: string): Promise<boolean> {
  return stat(path).then(
    (st) => st.isFile(),
    () => false,
  );
}
