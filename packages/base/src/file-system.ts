import { open } from 'node:fs/promises';

/**
 * fsync of a directory, so that the names created, linked or renamed in it
 * are durable (a file's own fsync does not make its directory entry
 * durable; docs/ARCHITECTURE.md §4.8, FORMAT.md §2 "Create order").
 * @throws the operating system's error (callers map it to IO_ERROR / NO_SPACE)
 */
export async function syncDirectory(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** The errno name (`ENOENT`, `ENOSPC`, …) of a Node.js system error; undefined for anything else. */
export function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

/** The message of a thrown value: its `message` when it has one (every `Error`), else the value as text. */
export function errorMessage(err: unknown): string {
  return typeof err === 'object' && err !== null && 'message' in err && typeof err.message === 'string' ? err.message : String(err);
}
