import { type BlockDevice, assert } from '@cowvol/base';
import { Unpackr } from 'msgpackr';
import { JournalCorruptError, JournalNeedsRecoveryError } from './errors.js';
import { revokeKey, transactionSeed, type JournalSuperblock } from './format.js';
import { LogReader } from './log-reader.js';
import { geometryOf, type RecoveryOptions, type ScanResult } from './recovery-scan.js';
import { PayloadArena, walkTransaction } from './transaction-walk.js';

/**
 * The second recovery pass (docs/ARCHITECTURE.md §5.4), after jbd2's
 * recovery.c `PASS_REPLAY`: reads the committed transactions the scan
 * (recovery-scan.ts) found again, one at a time, writing each image home as
 * it is read (unless revoked) and then handing the transaction's records on.
 *
 * Memory: one read-ahead window, and the record payload of the one
 * transaction it is in, in a reused {@link PayloadArena} (decoded only if
 * the owner reads it, during its replay call) — never more than the commit
 * that wrote the transaction held.
 */

/** One transaction as the replay pass hands it to the owner. */
export interface ReplayedTransaction {
  sequence: number;
  /**
   * Its records in log order. Decoded on first access, so an owner that
   * skips the transaction (already applied) never pays for decoding; that
   * first access must happen before the replay call resolves (the payload
   * buffer is then reused).
   * @throws JOURNAL_CORRUPT if the payload no longer decodes to the count the
   *   scan saw; ASSERTION_FAILED on a first access after the call resolved
   */
  readonly records: unknown[];
  /**
   * True for the last transaction of this recovery. An owner may defer the
   * effect of replayed transactions and group several into one write (e.g.
   * one LevelDB batch) as long as everything is applied when the call for
   * the last one resolves.
   */
  last: boolean;
}

/** Where the replay pass sends what it reads. */
export interface ReplaySink {
  /** Writes one image home (never called for a revoked one). `data` is a view into the read window: copy to keep. */
  image(target: number, homeBlock: number, data: Buffer, sequence: number): Promise<void>;
  /** Called after every image of the transaction has gone to `image`. */
  transaction(tx: ReplayedTransaction): Promise<void>;
}

/** What the replay pass did. */
export interface ReplayCounts {
  /** Images handed to `sink.image`. */
  images: number;
  /** Images skipped because a transaction with a sequence ≥ theirs revoked their block. */
  revokedImages: number;
}

/**
 * Decoder of replayed records: msgpackr's default decoding (as `unpackMultiple`)
 * except that binary values are copied, not views of the payload — the
 * payload's buffer is reused once the replay call returns.
 */
const recordDecoder = new Unpackr({ useRecords: false, copyBuffers: true });

/**
 * Replay pass (jbd2 PASS_REPLAY): reads the transactions `scan` found again,
 * oldest first, one at a time. Each image goes to `sink.image` as soon as it
 * is read and verified, unless a transaction with a sequence ≥ its own
 * revoked its block; then the transaction's records go to
 * `sink.transaction` (decoded on first access). Every block is verified
 * again as it is read.
 * @throws JOURNAL_CORRUPT if a transaction no longer validates as the scan
 *   found it (the log changed between the passes); IO_ERROR; whatever the sink throws
 */
export async function replayJournal(device: BlockDevice, sb: JournalSuperblock, scan: ScanResult, sink: ReplaySink, options: RecoveryOptions = {}): Promise<ReplayCounts> {
  const geometry = geometryOf(sb);
  const reader = new LogReader(device, geometry, options.windowBytes);
  const dataBlocks = sb.lengthBlocks - geometry.firstBlock;
  const counts: ReplayCounts = { images: 0, revokedImages: 0 };
  const arena = new PayloadArena();
  let scannedBlocks = 0;
  for (const [i, tx] of scan.transactions.entries()) {
    const payloads: Array<{ payload: Buffer; count: number }> = [];
    arena.reset(); // the previous transaction's call has returned: its payloads are done with
    const walk = { reader, sequence: tx.sequence, seed: transactionSeed(sb.uuid, tx.sequence), start: tx.startBlock, room: dataBlocks - scannedBlocks, decodeRecords: false, payloads: arena };
    const end = await walkTransaction(walk, {
      image: async (target, homeBlock, data) => {
        const r = scan.revoked.get(revokeKey(target, homeBlock));
        if (r !== undefined && r >= tx.sequence) {
          counts.revokedImages += 1;
          return;
        }
        await sink.image(target, homeBlock, data, tx.sequence);
        counts.images += 1;
      },
      records: (payload, count) => void payloads.push({ payload, count }),
    });
    if (!end.committed || end.blocks !== tx.blocks || end.records !== tx.records) {
      throw new JournalCorruptError(`${device.name}: transaction ${tx.sequence} at block ${tx.startBlock} changed between the recovery scan and replay`, {
        details: { sequence: tx.sequence, startBlock: tx.startBlock, stopReason: end.committed ? undefined : end.stopReason },
      });
    }
    scannedBlocks += end.blocks;
    const replayed = lazyTransaction(device.name, tx.sequence, payloads, i === scan.transactions.length - 1);
    try {
      await sink.transaction(replayed.tx);
    } finally {
      replayed.close();
    }
  }
  return counts;
}

