import { InvalidArgumentError, type Volume } from '@cowvol/cow-core';
import { CowvolError, hasCode } from '@cowvol/base';
import type { BlockExport, ExportCatalog, ExportListing } from './block-export.js';
import { ExportInUseError, SnapshotInUseError } from './errors.js';
import { NBD_STATE_ZERO } from './constants.js';
import type { Extent } from './replies.js';
import { zeroRuns } from './zero-runs.js';

/** The live volume's export name; the empty name (the NBD default export) means it too. */
export const LIVE_EXPORT = 'live';
/** Prefix of a snapshot's export name: `snapshot/<snapshot name>`. */
export const SNAPSHOT_EXPORT_PREFIX = 'snapshot/';

/**
 * Most bytes one `base:allocation` BLOCK_STATUS reads to find the zero
 * blocks (docs/ARCHITECTURE.md §14.11): a longer request is answered for its
 * first STATUS_SCAN_BYTES, and the client asks again from there (the spec
 * lets a reply cover less than the range).
 */
export const STATUS_SCAN_BYTES = 4 * 1024 * 1024;

/**
 * `base:allocation` extents of [offsetBytes, offsetBytes + min(lengthBytes,
 * STATUS_SCAN_BYTES)) from the bytes `read` returns: NBD_STATE_ZERO for runs
 * of whole blocks (the export's `blockBytes`, aligned in the export) that
 * read as zeros, data (0) for the rest. NBD_STATE_HOLE is never set: the
 * volume tracks no unallocated blocks (§14.11).
 */
async function zeroStatus(read: (offsetBytes: number, lengthBytes: number) => Promise<Buffer>, offsetBytes: number, lengthBytes: number, blockBytes: number): Promise<Extent[]> {
  const data = await read(offsetBytes, Math.min(lengthBytes, STATUS_SCAN_BYTES));
  return zeroRuns(data, offsetBytes, blockBytes).map((run) => ({ lengthBytes: run.lengthBytes, flags: run.zero ? NBD_STATE_ZERO : 0 }));
}

/** The live volume: read-write unless the server was started read-only. */
class LiveExport implements BlockExport {
  readonly name = LIVE_EXPORT;
  readonly description: string;
  constructor(
    private readonly volume: Volume,
    readonly readOnly: boolean,
    /** True while a delete or rename of snapshot `name` runs (VolumeExports.whileUnexported). */
    private readonly isChanging: (name: string) => boolean = () => false,
  ) {
    this.description = `live volume, ${readOnly ? 'read-only' : 'read-write'}`;
  }
  get sizeBytes(): number {
    return this.volume.sizeBytes;
  }
  get preferredBlockBytes(): number {
    return this.volume.blockSizeBytes;
  }
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.volume.read(offsetBytes, lengthBytes);
  }
  async write(offsetBytes: number, data: Buffer, options: { fua: boolean }): Promise<void> {
    await this.volume.write(offsetBytes, data);
    if (options.fua) await this.volume.flush();
  }
  flush(): Promise<void> {
    return this.volume.flush();
  }
  /**
   * Writes zeros through Volume.writeZeroes: every block a snapshot still
   * needs is copied first (a snapshot never changes), a piece that already
   * reads as zeros is left alone (no copy, no write), and a snapshot taken
   * meanwhile holds each 32 MiB span of the request whole or not at all.
   */
  async writeZeroes(offsetBytes: number, lengthBytes: number, options: { fua: boolean }): Promise<void> {
    await this.volume.writeZeroes(offsetBytes, lengthBytes);
    if (options.fua) await this.volume.flush();
  }
  /**
   * Never fast (NBD_CMD_FLAG_FAST_ZERO is answered ENOTSUP): the volume
   * has no hole to punch — zeroing reads each piece and writes zeros as
   * data, copying first every block a snapshot still needs — so it is no
   * faster than the client writing zeros itself (docs/ARCHITECTURE.md §14.9).
   */
  zeroIsFast(): Promise<boolean> {
    return Promise.resolve(false);
  }
  /** `base:allocation`: zero blocks as NBD_STATE_ZERO, from a read of at most STATUS_SCAN_BYTES (§14.11). @throws OUT_OF_RANGE, IO_ERROR */
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return zeroStatus((o, l) => this.volume.read(o, l), offsetBytes, lengthBytes, this.volume.blockSizeBytes);
  }
  /**
   * A `qemu:dirty-bitmap:<name>` per snapshot (docs/ARCHITECTURE.md §14.9) — none of a snapshot being deleted or
   * renamed: a connection that selects one pins that snapshot (Connection.claims), and a change that began first wins.
   */
  async dirtyBitmaps(): Promise<string[]> {
    const names = (await this.volume.listSnapshots()).map((s) => s.name);
    return names.filter((n) => !this.isChanging(n));
  }
  /**
   * Volume.diff(snapshot) to live over the requested range: the blocks written since it, from the snapshot
   * maps, visiting only the mappings inside the range (a whole-disk walk in BLOCK_STATUS pieces costs the
   * mapped blocks once, not once per request); no data read. @throws SNAPSHOT_NOT_FOUND, OUT_OF_RANGE
   */
  async changedSince(snapshot: string, offsetBytes: number, lengthBytes: number): Promise<Array<{ offsetBytes: number; lengthBytes: number }>> {
    return (await this.volume.diff(snapshot, undefined, { offsetBytes, lengthBytes })).extents;
  }
}

