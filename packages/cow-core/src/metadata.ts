import { Packr } from 'msgpackr';
import { UnsupportedVersionError, assert } from '@cowvol/base';
import { CorruptMetadataError } from './errors.js';

/**
 * Metadata in LevelDB (docs/FORMAT.md, "Metadata keys"). Keys are ASCII
 * strings whose sort order is the order cowvol scans in; numbers inside keys
 * are fixed-width lowercase hex so that lexical order is numeric order.
 * Values are msgpackr maps, each with a schema version `v`, validated right
 * after reading (a value that fails is `CORRUPT_METADATA`, a newer `v` is
 * `UNSUPPORTED_VERSION`).
 *
 * | key                          | value            |
 * | ---------------------------- | ---------------- |
 * | `sb`                         | VolumeRecord     |
 * | `cp`                         | CheckpointRecord |
 * | `alloc`                      | AllocatorRecord  |
 * | `free:<start 12hex>`         | FreeExtentRecord |
 * | `snap:<id 8hex>`             | SnapshotRecord   |
 * | `map:<id 8hex>:<block 12hex>`| MapRecord        |
 * | `import`                     | ImportRecord     |
 * | `stamp`                      | StampRecord (outside-writes.ts) |
 * | `name:<name>`                | NameRecord (catalog-index.ts) |
 * | `snapcount`                  | SnapshotCountRecord (catalog-index.ts) |
 */
export const SCHEMA_VERSION = 1;

export interface VolumeRecord {
  v: number;
  formatVersion: number;
  uuid: string;
  sizeBytes: number;
  blockSizeBytes: number;
  createdAt: string;
  nextSnapshotId: number;
  /** `ordered`: live data written in place, metadata journaled; `journal`: live data and COW copies journaled too. */
  dataMode: DataMode;
  /** Journal file size in bytes (absent in volumes created before it was recorded: 64 MiB). */
  journalBytes?: number;
  /** Size of the space reserve file (reserve.ts); absent in volumes created before it: no reserve. */
  reserveBytes?: number;
  /** The `stamp` key was written with this record at create: from then on its absence is damage (outside-writes.ts). Absent in volumes created before: false. */
  stampFromCreate?: boolean;
}

/** How live data reaches the volume file (ext4 data=ordered / data=journal). */
export type DataMode = 'ordered' | 'journal';

export interface CheckpointRecord {
  v: number;
  sequence: number;
}

export interface AllocatorRecord {
  v: number;
  /** Store blocks ever handed out: the store file's data area spans [0, highWaterBlocks). */
  highWaterBlocks: number;
}

export interface FreeExtentRecord {
  v: number;
  lengthBlocks: number;
}

export interface SnapshotRecord {
  v: number;
  id: number;
  name: string;
  createdAt: string;
  /** `deleting` while a delete hands blocks over; finished at the next open if interrupted. */
  state: 'live' | 'deleting';
  /** Store blocks this snapshot's map holds. */
  ownedBlocks: number;
  /**
   * Volume blocks both this snapshot's map and its older catalog neighbour's
   * map hold: what deleting it alone frees (space-accounting.ts). Optional:
   * absent means 0 (and, in format version 2, not kept).
   */
  sharedBlocks?: number;
  /** User labels (`snapshot create --label k=v`). Optional: absent means none. */
  labels?: Record<string, string>;
  /** Held snapshots cannot be deleted (`snapshot hold`). Optional: absent means false. */
  held?: boolean;
  /**
   * For a snapshot created by `import`: the identity of the source snapshot
   * whose content it holds (so the next incremental stream can verify its
   * base). Optional: absent for snapshots taken here.
   */
  origin?: SnapshotIdentity;
  /**
   * Set by `accept-changes` on a snapshot that read through to the live
   * volume when writes made outside cowvol were accepted (it may hold bytes
   * it never held when taken). Optional: absent means false. Never cleared.
   */
  suspect?: boolean;
}

/**
 * Who a snapshot's content is: the volume uuid it was taken on, its id there
 * and its creation time. Names can change (rename); identities do not.
 */
export interface SnapshotIdentity {
  /** 32 lowercase hex characters. */
  volumeUuid: string;
  snapshotId: number;
  /** ISO 8601 UTC. */
  createdAt: string;
  /** The name it had when exported (informational; not compared). */
  name: string;
}

