import { assert } from '@cowvol/base';
import { asMetaRecord, type MetaRecord } from './meta-record.js';
import type { ExtentAllocator } from './allocator.js';
import { SCHEMA_VERSION, decodeValue, delOp, keys, putMapOp, putOp, type MetaOp, type SnapshotRecord, type VolumeRecord } from './metadata.js';
import { indexOperations, type IndexedState, type SnapshotCounts } from './catalog-index.js';

/**
 * From journal records to LevelDB key operations (docs/ARCHITECTURE.md §6):
 * what `CommittedMetadata.apply` writes for one transaction, computed
 * against the committed state, which it advances — the same at commit and
 * at replay, so that a replayed transaction writes exactly what its commit
 * would have.
 */

/** The committed state the key operations read and advance (committed-metadata.ts). */
export interface CommittedState {
  sb: VolumeRecord;
  /** Every snapshot record when `complete`; else those created since a lazy load. */
  readonly snapshots: Map<number, SnapshotRecord>;
  readonly allocator: ExtentAllocator;
  /** `snapcount` (catalog-index.ts). */
  readonly counts: SnapshotCounts;
  readonly complete: boolean;
}

/**
 * The key operations of one transaction's records against the committed
 * state, which they advance (snapshots, owned-block counts, allocator,
 * volume record); `cp` not included.
 */
export function keyOperations(state: CommittedState, records: unknown[]): MetaOp[] {
  const ops: MetaOp[] = [];
  const tx: TxSnapshots = { touched: new Set<number>(), dropped: new Set<number>(), before: new Map<number, IndexedState>() };
  for (const raw of records) {
    const r = asMetaRecord(raw);
    if (!mappingOperations(state, r, ops, tx)) catalogOperations(state, r, ops, tx);
  }
  // The catalog index follows the names and states the transaction changed (catalog-index.ts).
  const changes = new Map<number, { before: IndexedState; after: IndexedState }>();
  for (const [id, before] of tx.before) {
    const rec = tx.dropped.has(id) ? undefined : state.snapshots.get(id);
    changes.set(id, { before, after: rec ? { name: rec.name, state: rec.state } : null });
  }
  for (const op of indexOperations(changes, state.counts)) ops.push(op);
  for (const op of state.allocator.takeOps()) ops.push(op);
  for (const id of tx.touched) {
    const rec = state.snapshots.get(id);
    if (tx.dropped.has(id) || !rec) continue;
    // A transaction moves both counts together: checked at its end (space-accounting.ts).
    const shared = rec.sharedBlocks ?? 0;
    assert(shared >= 0 && shared <= rec.ownedBlocks, `snapshot ${id} shares ${shared} of its ${rec.ownedBlocks} owned blocks`);
    ops.push(putOp(keys.snapshot(id), rec));
  }
  return ops;
}

/** The records that map, unmap, move or free store blocks; false for any other record. */
function mappingOperations(state: CommittedState, r: MetaRecord, ops: MetaOp[], tx: TxSnapshots): boolean {
  switch (r.o) {
    case 'map':
      state.allocator.allocateExact(r.p);
      ops.push(putMapOp(r.id, r.b, r.p, r.crc));
      owned(state, tx, r.id, 1);
      return true;
    case 'mapx': {
      const n = r.crcs.length / 4;
      const crcs = Buffer.from(r.crcs.buffer, r.crcs.byteOffset, r.crcs.length);
      for (let i = 0; i < n; i++) {
        state.allocator.allocateExact(r.p + i);
        ops.push(putMapOp(r.id, r.b + i, r.p + i, crcs.readUInt32LE(4 * i)));
      }
      owned(state, tx, r.id, n);
      return true;
    }
    case 'unmap':
      ops.push(delOp(keys.map(r.id, r.b)));
      state.allocator.free({ startBlock: r.p, lengthBlocks: 1 });
      owned(state, tx, r.id, -1);
      return true;
    case 'move':
      ops.push(delOp(keys.map(r.from, r.b)));
      ops.push(putMapOp(r.to, r.b, r.p, r.crc));
      owned(state, tx, r.from, -1);
      owned(state, tx, r.to, 1);
      return true;
    case 'shared': {
      const rec = state.snapshots.get(r.id);
      assert(rec !== undefined, `journal record names snapshot ${r.id}, which does not exist`);
      const next = (rec.sharedBlocks ?? 0) + r.n;
      if (next === 0) delete rec.sharedBlocks;
      else rec.sharedBlocks = next;
      tx.touched.add(r.id);
      return true;
    }
    case 'free':
      state.allocator.free({ startBlock: r.p, lengthBlocks: r.n });
      return true;
    default:
      return false;
  }
}

