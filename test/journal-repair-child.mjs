// Child process of test/journal-repair.test.ts: opens <volume>, runs a fixed
// workload (writes, flushes, snapshots s1..s3; see STEPS), prints
// {"done":true} and waits to be SIGKILLed, so every transaction it committed
// is still in the journal, not checkpointed.
//
//   node test/journal-repair-child.mjs <volume>
import { writeSync } from 'node:fs';
import { Volume } from '@cowvol/cow-core';

/** The workload: [kind, offset KiB, length KiB, byte] or [snapshot, name]. Mirrored by the test's expected content. */
export const STEPS = [
  ['write', 0, 96, 0x11],
  ['snapshot', 's1'],
  ['write', 16, 32, 0x22],
  ['snapshot', 's2'],
  ['write', 0, 8, 0x33],
  ['write', 64, 16, 0x44],
  ['snapshot', 's3'],
  ['write', 40, 40, 0x55],
];

if (process.argv[2]) {
  const volume = await Volume.open(process.argv[2]);
  for (const step of STEPS) {
    if (step[0] === 'write') {
      await volume.write(step[1] * 1024, Buffer.alloc(step[2] * 1024, step[3]));
      await volume.flush();
    } else await volume.createSnapshot(step[1]);
  }
  writeSync(1, `${JSON.stringify({ done: true })}\n`);
  setInterval(() => undefined, 1 << 30);
}
