import { lstat, open, readFile, readdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { crc32c, syncDirectory } from '@cowvol/base';
import { isRegularFile } from './files.js';
import { lostLogMarkerOf } from './layout.js';

/**
 * Verifies the checksums LevelDB keeps in its own files (docs/ARCHITECTURE.md
 * "Metadata checksums", docs/FORMAT.md §6.12): every block of every live
 * table (`.ldb`/`.sst`: data, filter, metaindex and index blocks, each with
 * a masked CRC32C in its 5-byte trailer) and every record of the MANIFEST
 * and of the write-ahead logs (`.log`, 7-byte record headers with a masked
 * CRC32C). classic-level reads with LevelDB's `verify_checksums` off and
 * offers no option to turn it on, so this is the only place those
 * checksums are checked; `cowvol check` runs it.
 *
 * Live tables are the ones the MANIFEST (named by `CURRENT`) lists; LevelDB
 * removes obsolete files when it opens, so the logs present are the live
 * ones. A record cut short at the very end of a log is one being appended
 * (not damage) and is ignored.
 */

/** LevelDB's `kMaskDelta`: stored CRCs are masked (rotated and offset). */
const MASK_DELTA = 0xa282ead8;
/** LevelDB's table magic number `0xdb4775248b80fb57`, as its 8 little-endian bytes. */
const TABLE_MAGIC = Buffer.from([0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb]);
const FOOTER_BYTES = 48;
const BLOCK_TRAILER_BYTES = 5;
const LOG_BLOCK_BYTES = 32768;
const LOG_HEADER_BYTES = 7;

/** The CRC32C LevelDB stores for `bytes`: masked. */
export function maskedCrc(bytes: Uint8Array): number {
  const crc = crc32c(bytes);
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + MASK_DELTA) >>> 0;
}

/** A problem found in a LevelDB file (the message names the file). */
export class LevelDbDamage extends Error {}

/** A cursor over varints and bytes (LevelDB's coding.h). */
class Reader {
  constructor(
    readonly buf: Buffer,
    public at = 0,
  ) {}

  get done(): boolean {
    return this.at >= this.buf.length;
  }

  varint(): number {
    let value = 0;
    for (let shift = 0; shift < 64; shift += 7) {
      if (this.at >= this.buf.length) throw new LevelDbDamage('varint runs past the end');
      const b = this.buf[this.at++]!;
      value += (b & 0x7f) * 2 ** shift;
      if ((b & 0x80) === 0) return value;
    }
    throw new LevelDbDamage('varint too long');
  }

