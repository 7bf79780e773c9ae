import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import type { BlockDevice, DeviceOpener } from '@cowvol/base';
import { blockDeviceSuite } from '@cowvol/base/conformance';
import { CrashController } from './crash-device.js';
import { GateOpener } from './gate-device.js';
import { MemDevice } from './mem-device.js';
import { TraceOpener } from './trace-device.js';

// Every test double cow-core's tests put at the block-device seam keeps the
// contract production's FileBlockDevice keeps (docs/ARCHITECTURE.md §1 "packages/base").

const dir = await mkdtemp(join(tmpdir(), 'cowvol-doubles-'));
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
let files = 0;

/** A device from `opener` over a new file holding `initial`. */
async function throughOpener(opener: DeviceOpener, initial: Buffer): Promise<BlockDevice> {
  const path = join(dir, `file-${(files += 1)}`);
  await writeFile(path, initial);
  return opener.open(path, { create: false });
}

blockDeviceSuite('MemDevice', (initial) => Promise.resolve(new MemDevice(Buffer.from(initial))));
// No power loss armed (crashAt 0 is never reached: I/Os count from 1).
blockDeviceSuite('CrashController device', (initial) => throughOpener(new CrashController(0, () => 0.5, 0.5), initial));
blockDeviceSuite('GateOpener device', (initial) => throughOpener(new GateOpener(), initial));
blockDeviceSuite('TraceOpener device', (initial) => throughOpener(new TraceOpener(), initial));
