#!/usr/bin/env node
// Journal benchmark (`pnpm bench:journal`, also run by `pnpm bench`): a
// measurement, never a test.
//   1. Commit throughput with 1, 8 and 64 concurrent handles on a real file:
//      handles/s, and the group-commit factor (handles per commit = per fsync).
//   2. Handle latency (start → log → stop, the part a writer waits for before
//      its own commit) p50/p99, with no commit in flight and while a slow
//      commit (a 4 MiB transaction on a device whose sync takes 100 ms) is in
//      flight: frozen copies mean the second must not wait for the first.
// Prints a table and writes bench/results/journal-<time>.json.
import { mkdtemp, rm, mkdir, writeFile } from 'node:fs/promises';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import { execSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { FileBlockDevice } from '@cowvol/base';
import { Journal } from '@cowvol/journal';

const quick = process.argv.includes('--quick');
const BS = 4096;
const dir = await mkdtemp(join(tmpdir(), 'cowvol-jbench-'));

async function openJournal(name, slowSyncMs = 0) {
  const dev = await FileBlockDevice.open(join(dir, name), { create: true });
  await Journal.format(dev, { blockSizeBytes: BS, lengthBlocks: 16384 });
  const device =
    slowSyncMs === 0
      ? dev
      : {
          name: dev.name,
          read: (o, l) => dev.read(o, l),
          readInto: (o, into) => dev.readInto(o, into),
          write: (o, d) => dev.write(o, d),
          sync: async () => {
            await new Promise((r) => setTimeout(r, slowSyncMs));
            await dev.sync();
          },
          sizeBytes: () => dev.sizeBytes(),
          truncate: (s) => dev.truncate(s),
          close: () => dev.close(),
        };
  const home = await FileBlockDevice.open(join(dir, `${name}.home`), { create: true });
  const { journal } = await Journal.open(device, { replay: async () => undefined, targets: new Map([[0, home]]) });
  return {
    journal,
    close: async () => {
      await journal.close();
      await home.close();
    },
  };
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

const throughput = [];
for (const concurrency of [1, 8, 64]) {
  const { journal, close } = await openJournal(`tp${concurrency}`);
  const total = quick ? 512 : 4096;
  const started = performance.now();
  let next = 0;
  const image = Buffer.alloc(BS, 7);
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        const i = next++;
        const h = await journal.start(2);
        h.log({ o: 'map', b: i, p: i, crc: 0 });
        h.logImage(0, i % 1024, image);
        await h.commit();
        if (journal.uncheckpointedBlocks > 8000) await journal.checkpoint();
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  throughput.push({
    concurrency,
    handles: total,
    handlesPerSecond: Math.round(total / seconds),
    commits: journal.stats.commits,
    syncs: journal.stats.syncs,
    handlesPerCommit: +(journal.stats.handles / journal.stats.commits).toFixed(2),
  });
  await close();
}

async function latencies(withSlowCommit) {
  const { journal, close } = await openJournal(`lat${withSlowCommit ? 'slow' : 'none'}`, withSlowCommit ? 100 : 0);
  const samples = [];
  const rounds = quick ? 5 : 20;
  for (let r = 0; r < rounds; r++) {
    let slow;
    if (withSlowCommit) {
      const big = await journal.start(1024);
      for (let i = 0; i < 1024; i++) big.logImage(0, i, Buffer.alloc(BS, r));
      slow = big.commit(); // in flight: its write and 100 ms sync run now
      await new Promise((resolve) => setImmediate(resolve));
    }
    const waits = [];
    for (let k = 0; k < 50; k++) {
      const t0 = performance.now();
      const h = await journal.start(2);
      h.logImage(0, k % 1024, Buffer.alloc(BS, 9)); // same home blocks as the slow commit
      h.log({ k });
      waits.push(h.stop());
      samples.push(performance.now() - t0);
    }
    await journal.flush(); // a flush request commits the stopped handles now
    await Promise.all(waits);
    await slow;
    await journal.checkpoint();
  }
  await close();
  return { p50Ms: +pct(samples, 50).toFixed(3), p99Ms: +pct(samples, 99).toFixed(3), samples: samples.length };
}
const latencyIdle = await latencies(false);
const latencySlow = await latencies(true);

console.log('journal: commit throughput (real file, fdatasync per commit)');
console.log('concurrency  handles/s  commits  handles/commit');
for (const t of throughput) console.log(`${String(t.concurrency).padEnd(11)}  ${String(t.handlesPerSecond).padEnd(9)}  ${String(t.commits).padEnd(7)}  ${t.handlesPerCommit}`);
console.log('\njournal: handle latency (start → log → stop)');
console.log(`no commit in flight:          p50 ${latencyIdle.p50Ms} ms   p99 ${latencyIdle.p99Ms} ms`);
console.log(`slow commit in flight (100ms): p50 ${latencySlow.p50Ms} ms   p99 ${latencySlow.p99Ms} ms   (ratio p99 ${(latencySlow.p99Ms / Math.max(latencyIdle.p99Ms, 0.001)).toFixed(2)}×)`);

let commit = 'unknown';
try {
  commit = execSync('git rev-parse HEAD', { encoding: 'utf8' }).trim();
} catch {
  // Not a git checkout (or no git): the results say the commit is unknown.
}
await mkdir(new URL('./results/', import.meta.url), { recursive: true });
const file = new URL(`./results/journal-${new Date().toISOString().replace(/[:.]/g, '-')}.json`, import.meta.url);
await writeFile(file, JSON.stringify({ machine: cpus()[0]?.model, cores: cpus().length, node: process.version, commit, quick, throughput, latencyIdle, latencySlow }, null, 2));
console.log(`\nresults: ${file.pathname}`);
await rm(dir, { recursive: true, force: true });
