import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { assert, isCowvolError, UnsupportedVersionError } from '@cowvol/base';
import { MAX_VOLUME_BYTES, SNAPSHOT_NAME_PATTERN, validateLabels, type SnapshotIdentity } from '@cowvol/cow-core';
import { Packr } from 'msgpackr';
import { BackupCorruptError } from './errors.js';
import { isChunkId, isVolumeUuid, manifestObjectKey, parseManifestObjectKey } from './object-keys.js';
import { isValidChunkSize } from './repository-config.js';
import type { RepositoryKeys } from './repository-keys.js';

/** `CVMF` (u32 big-endian): the first bytes of a manifest (docs/FORMAT.md §12.4). */
export const MANIFEST_MAGIC = 0x43564d46;
/** The manifest version this code writes and reads (the envelope's and the payload's `v`). */
export const MANIFEST_VERSION = 1;
/** Bytes of the header: magic (4), version (1), nonce (12). */
export const MANIFEST_HEADER_BYTES = 17;
const NONCE_OFFSET = 5;
const NONCE_BYTES = 12;
/** Bytes of the AES-GCM tag at the end of a manifest. */
export const MANIFEST_TAG_BYTES = 16;
/** The most chunk-map entries a manifest holds: 2²² (16 TiB of volume at 4 MiB chunks). */
export const MAX_MANIFEST_CHUNKS = 2 ** 22;
/** The longest manifest body: the chunk map (36 bytes an entry) plus 1 MiB for everything else. */
export const MAX_MANIFEST_BYTES = MAX_MANIFEST_CHUNKS * 36 + 1024 * 1024;
const CHUNK_ID_BYTES = 32;
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;

const packr = new Packr({ useRecords: false, mapsAsObjects: true });

/**
 * One pushed snapshot (docs/FORMAT.md §12.4, docs/ARCHITECTURE.md §17): what
 * `restore` needs to rebuild it and `push` needs to use it as a parent.
 */
export interface Manifest {
  /** The volume the snapshot was pushed from: 32 lowercase hex digits. */
  volumeUuid: string;
  sizeBytes: number;
  blockSizeBytes: number;
  /** The repository's chunk size when pushed; chunk i covers bytes [i × chunkSizeBytes, min((i+1) × chunkSizeBytes, sizeBytes)). */
  chunkSizeBytes: number;
  snapshotName: string;
  /** cow-core's identity of the snapshot's content (Volume.snapshotIdentity): what `restore --into` and `import` match bases by. */
  identity: SnapshotIdentity;
  labels: Record<string, string>;
  /** ISO 8601 UTC: when the snapshot was taken. */
  createdAt: string;
  /** ISO 8601 UTC: when the push finished reading. */
  pushedAt: string;
  /** Object key of the parent manifest (the base of the incremental read), or null for a full push. */
  parent: string | null;
  /** Chunk index → chunk id (64 lowercase hex digits); an absent index is all zeros. */
  chunks: Map<number, string>;
  /** Bytes of sealed chunk bodies this push uploaded (not found in the repository already). */
  bytesNew: number;
  /** Plaintext bytes of the chunks the map names (the snapshot's non-zero data, at chunk granularity). */
  logicalBytes: number;
}

/** The number of chunks of a volume of `sizeBytes`: ceil(sizeBytes / chunkSizeBytes). */
export function chunkCount(sizeBytes: number, chunkSizeBytes: number): number {
  return Math.ceil(sizeBytes / chunkSizeBytes);
}

/**
 * Why `m` is not a valid manifest stored under `objectKey`, or undefined
 * (docs/FORMAT.md §12.4 "When a manifest is valid").
 */
