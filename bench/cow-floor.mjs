#!/usr/bin/env node
// The copy-on-write floor: how fast raw Node file I/O can do the I/O that
// *any* copy-before-overwrite design must do on a first write after a
// snapshot (the Next3/LVM model cowvol follows, BRIEF §3), next to the plain
// overwrite of scenario 2 — same files, same sizes, same in-flight depth, in
// one run. Used by docs/PERFORMANCE.md to show which targets are out of reach
// for the design, not for the implementation.
//
//   node bench/cow-floor.mjs [--mib 1024] [--reps 3] [--dir DIR]
//
// Per written block, the COW floor does: read the old block from the volume,
// write it to a store file, and — after the copy is durable — write the new
// block to the volume. Copies are made durable in groups, group-commit
// style (one store fdatasync in flight, covering every copy written before
// it started); a group's overwrites are issued after its sync, while the
// writers go on. No metadata at all: no
// journal, no map, no checksums. The plain overwrite does only the last
// write. Both end with one fdatasync per file, like scenario 2's flush().
import { parseArgs } from 'node:util';
import { open, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiB, median, now, permBlock, permutationStep, inFlight } from './lib/common.mjs';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '1024' },
    reps: { type: 'string', default: '3' },
    dir: { type: 'string' },
  },
});
const BS = 4096;
const sizeBytes = Number(values.mib) * MiB;
const nBlocks = sizeBytes / BS;
const reps = Number(values.reps);
const work = await mkdtemp(join(values.dir ?? tmpdir(), 'cowvol-floor-'));

async function freshVolume() {
  const path = join(work, 'vol.img');
  const fh = await open(path, 'w+');
  const fill = Buffer.alloc(MiB, 0x5a);
  for (let o = 0; o < sizeBytes; o += MiB) await fh.write(fill, 0, MiB, o);
  await fh.datasync();
  const store = await open(join(work, 'store'), 'w+');
  await store.truncate(0);
  return { fh, store };
}

/**
 * `count` writes of `bytes` at `offsetOf(i)`, `depth` in flight. With `cow`,
 * each write first copies the old bytes to the store; its overwrite is held
 * until a store sync covering the copy (group-commit style: one sync in
 * flight, covering every copy written before it started) — the writer does
 * not wait for it, like cowvol's write-back stage. The time ends when every
 * overwrite landed and both files are synced.
 */
async function run(cow, count, bytes, depth, offsetOf) {
  const { fh, store } = await freshVolume();
  const data = Buffer.alloc(bytes, 0xa5);
  let nextStore = 0;
  let group = [];
  let syncing = false;
  const landed = [];
  const spare = [];
  const kick = () => {
    if (syncing || group.length === 0) return;
    syncing = true;
    const batch = group;
    group = [];
    landed.push(
      store.datasync().then(async () => {
        syncing = false;
        kick();
        await Promise.all(batch.map((o) => fh.write(data, 0, bytes, o)));
      }),
    );
  };
  const t0 = now();
  await inFlight(count, depth, async (i) => {
    const o = offsetOf(i);
    if (!cow) return void (await fh.write(data, 0, bytes, o));
    // Copy buffers are reused (at most `depth` exist), as cowvol's buffer pool
    // does: a fresh one per copy would measure the garbage collector, not I/O.
    const old = spare.pop() ?? Buffer.allocUnsafe(bytes);
    await fh.read(old, 0, bytes, o);
    await store.write(old, 0, bytes, nextStore++ * bytes);
    spare.push(old);
    group.push(o);
    kick();
  });
  while (landed.length > 0) await landed.shift();
  if (cow) await store.datasync();
  await fh.datasync();
  const s = (now() - t0) / 1000;
  await fh.close();
  await store.close();
  return sizeBytes / MiB / s;
}

/** Sequential 1 MiB writes, 1 in flight. */
const seq = (cow) => run(cow, sizeBytes / MiB, MiB, 1, (i) => i * MiB);
/** Random 4 KiB writes (the bench's permutation), 16 in flight. */
const step = permutationStep(nBlocks);
const rand = (cow) => run(cow, nBlocks, BS, 16, (i) => permBlock(i, step, nBlocks) * BS);

const results = { seq: { plain: [], cow: [] }, rand: { plain: [], cow: [] } };
for (let r = 0; r < reps; r++) {
  for (const cow of [false, true]) results.seq[cow ? 'cow' : 'plain'].push(await seq(cow));
  for (const cow of [false, true]) results.rand[cow ? 'cow' : 'plain'].push(await rand(cow));
}
await rm(work, { recursive: true, force: true });
console.log(`COW floor, ${values.mib} MiB volume, ${reps} reps (medians, MiB/s); raw Node, no metadata`);
for (const w of ['seq', 'rand']) {
  const plain = median(results[w].plain);
  const cow = median(results[w].cow);
  console.log(
    `  ${w === 'seq' ? '1 MiB sequential, 1 in flight ' : '4 KiB random, 16 in flight    '}  plain overwrite ${plain.toFixed(0).padStart(6)}   read+copy+sync+overwrite ${cow.toFixed(0).padStart(6)}   floor/plain ${(cow / plain).toFixed(2)}x`,
  );
}
console.log(JSON.stringify({ sizeMiB: Number(values.mib), reps, results }));
