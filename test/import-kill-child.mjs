// Child process of test/import-kill.test.ts: imports the stream file
// <stream> into <target> with importStream (a durable marker every
// <markerBytes> applied bytes), as `cowvol import` does. The parent sets
// COWVOL_KILL_AT=<step>[#<n>] (packages/cow-core/src/kill-point.ts), so the
// import SIGKILLs itself at that step boundary.
//
//   node test/import-kill-child.mjs <target> <stream> <markerBytes>
import { readFile } from 'node:fs/promises';
import { importStream } from '@cowvol/cow-core';

const [target, streamPath, markerBytes] = process.argv.slice(2);
const stream = await readFile(streamPath);
const source = { lengthBytes: stream.length, read: async (o, l) => stream.subarray(o, Math.min(stream.length, o + l)) };
await importStream(target, source, { markerIntervalBytes: Number(markerBytes) });
process.stdout.write('imported\n');