export function manifestProblem(m: Manifest, objectKey: string): string | undefined {
  if (!isVolumeUuid(m.volumeUuid)) return 'volume uuid';
  if (!isUint(m.blockSizeBytes) || m.blockSizeBytes < 512 || m.blockSizeBytes > 65536 || (m.blockSizeBytes & (m.blockSizeBytes - 1)) !== 0) return 'block size';
  if (!isUint(m.sizeBytes) || m.sizeBytes === 0 || m.sizeBytes > MAX_VOLUME_BYTES || m.sizeBytes % m.blockSizeBytes !== 0) return 'size';
  if (!isValidChunkSize(m.chunkSizeBytes) || m.chunkSizeBytes % m.blockSizeBytes !== 0) return 'chunk size';
  const count = chunkCount(m.sizeBytes, m.chunkSizeBytes);
  if (count > MAX_MANIFEST_CHUNKS) return `${String(count)} chunks, more than ${String(MAX_MANIFEST_CHUNKS)}`;
  if (typeof m.snapshotName !== 'string' || !SNAPSHOT_NAME_PATTERN.test(m.snapshotName)) return 'snapshot name';
  if (!isSnapshotIdentity(m.identity)) return 'snapshot identity';
  if (!isIsoTime(m.createdAt) || !isIsoTime(m.pushedAt)) return 'times';
  if (m.parent !== null && (typeof m.parent !== 'string' || parseManifestObjectKey(m.parent) === undefined || m.parent === objectKey)) return 'parent';
  if (typeof m.labels !== 'object' || Object.getPrototypeOf(m.labels) !== Object.prototype) return 'labels';
  try {
    validateLabels(m.labels);
  } catch (err) {
    if (isCowvolError(err)) return `labels: ${err.message}`;
    throw err;
  }
  for (const [index, id] of m.chunks) if (!isUint(index) || index >= count || !isChunkId(id)) return `chunk map entry ${String(index)}`;
  if (!isUint(m.bytesNew) || !isUint(m.logicalBytes) || m.logicalBytes > m.sizeBytes) return 'byte counts';
  if (manifestObjectKey(m.volumeUuid, m.snapshotName) !== objectKey) return `stored under ${objectKey}, not under its own key`;
  return undefined;
}

/**
 * Encodes and seals a manifest to be stored under `objectKey`
 * (docs/FORMAT.md §12.4): `CVMF` | version | random nonce | AES-256-GCM
 * (manifest key) of the msgpack payload | tag, with the header's magic and
 * version and the object key as associated data.
 */
export function encodeManifest(keys: RepositoryKeys, objectKey: string, m: Manifest): Buffer {
  const problem = manifestProblem(m, objectKey);
  assert(problem === undefined, `a manifest is valid before it is encoded (${problem ?? ''})`);
  const indexes = [...m.chunks.keys()].sort((a, b) => a - b);
  const chunkIndexes = Buffer.alloc(indexes.length * 4);
  const chunkIds = Buffer.alloc(indexes.length * CHUNK_ID_BYTES);
  indexes.forEach((index, i) => {
    chunkIndexes.writeUInt32LE(index, i * 4);
    chunkIds.write(m.chunks.get(index) ?? '', i * CHUNK_ID_BYTES, 'hex');
  });
  const payload = packr.pack({
    v: MANIFEST_VERSION,
    volumeUuid: m.volumeUuid,
    sizeBytes: m.sizeBytes,
    blockSizeBytes: m.blockSizeBytes,
    chunkSizeBytes: m.chunkSizeBytes,
    snapshotName: m.snapshotName,
    identity: { volumeUuid: m.identity.volumeUuid, snapshotId: m.identity.snapshotId, createdAt: m.identity.createdAt, name: m.identity.name },
    labels: { ...m.labels },
    createdAt: m.createdAt,
    pushedAt: m.pushedAt,
    parent: m.parent,
    chunkIndexes,
    chunkIds,
    bytesNew: m.bytesNew,
    logicalBytes: m.logicalBytes,
  });
  const header = Buffer.alloc(MANIFEST_HEADER_BYTES);
  header.writeUInt32BE(MANIFEST_MAGIC, 0);
  header.writeUInt8(MANIFEST_VERSION, 4);
  randomBytes(NONCE_BYTES).copy(header, NONCE_OFFSET);
  const cipher = createCipheriv('aes-256-gcm', keys.manifestKey, header.subarray(NONCE_OFFSET), { authTagLength: MANIFEST_TAG_BYTES });
  cipher.setAAD(associatedData(header, objectKey));
  const body = Buffer.concat([header, cipher.update(payload), cipher.final(), cipher.getAuthTag()]);
  assert(body.length === payload.length + MANIFEST_HEADER_BYTES + MANIFEST_TAG_BYTES && body.length <= MAX_MANIFEST_BYTES, 'a manifest body is its payload and 33 bytes, within the bound');
  return body;
}

/**
 * Opens and checks a manifest stored under `objectKey`, in this order
 * (docs/FORMAT.md §12.4 "When a manifest is valid"): length, magic,
 * version, the GCM tag (any flipped bit, or a body stored under another
 * key, fails it), the msgpack payload and its version, then every field.
 *
 * @throws UNSUPPORTED_VERSION for a manifest of a newer version
 * @throws BACKUP_CORRUPT (details.object = objectKey) for anything else that does not check out
 */
