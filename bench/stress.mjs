#!/usr/bin/env node
// `pnpm stress -- --seconds 60 --writers 32 --seed N`: the stress runner of
// @cowvol/test-support (runStress) from the command line. Prints progress on
// stderr and one summary line on stdout; exits 1 on any mismatch.
import { parseArgs } from 'node:util';
import { runStress, formatStressSummary } from '@cowvol/test-support';

const { values } = parseArgs({
  args: process.argv.slice(2).filter((a) => a !== '--'),
  options: {
    seconds: { type: 'string', default: '30' },
    writers: { type: 'string', default: '32' },
    readers: { type: 'string', default: '4' },
    seed: { type: 'string' },
    'max-snapshots': { type: 'string', default: '8' },
    json: { type: 'boolean', default: false },
    'data-mode': { type: 'string', default: 'ordered' },
  },
});
const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
process.stderr.write(`stress: seed ${seed} (replay with --seed ${seed})\n`);
const summary = await runStress({
  seconds: Number(values.seconds),
  writers: Number(values.writers),
  readers: Number(values.readers),
  maxSnapshots: Number(values['max-snapshots']),
  seed,
  dataMode: values['data-mode'],
  log: (line) => process.stderr.write(`${line}\n`),
});
process.stdout.write(values.json ? `${JSON.stringify(summary)}\n` : `${formatStressSummary(summary)}\n`);
for (const d of summary.mismatchDetails) process.stderr.write(`mismatch: ${d}\n`);
process.exitCode = summary.mismatches === 0 ? 0 : 1;