/** The same snapshot content: the same volume, snapshot id and creation time (names are not compared: a rename keeps the identity); two absent ones are the same too (FORMAT.md §6.10). */
export function sameIdentity(a: SnapshotIdentity | null | undefined, b: SnapshotIdentity | null | undefined): boolean {
  if (!a || !b) return a === b;
  return a.volumeUuid === b.volumeUuid && a.snapshotId === b.snapshotId && a.createdAt === b.createdAt;
}

/**
 * An import in progress (`import`), so `--resume` knows where to continue:
 * which stream (its source and base identity and header CRC) and how many of
 * its extents are durably applied to the live volume.
 */
export interface ImportRecord {
  v: number;
  kind: 'full' | 'incremental';
  source: SnapshotIdentity;
  base: SnapshotIdentity | null;
  /** CRC32C of the stream header: binds the marker to one exact stream. */
  headerCrc: number;
  extentCount: number;
  /** Extents [0, nextExtent) are applied and durable. */
  nextExtent: number;
  /** Data bytes of those extents. */
  appliedBytes: number;
  /**
   * The stream's checksum chain (the trailer's, stream.ts) over its header
   * and extents [0, nextExtent): binds the applied extents to the stream a
   * resume is given. Absent before the first marker advance, and in markers
   * of older releases (then not compared).
   */
  appliedChain?: number;
  /** ISO 8601 UTC: when the import started. */
  startedAt: string;
}

/** `name:<name>`: the live snapshot of that name (catalog-index.ts; format version 4). */
export interface NameRecord {
  v: number;
  id: number;
}

/** `snapcount`: how many snapshot records the catalog holds, and how many of them are `deleting` (catalog-index.ts; format version 4). */
export interface SnapshotCountRecord {
  v: number;
  snapshots: number;
  deleting: number;
}

export interface MapRecord {
  v: number;
  /** Store block holding this logical block's content as of the snapshot. */
  storeBlock: number;
  /** CRC32C of that store block's content, checked after every read of it. */
  crc: number;
}

/** One LevelDB key operation (applied in batches; see committed-metadata.ts). */
export type MetaOp = { o: 'p'; k: string; v: Buffer } | { o: 'd'; k: string };

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

export const keys = {
  volume: 'sb',
  checkpoint: 'cp',
  allocator: 'alloc',
  freePrefix: 'free:',
  free: (startBlock: number) => `free:${hex(startBlock, 12)}`,
  snapshotPrefix: 'snap:',
  snapshot: (id: number) => `snap:${hex(id, 8)}`,
  mapPrefix: (id: number) => `map:${hex(id, 8)}:`,
  map: (id: number, block: number) => `map:${hex(id, 8)}:${hex(block, 12)}`,
  importState: 'import',
  stamp: 'stamp',
  namePrefix: 'name:',
  name: (name: string) => `name:${name}`,
  snapshotCount: 'snapcount',
};

const ZEROS = '0'.repeat(16);

/** `n` in lowercase hex, zero-padded to `width` (≤ 16) digits. */
function hex(n: number, width: number): string {
  const digits = n.toString(16);
  return digits.length >= width ? digits : ZEROS.slice(0, width - digits.length) + digits; // (padStart is slower on this hot path: every key)
}

export function parseHexSuffix(key: string, prefix: string): number {
  return Number.parseInt(key.slice(prefix.length), 16);
}

export function encodeValue(value: object): Buffer {
  return packr.pack(value);
}

/** Whether `x` is a safe integer of at least `min` (default 0): the integer check of every record validation (docs/FORMAT.md §6.2). */
export function isInt(x: unknown, min = 0): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= min;
}

/** A labels map: string keys to string values. */
export function isLabels(x: unknown): x is Record<string, string> {
  return typeof x === 'object' && x !== null && !Array.isArray(x) && Object.values(x).every((v) => typeof v === 'string');
}

/** A {@link SnapshotIdentity}. */
export function isIdentity(x: unknown): x is SnapshotIdentity {
  if (typeof x !== 'object' || x === null) return false;
  const r = x as Record<string, unknown>;
  return typeof r.volumeUuid === 'string' && isInt(r.snapshotId, 1) && typeof r.createdAt === 'string' && typeof r.name === 'string';
}

/**
 * Decodes and validates a value as a `T`; `check` is given the decoded
 * fields under `T`'s names (still unchecked) and says whether they hold.
 * @throws CORRUPT_METADATA, UNSUPPORTED_VERSION
 */