export function decodeManifest(keys: RepositoryKeys, objectKey: string, body: Buffer): Manifest {
  const corrupt = (why: string, cause?: unknown): BackupCorruptError =>
    new BackupCorruptError(`manifest ${objectKey} is damaged: ${why}`, { details: { object: objectKey }, ...(cause === undefined ? {} : { cause }) });
  if (body.length < MANIFEST_HEADER_BYTES + MANIFEST_TAG_BYTES || body.length > MAX_MANIFEST_BYTES) throw corrupt(`${String(body.length)} bytes`);
  if (body.readUInt32BE(0) !== MANIFEST_MAGIC) throw corrupt('bad magic');
  const version = body.readUInt8(4);
  if (version > MANIFEST_VERSION) {
    throw new UnsupportedVersionError(`manifest ${objectKey} has version ${String(version)}; this cowvol reads version ${String(MANIFEST_VERSION)}`, { details: { object: objectKey, version } });
  }
  if (version !== MANIFEST_VERSION) throw corrupt(`version ${String(version)}`);
  const header = body.subarray(0, MANIFEST_HEADER_BYTES);
  const tagOffset = body.length - MANIFEST_TAG_BYTES;
  const decipher = createDecipheriv('aes-256-gcm', keys.manifestKey, header.subarray(NONCE_OFFSET), { authTagLength: MANIFEST_TAG_BYTES });
  decipher.setAAD(associatedData(header, objectKey));
  decipher.setAuthTag(body.subarray(tagOffset));
  let payload: Buffer;
  try {
    payload = Buffer.concat([decipher.update(body.subarray(MANIFEST_HEADER_BYTES, tagOffset)), decipher.final()]);
  } catch (err) {
    throw corrupt('its authentication tag does not match (damaged, or stored under another key)', err);
  }
  let raw: unknown;
  try {
    raw = packr.unpack(payload);
  } catch (err) {
    throw corrupt('its payload is not msgpack', err);
  }
  const m = fromPayload(raw);
  if (typeof m === 'string') throw corrupt(m);
  const problem = manifestProblem(m, objectKey);
  if (problem !== undefined) throw corrupt(problem);
  return m;
}

/** The payload's fields as a Manifest, or why they are not one. */
function fromPayload(raw: unknown): Manifest | string {
  if (typeof raw !== 'object' || raw === null) return 'payload is not a map';
  const r = raw as Record<string, unknown>;
  if (r.v !== MANIFEST_VERSION) return `payload version ${String(r.v)}`;
  const { chunkIndexes, chunkIds } = r;
  if (!(chunkIndexes instanceof Uint8Array) || !(chunkIds instanceof Uint8Array)) return 'chunk map';
  const count = chunkIndexes.length / 4;
  if (!Number.isInteger(count) || count > MAX_MANIFEST_CHUNKS || chunkIds.length !== count * CHUNK_ID_BYTES) return 'chunk map lengths';
  const indexes = Buffer.from(chunkIndexes.buffer, chunkIndexes.byteOffset, chunkIndexes.length);
  const ids = Buffer.from(chunkIds.buffer, chunkIds.byteOffset, chunkIds.length);
  const chunks = new Map<number, string>();
  let previous = -1;
  for (let i = 0; i < count; i++) {
    const index = indexes.readUInt32LE(i * 4);
    if (index <= previous) return 'chunk map indexes not strictly increasing';
    previous = index;
    chunks.set(index, ids.toString('hex', i * CHUNK_ID_BYTES, (i + 1) * CHUNK_ID_BYTES));
  }
  return {
    volumeUuid: r.volumeUuid as string,
    sizeBytes: r.sizeBytes as number,
    blockSizeBytes: r.blockSizeBytes as number,
    chunkSizeBytes: r.chunkSizeBytes as number,
    snapshotName: r.snapshotName as string,
    identity: r.identity as SnapshotIdentity,
    labels: r.labels as Record<string, string>,
    createdAt: r.createdAt as string,
    pushedAt: r.pushedAt as string,
    parent: r.parent as string | null,
    chunks,
    bytesNew: r.bytesNew as number,
    logicalBytes: r.logicalBytes as number,
  };
}

function isSnapshotIdentity(x: unknown): x is SnapshotIdentity {
  if (typeof x !== 'object' || x === null) return false;
  const r = x as Record<string, unknown>;
  return (
    typeof r.volumeUuid === 'string' &&
    isVolumeUuid(r.volumeUuid) &&
    isUint(r.snapshotId) &&
    r.snapshotId >= 1 &&
    isIsoTime(r.createdAt) &&
    typeof r.name === 'string' &&
    SNAPSHOT_NAME_PATTERN.test(r.name)
  );
}

function isUint(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function isIsoTime(x: unknown): x is string {
  return typeof x === 'string' && ISO_TIME.test(x);
}

/** The GCM associated data: the header's magic and version, then the object key in UTF-8. */
function associatedData(header: Buffer, objectKey: string): Buffer {
  return Buffer.concat([header.subarray(0, NONCE_OFFSET), Buffer.from(objectKey, 'utf8')]);
}
