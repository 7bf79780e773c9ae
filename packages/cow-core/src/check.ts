import type { Extent } from './allocator.js';
import type { CommittedMetadata } from './committed-metadata.js';
import { appendBlock } from './extent-runs.js';
import { verifyLevelDb } from './leveldb-verify.js';
import { decodeValue, keys, parseHexSuffix } from './metadata.js';
import { type MetadataDb } from './metadata-db.js';
import { SharedRecount } from './space-accounting.js';
import { compareIndex, countsOf } from './catalog-index.js';
import { FORMAT_VERSION } from './layout.js';

/** One problem found by {@link checkVolume}. */
export interface CheckFinding {
  kind:
    | 'double-mapping'
    | 'mapped-free-block'
    | 'map-beyond-store'
    | 'map-beyond-store-file'
    | 'map-beyond-volume'
    | 'map-of-unknown-snapshot'
    | 'owned-count-mismatch'
    | 'shared-count-mismatch'
    | 'catalog'
    | 'catalog-index'
    | 'journal-not-recovered'
    | 'undecodable-record'
    | 'metadata-checksum'
    | 'store-block-checksum';
  message: string;
}

/** Result of `Volume.check()` / `cowvol check`. */
export interface CheckReport {
  /** `clean`, `leaks` (only leaks: harmless, `--repair` frees them) or `corrupt`. */
  status: 'clean' | 'leaks' | 'corrupt';
  snapshots: number;
  mappedBlocks: number;
  storeHighWaterBlocks: number;
  freeBlocks: number;
  leakedBlocks: number;
  /** Leaked store blocks as extents. */
  leaks: Extent[];
  /** Every corruption found (bounded: the first MAX_FINDINGS). */
  corruptions: CheckFinding[];
  /** Blocks freed by `--repair` (0 without it). */
  repairedBlocks: number;
  /** Snapshots whose shared-block count `--repair` set to the recount (0 without it; space-accounting.ts). */
  repairedCounts: number;
  /** Catalog index keys (`name:`, `snapcount`) `--repair` wrote or deleted to match the catalog (0 without it; catalog-index.ts). */
  repairedIndexKeys: number;
  /** Whether every mapped store block was read and checked against its CRC32C (`--read-data`). */
  dataChecked: boolean;
  /** Store blocks that failed their CRC32C (0 unless `dataChecked`). */
  damagedBlocks: number;
  /** Names of the snapshots that read a damaged store block (empty unless `dataChecked`). */
  affectedSnapshots: string[];
}

/**
 * The report of a check that found the metadata's LevelDB files failing
 * their checksums before LevelDB opened them (`Volume.open` with
 * `verifyMetadata`: CORRUPT_METADATA with `details.problems`): status
 * `corrupt`, one `metadata-checksum` finding per damaged file, and nothing
 * else read — the counts are 0 (docs/ARCHITECTURE.md §8.4).
 */
export function metadataDamageReport(problems: readonly string[]): CheckReport {
  return {
    status: 'corrupt',
    snapshots: 0,
    mappedBlocks: 0,
    storeHighWaterBlocks: 0,
    freeBlocks: 0,
    leakedBlocks: 0,
    leaks: [],
    corruptions: problems.slice(0, MAX_FINDINGS).map((p) => ({ kind: 'metadata-checksum' as const, message: `metadata file ${p}` })),
    ...nothingRepairedOrRead(),
  };
}

/** The fields of a report before any repair or data read: nothing repaired, no data checked. */
function nothingRepairedOrRead(): Pick<CheckReport, 'repairedBlocks' | 'repairedCounts' | 'repairedIndexKeys' | 'dataChecked' | 'damagedBlocks' | 'affectedSnapshots'> {
  return { repairedBlocks: 0, repairedCounts: 0, repairedIndexKeys: 0, dataChecked: false, damagedBlocks: 0, affectedSnapshots: [] };
}

/** At most this many findings are listed (the counts stay exact). */
export const MAX_FINDINGS = 1000;

/** What {@link checkVolume} is told about the volume besides its metadata. */
export interface CheckFacts {
  storeFileBytes: number;
  blockSizeBytes: number;
  sizeBytes: number;
  journal: { lastSequence: number; appliedSequence: number };
  /** The LevelDB folder: when given, every checksum in its files is verified too (leveldb-verify.ts). */
  metadataPath?: string;
  /** Called every few thousand map records with the records checked and the total the catalog counts. */
  onProgress?: (doneBlocks: number, totalBlocks: number) => void;
}

