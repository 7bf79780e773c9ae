#!/usr/bin/env node
// `pnpm bench [--quick] [...]`: the engine benchmark (bench/run.mjs) and the
// journal benchmark (bench/journal.mjs), one after the other, with the same
// arguments. Exits non-zero if either run crashed (a missed target never does).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2).filter((a) => a !== '--');
let status = 0;
for (const script of ['run.mjs', 'journal.mjs']) {
  const r = spawnSync(process.execPath, [fileURLToPath(new URL(script, import.meta.url)), ...(script === 'journal.mjs' ? args.filter((a) => a === '--quick') : args)], { stdio: 'inherit' });
  if (r.status !== 0) status = r.status ?? 1;
}
process.exitCode = status;