/** Where {@link replayHome} writes images, and who gets the records. */
export interface ReplayHomeOptions extends RecoveryOptions {
  /** Home devices of block images, by target id. */
  targets: ReadonlyMap<number, BlockDevice>;
  replay: (tx: ReplayedTransaction) => Promise<void>;
  /** Refuse (`JOURNAL_NEEDS_RECOVERY`) at the first image to write home instead of writing it. */
  readOnly?: boolean | undefined;
}

/**
 * The replay pass as `Journal.open` and `repairJournal` run it: images
 * written to their home devices, records to `options.replay`; then every
 * home written is synced.
 * @throws JOURNAL_CORRUPT (an image for an unknown target, or what
 *   {@link replayJournal} throws), JOURNAL_NEEDS_RECOVERY (`readOnly` and an
 *   image to write home), IO_ERROR; whatever `replay` throws
 */
export async function replayHome(device: BlockDevice, sb: JournalSuperblock, scan: ScanResult, options: ReplayHomeOptions): Promise<ReplayCounts> {
  const touched = new Set<BlockDevice>();
  const counts = await replayJournal(
    device,
    sb,
    scan,
    {
      image: async (target, homeBlock, data, sequence) => {
        const home = options.targets.get(target);
        if (!home) throw new JournalCorruptError(`${device.name}: transaction ${sequence} holds an image for unknown target ${target}`);
        if (options.readOnly === true) {
          throw new JournalNeedsRecoveryError(`${device.name}: committed transaction ${sequence} holds block images that recovery must write home; open the volume writable once`, {
            details: { sequence },
          });
        }
        await home.write(homeBlock * sb.blockSizeBytes, data);
        touched.add(home);
      },
      transaction: (tx) => options.replay(tx),
    },
    options,
  );
  for (const home of touched) await home.sync();
  return counts;
}

/**
 * A {@link ReplayedTransaction} whose records are decoded from `payloads`
 * (views into the replay's arena) on first access, and `close()`, which
 * forbids a first access once the arena may be reused.
 */
function lazyTransaction(name: string, sequence: number, payloads: Array<{ payload: Buffer; count: number }>, last: boolean): { tx: ReplayedTransaction; close(): void } {
  let records: unknown[] | undefined;
  let closed = false;
  const tx: ReplayedTransaction = {
    sequence,
    get records(): unknown[] {
      if (records === undefined) {
        assert(!closed, `records of replayed transaction ${sequence} first read after its replay call returned`);
        records = decodePayloads(name, sequence, payloads);
      }
      return records;
    },
    last,
  };
  return {
    tx,
    close: () => {
      closed = true;
      payloads.length = 0;
    },
  };
}

/** The records of one transaction's payloads, in log order. @throws JOURNAL_CORRUPT if a payload no longer decodes to the count the scan saw */
function decodePayloads(name: string, sequence: number, payloads: ReadonlyArray<{ payload: Buffer; count: number }>): unknown[] {
  const out: unknown[] = [];
  for (const { payload, count } of payloads) {
    let values: unknown[];
    try {
      values = payload.length === 0 ? [] : (recordDecoder.unpackMultiple(payload) as unknown[]);
    } catch (err) {
      throw new JournalCorruptError(`${name}: records of transaction ${sequence} no longer decode`, { cause: err });
    }
    // Assert after the read: the scan counted these records.
    if (values.length !== count) throw new JournalCorruptError(`${name}: transaction ${sequence} holds ${values.length} records, the scan counted ${count}`);
    for (const v of values) out.push(v);
  }
  return out;
}