/** Counts `delta` owned blocks into snapshot `id`. */
function owned(state: CommittedState, tx: TxSnapshots, id: number, delta: number): void {
  const rec = state.snapshots.get(id);
  assert(rec !== undefined, `journal record names snapshot ${id}, which does not exist`);
  rec.ownedBlocks += delta;
  assert(rec.ownedBlocks >= 0, `snapshot ${id} owns a negative number of blocks`);
  tx.touched.add(id);
}

/** The records of the volume record, the catalog and the import marker. */
function catalogOperations(state: CommittedState, r: MetaRecord, ops: MetaOp[], tx: TxSnapshots): void {
  switch (r.o) {
    case 'sb': {
      const op = putOp(keys.volume, r.v) as { o: 'p'; k: string; v: Buffer };
      state.sb = decodeValue.volume(keys.volume, op.v); // validate before it reaches LevelDB
      ops.push(op);
      break;
    }
    case 'snap': {
      const prev = state.snapshots.get(r.id);
      assert(state.complete || prev !== undefined || r.id >= state.sb.nextSnapshotId, `snapshot record of ${r.id}, not loaded, applied before the catalog was read`);
      noteBefore(tx, r.id, prev);
      // A state change keeps the optional fields (labels, held, origin).
      state.snapshots.set(r.id, { ...prev, v: SCHEMA_VERSION, id: r.id, name: r.name, createdAt: r.createdAt, state: r.state, ownedBlocks: prev?.ownedBlocks ?? 0 });
      tx.touched.add(r.id);
      break;
    }
    case 'drop': {
      const rec = state.snapshots.get(r.id);
      noteBefore(tx, r.id, rec);
      assert(rec?.ownedBlocks === 0, `drop of snapshot ${r.id} that still owns blocks or does not exist`);
      state.snapshots.delete(r.id);
      tx.touched.delete(r.id);
      tx.dropped.add(r.id);
      ops.push(delOp(keys.snapshot(r.id)));
      break;
    }
    case 'rename':
      noteBefore(tx, r.id, state.snapshots.get(r.id));
      changeFields(state, r);
      tx.touched.add(r.id);
      break;
    case 'labels':
    case 'hold':
    case 'origin':
    case 'suspect':
      changeFields(state, r);
      tx.touched.add(r.id);
      break;
    case 'import':
      if (r.state === null) ops.push(delOp(keys.importState));
      else {
        const op = putOp(keys.importState, r.state) as { o: 'p'; k: string; v: Buffer };
        decodeValue.importState(keys.importState, op.v); // validate before it reaches LevelDB
        ops.push(op);
      }
      break;
    default:
      assert(false, `journal record ${r.o} is no catalog record`);
  }
}

/** A change of a snapshot's optional fields (name, labels, held, origin, suspect). */
function changeFields(state: CommittedState, r: Extract<MetaRecord, { o: 'rename' | 'labels' | 'hold' | 'origin' | 'suspect' }>): void {
  const rec = state.snapshots.get(r.id);
  assert(rec !== undefined, `journal record ${r.o} names snapshot ${r.id}, which does not exist`);
  if (r.o === 'rename') rec.name = r.name;
  else if (r.o === 'labels') {
    if (Object.keys(r.labels).length > 0) rec.labels = { ...r.labels };
    else delete rec.labels;
  } else if (r.o === 'hold') {
    if (r.held) rec.held = true;
    else delete rec.held;
  } else if (r.o === 'suspect') rec.suspect = true;
  else rec.origin = { ...r.origin };
}

/** The snapshots one transaction touched (their records are rewritten) and dropped (deleted), and the name and state of each it renamed, created, changed the state of or dropped, as they were before it. */
interface TxSnapshots {
  readonly touched: Set<number>;
  readonly dropped: Set<number>;
  readonly before: Map<number, IndexedState>;
}

/** Records snapshot `id`'s name and state before the transaction's first change of them. */
function noteBefore(tx: TxSnapshots, id: number, rec: SnapshotRecord | undefined): void {
  if (!tx.before.has(id)) tx.before.set(id, rec ? { name: rec.name, state: rec.state } : null);
}
