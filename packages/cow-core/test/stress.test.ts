import { describe, expect, it } from 'vitest';
import { formatStressSummary, runStress } from '@cowvol/test-support';
import { DATA_MODES } from './modes.js';

/**
 * The stress runner in CI, bounded: 32 writers on overlapping blocks,
 * snapshot create/delete churn and readers, every read verified against the
 * model, then reopen + full verify + check, in both data modes. Knobs:
 * COWVOL_STRESS_SECONDS (default 8 per mode), COWVOL_STRESS_SEED (default random, printed).
 */
const SECONDS = Number(process.env.COWVOL_STRESS_SECONDS ?? 8);
const SEED = process.env.COWVOL_STRESS_SEED === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(process.env.COWVOL_STRESS_SEED);

describe.each(DATA_MODES)('stress: concurrent writers, snapshot churn and readers (guarantees 1 and 6 under concurrency), data mode %s', (dataMode) => {
  it(
    `finds 0 mismatches (seed ${SEED}, ${SECONDS} s)`,
    async () => {
      const summary = await runStress({ seconds: SECONDS, writers: 32, seed: SEED, dataMode });
      console.log(formatStressSummary(summary));
      expect(summary.mismatchDetails, `replay: COWVOL_STRESS_SEED=${SEED}`).toEqual([]);
      expect(summary.mismatches).toBe(0);
      expect(summary.finalCheck).toBe('clean');
      // The run must actually have exercised the protocol.
      expect(summary.cows).toBeGreaterThan(100);
      expect(summary.pendingWaits).toBeGreaterThan(0);
      expect(summary.snapshotsCreated).toBeGreaterThan(3);
      expect(summary.snapshotsDeleted).toBeGreaterThan(0);
    },
    (SECONDS + 120) * 1000,
  );
});
