import type { Journal } from '../src/index.js';

/**
 * One handle with exactly these records, committed now (`Journal.start`,
 * `Handle.log`, `Handle.commit`): resolves with its transaction's sequence
 * once durable and applied.
 */
export async function commitRecords(journal: Journal, records: unknown[]): Promise<number> {
  const handle = await journal.start(Math.max(1, records.length));
  for (const r of records) handle.log(r);
  return handle.commit();
}
