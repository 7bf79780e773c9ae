import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { CowvolError, IoError, syncDirectory } from '@cowvol/base';
import { VolumeModifiedOutsideError, VolumeSizeMismatchError } from './errors.js';
import type { SnapshotRecord } from './metadata.js';
import { compareStamps, readStamp, settleTimes, statStamp, writeStamp, type StampChange, type StampRecord } from './change-stamp.js';
import { type MetadataDb } from './metadata-db.js';
import { SnapshotMap } from './snapshot-map.js';
import { errorMessage } from './files.js';

/**
 * Writes made outside cowvol (docs/ARCHITECTURE.md, "Writes made outside
 * cowvol"; the record: docs/FORMAT.md, "The change stamp").
 *
 * The volume file is a plain raw image, so any program can write it behind
 * cowvol's back; a snapshot that reads a block through to the live volume
 * would then change silently. cowvol keeps the file's identity (device,
 * inode) and change stamps (size, mtime and ctime in nanoseconds) in the
 * `stamp` metadata key and compares them at every open:
 *
 * - `closed` stamp (taken at a clean close after cowvol's last write, sync
 *   and checkpoint): every field must match;
 * - `open` stamp (written, synced, before the first write of a session, so
 *   a crash leaves it behind): cowvol's own writes changed the times, so
 *   only the size must match (device and inode are reported beside a change);
 * - no stamp: in a volume whose record says `stampFromCreate` (every
 *   volume created since the stamp is written at create), the record was
 *   lost — damage — and the open refuses as for a change (field `stamp`):
 *   nothing tells what happened to the file since. In an older volume
 *   (never closed since it was created by an older cowvol): nothing to
 *   compare; the next clean close stamps it.
 *
 * Reading the file (cmp, `e2fsck -n`, `qemu-img info`) changes only its
 * atime, which is not kept. The stamp is written straight to LevelDB, not
 * through the journal: the `open` mark must be durable (synced) before the
 * first overwrite, and a journal replay must never move it.
 */

/** What an open found changed since the stamp. */
export interface OutsideChange {
  changes: StampChange[];
  /** True when the stamp was taken at a clean close (all fields compared); false after a crash (identity and size only). */
  cleanClose: boolean;
}

/** Result of `Volume.acceptOutsideChanges`. */
export interface AcceptChangesReport {
  /** False when the file was as cowvol left it: nothing was done. */
  accepted: boolean;
  changes: StampChange[];
  /** Live snapshots that read through to the live volume, now marked suspect (oldest first). */
  suspectSnapshots: string[];
  /** An import was pending and is abandoned: its marker is cleared (`import --resume` then says RESUME_MISMATCH). */
  abandonedImport: boolean;
}

/** Nanoseconds since the epoch as ISO 8601 UTC with nine fraction digits. */
export function isoNs(ns: string): string {
  const n = BigInt(ns);
  const seconds = new Date(Number(n / 1_000_000_000n) * 1000).toISOString().slice(0, 19);
  return `${seconds}.${String(n % 1_000_000_000n).padStart(9, '0')}Z`;
}

function describeChange(c: StampChange): string {
  switch (c.field) {
    case 'stamp':
      return 'its change stamp is missing from the metadata (the sidecar was damaged: cowvol cannot tell whether the file was written outside it)';
    case 'dev':
      return `device ${c.recorded} → ${c.found} (the file was replaced by another one)`;
    case 'ino':
      return `inode ${c.recorded} → ${c.found} (the file was replaced by another one)`;
    case 'size':
      return `size ${c.recorded} → ${c.found} bytes (truncated or extended; a volume never changes size: restore it to ${c.recorded} bytes before accepting)`;
    case 'mtime':
      return `modification time ${isoNs(c.recorded)} → ${isoNs(c.found)} (written, or its times set, e.g. by touch)`;
    case 'ctime':
      return `status change time ${isoNs(c.recorded)} → ${isoNs(c.found)} (written, or its mode, owner or links changed)`;
  }
}

/** At most this many snapshot names in a message (`details.suspectSnapshots` has them all). */
const NAMES_IN_MESSAGE = 20;

