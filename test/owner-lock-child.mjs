// Child process of test/owner-lock.test.ts: a volume user driven by commands,
// one per line on stdin, each answered by one JSON line on stdout:
//
//   open <path>        Volume.open(path) -> {"op":"open","ok":true,"pid":…}
//                      or {"op":"open","ok":false,"code":…,"holder":details.pid,"message":…}
//   write <n>          writes 4 KiB of byte n at offset n × 4 KiB, then flush() -> {"op":"write","ok":true}
//   spin               writes block after block, without end -> {"op":"spin","ok":true} after the first one
//   close              close() -> {"op":"close","ok":true}
//
// An error of write or close is answered with "ok":false and its code. The
// child exits when stdin ends.
import { createInterface } from 'node:readline';
import { writeSync } from 'node:fs';
import { Volume } from '@cowvol/cow-core';

const BLOCK = 4096;
let volume;

function reply(obj) {
  writeSync(1, `${JSON.stringify({ pid: process.pid, ...obj })}\n`);
}

async function writeBlock(n) {
  await volume.write((n % 16) * BLOCK, Buffer.alloc(BLOCK, n & 0xff));
  await volume.flush();
}

async function spin() {
  for (let n = 0; ; n++) {
    await writeBlock(n);
    if (n === 0) reply({ op: 'spin', ok: true });
  }
}

const commands = {
  async open(path) {
    try {
      volume = await Volume.open(path);
      reply({ op: 'open', ok: true });
    } catch (err) {
      reply({ op: 'open', ok: false, code: err.code ?? 'INTERNAL', holder: err.details?.pid, message: err.message });
    }
  },
  async write(n) {
    await writeBlock(Number(n));
    reply({ op: 'write', ok: true });
  },
  async spin() {
    void spin().catch((err) => reply({ op: 'spin', ok: false, code: err.code ?? 'INTERNAL', message: err.message }));
  },
  async close() {
    await volume.close();
    volume = undefined;
    reply({ op: 'close', ok: true });
  },
};

for await (const line of createInterface({ input: process.stdin })) {
  const space = line.indexOf(' ');
  const op = space < 0 ? line : line.slice(0, space);
  const arg = space < 0 ? undefined : line.slice(space + 1);
  try {
    await commands[op](arg);
  } catch (err) {
    reply({ op, ok: false, code: err.code ?? 'INTERNAL', message: err.message });
  }
}
