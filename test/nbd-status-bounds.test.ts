/**
 * BLOCK_STATUS is bounded per reply, however many dirty bitmaps a client
 * selects and however long a range it asks about (docs/ARCHITECTURE.md
 * §14.9): each of n contexts carries at most `statusExtentsPerContext(n)`
 * descriptors, and only that many blocks are looked at per context. A
 * client (nbdsh) that selects every bitmap of a volume with 64 snapshots,
 * over a volume whose changed blocks alternate with clean ones, gets short
 * replies — and, asking again from where each ended, exactly the bitmap.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { Volume } from '@cowvol/cow-core';
import { statusExtentsPerContext } from '@cowvol/nbd';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { nbdsh, requireTools, startServe, killServer } from './nbd-peers.js';

const { missing, skipReason } = requireTools([['nbdsh', 'python3-libnbd']]);

const BLOCK = 4096;
const SIZE = 32 * 1024 * 1024;
const SNAPSHOTS = 64;

describe.skipIf(missing)(`BLOCK_STATUS bounds with every dirty bitmap selected${skipReason}`, () => {
  let dir: string;
  let cleanup: (() => Promise<void>) | undefined;
  let server: ChildProcess | undefined;
  let socket: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-nbd-status-'));
    const path = join(dir, 'vol.img');
    const vol = await Volume.create(path, { sizeBytes: SIZE });
    for (let i = 0; i < SNAPSHOTS; i++) await vol.createSnapshot(`s${String(i)}`);
    // Every other block written after every snapshot: 8,192 runs per bitmap, more than a 65-context reply may carry.
    const data = Buffer.alloc(BLOCK, 0x5a);
    for (let b = 1; b < SIZE / BLOCK; b += 2) await vol.write(b * BLOCK, data);
    await vol.close();
    const started = await startServe(path);
    server = started.child;
    socket = started.socket;
  });

  afterAll(async () => {
    await killServer(server);
    await cleanup?.();
  });

  it('each context of a reply carries at most its share of descriptors, and the short replies add up to the exact bitmap', async () => {
    const contexts = SNAPSHOTS + 1;
    const share = statusExtentsPerContext(contexts);
    expect(share * 2).toBeLessThan(SIZE / BLOCK); // the test needs replies that end early
    const out = await nbdsh(`
import nbd
h.add_meta_context("base:allocation")
${Array.from({ length: SNAPSHOTS }, (_, i) => `h.add_meta_context("qemu:dirty-bitmap:s${String(i)}")`).join('\n')}
h.connect_uri(${JSON.stringify(`nbd+unix:///live?socket=${socket}`)})
most = {}
seen = {}
def cb(name, off, entries, err):
    seen[name] = list(entries)
    n = len(entries) // 2
    most[name] = max(most.get(name, 0), n)
# One context followed across the whole volume, asking again from where each reply ended.
runs = []
at = 0
while at < ${SIZE}:
    seen.clear()
    h.block_status(${SIZE} - at, at, cb)
    assert len(seen) == ${contexts}, len(seen)
    e = seen["qemu:dirty-bitmap:s7"]
    for i in range(0, len(e), 2):
        runs.append((e[i], e[i + 1] & 1))
        at += e[i]
print("most", max(v for k, v in most.items() if k.startswith("qemu:")))
print("covered", sum(r[0] for r in runs))
print("pattern", all(r == (${BLOCK}, i % 2) for i, r in enumerate(runs)), len(runs))
h.shutdown()
`);
    expect(out).toContain(`most ${String(share)}`);
    expect(out).toContain(`covered ${String(SIZE)}`);
    expect(out).toContain(`pattern True ${String(SIZE / BLOCK)}`);
  });

  it('REQ_ONE still answers with a whole first run, not a piece of it', async () => {
    const out = await nbdsh(`
import nbd
h.add_meta_context("qemu:dirty-bitmap:s0")
h.connect_uri(${JSON.stringify(`nbd+unix:///live?socket=${socket}`)})
seen = {}
def cb(name, off, entries, err):
    seen[name] = list(entries)
h.block_status(${SIZE - 100}, 100, cb, flags=nbd.CMD_FLAG_REQ_ONE)
print("one", seen["qemu:dirty-bitmap:s0"])
h.shutdown()
`);
    expect(out).toContain(`one [${String(BLOCK - 100)}, 0]`);
  });
});
