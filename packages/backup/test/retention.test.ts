/**
 * Retention rules (docs/ARCHITECTURE.md §17 "forget"), restic's semantics:
 * keep-last, keep-daily, keep-weekly counted over periods that have
 * snapshots, newest first, a snapshot kept by any rule kept.
 */
import { describe, expect, it } from 'vitest';
import { applyRetention, isoWeek, type RetentionPolicy } from '@cowvol/backup';

/** One snapshot every 6 hours from 2026-11-01T00:00Z for `days` days, named s0… oldest first. */
function series(days: number, everyHours = 6): Array<{ key: string; createdAt: string }> {
  const start = Date.UTC(2026, 10, 1);
  return Array.from({ length: (days * 24) / everyHours }, (_, i) => ({ key: `s${String(i).padStart(3, '0')}`, createdAt: new Date(start + i * everyHours * 3_600_000).toISOString() }));
}

function kept(items: Array<{ key: string; createdAt: string }>, policy: RetentionPolicy): string[] {
  return applyRetention(items, policy)
    .filter((d) => d.keep)
    .map((d) => d.item.key)
    .sort();
}

describe('retention', () => {
  it('keep-last keeps the N newest', () => {
    expect(kept(series(2), { keepLast: 3 })).toEqual(['s005', 's006', 's007']);
  });

  it('keep-daily keeps the newest of each of the N newest days', () => {
    // 4 a day; the newest of a day is the 18:00 one: s003, s007, … ; 30 days → s119 is the newest.
    expect(kept(series(30), { keepDaily: 3 })).toEqual(['s111', 's115', 's119']);
  });

  it('days without snapshots are not counted', () => {
    const items = [
      { key: 'a', createdAt: '2026-11-01T10:00:00Z' },
      { key: 'b', createdAt: '2026-11-05T10:00:00Z' },
      { key: 'c', createdAt: '2026-11-05T12:00:00Z' },
      { key: 'd', createdAt: '2026-11-20T09:00:00Z' },
    ];
    expect(kept(items, { keepDaily: 3 })).toEqual(['a', 'c', 'd']);
  });

  it('keep-weekly keeps the newest of each of the N newest ISO weeks', () => {
    // 2026-11-01 is a Sunday (week 44); weeks run Monday to Sunday.
    const items = series(22, 24); // daily at 00:00 from 2026-11-01 to 2026-11-22
    const weeks = [...new Set(items.map((i) => isoWeek(Date.parse(i.createdAt))))];
    expect(weeks).toEqual(['2026-W44', '2026-W45', '2026-W46', '2026-W47']);
    // newest of W47 is 11-22 (s021), W46 11-15 (s014), W45 11-08 (s007)
    expect(kept(items, { keepWeekly: 3 })).toEqual(['s007', 's014', 's021']);
  });

  it('a snapshot kept by any rule is kept, and says by which', () => {
    const items = series(10);
    const decisions = applyRetention(items, { keepLast: 2, keepDaily: 2, keepWeekly: 2 });
    const byKey = new Map(decisions.map((d) => [d.item.key, d.reasons]));
    expect(byKey.get('s039')).toEqual(['last', 'daily 2026-11-10', 'weekly 2026-W46']);
    expect(byKey.get('s038')).toEqual(['last']);
    expect(byKey.get('s035')).toEqual(['daily 2026-11-09']);
    // W45 ends Sunday 2026-11-08: its newest is s031
    expect(byKey.get('s031')).toEqual(['weekly 2026-W45']);
    expect(decisions.filter((d) => d.keep).map((d) => d.item.key)).toEqual(['s039', 's038', 's035', 's031']);
  });

  it('ISO weeks at year boundaries', () => {
    expect(isoWeek(Date.UTC(2026, 11, 31))).toBe('2026-W53');
    expect(isoWeek(Date.UTC(2027, 0, 3))).toBe('2026-W53');
    expect(isoWeek(Date.UTC(2027, 0, 4))).toBe('2027-W01');
    expect(isoWeek(Date.UTC(2024, 11, 30))).toBe('2025-W01');
  });

  it('refuses a policy with no rule, and bad counts', () => {
    expect(() => applyRetention(series(1), {})).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
    expect(() => applyRetention(series(1), { keepLast: -1 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
    expect(() => applyRetention(series(1), { keepDaily: 1.5 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
  });

  it('keep counts of 0 keep nothing by that rule; with no other rule they are no policy, refused (not "forget everything")', () => {
    expect(kept(series(1), { keepLast: 0, keepDaily: 1 })).toEqual(['s003']);
    expect(() => applyRetention(series(1), { keepLast: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
    expect(() => applyRetention(series(1), { keepLast: 0, keepDaily: 0, keepWeekly: 0 })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }) as Error);
  });
});