/** Records a finding: counted always, listed up to {@link MAX_FINDINGS}. */
type Found = (kind: CheckFinding['kind'], message: string) => void;

/**
 * Scans LevelDB's persisted metadata (not any in-memory view): every
 * `map:` key of every snapshot, the free extents and the catalog, and
 * classifies what it finds (docs/ARCHITECTURE.md §8.1); with
 * `metadataPath`, also every checksum LevelDB keeps in its files. Memory:
 * one bit per store block below the high-water mark.
 */
export async function checkVolume(db: MetadataDb, meta: CommittedMetadata, facts: CheckFacts): Promise<CheckReport> {
  const corruptions: CheckFinding[] = [];
  let corruptionCount = 0;
  const found: Found = (kind, message) => {
    corruptionCount += 1;
    if (corruptions.length < MAX_FINDINGS) corruptions.push({ kind, message });
  };
  if (facts.journal.appliedSequence !== facts.journal.lastSequence) {
    found('journal-not-recovered', `journal has committed transaction ${facts.journal.lastSequence} but metadata holds only up to ${facts.journal.appliedSequence}`);
  }
  if (facts.metadataPath !== undefined) {
    for (const problem of await verifyLevelDb(facts.metadataPath)) found('metadata-checksum', `metadata file ${problem}`);
  }
  checkCatalog(meta, found);
  if (meta.sb.formatVersion === FORMAT_VERSION) await checkIndex(db, meta, found);
  const maps = await scanMaps(db, meta, facts, found);
  const hw = meta.allocator.highWaterBlocks;
  const leaks = findLeaks(meta, maps.used);
  return {
    status: corruptionCount > 0 ? 'corrupt' : leaks.leakedBlocks > 0 ? 'leaks' : 'clean',
    snapshots: meta.snapshots.size,
    mappedBlocks: maps.mappedBlocks,
    storeHighWaterBlocks: hw,
    freeBlocks: meta.allocator.freeBlocks,
    leakedBlocks: leaks.leakedBlocks,
    leaks: leaks.extents,
    corruptions,
    ...nothingRepairedOrRead(),
  };
}

/** The catalog: live names unique, every id below `nextSnapshotId`. */
function checkCatalog(meta: CommittedMetadata, found: Found): void {
  const names = new Set<string>();
  for (const rec of meta.snapshots.values()) {
    if (rec.state === 'live') {
      if (names.has(rec.name)) found('catalog', `two snapshots named ${rec.name}`);
      names.add(rec.name);
    }
    if (rec.id >= meta.sb.nextSnapshotId) found('catalog', `snapshot id ${rec.id} is not below nextSnapshotId ${meta.sb.nextSnapshotId}`);
  }
}

/** The catalog index (catalog-index.ts) against the catalog: a key per live name holding its id, no other, and the counts. */
async function checkIndex(db: MetadataDb, meta: CommittedMetadata, found: Found): Promise<void> {
  const catalog = [...meta.snapshots.values()];
  const diff = await compareIndex(db, catalog);
  const idOf = new Map(catalog.filter((r) => r.state === 'live').map((r) => [r.name, r.id]));
  for (const name of diff.missing) found('catalog-index', `the catalog index has no key giving live snapshot ${name} its id ${idOf.get(name) ?? '?'}`);
  for (const name of diff.extra) found('catalog-index', `the catalog index names ${name}, which no live snapshot is`);
  if (diff.counts !== undefined) {
    const want = countsOf(meta.snapshots.values());
    const stored = diff.counts === null ? 'nothing readable' : `${diff.counts.snapshots} (${diff.counts.deleting} deleting)`;
    found('catalog-index', `the catalog index counts ${stored}; the catalog holds ${want.snapshots} snapshot records (${want.deleting} deleting)`);
  }
}

/**
 * Every persisted `map:` key: its snapshot, volume block and store block in
 * bounds, its store block neither free nor mapped twice; then each
 * snapshot's count of owned blocks. Returns the bitmap of mapped store
 * blocks (one bit per block below the high-water mark) and their count.
 */
