import { BackupArgumentError } from './errors.js';

/**
 * A retention policy in restic's terms (restic's `forget --keep-last`,
 * `--keep-daily`, `--keep-weekly`; docs/ARCHITECTURE.md §17 "forget"). An
 * unset count keeps nothing by that rule.
 */
export interface RetentionPolicy {
  /** The N newest snapshots. */
  keepLast?: number;
  /** The newest snapshot of each of the N newest UTC days that have one. */
  keepDaily?: number;
  /** The newest snapshot of each of the N newest ISO 8601 weeks (UTC) that have one. */
  keepWeekly?: number;
}

/** One snapshot the policy is applied to: a key to name it and its creation time. */
export interface RetentionItem {
  key: string;
  /** ISO 8601: when the snapshot was taken. */
  createdAt: string;
}

/** The decision for one item, with the rules that keep it (empty: forget it). */
export interface RetentionDecision<T extends RetentionItem> {
  item: T;
  keep: boolean;
  /** `last`, `daily 2026-12-03`, `weekly 2026-W49`: every rule that keeps it. */
  reasons: string[];
}

/** The most any count may be (a bound, not a limit anyone meets). */
const MAX_KEEP = 1_000_000;

/**
 * @throws INVALID_ARGUMENT for a count that is not an integer in 0..1,000,000,
 *   or for a policy with no rule that keeps anything: none given, or every
 *   count 0 — as restic takes it, no policy, not "forget everything" (a
 *   careless `--keep-last 0` would otherwise empty the repository)
 */
export function validatePolicy(policy: RetentionPolicy): void {
  const counts = [policy.keepLast, policy.keepDaily, policy.keepWeekly];
  for (const n of counts) {
    if (n !== undefined && (!Number.isInteger(n) || n < 0 || n > MAX_KEEP)) throw new BackupArgumentError(`a keep count is an integer from 0 to ${String(MAX_KEEP)}, not ${String(n)}`);
  }
  if (counts.every((n) => n === undefined || n === 0)) {
    throw new BackupArgumentError(
      'no retention rule that keeps anything: name at least one of --keep-last, --keep-daily, --keep-weekly with a count of 1 or more (forget removes nothing without one; all counts 0 would forget every snapshot)',
    );
  }
}

/**
 * Applies `policy` to the snapshots of one volume, restic's way: walk them
 * newest first (by `createdAt`, ties by key); each rule with count left
 * keeps a snapshot whose bucket (the rule's period: the snapshot itself, its
 * UTC day, its ISO week) differs from the last bucket that rule kept, and
 * spends one of its count. A snapshot kept by any rule is kept; the others
 * are forgotten. So `keepDaily: 7` keeps the newest snapshot of each of the
 * 7 newest days that have snapshots (days without one are not counted).
 *
 * @returns one decision per item, newest first
 * @throws INVALID_ARGUMENT for a bad policy or a createdAt that is not a time
 */
export function applyRetention<T extends RetentionItem>(items: readonly T[], policy: RetentionPolicy): Array<RetentionDecision<T>> {
  validatePolicy(policy);
  const times = new Map<T, number>();
  for (const item of items) {
    const t = Date.parse(item.createdAt);
    if (!Number.isFinite(t)) throw new BackupArgumentError(`snapshot ${item.key} has no valid creation time (${JSON.stringify(item.createdAt)})`);
    times.set(item, t);
  }
  const sorted = [...items].sort((a, b) => (times.get(b) ?? 0) - (times.get(a) ?? 0) || (a.key < b.key ? 1 : a.key > b.key ? -1 : 0));
  const rules = [
    { name: 'last', left: policy.keepLast ?? 0, bucket: (_t: number, i: number) => String(i), last: '' },
    { name: 'daily', left: policy.keepDaily ?? 0, bucket: (t: number) => new Date(t).toISOString().slice(0, 10), last: '' },
    { name: 'weekly', left: policy.keepWeekly ?? 0, bucket: isoWeek, last: '' },
  ];
  return sorted.map((item, i) => {
    const t = times.get(item) ?? 0;
    const reasons: string[] = [];
    for (const rule of rules) {
      if (rule.left === 0) continue;
      const bucket = rule.bucket(t, i);
      if (bucket === rule.last) continue;
      rule.last = bucket;
      rule.left--;
      reasons.push(rule.name === 'last' ? 'last' : `${rule.name} ${bucket}`);
    }
    return { item, keep: reasons.length > 0, reasons };
  });
}

/** The ISO 8601 week of a time in UTC: `2026-W49` (weeks start on Monday; week 1 holds the year's first Thursday). */
export function isoWeek(t: number): string {
  const d = new Date(t);
  const day = (d.getUTCDay() + 6) % 7; // Monday 0 … Sunday 6
  const thursday = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() - day + 3);
  const year = new Date(thursday).getUTCFullYear();
  const week = 1 + Math.floor((thursday - Date.UTC(year, 0, 1)) / (7 * 86_400_000));
  return `${String(year)}-W${String(week).padStart(2, '0')}`;
}
