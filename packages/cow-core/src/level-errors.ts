import { CowvolError, IoError, NoSpaceError } from '@cowvol/base';

/** The messages of an error and its causes, outermost first. */
function messagesOf(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) parts.push(e.message);
  return parts.join(': ');
}

/**
 * Maps an error of the LevelDB binding (classic-level reports the OS error
 * in the text of `LEVEL_IO_ERROR`, e.g. "IO error: …/MANIFEST-000037: No
 * space left on device") to cowvol's codes: a full file system or quota is
 * `NO_SPACE`, a read-only file system `IO_ERROR` (errno EROFS). Anything
 * else, and any `CowvolError`, is returned unchanged.
 */
export function levelError(err: unknown, what: string): unknown {
  if (err instanceof CowvolError) return err;
  const text = messagesOf(err);
  if (/No space left on device|Disk quota exceeded/i.test(text)) return new NoSpaceError(`${what}: ${text}`, { cause: err, details: { errno: 'ENOSPC' } });
  if (/Read-only file system/i.test(text)) return new IoError(`${what}: ${text}`, { cause: err, details: { errno: 'EROFS' } });
  return err;
}
