import { describe, expect, it } from 'vitest';
import { Journal } from './support.js';
import { MemoryDevice } from './memory-device.js';

/**
 * A checkpoint in flight meets a revoke (docs/ARCHITECTURE.md §5.3): a block
 * revoked by a later commit is the owner's again, and the owner's own write
 * to it, made once the revoke's commit resolved, is never overwritten by
 * the image the checkpoint captured before. The home device holds the
 * checkpoint at its first home write (a gate in `before`), so the order of
 * events is fixed by the test, not by timing.
 */
const BS = 512;
const image = (byte: number) => Buffer.alloc(BS, byte);
const owners = image(0xee);

async function setup() {
  const log = new MemoryDevice('journal');
  const home = new MemoryDevice('home', Buffer.alloc(4 * BS));
  await Journal.format(log, { blockSizeBytes: BS, lengthBlocks: 128 });
  const { journal } = await Journal.open(log, { targets: new Map([[0, home]]), replay: async () => undefined });
  const h = await journal.start(2);
  h.logImage(0, 1, image(0xa1));
  h.logImage(0, 2, image(0xa2));
  await h.commit();
  return { log, home, journal };
}

/** Holds the first write to home block `block` until `open()`; `reached` resolves when that write arrives. */
function gate(home: MemoryDevice, block: number) {
  let armed = true;
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  let arrived!: () => void;
  const reached = new Promise<void>((resolve) => (arrived = resolve));
  home.before = async (op, offsetBytes) => {
    if (!armed || op !== 'write' || offsetBytes !== block * BS) return;
    armed = false;
    arrived();
    await opened;
  };
  return { reached, open };
}

/** Lets every ready task run (event-loop turns, not time). */
async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** The owner's side of a revoke: once the revoke's commit resolved, it writes the block directly and syncs it. */
async function revokeThenWrite(journal: Journal, home: MemoryDevice, block: number): Promise<void> {
  const h = await journal.start(1);
  h.revoke(0, block);
  await h.commit();
  await home.write(block * BS, owners);
  await home.sync();
}

async function homeBlock(home: MemoryDevice, block: number): Promise<Buffer> {
  return home.read(block * BS, BS);
}

describe('checkpoint in flight + revoke + a direct write by the owner', () => {
  it('a block revoked before the checkpoint reaches it is not written home', async () => {
    const { log, home, journal } = await setup();
    const held = gate(home, 1);
    const checkpoint = journal.checkpoint();
    await held.reached; // captured blocks 1 and 2; writing block 1
    await revokeThenWrite(journal, home, 2);
    held.open();
    await checkpoint;
    expect((await homeBlock(home, 2)).equals(owners), 'block 2: the captured image landed over the owner write').toBe(true);
    expect((await homeBlock(home, 1)).equals(image(0xa1))).toBe(true);
    // And after a power loss now, recovery leaves it too (the revoke is in the log).
    const crashedHome = home.crash(() => 'apply');
    const again = await Journal.open(
      log.crash(() => 'apply'),
      { targets: new Map([[0, crashedHome]]), replay: async () => undefined },
    );
    await again.journal.close();
    expect((await homeBlock(crashedHome, 2)).equals(owners), 'block 2 after recovery').toBe(true);
    await journal.close();
  });

  it('a block revoked while the checkpoint writes it: the revoke resolves only after that write, so the owner write lands last', async () => {
    const { home, journal } = await setup();
    const held = gate(home, 1);
    const checkpoint = journal.checkpoint();
    await held.reached; // the home write of block 1 is in flight
    const owner = revokeThenWrite(journal, home, 1);
    // Everything that can run without the held write runs now: the revoke
    // commits, and, were its commit not ordered after the write in flight,
    // the owner would write block 1 before the checkpoint's write lands.
    await turns(20);
    held.open();
    await owner;
    await checkpoint;
    expect((await homeBlock(home, 1)).equals(owners), 'block 1: the captured image landed over the owner write').toBe(true);
    await journal.close();
  });

  it('a block imaged anew while the checkpoint runs keeps its newer image for the next checkpoint', async () => {
    const { home, journal } = await setup();
    const held = gate(home, 1);
    const checkpoint = journal.checkpoint();
    await held.reached;
    const h = await journal.start(1);
    h.logImage(0, 2, image(0xb2));
    await h.commit();
    held.open();
    await checkpoint;
    // The captured image of block 2 left the checkpoint; the newer one is served from the cache, then written home.
    expect(journal.readImage(0, 2)?.equals(image(0xb2))).toBe(true);
    await journal.checkpoint();
    expect((await homeBlock(home, 2)).equals(image(0xb2))).toBe(true);
    expect(journal.readImage(0, 2)).toBeUndefined();
    await journal.close();
  });
});
