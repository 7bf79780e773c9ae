// Preloaded (node --import) into a `cowvol serve` under bench/nbd.mjs --memory:
// samples process.memoryUsage() every 100 ms and, at exit, writes the sample
// taken at the highest RSS, the last one, and the peak RSS (JSON) to
// $BENCH_MEMORY_OUT — where the server's memory goes: V8 heap, Buffers
// (arrayBuffers), other native memory (LevelDB's cache and write buffer,
// code, the rest of RSS).
import { writeFileSync } from 'node:fs';

let peak = process.memoryUsage();
const timer = setInterval(() => {
  const m = process.memoryUsage();
  if (m.rss > peak.rss) peak = m;
}, 100);
timer.unref();

process.on('exit', () => {
  if (!process.env.BENCH_MEMORY_OUT) return;
  writeFileSync(process.env.BENCH_MEMORY_OUT, `${JSON.stringify({ atPeakRss: peak, atExit: process.memoryUsage(), maxRssBytes: process.resourceUsage().maxRSS * 1024 })}\n`);
});
