import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { hasCode } from '@cowvol/base';
import {
  sameIdentity,
  BaseMismatchError,
  ImportPendingError,
  isIncompleteCreate,
  SnapshotExistsError,
  Volume,
  VolumeExistsError,
  VolumeNotFoundError,
  volumeLayout,
  type ImportRecord,
  type ImportResult,
  type SnapshotIdentity,
} from '@cowvol/cow-core';
import { BackupArgumentError } from './errors.js';
import { holderGone, processSpace } from '@cowvol/base';
import type { Manifest } from './manifest.js';

/**
 * What a restore does to its target, decided before any download
 * (docs/ARCHITECTURE.md §17, "Restore"): `new` — import into it (a new
 * volume, or `--into` a volume holding a base); `resume` — it is this
 * restore, interrupted (its import marker names this snapshot): resume the
 * import; `done` — it holds this snapshot already (imported: its `origin`),
 * nothing to download. `identities` are those of the target's snapshots, read
 * once here for the `into` base search (none for a target that does not exist).
 */
export type TargetPlan = { kind: 'new'; identities: SnapshotIdentity[] } | { kind: 'resume'; pending: ImportRecord; identities: SnapshotIdentity[] } | { kind: 'done'; heldAs: string };

/** An imported snapshot of a target: the identity it was imported as (`origin`), and its name there (it may have been renamed). */
export interface HeldOrigin {
  origin: SnapshotIdentity;
  name: string;
  /** Marked suspect (docs/ARCHITECTURE.md §13): writes made outside cowvol were accepted while it read live blocks. */
  suspect: boolean;
}

/** What a target holds that decides its plan: its import marker, its imported snapshots, the identities of all (Volume.snapshotIdentity). */
export interface TargetState {
  pendingImport: ImportRecord | null;
  origins: HeldOrigin[];
  identities: SnapshotIdentity[];
}

/**
 * Refuses, before the download, to resume an import the spool would not
 * match (import checks the marker's header CRC, but only after it has the
 * stream): the marker must be of the same kind and base as this restore's
 * stream — a full stream without `into`, an incremental one from `base` with.
 * @throws IMPORT_PENDING
 */
export function checkResumable(targetPath: string, pending: ImportRecord, base: SnapshotIdentity | null): void {
  const kind = base === null ? 'full' : 'incremental';
  if (pending.kind === kind && sameIdentity(pending.base, base)) return;
  throw new ImportPendingError(
    `the import pending in ${targetPath} is of another stream of this snapshot (${pending.kind}${pending.base ? ` from ${pending.base.name}` : ''}; this restore would apply a ${kind} one${base ? ` from ${base.name}` : ''}): ` +
      'run the restore as it first ran, or abandon that import (cowvol snapshot restore)',
    { details: { path: targetPath } },
  );
}

/**
 * The plan for the target at `targetPath`. `state` reads a served target
 * (RestoreTarget); otherwise the volume is opened here — with `into` by
 * `openVolume` (the command's, honouring `--wait`), else read-only: a path
 * given by mistake is not recovered, upgraded or written.
 *
 * @throws INVALID_ARGUMENT (an empty path, a path through a file or a symlink loop, too long; the target's folder is missing) · VOLUME_EXISTS (without `into`: a path that exists and is not this restore) · VOLUME_NOT_FOUND (`into` a missing path) · SNAPSHOT_EXISTS (`into` the volume the snapshot was taken on) · what the open throws (`into`)
 */
export async function planTarget(
  targetPath: string,
  manifest: Manifest,
  options: { into?: boolean | undefined; openVolume?: ((path: string) => Promise<Volume>) | undefined; state?: (() => Promise<TargetState>) | undefined },
): Promise<TargetPlan> {
  const into = options.into === true;
  const exists = (): VolumeExistsError => new VolumeExistsError(`${targetPath} already exists; restore into a new path (a new volume), or add the snapshot to that volume with --into`, targetPath);
  let state: TargetState;
  if (options.state) {
    state = await options.state();
  } else {
    if (targetPath === '') throw new BackupArgumentError('the target path is empty');
    const found = await fsp.lstat(targetPath).catch((err: unknown) => {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      // The path itself is wrong (through a file, a symlink loop, too long): the user's mistake, as for --output.
      if (code === 'ENOTDIR' || code === 'ELOOP' || code === 'ENAMETOOLONG') {
        throw new BackupArgumentError(`${targetPath} cannot be a volume path (${code})`, { details: { path: targetPath, errno: code }, cause: err });
      }
      throw err;
    });
    // A create killed half-way (this restore's, or any): the import starts it over, as it would for a missing path.
    const halfMade = !into && (await isIncompleteCreate(volumeLayout(targetPath)));
    if (found === undefined || halfMade) {
      if (into) throw new VolumeNotFoundError(targetPath);
      const folder = await fsp.stat(dirname(targetPath)).catch(() => undefined);
      if (!folder?.isDirectory()) throw new BackupArgumentError(`the folder of ${targetPath} does not exist (or is not a folder)`, { details: { path: targetPath } });
      // A sidecar with no volume file, not a killed create's: the create would refuse it after the download.
      if (!halfMade && (await fsp.lstat(volumeLayout(targetPath).sidecarPath).catch(() => undefined)) !== undefined) throw exists();
      return { kind: 'new', identities: [] };
    }
    state = await openState(targetPath, into, options.openVolume, exists);
  }
  if (state.pendingImport && sameIdentity(state.pendingImport.source, manifest.identity)) return { kind: 'resume', pending: state.pendingImport, identities: state.identities };
  const held = state.origins.find((o) => sameIdentity(o.origin, manifest.identity));
  if (held?.suspect === true) {
    // There, but its content took writes made outside cowvol: "already there" would vouch for bytes that may not be the backup's.
    throw new BaseMismatchError(
      `${targetPath} holds snapshot ${manifest.snapshotName} as ${held.name}, but it is suspect (writes made outside cowvol were accepted while it read live blocks), so it may not hold the backup's content; restore into a new path`,
      { details: { path: targetPath, snapshot: held.name, suspect: true } },
    );
  }
  if (held) return { kind: 'done', heldAs: held.name };
  if (!into) throw exists();
  // Taken on this very volume (the source itself): there already, as import says, before any download.
  if (state.identities.some((i) => sameIdentity(i, manifest.identity))) throw new SnapshotExistsError(manifest.snapshotName);
  return { kind: 'new', identities: state.identities };
}