async function scanMaps(db: MetadataDb, meta: CommittedMetadata, facts: CheckFacts, found: Found): Promise<{ used: Uint8Array; mappedBlocks: number }> {
  const hw = meta.allocator.highWaterBlocks;
  const storeFileBlocks = Math.max(0, Math.floor(facts.storeFileBytes / facts.blockSizeBytes) - 1);
  const volumeBlocks = Math.ceil(facts.sizeBytes / facts.blockSizeBytes);
  const used = new Uint8Array(Math.ceil(hw / 8));
  const owners = new Map<number, string>(); // only for store blocks mapped twice: first owner
  const counts = new Map<number, number>();
  const ids = new Set(meta.snapshots.keys());
  const shared = new SharedRecount([...ids].sort((a, b) => a - b));
  let mappedBlocks = 0;
  let expectedBlocks = 0;
  for (const rec of meta.snapshots.values()) expectedBlocks += rec.ownedBlocks;
  // In batches of 1,024: one LevelDB round trip each, not a promise per mapping.
  for await (const mapBatch of db.scanBatches('map:')) {
    for (const [key, value] of mapBatch) {
      const id = Number.parseInt(key.slice(4, 12), 16);
      const block = parseHexSuffix(key, keys.mapPrefix(id));
      shared.visit(id, block);
      let storeBlock: number;
      try {
        storeBlock = decodeValue.map(key, value).storeBlock;
      } catch (err) {
        found('undecodable-record', `${key}: ${(err as Error).message}`);
        continue;
      }
      mappedBlocks += 1;
      if (facts.onProgress && mappedBlocks % 4096 === 0) facts.onProgress(mappedBlocks, expectedBlocks);
      counts.set(id, (counts.get(id) ?? 0) + 1);
      const where = `snapshot ${id} block ${block}`;
      if (!ids.has(id)) found('map-of-unknown-snapshot', `${where} maps store block ${storeBlock}, but there is no snapshot ${id} in the catalog`);
      if (block >= volumeBlocks) found('map-beyond-volume', `${where} is beyond the end of the volume`);
      if (storeBlock >= hw) {
        found('map-beyond-store', `${where} maps store block ${storeBlock}, beyond the allocator's high-water mark ${hw}`);
        continue;
      }
      if (storeBlock >= storeFileBlocks) found('map-beyond-store-file', `${where} maps store block ${storeBlock}, beyond the end of the store file (${storeFileBlocks} blocks)`);
      if (meta.allocator.isFree(storeBlock)) found('mapped-free-block', `${where} maps store block ${storeBlock}, which the allocator has free`);
      const byte = storeBlock >> 3;
      const bit = 1 << (storeBlock & 7);
      if ((used[byte] ?? 0) & bit) found('double-mapping', `store block ${storeBlock} is mapped twice: ${owners.get(storeBlock) ?? 'another mapping'} and ${where}`);
      else owners.set(storeBlock, where);
      used[byte] = (used[byte] ?? 0) | bit;
    }
  }
  checkCounts(meta, counts, shared.result(), found);
  facts.onProgress?.(mappedBlocks, Math.max(mappedBlocks, expectedBlocks));
  return { used, mappedBlocks };
}

/** Each snapshot's kept owned and shared counts against the scan's recount (space-accounting.ts). */
function checkCounts(meta: CommittedMetadata, owned: Map<number, number>, shared: Map<number, number>, found: Found): void {
  for (const rec of meta.snapshots.values()) {
    const n = owned.get(rec.id) ?? 0;
    if (n !== rec.ownedBlocks) found('owned-count-mismatch', `snapshot ${rec.name} (${rec.id}) counts ${rec.ownedBlocks} owned blocks but maps ${n}`);
    const s = shared.get(rec.id) ?? 0;
    if (s !== (rec.sharedBlocks ?? 0)) found('shared-count-mismatch', `snapshot ${rec.name} (${rec.id}) counts ${rec.sharedBlocks ?? 0} blocks shared with its older neighbour but shares ${s}`);
  }
}

/** Leaks: store blocks below the high-water mark neither mapped (`used`) nor free, as extents. */
function findLeaks(meta: CommittedMetadata, used: Uint8Array): { extents: Extent[]; leakedBlocks: number } {
  const extents: Extent[] = [];
  let leakedBlocks = 0;
  for (let p = 0; p < meta.allocator.highWaterBlocks; p++) {
    if ((used[p >> 3] ?? 0) & (1 << (p & 7))) continue;
    if (meta.allocator.isFree(p)) continue;
    leakedBlocks += 1;
    appendBlock(extents, p);
  }
  return { extents, leakedBlocks };
}
