import { filesize } from 'filesize';
import { escapeLabelText, type SnapshotInfo, type SpaceReport } from '@cowvol/cow-core';

/** Human size, powers of 1024 (`64 MiB`). */
export function human(bytes: number): string {
  return filesize(bytes, { base: 2, standard: 'iec' });
}

/** A plain left-aligned text table. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => rows.reduce((w, r) => Math.max(w, (r[i] ?? '').length), h.length)); // no spread: rows may be 65,536
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

/** A snapshot with its space accounting (`snapshot list`, `info`, `snapshot info` JSON). */
export type SnapshotWithSpace = SnapshotInfo & { freeableBlocks: number; freeableBytes: number };

/** Adds each snapshot's `freeableBlocks` / `freeableBytes` from a space report. */
export function withSpace(snapshots: SnapshotInfo[], space: SpaceReport): SnapshotWithSpace[] {
  const byId = new Map(space.snapshots.map((x) => [x.id, x])); // one lookup per snapshot, not a scan: O(snapshots)
  return snapshots.map((s) => {
    const sp = byId.get(s.id);
    return { ...s, freeableBlocks: sp?.freeableBlocks ?? 0, freeableBytes: sp?.freeableBytes ?? 0 };
  });
}

/**
 * Labels as `k=v,k=v` for a terminal: control and bidirectional code points
 * (refused in new labels, README "Labels") are shown escaped as `\u{XXXX}`.
 */
export function formatLabels(labels: Record<string, string>): string {
  return Object.entries(labels)
    .map(([k, v]) => `${escapeLabelText(k)}=${escapeLabelText(v)}`)
    .join(',');
}

/**
 * The snapshot table of `snapshot list` and `info`. A SUSPECT column (a
 * snapshot that read live blocks when changes made outside cowvol were
 * accepted) is added, with a note, when any snapshot is suspect.
 */
export function snapshotTable(snapshots: Array<SnapshotInfo & Partial<SnapshotWithSpace>>): string {
  if (snapshots.length === 0) return '(no snapshots)';
  const suspect = snapshots.some((s) => s.suspect);
  const out = table(
    ['NAME', 'CREATED', 'BLOCKS', 'OWNED', 'FREES', 'HELD', 'ACTIVE', ...(suspect ? ['SUSPECT'] : []), 'LABELS'],
    snapshots.map((s) => [
      s.name,
      s.createdAt,
      String(s.ownedBlocks),
      human(s.ownedBytes),
      s.freeableBytes === undefined ? '' : human(s.freeableBytes),
      s.held ? 'held' : '',
      s.active ? 'yes' : '',
      ...(suspect ? [s.suspect ? 'suspect' : ''] : []),
      formatLabels(s.labels),
    ]),
  );
  return suspect ? `${out}\n${SUSPECT_NOTE}` : out;
}

/** What `suspect` means, for people. */
export const SUSPECT_NOTE = 'suspect: read live blocks when changes made outside cowvol were accepted (accept-changes); may hold bytes written outside cowvol';

/** Store totals in one line. */
export function storeLine(space: SpaceReport): string {
  const st = space.store;
  const pending =
    st.pendingDeleteBlocks > 0
      ? `\nan interrupted delete still holds ${human(st.pendingDeleteBlocks * space.blockSizeBytes)} (${st.pendingDeleteBlocks} blocks): the next command that opens the volume for writing, or the next delete, hands them over to older snapshots (their OWNED and FREES grow) or frees them`
      : '';
  return `store: ${human(st.usedBytes)} used (${st.usedBlocks} blocks), ${human(st.freeBytes)} free for reuse, file ${human(st.fileBytes)}; snapshots own ${human(st.ownedBytes)}${pending}`;
}
