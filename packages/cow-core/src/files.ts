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

/** Whether `stat(path)` names a regular file (following symbolic links); false for anything else, or when `stat` fails. */
export async function isRegularFile(path: string): Promise<boolean> {
  return stat(path).then(
    (st) => st.isFile(),
    () => false,
  );
}