export function decode<T extends { v: number }>(key: string, buf: Uint8Array, check: (x: Record<keyof T, unknown>) => boolean): T {
  let value: unknown;
  try {
    value = packr.unpack(buf);
  } catch (err) {
    throw new CorruptMetadataError(`metadata ${key} does not decode`, { cause: err, details: { key } });
  }
  if (typeof value !== 'object' || value === null) throw new CorruptMetadataError(`metadata ${key} is not a record`, { details: { key } });
  const rec = value as Record<keyof T, unknown>;
  if (!isInt(rec.v, 1)) throw new CorruptMetadataError(`metadata ${key} has no schema version`, { details: { key } });
  if (rec.v > SCHEMA_VERSION) throw new UnsupportedVersionError(`metadata ${key} has schema version ${rec.v}; this cowvol reads up to ${SCHEMA_VERSION}`, { details: { key } });
  if (!check(rec)) throw new CorruptMetadataError(`metadata ${key} fails validation`, { details: { key } });
  return rec as unknown as T;
}

export const decodeValue = {
  volume: (k: string, b: Uint8Array) =>
    decode<VolumeRecord>(
      k,
      b,
      (r) =>
        isInt(r.formatVersion, 1) &&
        typeof r.uuid === 'string' &&
        isInt(r.sizeBytes, 1) &&
        isInt(r.blockSizeBytes, 512) &&
        r.blockSizeBytes <= 65536 &&
        (r.blockSizeBytes & (r.blockSizeBytes - 1)) === 0 && // a power of two, 512 … 65,536 (layout.ts)
        r.sizeBytes % r.blockSizeBytes === 0 &&
        isInt(r.nextSnapshotId, 1) &&
        typeof r.createdAt === 'string' &&
        (r.dataMode === 'ordered' || r.dataMode === 'journal') &&
        (r.stampFromCreate === undefined || typeof r.stampFromCreate === 'boolean'),
    ),
  checkpoint: (k: string, b: Uint8Array) => decode<CheckpointRecord>(k, b, (r) => isInt(r.sequence)),
  allocator: (k: string, b: Uint8Array) => decode<AllocatorRecord>(k, b, (r) => isInt(r.highWaterBlocks)),
  free: (k: string, b: Uint8Array) => decode<FreeExtentRecord>(k, b, (r) => isInt(r.lengthBlocks, 1)),
  snapshot: (k: string, b: Uint8Array) =>
    decode<SnapshotRecord>(
      k,
      b,
      (r) =>
        isInt(r.id, 1) &&
        typeof r.name === 'string' &&
        typeof r.createdAt === 'string' &&
        (r.state === 'live' || r.state === 'deleting') &&
        isInt(r.ownedBlocks) &&
        (r.sharedBlocks === undefined || isInt(r.sharedBlocks, 1)) &&
        (r.labels === undefined || isLabels(r.labels)) &&
        (r.held === undefined || typeof r.held === 'boolean') &&
        (r.origin === undefined || isIdentity(r.origin)) &&
        (r.suspect === undefined || typeof r.suspect === 'boolean'),
    ),
  importState: (k: string, b: Uint8Array) =>
    decode<ImportRecord>(
      k,
      b,
      (r) =>
        (r.kind === 'full' || r.kind === 'incremental') &&
        isIdentity(r.source) &&
        (r.base === null || isIdentity(r.base)) &&
        isInt(r.headerCrc) &&
        r.headerCrc <= 0xffffffff &&
        isInt(r.extentCount) &&
        isInt(r.nextExtent) &&
        r.nextExtent <= r.extentCount &&
        isInt(r.appliedBytes) &&
        (r.appliedChain === undefined || (isInt(r.appliedChain) && r.appliedChain <= 0xffffffff)) &&
        typeof r.startedAt === 'string',
    ),
  name: (k: string, b: Uint8Array) => decode<NameRecord>(k, b, (r) => isInt(r.id, 1)),
  snapshotCount: (k: string, b: Uint8Array) => decode<SnapshotCountRecord>(k, b, (r) => isInt(r.snapshots) && isInt(r.deleting) && r.deleting <= r.snapshots),
  map: (k: string, b: Uint8Array) => decodeMapFast(b) ?? decode<MapRecord>(k, b, (r) => isInt(r.storeBlock) && isInt(r.crc) && r.crc <= 0xffffffff),
};

/** The bytes msgpackr writes for a MapRecord up to the value of `storeBlock`: map16 of 3, `v`: 1, the key `storeBlock`. */
const MAP_RECORD_HEAD = Buffer.from([0xde, 0x00, 0x03, 0xa1, 0x76, SCHEMA_VERSION, 0xaa, ...Buffer.from('storeBlock')]);
/** The key `crc` (fixstr 3). */
const MAP_RECORD_CRC_KEY = [0xa3, 0x63, 0x72, 0x63];

