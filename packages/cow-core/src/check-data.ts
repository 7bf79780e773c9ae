import { MAX_FINDINGS, type CheckReport } from './check.js';
import type { CommittedMetadata } from './committed-metadata.js';
import type { SnapshotRecord } from './metadata.js';
import { decodeValue, keys, parseHexSuffix } from './metadata.js';
import { type MetadataDb } from './metadata-db.js';
import { storeBlockCrc } from './store-crc.js';
import type { SnapshotStore } from './store.js';

/** A store block that fails its bound CRC32C (`check --read-data`, docs/ARCHITECTURE.md "check"). */
export interface DamagedStoreBlock {
  storeBlock: number;
  /** The mapping that names it: `map:<snapshotId>:<volumeBlock>`. */
  snapshotId: number;
  volumeBlock: number;
  /** Names of the snapshots whose view reads this copy: its owner and every older one reading through to it, newest first. */
  affectedSnapshots: string[];
  /** True when the block lies past the end of the store file: it cannot be read at all (else it fails its CRC32C). */
  pastEnd?: boolean;
}

/** Mappings whose store blocks are read per round (sorted by store block, read in runs). */
export const DATA_CHECK_BATCH_BLOCKS = 1024;
/** Longest single store read of the data check. */
const MAX_RUN_BLOCKS = 256;

interface Mapping {
  snapshotId: number;
  volumeBlock: number;
  storeBlock: number;
  crc: number;
}

/** What {@link checkStoreData} found. */
export interface DataCheckResult {
  /** Store blocks that fail their CRC32C (all of them counted). */
  damagedBlocks: number;
  /** The first `maxListed` of them, in scan order, each with the snapshots reading it. */
  damaged: DamagedStoreBlock[];
  /** Every snapshot that reads some damaged block (the union over all of them, not only the listed ones). */
  affectedSnapshots: string[];
}

/**
 * Reads every mapped store block and checks it against its bound CRC32C
 * (docs/FORMAT.md §4.2), then names the snapshots each damaged block
 * affects. Mappings that the metadata check already reports as impossible
 * (beyond the store file, undecodable) are skipped. Cost: one read of every
 * mapped store block (the whole used store), in runs of up to 256 blocks;
 * memory O(DATA_CHECK_BATCH_BLOCKS blocks + maxListed findings).
 * @throws IO_ERROR (a store read fails)
 */
export async function checkStoreData(
  db: MetadataDb,
  meta: CommittedMetadata,
  facts: {
    blockSizeBytes: number;
    storeFileBlocks: number;
    readStore: (storeBlock: number, countBlocks: number) => Promise<Buffer>;
    /** Damaged blocks listed one by one at most (the count and the union stay exact). */
    maxListed: number;
    onProgress?: (doneBlocks: number, totalBlocks: number) => void;
  },
): Promise<DataCheckResult> {
  let total = 0;
  for (const rec of meta.snapshots.values()) total += rec.ownedBlocks;
  const catalog = [...meta.snapshots.values()].sort((a, b) => a.id - b.id);
  const result: DataCheckResult = { damagedBlocks: 0, damaged: [], affectedSnapshots: [] };
  const affected = new Set<string>();
  let done = 0;
  let batch: Mapping[] = [];
  const damaged = async (m: Mapping, pastEnd: boolean): Promise<void> => {
    result.damagedBlocks += 1;
    const listed = result.damaged.length < facts.maxListed;
    // Past the listed ones, a walk can only add names when some snapshot at or below the owner is not named yet.
    if (!listed && catalog.every((r) => r.id > m.snapshotId || r.state !== 'live' || affected.has(r.name))) return;
    const names = await affectedBy(db, catalog, m);
    for (const name of names) affected.add(name);
    if (listed) result.damaged.push({ snapshotId: m.snapshotId, volumeBlock: m.volumeBlock, storeBlock: m.storeBlock, affectedSnapshots: names, ...(pastEnd ? { pastEnd } : {}) });
  };
  const flush = async (): Promise<void> => {
    for (const m of await damagedOf(batch, facts)) await damaged(m, false);
    done += batch.length;
    facts.onProgress?.(done, Math.max(done, total));
    batch = [];
  };
  // In batches of 1,024: one LevelDB round trip each, not a promise per mapping.
  for await (const mapBatch of db.scanBatches('map:')) {
    for (const [key, value] of mapBatch) {
      const snapshotId = Number.parseInt(key.slice(4, 12), 16);
      let rec;
      try {
        rec = decodeValue.map(key, value);
      } catch {
        continue; // reported by the metadata check as undecodable-record
      }
      const m = { snapshotId, volumeBlock: parseHexSuffix(key, keys.mapPrefix(snapshotId)), storeBlock: rec.storeBlock, crc: rec.crc };
      // Past the end of the store file (also a map-beyond-store(-file) finding): no read can verify it; its readers are named.
      if (rec.storeBlock >= facts.storeFileBlocks) await damaged(m, true);
      else batch.push(m);
      if (batch.length >= DATA_CHECK_BATCH_BLOCKS) await flush();
    }
  }
  await flush();
  result.affectedSnapshots = [...affected];
  return result;
}

