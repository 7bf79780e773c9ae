// Preloaded (node --import) into one extra, untimed CLI call of scenario 8:
// writes the process's peak RSS (KiB) to $BENCH_RSS_OUT at exit.
import { writeFileSync } from 'node:fs';

process.on('exit', () => {
  if (process.env.BENCH_RSS_OUT) writeFileSync(process.env.BENCH_RSS_OUT, `${process.resourceUsage().maxRSS}\n`);
});
