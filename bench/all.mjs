#!/usr/bin/env node
// `pnpm bench [--quick] [...]`: the engine benchmark (bench/run.mjs), the
// journal benchmark (bench/journal.mjs), the copy-on-write floor
// (bench/cow-floor.mjs), the NBD benchmark (bench/nbd.mjs), the metadata
// commands against mapped blocks (bench/metadata-commands.mjs), the CLI's
// snapshot create and list at 1 snapshot and at the limit
// (bench/many-snapshots.mjs), the backup
// benchmark against restic (bench/backup.mjs) and the snapshot-create pause
// under load (bench/serve-pause.mjs), one after the
// other (run.mjs gets every argument, the others only --quick). Exits
// non-zero if a run crashed (a missed target never does).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2).filter((a) => a !== '--');
let status = 0;
const quick = args.includes('--quick');
const argsOf = {
  'run.mjs': args,
  'journal.mjs': quick ? ['--quick'] : [],
  'cow-floor.mjs': quick ? ['--mib', '64', '--reps', '1'] : [],
  'nbd.mjs': quick ? ['--quick'] : [],
  'metadata-commands.mjs': quick ? ['--blocks', '4096', '--reps', '3'] : [],
  'many-snapshots.mjs': quick ? ['--snapshots', '2048', '--reps', '2'] : [],
  'backup.mjs': quick ? ['--quick'] : [],
  'serve-pause.mjs': quick ? ['--quick'] : [],
};
for (const script of Object.keys(argsOf)) {
  const r = spawnSync(process.execPath, [fileURLToPath(new URL(script, import.meta.url)), ...argsOf[script]], { stdio: 'inherit' });
  if (r.status !== 0) status = r.status ?? 1;
}
process.exitCode = status;