/** The mappings of `batch` whose store block fails its bound CRC32C; reads runs consecutive in the store. */
async function damagedOf(batch: Mapping[], facts: { blockSizeBytes: number; readStore: (storeBlock: number, countBlocks: number) => Promise<Buffer> }): Promise<Mapping[]> {
  const bs = facts.blockSizeBytes;
  const sorted = [...batch].sort((a, b) => a.storeBlock - b.storeBlock);
  const bad: Mapping[] = [];
  for (let i = 0; i < sorted.length;) {
    let j = i + 1;
    while (j < sorted.length && j - i < MAX_RUN_BLOCKS && sorted[j]!.storeBlock === sorted[j - 1]!.storeBlock + 1) j++;
    const data = await facts.readStore(sorted[i]!.storeBlock, j - i);
    for (let k = i; k < j; k++) {
      const m = sorted[k]!;
      if (storeBlockCrc(m, data.subarray((k - i) * bs, (k - i + 1) * bs)) !== m.crc) bad.push(m);
    }
    i = j;
  }
  return bad;
}

/**
 * Snapshots whose view reads the copy `m` names (docs/ARCHITECTURE.md §4.3):
 * its owner, then each older snapshot, newest first, as long as none of them
 * has a copy of its own of that block. Deleting snapshots are walked but
 * not named (they are hidden); an owner missing from the catalog is named
 * by nothing. `catalog` is sorted by id. O(snapshots) point reads of LevelDB.
 */
async function affectedBy(db: MetadataDb, catalog: readonly SnapshotRecord[], m: Mapping): Promise<string[]> {
  const at = catalog.findIndex((r) => r.id === m.snapshotId);
  if (at < 0) return [];
  const names = catalog[at]!.state === 'live' ? [catalog[at]!.name] : [];
  for (let i = at - 1; i >= 0; i--) {
    const rec = catalog[i]!;
    if ((await db.get(keys.map(rec.id, m.volumeBlock))) !== undefined) break;
    if (rec.state === 'live') names.push(rec.name);
  }
  return names;
}

/**
 * Adds the data check's result to a metadata check's report: one
 * `store-block-checksum` finding per damaged block, the union of the
 * affected snapshots, status `corrupt` when any block is damaged.
 */
function addDataFindings(report: CheckReport, data: DataCheckResult, maxFindings: number): void {
  report.dataChecked = true;
  report.damagedBlocks = data.damagedBlocks;
  report.affectedSnapshots = data.affectedSnapshots;
  for (const d of data.damaged) {
    if (report.corruptions.length < maxFindings) {
      const who = d.affectedSnapshots.length > 0 ? `; snapshots reading it: ${d.affectedSnapshots.join(', ')}` : '';
      report.corruptions.push({
        kind: 'store-block-checksum',
        message: `store block ${d.storeBlock} (block ${d.volumeBlock} of snapshot ${d.snapshotId}) ${d.pastEnd === true ? 'lies past the end of the store file: it cannot be read' : 'fails its checksum'}${who}`,
      });
    }
  }
  if (data.damagedBlocks > 0) report.status = 'corrupt';
}

/**
 * `Volume.check({readData})`: runs {@link checkStoreData} over `store` (the
 * store file itself, not its read cache) and adds what it finds to
 * `report`. `onProgress` gets phase `data`.
 * @throws IO_ERROR (a store read fails)
 */
export async function checkStoreInto(
  report: CheckReport,
  db: MetadataDb,
  meta: CommittedMetadata,
  store: SnapshotStore,
  onProgress?: (doneBlocks: number, totalBlocks: number, phase: 'data') => void,
): Promise<void> {
  const blockSizeBytes = store.blockSizeBytes;
  const storeFileBlocks = Math.max(0, Math.floor((await store.device.sizeBytes()) / blockSizeBytes) - 1);
  const data = await checkStoreData(db, meta, {
    blockSizeBytes,
    storeFileBlocks,
    readStore: (storeBlock, countBlocks) => store.read(storeBlock, countBlocks),
    maxListed: MAX_FINDINGS,
    ...(onProgress ? { onProgress: (done: number, total: number) => onProgress(done, total, 'data') } : {}),
  });
  addDataFindings(report, data, MAX_FINDINGS);
}