/** A snapshot: read-only, read through its chain (Volume.readSnapshot). */
class SnapshotExport implements BlockExport {
  readonly readOnly = true;
  readonly name: string;
  constructor(
    private readonly volume: Volume,
    private readonly snapshotName: string,
    readonly description: string,
  ) {
    this.name = SNAPSHOT_EXPORT_PREFIX + snapshotName;
  }
  get sizeBytes(): number {
    return this.volume.sizeBytes;
  }
  get preferredBlockBytes(): number {
    return this.volume.blockSizeBytes;
  }
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    return this.volume.readSnapshot(this.snapshotName, offsetBytes, lengthBytes);
  }
  write(): Promise<void> {
    return Promise.reject(new InvalidArgumentError(`${this.name} is read-only`));
  }
  writeZeroes(): Promise<void> {
    return Promise.reject(new InvalidArgumentError(`${this.name} is read-only`));
  }
  async flush(): Promise<void> {
    // Nothing to make durable: a snapshot does not change.
  }
  /** `base:allocation`: zero blocks as NBD_STATE_ZERO, from a read of at most STATUS_SCAN_BYTES (§14.11). @throws SNAPSHOT_NOT_FOUND, STORE_CORRUPT, IO_ERROR */
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<Extent[]> {
    return zeroStatus((o, l) => this.volume.readSnapshot(this.snapshotName, o, l), offsetBytes, lengthBytes, this.volume.blockSizeBytes);
  }
}

/**
 * The exports of one opened volume: `live` (also the empty name) and
 * `snapshot/<name>` for each snapshot, resolved against the volume's
 * catalog when a client names one.
 */
export class VolumeExports implements ExportCatalog {
  private readonly live: LiveExport;
  /** Snapshots being deleted or renamed: their exports do not resolve meanwhile (docs/ARCHITECTURE.md §14.8). */
  private readonly changing = new Set<string>();
  /** The restore or import into `live` that runs, if any: `live` does not resolve meanwhile, and the catalog does not change (docs/ARCHITECTURE.md §14.8). */
  private liveAction: string | undefined;
  /** Catalog changes running (snapshot create, delete, rename; accept-changes): a restore or import does not start meanwhile. */
  private catalogChanges = 0;
  /**
   * @param volume an opened volume; the caller closes it after the server stopped
   * @param options.readOnly serve `live` read-only too
   */
  constructor(
    private readonly volume: Volume,
    options: { readOnly?: boolean } = {},
  ) {
    this.live = new LiveExport(volume, options.readOnly ?? false, (name) => this.changing.has(name));
  }

  async list(): Promise<ExportListing[]> {
    const snapshots = await this.volume.listSnapshots();
    return [{ name: LIVE_EXPORT, description: this.live.description }, ...snapshots.map((s) => ({ name: SNAPSHOT_EXPORT_PREFIX + s.name, description: snapshotDescription(s.name, s.createdAt) }))];
  }

  /** Why export `name` exists but cannot be attached now (a restore or import rewrites `live`), or undefined. */
  unavailable(name: string): string | undefined {
    if (this.liveAction === undefined || (name !== '' && name !== LIVE_EXPORT)) return undefined;
    return `export live is being rewritten by ${article(this.liveAction)} on this server: try again when it has finished`;
  }

  /**
   * Runs `change` (`what`: a snapshot create, delete or rename, an
   * accept-changes) unless a restore or import rewrites `live`, which it
   * would see half done — a snapshot of a half-restored disk, the restore's
   * own source deleted under it (docs/ARCHITECTURE.md §14.8); such a restore
   * or import does not start while it runs.
   * @throws VOLUME_BUSY while a restore or import runs, and what `change` throws
   */
  async whileCatalogChanges<T>(what: string, change: () => Promise<T>): Promise<T> {
    if (this.liveAction !== undefined) throw busy(`${article(this.liveAction)} is rewriting the live volume on the server, so ${what} waits for none: try again when it has finished`);
    this.catalogChanges++;
    try {
      return await change();
    } finally {
      this.catalogChanges--;
    }
  }

