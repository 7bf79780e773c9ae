import { filesize } from 'filesize';
import type { SnapshotInfo } from '@cowvol/cow-core';

/** Human size, powers of 1024 (`64 MiB`). */
export function human(bytes: number): string {
  return String(filesize(bytes, { base: 2, standard: 'iec' }));
}

/** A plain left-aligned text table. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

export function snapshotTable(snapshots: SnapshotInfo[]): string {
  if (snapshots.length === 0) return '(no snapshots)';
  return table(
    ['NAME', 'CREATED', 'BLOCKS', 'OWNED', 'ACTIVE'],
    snapshots.map((s) => [s.name, s.createdAt, String(s.ownedBlocks), human(s.ownedBytes), s.active ? 'yes' : '']),
  );
}
