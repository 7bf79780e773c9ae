import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { CowvolError, IoError, NoSpaceError } from '@cowvol/base';
import { SCHEMA_VERSION, decode, keys, putOp } from './metadata.js';
import { type MetadataDb } from './metadata-db.js';
import { errorMessage } from './files.js';

/**
 * The change stamp (docs/FORMAT.md §6.11): the volume file's identity and
 * change times as cowvol last left it, in the `stamp` metadata key — taken
 * from the file, read, compared, written. What an open does about a
 * difference is outside-writes.ts.
 */

/** The `stamp` record. Numbers that may pass 2^53 (device, inode, nanosecond times) are decimal strings. */
export interface StampRecord {
  v: number;
  /** `closed`: every field must still match. `open`: the file is being written by cowvol; `dev`, `ino` and `sizeBytes` must match. */
  state: 'closed' | 'open';
  dev: string;
  ino: string;
  sizeBytes: number;
  /** Modification time, nanoseconds since the epoch. */
  mtimeNs: string;
  /** Status-change time, nanoseconds since the epoch. */
  ctimeNs: string;
  /** ISO 8601 UTC: when the stamp was written. */
  at: string;
}

/** One stamp field that differs; `recorded` and `found` are decimal (bytes, or nanoseconds for the times). */
export interface StampChange {
  /** `stamp`: the record itself is missing from a volume that has one from its create on (`recorded` "present", `found` "missing"). */
  field: 'dev' | 'ino' | 'size' | 'mtime' | 'ctime' | 'stamp';
  recorded: string;
  found: string;
}

/**
 * Wall-clock time past a stamp's newest time after which any write gets a
 * different mtime: two ticks of the coarsest kernel clock that stamps file
 * times (HZ = 100). A clean close waits until then (at most this long).
 */
export const STAMP_SETTLE_MS = 20;

const FIELDS_ALWAYS: ReadonlyArray<Exclude<StampChange['field'], 'stamp'>> = ['dev', 'ino', 'size'];
const FIELDS_CLEAN: ReadonlyArray<Exclude<StampChange['field'], 'stamp'>> = [...FIELDS_ALWAYS, 'mtime', 'ctime'];

const isDecimal = (x: unknown): boolean => typeof x === 'string' && /^(0|[1-9][0-9]{0,24})$/.test(x);

/** Decodes and validates a `stamp` value. @throws CORRUPT_METADATA, UNSUPPORTED_VERSION */
export function decodeStamp(key: string, bytes: Uint8Array): StampRecord {
  return decode<StampRecord>(
    key,
    bytes,
    (r) =>
      (r.state === 'closed' || r.state === 'open') &&
      isDecimal(r.dev) &&
      isDecimal(r.ino) &&
      typeof r.sizeBytes === 'number' &&
      Number.isSafeInteger(r.sizeBytes) &&
      r.sizeBytes >= 0 &&
      isDecimal(r.mtimeNs) &&
      isDecimal(r.ctimeNs) &&
      typeof r.at === 'string',
  );
}

/** The stamp record, or undefined when there is none. @throws CORRUPT_METADATA */
export async function readStamp(db: MetadataDb): Promise<StampRecord | undefined> {
  const bytes = await db.get(keys.stamp);
  return bytes ? decodeStamp(keys.stamp, bytes) : undefined;
}

/** The file's stamp now (`stat` with nanosecond times; follows symlinks, like every open). @throws IO_ERROR */
export async function statStamp(path: string, state: StampRecord['state']): Promise<StampRecord> {
  const st = await stat(path, { bigint: true }).catch((err: unknown) => {
    throw new IoError(`cannot stat ${path}: ${errorMessage(err)}`, { cause: err });
  });
  return {
    v: SCHEMA_VERSION,
    state,
    dev: String(st.dev),
    ino: String(st.ino),
    sizeBytes: Number(st.size),
    mtimeNs: String(st.mtimeNs),
    ctimeNs: String(st.ctimeNs),
    at: new Date().toISOString(),
  };
}

/** The fields of `found` that differ from `recorded`: all of them after a clean close, identity and size otherwise. */
export function compareStamps(recorded: StampRecord, found: StampRecord): StampChange[] {
  const value = (s: StampRecord, f: Exclude<StampChange['field'], 'stamp'>): string => (f === 'size' ? String(s.sizeBytes) : f === 'mtime' ? s.mtimeNs : f === 'ctime' ? s.ctimeNs : s[f]);
  const fields = recorded.state === 'closed' ? FIELDS_CLEAN : FIELDS_ALWAYS;
  return fields.filter((f) => value(recorded, f) !== value(found, f)).map((field) => ({ field, recorded: value(recorded, field), found: value(found, field) }));
}

/** Writes `stamp` in one LevelDB batch (`sync`: fsync LevelDB's log first). @throws NO_SPACE, IO_ERROR */
export async function writeStamp(db: MetadataDb, path: string, stamp: StampRecord, sync: boolean): Promise<void> {
  try {
    await db.apply([putOp(keys.stamp, stamp)], sync);
  } catch (err) {
    if (err instanceof CowvolError) throw err;
    const message = `cannot record the change stamp of ${path}: ${(err as Error).message}`;
    // LevelDB reports the OS error in its message only.
    if (/no space left|ENOSPC|quota exceeded|EDQUOT/i.test((err as Error).message)) throw new NoSpaceError(message, { cause: err });
    throw new IoError(message, { cause: err });
  }
}

/** Waits until a write made from now on gets a newer mtime than `stamp`'s (at most STAMP_SETTLE_MS). */
export async function settleTimes(stamp: StampRecord): Promise<void> {
  const newestMs = Number((BigInt(stamp.mtimeNs) > BigInt(stamp.ctimeNs) ? BigInt(stamp.mtimeNs) : BigInt(stamp.ctimeNs)) / 1_000_000n);
  const waitMs = Math.min(STAMP_SETTLE_MS, newestMs + STAMP_SETTLE_MS - Date.now());
  if (waitMs > 0) await sleep(waitMs);
}
