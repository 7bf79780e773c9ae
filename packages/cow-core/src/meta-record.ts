/**
 * The journal's logical records (docs/FORMAT.md §5.10): `MetaRecord`, the
 * list of their kinds, and `asMetaRecord()`, their validation right after a
 * record is decoded from the journal. What applying one does is
 * committed-metadata.ts.
 */
import { MAX_BLOCK_SIZE_BYTES } from './layout.js';
import { isIdentity, isInt, isLabels, type ImportRecord, type SnapshotIdentity, type VolumeRecord } from './metadata.js';
import { CorruptMetadataError } from './errors.js';

/**
 * A journal record: one logical metadata change (docs/FORMAT.md, "Journal
 * records"). Records say *what* changed; {@link CommittedMetadata.apply}
 * turns them into LevelDB key operations against the committed state, in
 * commit order, so changes prepared concurrently can never be applied
 * against a stale base.
 */
export type MetaRecord =
  /** Replace the volume record. */
  | { o: 'sb'; v: VolumeRecord }
  /** Create a snapshot or change its state (owned-block count is kept by apply). */
  | { o: 'snap'; id: number; name: string; createdAt: string; state: 'live' | 'deleting' }
  /** Drop a snapshot record; its map must be empty. */
  | { o: 'drop'; id: number }
  /** Map block b of snapshot id to store block p (taking p out of the free space). */
  | { o: 'map'; id: number; b: number; p: number; crc: number }
  /**
   * Map a run: blocks b + i of snapshot id to store blocks p + i, for i in
   * [0, n), n = crcs.length / 4, with the CRC32C of copy i as a little-endian
   * u32 at crcs[4i]. One record for a run of COWs consecutive both in the
   * volume and in the store (a sequential first write), instead of n.
   */
  | { o: 'mapx'; id: number; b: number; p: number; crcs: Uint8Array }
  /** Unmap block b of snapshot id and free store block p. */
  | { o: 'unmap'; id: number; b: number; p: number }
  /** Hand block b (store block p) over from snapshot `from` to snapshot `to`. */
  | { o: 'move'; from: number; to: number; b: number; p: number; crc: number }
  /** Add n (negative: subtract) to snapshot id's shared-block count (space-accounting.ts; format version 3). */
  | { o: 'shared'; id: number; n: number }
  /** Free leaked store blocks (check --repair). */
  | { o: 'free'; p: number; n: number }
  /** Rename a snapshot. */
  | { o: 'rename'; id: number; name: string }
  /** Replace a snapshot's labels (an empty map removes them). */
  | { o: 'labels'; id: number; labels: Record<string, string> }
  /** Hold (cannot be deleted) or release a snapshot. */
  | { o: 'hold'; id: number; held: boolean }
  /** Record the identity of the source snapshot an imported snapshot holds. */
  | { o: 'origin'; id: number; origin: SnapshotIdentity }
  /** Mark a snapshot suspect (`accept-changes`: it read through to live blocks written outside cowvol). */
  | { o: 'suspect'; id: number }
  /** Set (or, with null, clear) the marker of an import in progress. */
  | { o: 'import'; state: ImportRecord | null };

/** Every kind of {@link MetaRecord} (its `o`), in the order of docs/FORMAT.md §5.10 and §5.10.1; the `Record` type makes the list complete. */
export const META_RECORD_KINDS = Object.keys({
  sb: 0,
  snap: 0,
  drop: 0,
  map: 0,
  mapx: 0,
  unmap: 0,
  move: 0,
  shared: 0,
  free: 0,
  rename: 0,
  labels: 0,
  hold: 0,
  origin: 0,
  suspect: 0,
  import: 0,
} satisfies Record<MetaRecord['o'], 0>) as ReadonlyArray<MetaRecord['o']>;

function isId(x: unknown): x is number {
  return isInt(x) && x >= 1;
}

function isCrc(x: unknown): x is number {
  return isInt(x) && x <= 0xffffffff;
}

/**
 * Most blocks one `mapx` record maps with a block size: a journal record
 * must fit one journal block (the block size), and 128 bytes cover the
 * block header and every other field of the record.
 */
export function maxMapRunBlocks(blockSizeBytes: number): number {
  return Math.floor((blockSizeBytes - 128) / 4);
}
const MAX_MAP_RUN_BLOCKS = maxMapRunBlocks(MAX_BLOCK_SIZE_BYTES);

function isCrcRun(x: unknown): x is Uint8Array {
  return x instanceof Uint8Array && x.length > 0 && x.length % 4 === 0 && x.length / 4 <= MAX_MAP_RUN_BLOCKS;
}

/** Validates a record read back from the journal (assert right after reading). Throws `CORRUPT_METADATA`. */
export function asMetaRecord(record: unknown): MetaRecord {
  if (typeof record !== 'object' || record === null || !isMetaRecordShape(record as Record<string, unknown>)) {
    throw new CorruptMetadataError(`journal record is not a metadata record: ${String(jsonText(record)).slice(0, 120)}`);
  }
  return record as MetaRecord;
}

/** `JSON.stringify` as it behaves: undefined for undefined (and functions, symbols). */
const jsonText: (value: unknown) => string | undefined = JSON.stringify;

/** Whether an object has the fields of one {@link MetaRecord} kind (docs/FORMAT.md §5.10). */
function isMetaRecordShape(r: Record<string, unknown>): boolean {
  return (
    (r.o === 'sb' && typeof r.v === 'object' && r.v !== null) ||
    (r.o === 'snap' && isId(r.id) && typeof r.name === 'string' && typeof r.createdAt === 'string' && (r.state === 'live' || r.state === 'deleting')) ||
    (r.o === 'drop' && isId(r.id)) ||
    (r.o === 'map' && isId(r.id) && isInt(r.b) && isInt(r.p) && isCrc(r.crc)) ||
    (r.o === 'mapx' && isId(r.id) && isInt(r.b) && isInt(r.p) && isCrcRun(r.crcs)) ||
    (r.o === 'unmap' && isId(r.id) && isInt(r.b) && isInt(r.p)) ||
    (r.o === 'move' && isId(r.from) && isId(r.to) && isInt(r.b) && isInt(r.p) && isCrc(r.crc)) ||
    (r.o === 'shared' && isId(r.id) && Number.isSafeInteger(r.n) && r.n !== 0) ||
    (r.o === 'free' && isInt(r.p) && isInt(r.n) && r.n > 0) ||
    (r.o === 'rename' && isId(r.id) && typeof r.name === 'string') ||
    (r.o === 'labels' && isId(r.id) && isLabels(r.labels)) ||
    (r.o === 'hold' && isId(r.id) && typeof r.held === 'boolean') ||
    (r.o === 'origin' && isId(r.id) && isIdentity(r.origin)) ||
    (r.o === 'suspect' && isId(r.id)) ||
    (r.o === 'import' && typeof r.state === 'object') // an import marker, or null (typeof null is 'object')
  );
}