  bytes(n: number): Buffer {
    if (this.at + n > this.buf.length) throw new LevelDbDamage('field runs past the end');
    const out = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  slice(): Buffer {
    return this.bytes(this.varint());
  }
}

/** Decompresses a Snappy block (LevelDB compression type 1): varint length, then literal and copy elements. */
export function snappyDecompress(input: Buffer): Buffer {
  const r = new Reader(input);
  const length = r.varint();
  // A Snappy element of at most 5 bytes yields at most 64: anything longer is damage (and must not allocate).
  if (length > 64 * input.length) throw new LevelDbDamage(`snappy block claims ${length} bytes from ${input.length}`);
  const out = Buffer.alloc(length);
  let o = 0;
  while (!r.done) {
    const tag = r.bytes(1)[0]!;
    let len: number;
    let offset: number;
    if ((tag & 3) === 0) {
      len = tag >> 2;
      if (len >= 60) len = r.bytes(len - 59).readUIntLE(0, len - 59);
      len += 1;
      if (o + len > out.length) throw new LevelDbDamage('snappy literal overruns the block');
      r.bytes(len).copy(out, o);
      o += len;
      continue;
    }
    if ((tag & 3) === 1) {
      len = ((tag >> 2) & 7) + 4;
      offset = ((tag >> 5) << 8) | r.bytes(1)[0]!;
    } else {
      len = (tag >> 2) + 1;
      offset = (tag & 3) === 2 ? r.bytes(2).readUInt16LE(0) : r.bytes(4).readUInt32LE(0);
    }
    if (offset === 0 || offset > o || o + len > out.length) throw new LevelDbDamage('snappy copy out of range');
    for (let k = 0; k < len; k++, o++) out[o] = out[o - offset]!;
  }
  if (o !== out.length) throw new LevelDbDamage('snappy block shorter than its stated length');
  return out;
}

/** The entries' values of a table block (prefix-compressed keys, restart array at the end). */
function blockValues(contents: Buffer): Buffer[] {
  if (contents.length < 4) throw new LevelDbDamage('block too short');
  const restarts = contents.readUInt32LE(contents.length - 4);
  const end = contents.length - 4 * (restarts + 1);
  if (restarts === 0 || end < 0) throw new LevelDbDamage('bad restart array');
  const r = new Reader(contents.subarray(0, end));
  const values: Buffer[] = [];
  while (!r.done) {
    r.varint(); // shared key bytes
    const unshared = r.varint();
    const valueBytes = r.varint();
    r.bytes(unshared);
    values.push(r.bytes(valueBytes));
  }
  return values;
}

/** Checks one block against its trailer; returns its contents, decompressed. */
function readBlock(file: Buffer, handle: Buffer): Buffer {
  const h = new Reader(handle);
  const offset = h.varint();
  const size = h.varint();
  if (offset + size + BLOCK_TRAILER_BYTES > file.length) throw new LevelDbDamage(`block at ${offset}+${size} runs past the end of the table`);
  const stored = file.readUInt32LE(offset + size + 1);
  if (maskedCrc(file.subarray(offset, offset + size + 1)) !== stored) throw new LevelDbDamage(`block at byte ${offset} (${size} bytes) fails its checksum`);
  const type = file[offset + size]!;
  const contents = file.subarray(offset, offset + size);
  if (type === 0) return contents;
  if (type === 1) return snappyDecompress(contents);
  throw new LevelDbDamage(`block at byte ${offset} has unknown compression type ${type}`);
}

/** Verifies every block of one table file. @throws LevelDbDamage */
export function verifyTable(file: Buffer): void {
  if (file.length < FOOTER_BYTES) throw new LevelDbDamage('shorter than a table footer');
  const footer = file.subarray(file.length - FOOTER_BYTES);
  if (!footer.subarray(40).equals(TABLE_MAGIC)) throw new LevelDbDamage('bad table magic');
  // Footer: metaindex handle, then index handle (two varints each), padding, magic.
  const f = new Reader(footer);
  f.varint();
  f.varint();
  const metaHandle = footer.subarray(0, f.at);
  const indexStart = f.at;
  f.varint();
  f.varint();
  const indexHandle = footer.subarray(indexStart, f.at);
  if (f.at > 40 || footer.subarray(f.at, 40).some((x) => x !== 0)) throw new LevelDbDamage('table footer padding is not zero');
  for (const handle of blockValues(readBlock(file, metaHandle))) readBlock(file, handle); // filter block(s)
  for (const handle of blockValues(readBlock(file, indexHandle))) readBlock(file, handle); // data blocks
}

/**
 * The logical records of a log-format file (MANIFEST or `.log`), each
 * physical record checked against its CRC. A record cut short by the end of
 * the file ends the scan (an append in progress). @throws LevelDbDamage
 */
export function logRecords(file: Buffer): Buffer[] {
  const records: Buffer[] = [];
  let pending: Buffer[] | undefined;
  let at = 0;
  while (at < file.length) {
    const leftInBlock = LOG_BLOCK_BYTES - (at % LOG_BLOCK_BYTES);
    if (leftInBlock < LOG_HEADER_BYTES) {
      at += leftInBlock; // block trailer: zeros
      continue;
    }
    if (at + LOG_HEADER_BYTES > file.length) break;
    const length = file.readUInt16LE(at + 4);
    const type = file[at + 6]!;
    if (type === 0 && length === 0) {
      at += leftInBlock; // preallocated space
      continue;
    }
    if (at + LOG_HEADER_BYTES + length > file.length) break;
    if (LOG_HEADER_BYTES + length > leftInBlock) throw new LevelDbDamage(`log record at byte ${at} crosses its 32 KiB block`);
    if (maskedCrc(file.subarray(at + 6, at + LOG_HEADER_BYTES + length)) !== file.readUInt32LE(at)) throw new LevelDbDamage(`log record at byte ${at} fails its checksum`);
    const data = file.subarray(at + LOG_HEADER_BYTES, at + LOG_HEADER_BYTES + length);
    if (type === 1) records.push(data);
    else if (type === 2) pending = [data];
    else if ((type === 3 || type === 4) && pending) {
      pending.push(data);
      if (type === 4) {
        records.push(Buffer.concat(pending));
        pending = undefined;
      }
    } else throw new LevelDbDamage(`log record at byte ${at} has unexpected type ${type}`);
    at += LOG_HEADER_BYTES + length;
  }
  return records;
}

/** Live table files (number → size) after applying every VersionEdit of a MANIFEST. @throws LevelDbDamage */
export function liveTables(manifest: Buffer): Map<number, number> {
  return manifestState(manifest).tables;
}

/** The MANIFEST's version edits replayed: the live tables (number → size) and the current log's number (tag 2, the last one). */
function manifestState(manifest: Buffer): { tables: Map<number, number>; logNumber: number | undefined } {
  const live = new Map<number, number>();
  let logNumber: number | undefined;
  for (const edit of logRecords(manifest)) {
    const r = new Reader(edit);
    while (!r.done) {
      const tag = r.varint();
      if (tag === 1)
        r.slice(); // comparator
      else if (tag === 2) logNumber = r.varint();
      else if (tag === 3 || tag === 4 || tag === 9)
        r.varint(); // next file, last sequence, prev log
      else if (tag === 5) {
        r.varint(); // compact pointer: level
        r.slice(); // key
      } else if (tag === 6) {
        r.varint(); // deleted file: level
        live.delete(r.varint()); // number
      } else if (tag === 7) {
        r.varint(); // level
        const number = r.varint();
        live.set(number, r.varint());
        r.slice(); // smallest key
        r.slice(); // largest key
      } else throw new LevelDbDamage(`MANIFEST edit has unknown tag ${tag}`);
    }
  }
  return { tables: live, logNumber };
}

/**
 * The LevelDB log the MANIFEST names as the current one when that file is
 * gone, else undefined (also when `CURRENT` or the MANIFEST does not read:
 * other damage, found elsewhere). LevelDB creates the next log before a
 * MANIFEST names it and removes a log only once a newer one is named, so a
 * named log that is missing was deleted — and LevelDB opens without it,
 * silently losing the writes it held (a clean close's `closed` stamp among
 * them: outside-writes.ts). Reads `CURRENT` and the MANIFEST only.
 */
export async function lostLogFile(metaPath: string): Promise<string | undefined> {
  try {
    const current = await readCurrent(metaPath);
    if (!/^MANIFEST-\d+$/.test(current)) return undefined;
    const manifestPath = join(metaPath, current);
    if (!(await isRegularFile(manifestPath))) return undefined; // a FIFO would block the read: damage that check reports
    const { logNumber } = manifestState(await readFile(manifestPath));
    // 0: a database LevelDB has not finished creating names no log yet.
    if (logNumber === undefined || logNumber === 0) return undefined;
    const name = `${String(logNumber).padStart(6, '0')}.log`;
    const gone = await lstat(join(metaPath, name)).then(
      () => false,
      (err: unknown) => (err as NodeJS.ErrnoException).code === 'ENOENT',
    );
    return gone ? name : undefined;
  } catch {
    return undefined;
  }
}

/** `CURRENT`'s text, trimmed; '' when it is missing, unreadable or not a regular file (the read of a FIFO would block). */
async function readCurrent(metaPath: string): Promise<string> {
  const path = join(metaPath, 'CURRENT');
  return (await isRegularFile(path)) ? (await readFile(path, 'utf8').catch(() => '')).trim() : '';
}

/**
 * Checks every LevelDB checksum in the database folder `metaPath`; returns
 * one message per damaged file (empty: all verified). Cost: one read of the
 * metadata files (tens of MiB for a million mappings).
 */
export async function verifyLevelDb(metaPath: string): Promise<string[]> {
  const problems: string[] = [];
  /** Runs `verify` on the file's bytes; false when the file is absent. */
  const attempt = async (name: string, verify: (file: Buffer) => void): Promise<boolean> => {
    let file: Buffer;
    try {
      // A FIFO, socket or device is not read: the read of a FIFO would block until a writer came.
      if (!(await stat(join(metaPath, name))).isFile()) throw Object.assign(new Error(`${name}: not a regular file`), { code: 'ENOTREG' });
      file = await readFile(join(metaPath, name));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return false;
      // Something else than a file where LevelDB keeps one (a directory, a loop of links, a FIFO): damage, not an I/O failure.
      if (code === 'EISDIR' || code === 'ELOOP' || code === 'ENOTDIR' || code === 'ENOTREG') {
        problems.push(`${name}: not a regular file (${code})`);
        return true;
      }
      throw err;
    }
    try {
      verify(file);
    } catch (err) {
      if (!(err instanceof LevelDbDamage)) throw err;
      problems.push(`${name}: ${err.message}`);
    }
    return true;
  };
  const readTables = async (): Promise<Map<number, number>> => {
    let tables = new Map<number, number>();
    const current = await readCurrent(metaPath);
    if (!/^MANIFEST-\d+$/.test(current)) problems.push('CURRENT: does not name a MANIFEST');
    else if (!(await attempt(current, (file) => (tables = liveTables(file))))) problems.push(`${current}: missing`);
    return tables;
  };
  for (const name of await readdir(metaPath)) if (name.endsWith('.log')) await attempt(name, (file) => void logRecords(file));
  const absent: number[] = [];
  for (const [number, sizeBytes] of await readTables()) {
    const base = String(number).padStart(6, '0');
    const verify = (file: Buffer): void => {
      if (file.length !== sizeBytes) throw new LevelDbDamage(`${file.length} bytes, the MANIFEST says ${sizeBytes}`);
      verifyTable(file);
    };
    if (!(await attempt(`${base}.ldb`, verify)) && !(await attempt(`${base}.sst`, verify))) absent.push(number);
  }
  if (absent.length > 0) {
    // A background compaction may have replaced a table since the MANIFEST was read: only a table still listed is missing.
    const now = await readTables();
    for (const number of absent) if (now.has(number)) problems.push(`${String(number).padStart(6, '0')}.ldb: missing`);
  }
  return problems;
}

/**
 * Before a writable LevelDB open of the sidecar's metadata `metaPath`: when
 * its current log is gone ({@link lostLogFile}), writes the lost-log marker
 * (`lostLogMarkerOf`, docs/FORMAT.md §2) and syncs it and its folder — the
 * open about to run makes a new log and a MANIFEST naming it, after which
 * the loss could not be seen, and a kill right after it must not hide it.
 * The change stamp's check reads the marker (outside-writes.ts); accepting
 * the file removes it.
 * @throws IO_ERROR, NO_SPACE (writing the marker)
 */
export async function markLostLog(metaPath: string): Promise<void> {
  const lost = await lostLogFile(metaPath);
  if (lost === undefined) return;
  const marker = lostLogMarkerOf(metaPath);
  const fh = await open(marker, 'w', 0o600);
  try {
    await fh.writeFile(`${lost}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await syncDirectory(dirname(marker));
}