/** The VOLUME_MODIFIED_OUTSIDE message: what changed, which snapshots may read changed data, what to do. */
export function describeOutsideChange(path: string, change: OutsideChange, suspects: string[]): string {
  const lost = change.changes.some((c) => c.field === 'stamp');
  const since = lost ? '(or may have been)' : change.cleanClose ? 'since cowvol last closed it' : 'since cowvol last opened it (it was not closed cleanly, so only its size is compared)';
  const names = suspects.slice(0, NAMES_IN_MESSAGE).join(', ') + (suspects.length > NAMES_IN_MESSAGE ? ` and ${suspects.length - NAMES_IN_MESSAGE} more` : '');
  const who = suspects.length === 0 ? 'No snapshot reads the live volume, so no snapshot is affected' : `Snapshots that may read changed data (they read blocks through to the live volume): ${names}`;
  return (
    `volume ${path} was changed outside cowvol ${since}: ${change.changes.map(describeChange).join('; ')}. ${who}. ` +
    `Writes must go through cowvol. To take the file as it is now, run \`cowvol accept-changes ${path}\`${suspects.length > 0 ? ' (it marks those snapshots suspect)' : ''}.`
  );
}

/**
 * The live snapshots that read at least one block through to the live
 * volume: those whose chain (their own map and every newer snapshot's,
 * deleting ones included) does not map every block. Which blocks changed is
 * unknown, so any of those reads may return changed bytes. Walks newest to
 * oldest; maps are loaded (and a one-bit-per-block bitmap kept) only once
 * the chain's owned-block counts reach the volume's block count — until then
 * the chain cannot cover it. Returns names oldest first.
 */
export async function suspectSnapshots(catalog: readonly SnapshotRecord[], volumeBlocks: number, mapOf: (id: number) => Promise<SnapshotMap>): Promise<string[]> {
  const records = [...catalog].sort((a, b) => a.id - b.id);
  const suspects: string[] = [];
  let chainBlocks = 0;
  let covered = 0;
  let bitmap: Uint8Array | undefined;
  let unmerged: SnapshotRecord[] = [];
  for (let i = records.length - 1; i >= 0; i--) {
    const rec = records[i]!;
    chainBlocks += rec.ownedBlocks;
    unmerged.push(rec);
    if (chainBlocks >= volumeBlocks && covered < volumeBlocks) {
      bitmap ??= new Uint8Array(Math.ceil(volumeBlocks / 8));
      for (const r of unmerged) {
        for (const [block] of (await mapOf(r.id)).entries()) {
          if (block >= volumeBlocks || (bitmap[block >> 3]! & (1 << (block & 7))) !== 0) continue;
          bitmap[block >> 3]! |= 1 << (block & 7);
          covered += 1;
        }
      }
      unmerged = [];
    }
    if (rec.state === 'live' && covered < volumeBlocks) suspects.push(rec.name);
  }
  return suspects.reverse();
}

/**
 * One open volume's stamp (class comment above): checked at open, marked
 * `open` before the session's first write, taken `closed` at a clean close.
 * With `hold`, a change found at open is kept for `accept` instead of
 * refused; until accepted, writes are refused and close leaves the stamp.
 */
export class ChangeStamps {
  private marking: Promise<void> | undefined;

  private constructor(
    private readonly db: MetadataDb,
    private readonly path: string,
    private recorded: StampRecord | undefined,
    private readonly atOpen: StampRecord,
    private held: OutsideChange | undefined,
    /** The lost-log marker (leveldb-verify.ts `markLostLog`) a held lost stamp stands on: `accept` removes it. */
    private readonly lostLogMarker?: string,
  ) {}

