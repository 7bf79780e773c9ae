import { stat } from 'node:fs/promises';

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

/** The errno name (`ENOENT`, `ENOSPC`, …) of a Node.js system error; undefined for anything else. */
export function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

/** The message of a thrown value: its `message` when it has one (every `Error`), else the value as text. */
export function errorMessage(err: unknown): string {
  return typeof err === 'object' && err !== null && 'message' in err && typeof err.message === 'string' ? err.message : String(err);
}