/**
 * A MapRecord decoded without msgpackr when its bytes are exactly what
 * msgpackr writes for `{v: 1, storeBlock, crc}` with both values unsigned
 * integers below 2^32 (positive fixint, uint8, uint16 or uint32); otherwise
 * undefined and the caller decodes it the general way (same result, same
 * checks). A snapshot map load decodes one per mapped block.
 */
export function decodeMapFast(b: Uint8Array): MapRecord | undefined {
  const head = MAP_RECORD_HEAD.length;
  if (b.length < head + 6) return undefined;
  for (let i = 0; i < head; i++) if (b[i] !== MAP_RECORD_HEAD[i]) return undefined;
  const storeBlock = readUint(b, head);
  if (storeBlock === undefined) return undefined;
  let at = head + uintBytes(b[head]!);
  for (let i = 0; i < MAP_RECORD_CRC_KEY.length; i++) if (b[at + i] !== MAP_RECORD_CRC_KEY[i]) return undefined;
  at += MAP_RECORD_CRC_KEY.length;
  const crc = readUint(b, at);
  if (crc === undefined || at + uintBytes(b[at]!) !== b.length) return undefined;
  return { v: SCHEMA_VERSION, storeBlock, crc };
}

/** Bytes of a msgpack unsigned integer (positive fixint, uint8/16/32) by its first byte; 0 for anything else. */
function uintBytes(first: number): number {
  if (first <= 0x7f) return 1;
  if (first === 0xcc) return 2;
  if (first === 0xcd) return 3;
  if (first === 0xce) return 5;
  return 0;
}

/** The msgpack unsigned integer (below 2^32) at `at`, or undefined (another type, or past the end). */
function readUint(b: Uint8Array, at: number): number | undefined {
  const n = at < b.length ? uintBytes(b[at]!) : 0;
  if (n === 0 || at + n > b.length) return undefined;
  if (n === 1) return b[at]!;
  let value = 0;
  for (let i = 1; i < n; i++) value = value * 256 + b[at + i]!;
  return value;
}

/** Bytes of the msgpack unsigned integer msgpackr writes for `n` (an integer in [0, 2^32)). */
function uintLength(n: number): number {
  return n < 0x80 ? 1 : n < 0x100 ? 2 : n < 0x1_0000 ? 3 : 5;
}

/** Writes `n` as msgpackr does (positive fixint, uint8, uint16 or uint32) at `at`; returns the next offset. */
function writeUint(b: Buffer, at: number, n: number): number {
  const length = uintLength(n);
  if (length === 1) b[at] = n;
  else if (length === 2) b.writeUInt8(n, at + 1);
  else if (length === 3) b.writeUInt16BE(n, at + 1);
  else b.writeUInt32BE(n, at + 1);
  if (length > 1) b[at] = length === 2 ? 0xcc : length === 3 ? 0xcd : 0xce;
  return at + length;
}

/**
 * The value of a `map:` key: exactly the bytes `encodeValue({v: 1,
 * storeBlock, crc})` gives (the inverse of decodeMapFast), written without
 * msgpackr when both values are below 2^32 — a COW commits one per block
 * (docs/PERFORMANCE.md "The CLI write path").
 */
export function encodeMapValue(storeBlock: number, crc: number): Buffer {
  if (!(isInt(storeBlock) && storeBlock < 0x1_0000_0000 && isInt(crc) && crc < 0x1_0000_0000)) return encodeValue({ v: SCHEMA_VERSION, storeBlock, crc });
  const head = MAP_RECORD_HEAD.length;
  const b = Buffer.allocUnsafe(head + uintLength(storeBlock) + MAP_RECORD_CRC_KEY.length + uintLength(crc));
  MAP_RECORD_HEAD.copy(b, 0);
  let at = writeUint(b, head, storeBlock);
  for (const byte of MAP_RECORD_CRC_KEY) b[at++] = byte;
  at = writeUint(b, at, crc);
  assert(at === b.length, 'map value length');
  return b;
}

export const putOp = (k: string, value: object): MetaOp => ({ o: 'p', k, v: encodeValue(value) });
/** The put of block `block`'s mapping in snapshot `id`'s map. */
export const putMapOp = (id: number, block: number, storeBlock: number, crc: number): MetaOp => ({ o: 'p', k: keys.map(id, block), v: encodeMapValue(storeBlock, crc) });
export const delOp = (k: string): MetaOp => ({ o: 'd', k });