  async resolve(name: string): Promise<BlockExport | undefined> {
    if (name === '' || name === LIVE_EXPORT) return this.liveAction === undefined ? this.live : undefined;
    if (!name.startsWith(SNAPSHOT_EXPORT_PREFIX)) return undefined;
    const snapshotName = name.slice(SNAPSHOT_EXPORT_PREFIX.length);
    // One lookup by name (the catalog's name index), not a list of every snapshot.
    const found = await this.volume.snapshotInfo(snapshotName).then(
      (r) => r.snapshot,
      (err: unknown) => {
        if (hasCode(err, 'SNAPSHOT_NOT_FOUND')) return undefined;
        throw err;
      },
    );
    // Checked after the await, right before answering: a delete that began meanwhile wins.
    return found && !this.changing.has(found.name) ? new SnapshotExport(this.volume, found.name, snapshotDescription(found.name, found.createdAt)) : undefined;
  }

  /**
   * Runs `change` (a delete or rename of the snapshots `names`) while their
   * `snapshot/<name>` exports refuse to resolve, after `inUse` found no
   * connection attached or attaching to any of them; the refusal starts
   * before that check, so no client attaches between the check and the
   * change (docs/ARCHITECTURE.md §14.8).
   * @throws SNAPSHOT_IN_USE (from `inUse`), and what `change` throws
   */
  async whileUnexported<T>(names: readonly string[], inUse: (exportName: string) => number, change: () => Promise<T>): Promise<T> {
    const added = [...new Set(names)].filter((n) => !this.changing.has(n));
    for (const name of added) this.changing.add(name);
    try {
      for (const name of names) {
        const connections = inUse(SNAPSHOT_EXPORT_PREFIX + name);
        if (connections > 0) throw new SnapshotInUseError(name, connections);
      }
      return await change();
    } finally {
      for (const name of added) this.changing.delete(name);
    }
  }
  /**
   * Runs `change` (a restore or an import: it rewrites `live`) while `live`
   * refuses to resolve, after `inUse` found no connection attached or
   * attaching to it; the refusal starts before that check, so no client
   * attaches between the check and the change (docs/ARCHITECTURE.md §14.8).
   * One at a time.
   * @param action the command, named in EXPORT_IN_USE
   * @throws EXPORT_IN_USE (a client on `live`, or another restore or import running), and what `change` throws
   */
  async whileLiveUnexported<T>(inUse: (exportName: string) => number, change: () => Promise<T>, action = 'snapshot restore'): Promise<T> {
    if (this.live.readOnly) {
      throw new CowvolError(
        'VOLUME_READ_ONLY',
        `this server serves live read-only (serve --read-only): ${article(action)} would rewrite it; serve the volume without --read-only, or stop the server`,
        {
          details: { served: true, operation: action },
        },
      );
    }
    if (this.liveAction !== undefined) throw busy(`${article(this.liveAction)} is rewriting the live volume on the server, so ${action} waits for none: try again when it has finished`);
    if (this.catalogChanges > 0) throw busy(`a change of the snapshot catalog is running on the server, so ${action} waits for none: try again in a moment`);
    this.liveAction = action;
    try {
      // A client may claim `live` by its default name "" while it negotiates.
      const connections = inUse(LIVE_EXPORT) + inUse('');
      if (connections > 0) throw new ExportInUseError(LIVE_EXPORT, connections, action);
      return await change();
    } finally {
      this.liveAction = undefined;
    }
  }

  /**
   * {@link whileUnexported} for a change that chooses its snapshots itself
   * (a delete by filter, Volume.deleteSelected): `change` gets the guard to
   * call, frozen, with the names it chose; the guard makes their exports
   * refuse to resolve, then refuses the whole change (SNAPSHOT_IN_USE) when
   * a connection is attached to one of them (docs/ARCHITECTURE.md §14.8).
   * @throws SNAPSHOT_IN_USE (from the guard), and what `change` throws
   */
  async whileChosenUnexported<T>(inUse: (exportName: string) => number, change: (guard: (names: readonly string[]) => void) => Promise<T>): Promise<T> {
    const added: string[] = [];
    const guard = (names: readonly string[]): void => {
      for (const name of new Set(names)) {
        if (this.changing.has(name)) continue;
        this.changing.add(name);
        added.push(name);
      }
      for (const name of names) {
        const connections = inUse(SNAPSHOT_EXPORT_PREFIX + name);
        if (connections > 0) throw new SnapshotInUseError(name, connections);
      }
    };
    try {
      return await change(guard);
    } finally {
      for (const name of added) this.changing.delete(name);
    }
  }
}

function snapshotDescription(name: string, createdAt: string): string {
  return `snapshot ${name} taken ${createdAt}, read-only`;
}

/** VOLUME_BUSY of a served volume whose server runs a change another must not overlap (exit 5, as another process holding the volume offline). */
function busy(message: string): CowvolError {
  return new CowvolError('VOLUME_BUSY', message, { details: { served: true, pid: process.pid } });
}

/** "a snapshot restore", "an import". */
function article(action: string): string {
  return `${/^[aeiou]/.test(action) ? 'an' : 'a'} ${action}`;
}
