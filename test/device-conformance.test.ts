import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import type { DeviceOpener } from '@cowvol/base';
import { blockDeviceSuite } from '@cowvol/base/conformance';
// A plain-JavaScript module of the benchmarks: its types are inferred (allowJs).
import { countingOpener, newCounters } from '../bench/lib/counting-opener.mjs';

// The benchmarks' counting opener wraps FileBlockDevice at the same seam
// production uses; it keeps the same contract (docs/ARCHITECTURE.md §1 "packages/base").
const dir = await mkdtemp(join(tmpdir(), 'cowvol-bench-opener-'));
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
let files = 0;
const opener: DeviceOpener = countingOpener(newCounters());

blockDeviceSuite('bench countingOpener device', async (initial) => {
  const path = join(dir, `file-${(files += 1)}`);
  await writeFile(path, initial);
  return opener.open(path, { create: false });
});