  /**
   * Compares the file with its stamp (call before journal recovery writes
   * anything). `catalog` (every record, read when needed: a lazy open has
   * not) and `volumeBlocks` name the suspect snapshots in the refusal (maps
   * loaded from `db`).
   * @throws VOLUME_MODIFIED_OUTSIDE (unless `hold`), CORRUPT_METADATA, IO_ERROR
   */
  static async open(
    db: MetadataDb,
    path: string,
    options: {
      hold: boolean;
      catalog: () => Promise<readonly SnapshotRecord[]>;
      volumeBlocks: number;
      stampFromCreate: boolean;
      /** LevelDB's current log was found deleted (now, or by an earlier open: its marker is at `lostLogMarker`). */
      logLost?: boolean;
      lostLogMarker?: string;
      /** A read-only open: a stale marker stays. */
      readOnly?: boolean;
    },
  ): Promise<ChangeStamps> {
    const recorded = await readStamp(db);
    const found = await statStamp(path, 'open');
    if (recorded === undefined && options.stampFromCreate) return ChangeStamps.lost(db, path, found, options);
    // LevelDB's current log was deleted: the stamp read is the last one flushed into a table. A `closed` one compares
    // exactly (a later session's own writes moved the times: refused), and the marker has done its work; an `open`
    // mark may be one that a clean close's stamp in that log replaced, and it compares size and identity only: as good
    // as lost until accepted (docs/ARCHITECTURE.md §13). The marker, written before LevelDB made a new log, keeps it so.
    if (options.logLost === true && recorded?.state === 'open') return ChangeStamps.lost(db, path, found, options);
    if (options.logLost === true && options.readOnly !== true && options.lostLogMarker !== undefined) await removeMarker(options.lostLogMarker);
    // Content is what counts: its size and (after a clean close) its
    // modification time. A status change alone (chmod, chown, a hard link:
    // ctime moves) or a copy that keeps the modification time to the
    // nanosecond (cp -a, rsync -a, tar --format=posix: a new inode, maybe
    // another device) changes no byte and is not refused; with a content
    // change those fields are reported too (docs/ARCHITECTURE.md §13, "What
    // readers change").
    const compared = recorded ? compareStamps(recorded, found) : [];
    const changes = compared.some((c) => c.field === 'size' || c.field === 'mtime') ? compared : [];
    const change = recorded && changes.length > 0 ? { changes, cleanClose: recorded.state === 'closed' } : undefined;
    if (change && !options.hold) {
      const suspects = await suspectSnapshots(await options.catalog(), options.volumeBlocks, (id) => SnapshotMap.load(db, id));
      throw new VolumeModifiedOutsideError(describeOutsideChange(path, change, suspects), { path, ...change, suspectSnapshots: suspects });
    }
    return new ChangeStamps(db, path, recorded, found, change);
  }

  /** The open of a volume whose stamp was lost (class comment): refused as a change, or held for `accept`. @throws VOLUME_MODIFIED_OUTSIDE (unless `hold`) */
  private static async lost(
    db: MetadataDb,
    path: string,
    found: StampRecord,
    options: { hold: boolean; catalog: () => Promise<readonly SnapshotRecord[]>; volumeBlocks: number; lostLogMarker?: string },
  ): Promise<ChangeStamps> {
    const change: OutsideChange = { changes: [{ field: 'stamp', recorded: 'present', found: 'missing' }], cleanClose: false };
    if (!options.hold) {
      const suspects = await suspectSnapshots(await options.catalog(), options.volumeBlocks, (id) => SnapshotMap.load(db, id));
      throw new VolumeModifiedOutsideError(describeOutsideChange(path, change, suspects), { path, ...change, suspectSnapshots: suspects });
    }
    return new ChangeStamps(db, path, undefined, found, change, options.lostLogMarker);
  }

  /**
   * Compares the file with its stamp again, as an open would, for a volume
   * that stays open (a served volume's `accept-changes`, docs/ARCHITECTURE.md
   * §13): a change found is held for {@link accept}. Once this session
   * marked the stamp `open` (cowvol wrote the file), only size and identity
   * can tell, as after a crash. Call frozen.
   * @throws VOLUME_SIZE_MISMATCH (the size changed: `sizeBytes` is the volume's), VOLUME_BUSY (`replaced()`: the path now names another file than the one open), IO_ERROR
   */
  async recheck(sizeBytes: number, replaced: () => CowvolError): Promise<OutsideChange | undefined> {
    if (this.held) return this.held;
    const recorded = this.recorded;
    if (!recorded) return undefined;
    const found = await statStamp(this.path, 'open');
    if (found.dev !== this.atOpen.dev || found.ino !== this.atOpen.ino) throw replaced();
    if (found.sizeBytes !== sizeBytes) throw new VolumeSizeMismatchError(this.path, sizeBytes, found.sizeBytes);
    const compared = compareStamps(this.marking === undefined ? recorded : { ...recorded, state: 'open' }, found);
    // As at open: content is what counts (size, modification time).
    if (!compared.some((c) => c.field === 'size' || c.field === 'mtime')) return undefined;
    this.held = { changes: compared, cleanClose: recorded.state === 'closed' && this.marking === undefined };
    return this.held;
  }

