import type { Extent } from './replies.js';

/**
 * What the server serves (docs/ARCHITECTURE.md §14.1): a byte range with
 * read, write, flush and zeroing. Offsets and lengths are in bytes and are
 * checked by the server against `sizeBytes` before any call; errors are
 * CowvolErrors, mapped to NBD errno values per request (§14.4).
 */
export interface BlockExport {
  /** The name clients ask for (`live`, `snapshot/<name>`). */
  readonly name: string;
  /** Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  readonly description: string;
  readonly sizeBytes: number;
  /** A read-only export answers every write, trim and zero with EPERM before calling the export. */
  readonly readOnly: boolean;
  /** Advertised as the preferred block size (NBD_INFO_BLOCK_SIZE); a power of two. */
  readonly preferredBlockBytes: number;
  /** Resolves with exactly `lengthBytes` bytes. */
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** Resolves once `data` is in the export (readable by every connection); with `fua`, once it is durable. `data` must not change until then. */
  write(offsetBytes: number, data: Buffer, options: { fua: boolean }): Promise<void>;
  /** Makes every write that resolved before the call durable, whichever connection made it. */
  flush(): Promise<void>;
  /** Makes the range read as zeros (NBD_CMD_WRITE_ZEROES and NBD_CMD_TRIM); with `fua`, durably. */
  writeZeroes(offsetBytes: number, lengthBytes: number, options: { fua: boolean }): Promise<void>;
  /** `base:allocation` extents covering at least the first byte of the range; absent: everything is data. */
  blockStatus?(offsetBytes: number, lengthBytes: number): Promise<Extent[]>;
  /** The snapshots with a `qemu:dirty-bitmap:<name>` context on this export (docs/ARCHITECTURE.md §14.9); absent: none. */
  dirtyBitmaps?(): Promise<string[]>;
  /**
   * The byte ranges written since snapshot `snapshot` was taken that touch
   * [offsetBytes, offsetBytes + lengthBytes), sorted and non-overlapping (a
   * superset of the bytes that differ, never missing one; they may begin
   * before the range or end after it, at block boundaries).
   * @throws SNAPSHOT_NOT_FOUND when it was deleted meanwhile
   */
  changedSince?(snapshot: string, offsetBytes: number, lengthBytes: number): Promise<Array<{ offsetBytes: number; lengthBytes: number }>>;
  /**
   * Whether zeroing the range would be fast (NBD_CMD_FLAG_FAST_ZERO: faster
   * than writing zeros); absent or false: a FAST_ZERO request is ENOTSUP.
   */
  zeroIsFast?(offsetBytes: number, lengthBytes: number): Promise<boolean>;
}

/** An export as listed by NBD_OPT_LIST. */
export interface ExportListing {
  name: string;
  description: string;
}

/** The set of exports a server offers; names are resolved on every option that names one. */
export interface ExportCatalog {
  list(): Promise<ExportListing[]>;
  /** The export called `name`, or undefined when there is none. */
  resolve(name: string): Promise<BlockExport | undefined>;
  /** Why export `name` exists but cannot be attached now (answered NBD_REP_ERR_POLICY with this text), or undefined. */
  unavailable?(name: string): string | undefined;
}
