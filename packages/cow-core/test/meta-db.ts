import { Level } from 'level';
import { volumeLayout } from '../src/index.js';

/** The metadata LevelDB of a closed volume, opened raw, for tests that read or damage records (docs/FORMAT.md §5). */
export type Db = Level<string, Buffer>;

/** Runs `fn` on the closed volume `vol`'s metadata database, opened raw (never created), and closes it. */
export async function withDb<T>(vol: string, fn: (db: Db) => Promise<T>): Promise<T> {
  const db = new Level<string, Buffer>(volumeLayout(vol).metaPath, { keyEncoding: 'utf8', valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}