async function openState(targetPath: string, into: boolean, openVolume: ((path: string) => Promise<Volume>) | undefined, exists: () => VolumeExistsError): Promise<TargetState> {
  let volume: Volume;
  try {
    volume = into && openVolume ? await openVolume(targetPath) : await Volume.openForReading(targetPath);
  } catch (err) {
    // Not a volume, or a volume another process holds (a server): either way not this restore's to write.
    if (!into && hasCode(err, 'NOT_A_VOLUME', 'VOLUME_NOT_FOUND', 'VOLUME_BUSY')) throw exists();
    throw err;
  }
  try {
    const origins: HeldOrigin[] = [];
    const identities: SnapshotIdentity[] = [];
    for (const s of await volume.listSnapshots()) {
      if (s.origin) origins.push({ origin: s.origin, name: s.name, suspect: s.suspect });
      identities.push(await volume.snapshotIdentity(s.name));
    }
    return { pendingImport: (await volume.importState()) ?? null, origins, identities };
  } finally {
    await volume.close();
  }
}

/** The result of an import that finds its snapshot there already, as `heldAs` (plan `done`). */
export function alreadyImported(targetPath: string, manifest: Manifest, heldAs: string): ImportResult {
  return {
    volume: targetPath,
    snapshot: heldAs,
    kind: 'full',
    source: { ...manifest.identity, name: manifest.snapshotName },
    base: null,
    created: false,
    resumed: true,
    alreadyImported: true,
    dryRun: false,
    verified: false,
    extentCount: 0,
    appliedExtents: 0,
    skippedExtents: 0,
    totalBytes: 0,
    dataBytes: 0,
    streamBytes: 0,
  };
}

/**
 * Spools of restores sit next to their target:
 * `.<name>.cowvol-restore-<space>-<pid>-<random>`, `<space>` this process's
 * space (16 hex digits, process-space.ts: this boot of this machine, this
 * pid namespace; `unknown` where it cannot be read), `<pid>` the process's
 * id, `<random>` 12 hex digits. Space and pid say whose it is, so that a
 * later restore removes only the spools of dead processes of its own space.
 */
const SPOOL_MARK = '.cowvol-restore-';
const UNKNOWN_SPACE = 'unknown';

/** A fresh spool path for a restore to `targetPath` by this process. */
export function spoolPathFor(targetPath: string): string {
  return join(dirname(targetPath), `.${basename(targetPath)}${SPOOL_MARK}${processSpace() ?? UNKNOWN_SPACE}-${String(process.pid)}-${randomBytes(6).toString('hex')}`);
}

/**
 * Removes the spools of earlier restores to `targetPath` that a killed
 * process left (a signal's own cleanup removes it otherwise): only names of
 * exactly the spool's form, of this process space, owned by this user,
 * whose process is gone. A spool of a live process — or of a process id
 * reused since, or of another machine, boot or pid namespace (another
 * container with the same host name too) — stays; where the space is
 * unknown, every spool stays.
 */
export async function removeDeadSpools(targetPath: string): Promise<void> {
  const space = processSpace();
  if (space === undefined) return;
  const folder = dirname(targetPath);
  const prefix = `.${basename(targetPath)}${SPOOL_MARK}${space}-`;
  const names = await fsp.readdir(folder).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const m = /^([1-9][0-9]{0,9})-[0-9a-f]{12}$/.exec(name.slice(prefix.length));
    if (m === null || !holderGone(space, Number(m[1]))) continue;
    const path = join(folder, name);
    const st = await fsp.lstat(path).catch(() => undefined);
    if (!st?.isFile() || st.uid !== process.geteuid?.()) continue;
    await fsp.unlink(path).catch(() => undefined);
  }
}
