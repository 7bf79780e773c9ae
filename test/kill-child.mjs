// Child process of test/kill.test.ts: a writer that is SIGKILLed at a random
// moment. It never exits on its own.
//
//   node test/kill-child.mjs <volume> <seed> <blocks> [<first sequence number>]
//
// It opens <volume>, then loops forever over a seeded workload confined to the
// first <blocks> blocks of the volume: batches of writes (block-aligned or
// unaligned ranges) followed by one flush(), snapshot creates (names k<seq>)
// and deletes of older snapshots. Every operation is announced on stdout as
// one JSON line BEFORE it starts and reported again AFTER it resolved:
//
//   {"ready":true,"pid":…,"snapshots":[…]}         once, after Volume.open
//   {"write":seq,"offset":o,"length":n}             before volume.write()
//   {"ack":seq,"offset":o,"length":n}               after the flush() that followed the write
//   {"creating":name} / {"snapshot":name}           before / after createSnapshot(name)
//   {"deleting":name} / {"deleted":name}            before / after deleteSnapshot(name)
//
// Lines are written with fs.writeSync on fd 1 (a pipe): each line is shorter
// than PIPE_BUF, so it reaches the parent whole or not at all, and it is in
// the pipe before the operation it announces begins. A kill therefore never
// leaves an operation started whose announcement the parent did not get.
//
// Write content is a pure function of (seq, absolute byte offset) —
// contentByte() in kill-content.mjs, shared with kill.test.ts — so the parent can
// recompute every byte. Sequence numbers start at the 4th argument (the
// parent passes one above every number it has seen) and are also used for
// snapshot names, so names never repeat across runs.
//
// The workload never has a write outstanding while a snapshot is created or
// deleted: a batch's writes are awaited one after the other, then flushed and
// acknowledged, and only then does the next operation begin. So the content
// of a snapshot is exactly the acknowledged writes before it.
import { writeSync } from 'node:fs';
import { Volume } from '@cowvol/cow-core';
import { mulberry32 as prng } from '@cowvol/test-support';
import { contentByte } from './kill-content.mjs';

const [volumePath, seedArg, blocksArg, firstSeqArg] = process.argv.slice(2);
if (!volumePath || seedArg === undefined || blocksArg === undefined) {
  process.stderr.write('usage: kill-child.mjs <volume> <seed> <blocks> [<first sequence number>]\n');
  process.exit(64);
}
const seed = Number(seedArg) >>> 0;
const blocks = Number(blocksArg);
let seq = Number(firstSeqArg ?? 1);

function content(seqNo, offset, length) {
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = contentByte(seqNo, offset + i);
  return buf;
}

function report(obj) {
  const line = Buffer.from(`${JSON.stringify(obj)}\n`);
  for (let off = 0; off < line.length;) {
    try {
      off += writeSync(1, line, off);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
    }
  }
}

const r = prng(seed);
const volume = await Volume.open(volumePath);
const bs = volume.blockSizeBytes;
const limitBytes = Math.min(blocks * bs, volume.sizeBytes);
const names = (await volume.listSnapshots()).map((s) => s.name);
report({ ready: true, pid: process.pid, snapshots: names });

/** Keep the number of snapshots small: the parent holds each one's content in memory. */
const MANY_SNAPSHOTS = 8;

for (;;) {
  const x = r();
  const pDelete = names.length === 0 ? 0 : names.length >= MANY_SNAPSHOTS ? 0.35 : 0.06;
  if (x < 0.1) {
    const name = `k${seq++}`;
    report({ creating: name });
    await volume.createSnapshot(name);
    names.push(name);
    report({ snapshot: name });
  } else if (x < 0.1 + pDelete) {
    // An older snapshot: any but the newest when there are several, so
    // hand-over to an older one and re-activation of the previous one both happen.
    const pick = names.length === 1 ? 0 : Math.floor(r() * names.length);
    const [name] = names.splice(pick, 1);
    report({ deleting: name });
    await volume.deleteSnapshot(name);
    report({ deleted: name });
  } else {
    const count = 1 + Math.floor(r() * 3);
    const issued = [];
    for (let i = 0; i < count; i++) {
      let offset;
      let length;
      if (r() < 0.5) {
        // Block-aligned: 1-4 whole blocks.
        const n = 1 + Math.floor(r() * 4);
        const first = Math.floor(r() * (limitBytes / bs));
        offset = first * bs;
        length = Math.min(n * bs, limitBytes - offset);
      } else {
        // Unaligned: any byte offset, 1 byte to 3 blocks.
        offset = Math.floor(r() * (limitBytes - 1));
        length = Math.min(1 + Math.floor(r() * 3 * bs), limitBytes - offset);
      }
      const s = seq++;
      report({ write: s, offset, length });
      await volume.write(offset, content(s, offset, length));
      issued.push({ s, offset, length });
    }
    await volume.flush();
    for (const w of issued) report({ ack: w.s, offset: w.offset, length: w.length });
  }
}