  /** The change found at open and not accepted yet (open with `hold`), else undefined. */
  get pending(): OutsideChange | undefined {
    return this.held;
  }

  /**
   * Call before anything of a session writes the volume file: once per
   * session, the stamp becomes `open`, durably. Concurrent callers share it.
   * @throws VOLUME_MODIFIED_OUTSIDE (a change is held, not accepted), NO_SPACE, IO_ERROR
   */
  beforeLiveWrite(): Promise<void> {
    if (this.held) {
      const message = `volume ${this.path} was changed outside cowvol and the changes are not accepted yet: accept them (\`cowvol accept-changes\`) before writing`;
      return Promise.reject(new VolumeModifiedOutsideError(message, { path: this.path, ...this.held, suspectSnapshots: [] }));
    }
    if (this.marking === undefined) {
      // The file found at open, not the recorded stamp's identity: after a
      // copy that keeps the content (cp -a: a new inode, maybe another
      // device) the stamp must name the file cowvol now writes, or the
      // clean close below would take it for a replaced file and never
      // stamp it `closed` again (docs/ARCHITECTURE.md §13).
      const base = this.atOpen;
      this.marking =
        this.recorded?.state === 'open'
          ? Promise.resolve()
          : writeStamp(this.db, this.path, { ...base, state: 'open', at: new Date().toISOString() }, true).catch((err: unknown) => {
              this.marking = undefined;
              throw err;
            });
    }
    return this.marking;
  }

  /**
   * After cowvol's last write, sync and checkpoint of a clean close: takes a
   * `closed` stamp of the file as it is now, unless nothing needs it (no
   * write this session and the stamp is `closed` already), a change is held
   * unaccepted, or the path now names another file (then the `open` stamp
   * stays and the next open refuses). Waits until later writes get new times.
   * @throws NO_SPACE, IO_ERROR
   */
  async atCleanClose(): Promise<void> {
    if (this.held) return;
    if (this.marking === undefined && this.recorded?.state === 'closed') return;
    if (this.marking) await this.marking;
    const now = await statStamp(this.path, 'closed');
    // Replaced during this session: compared with the file this session opened.
    if (now.dev !== this.atOpen.dev || now.ino !== this.atOpen.ino) return;
    // Not synced: a power loss that loses it leaves the `open` stamp (identity and size still compared).
    // Synced (one fdatasync of LevelDB's small log): a power loss that lost it would leave this session's `open` mark,
    // which compares size and identity only.
    await this.takeClosed(now, true);
  }

  /**
   * Takes the file as it is now: a `closed` stamp of it, and the held change
   * is cleared (the caller has marked the suspect snapshots first).
   * @throws NO_SPACE, IO_ERROR
   */
  async accept(): Promise<void> {
    await this.takeClosed(await statStamp(this.path, 'closed'), true);
    // After the synced stamp: a crash before this leaves the marker, and an open then finds the stamp `closed`.
    if (this.lostLogMarker !== undefined) await removeMarker(this.lostLogMarker);
    this.held = undefined;
  }

  private async takeClosed(stamp: StampRecord, sync: boolean): Promise<void> {
    await writeStamp(this.db, this.path, stamp, sync);
    this.recorded = stamp;
    this.marking = undefined;
    await settleTimes(stamp);
  }
}

/** Removes the lost-log marker, durably (its folder synced); absent is fine. @throws IO_ERROR */
async function removeMarker(marker: string): Promise<void> {
  const removed = await rm(marker).then(
    () => true,
    (err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw new IoError(`cannot remove ${marker}: ${errorMessage(err)}`, { cause: err });
    },
  );
  if (removed) await syncDirectory(dirname(marker));
}
