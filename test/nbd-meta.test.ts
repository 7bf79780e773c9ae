/**
 * Metadata contexts and FAST_ZERO of `cowvol serve` against real clients
 * (docs/ARCHITECTURE.md §14.9): `qemu:dirty-bitmap:<snapshot>` on the
 * `live` export read by nbdinfo, qemu-img and nbdsh (libnbd), compared
 * with the writes the test made through NBD and with `Volume.diff`'s
 * answer offline; NBD_CMD_FLAG_FAST_ZERO refused with ENOTSUP. The tests
 * run in order against one server.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvolOk, jsonOf, prng, runOk, tempDir } from './helpers.js';
import { nbdsh, requireTools, startServe, killServer } from './nbd-peers.js';

const { missing, skipReason } = requireTools([
  ['nbdinfo', 'libnbd-bin'],
  ['nbdsh', 'python3-libnbd'],
  ['qemu-img', 'qemu-utils'],
]);

const SIZE = 8 * 1024 * 1024;
const BLOCK = 4096;
const SEED = Number(process.env.NBD_META_SEED ?? Date.now() % 2 ** 31);

interface Range {
  offsetBytes: number;
  lengthBytes: number;
}

/** Sorted, merged block-aligned ranges covering every byte of `writes`. */
function blocksOf(writes: Range[]): Range[] {
  const blocks = new Set<number>();
  for (const w of writes) for (let b = Math.floor(w.offsetBytes / BLOCK); b * BLOCK < w.offsetBytes + w.lengthBytes; b++) blocks.add(b);
  const out: Range[] = [];
  for (const b of [...blocks].sort((x, y) => x - y)) {
    const last = out[out.length - 1];
    if (last && last.offsetBytes + last.lengthBytes === b * BLOCK) last.lengthBytes += BLOCK;
    else out.push({ offsetBytes: b * BLOCK, lengthBytes: BLOCK });
  }
  return out;
}

/** Merges adjacent ranges (so differently-split answers compare equal). */
function merged(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last.offsetBytes + last.lengthBytes === r.offsetBytes) last.lengthBytes += r.lengthBytes;
    else out.push({ ...r });
  }
  return out;
}

describe.skipIf(missing)(`qemu:dirty-bitmap and FAST_ZERO with real NBD clients${skipReason}`, () => {
  let dir: string;
  let cleanup: (() => Promise<void>) | undefined;
  let vol: string;
  let server: ChildProcess | undefined;
  let socket: string;
  const writesAfterOne: Range[] = [];
  const writesAfterTwo: Range[] = [];
  const liveUri = () => `nbd+unix:///live?socket=${socket}`;

  /** Writes pseudo-random bytes at each range through NBD (nbdsh). */
  async function writeViaNbd(ranges: Range[]): Promise<void> {
    const lines = ranges.map((r) => `h.pwrite(os.urandom(${r.lengthBytes}), ${r.offsetBytes})`);
    await nbdsh(`import os\nh.connect_uri(${JSON.stringify(liveUri())})\n${lines.join('\n')}\nh.flush()\nh.shutdown()`);
  }

  /** The dirty ranges nbdinfo --map reports for `context`. */
  async function nbdinfoDirty(context: string): Promise<Range[]> {
    const out = await runOk('nbdinfo', ['--map=' + context, '--json', liveUri()]);
    const map = JSON.parse(out.stdout.toString()) as Array<{ offset: number; length: number; type: number }>;
    expect(map.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
    return merged(map.filter((e) => (e.type & 1) !== 0).map((e) => ({ offsetBytes: e.offset, lengthBytes: e.length })));
  }

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-nbd-meta-'));
    vol = join(dir, 'vol.img');
    await cowvolOk(['create', vol, '--size', String(SIZE)]);
    const started = await startServe(vol);
    server = started.child;
    socket = started.socket;
    // Written before any snapshot: never dirty.
    await writeViaNbd([{ offsetBytes: 0, lengthBytes: SIZE / 2 }]);
    await cowvolOk(['snapshot', 'create', vol, 'one']);
    const rand = prng(SEED);
    const picks: Range[] = [
      { offsetBytes: 16 * BLOCK, lengthBytes: 3 * BLOCK },
      { offsetBytes: 5 * 1024 * 1024 + 10, lengthBytes: 100 }, // partial: its whole block is dirty
    ];
    // Random writes stay at 1 MiB and above: the BLOCK_STATUS test below needs blocks 16-18 to be the
    // whole first dirty run (block 19 clean), whatever the seed.
    const RANDOM_FROM = 1024 * 1024;
    for (let i = 0; i < 6; i++) {
      picks.push({ offsetBytes: RANDOM_FROM + Math.floor(rand() * (SIZE - RANDOM_FROM - 65536)), lengthBytes: 1 + Math.floor(rand() * 65536) });
    }
    writesAfterOne.push(...picks);
    await writeViaNbd(picks);
    await cowvolOk(['snapshot', 'create', vol, 'two']);
    const late = [{ offsetBytes: SIZE - BLOCK, lengthBytes: BLOCK }];
    writesAfterOne.push(...late);
    writesAfterTwo.push(...late);
    await writeViaNbd(late);
  });

  afterAll(async () => {
    await killServer(server);
    await cleanup?.();
  });

  it(`nbdinfo --map=qemu:dirty-bitmap:<snapshot> reports exactly the blocks written through NBD after it (seed ${SEED})`, async () => {
    expect(await nbdinfoDirty('qemu:dirty-bitmap:one')).toEqual(blocksOf(writesAfterOne));
    expect(await nbdinfoDirty('qemu:dirty-bitmap:two')).toEqual(blocksOf(writesAfterTwo));
  });

  it('nbdinfo --json and nbdsh list base:allocation and one bitmap per snapshot; SET of an unknown snapshot selects nothing', async () => {
    const info = JSON.parse((await runOk('nbdinfo', ['--json', liveUri()])).stdout.toString()) as { exports: Array<{ contexts: string[] }> };
    expect([...info.exports[0]!.contexts].sort()).toEqual(['base:allocation', 'qemu:dirty-bitmap:one', 'qemu:dirty-bitmap:two']);
    const out = await nbdsh(`
import nbd
def listed(query):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(${JSON.stringify(liveUri())})
    got = []
    if query is not None:
        h.add_meta_context(query)
    h.opt_list_meta_context(lambda name: got.append(name))
    h.opt_abort()
    return sorted(got)
print("all", listed(None))
print("qemu", listed("qemu:"))
print("bitmaps", listed("qemu:dirty-bitmap:"))
print("base", listed("base:"))
print("exact", listed("qemu:dirty-bitmap:two"))
print("unknown", listed("qemu:dirty-bitmap:nosuch"))
h = nbd.NBD()
h.add_meta_context("qemu:dirty-bitmap:nosuch")
h.connect_uri(${JSON.stringify(liveUri())})
print("unknown-selected", h.can_meta_context("qemu:dirty-bitmap:nosuch"))
h.shutdown()
`);
    expect(out).toContain("all ['base:allocation', 'qemu:dirty-bitmap:one', 'qemu:dirty-bitmap:two']");
    expect(out).toContain("qemu ['qemu:dirty-bitmap:one', 'qemu:dirty-bitmap:two']");
    expect(out).toContain("bitmaps ['qemu:dirty-bitmap:one', 'qemu:dirty-bitmap:two']");
    expect(out).toContain("base ['base:allocation']");
    expect(out).toContain("exact ['qemu:dirty-bitmap:two']");
    expect(out).toContain('unknown []');
    expect(out).toContain('unknown-selected False');
  });

  it(`nbdsh: both contexts in one BLOCK_STATUS (one chunk each, distinct ids), REQ_ONE gives one extent starting at the offset (seed ${SEED})`, async () => {
    const at = 16 * BLOCK + 100; // inside the first dirty run
    const out = await nbdsh(`
import nbd
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:dirty-bitmap:one")
h.connect_uri(${JSON.stringify(liveUri())})
seen = {}
def cb(name, off, entries, err):
    seen[name] = (off, list(entries))
h.block_status(65536, ${at}, cb)
print("contexts", sorted(seen))
print("dirty", seen["qemu:dirty-bitmap:one"][1][:2])
seen.clear()
h.block_status(65536, ${at}, cb, flags=nbd.CMD_FLAG_REQ_ONE)
print("one", seen["qemu:dirty-bitmap:one"][1], seen["base:allocation"][1])
h.shutdown()
`);
    expect(out).toContain("contexts ['base:allocation', 'qemu:dirty-bitmap:one']");
    // From the offset to the end of the 3 dirty blocks.
    expect(out).toContain(`dirty [${19 * BLOCK - at}, 1]`);
    expect(out).toContain(`one [${19 * BLOCK - at}, 1] [65536, 0]`);
  });

  it(`qemu-img map with x-dirty-bitmap agrees (a dirty range is "data": false, qemu mapping bit 0 onto HOLE) (seed ${SEED})`, async () => {
    const opts = `driver=nbd,server.type=unix,server.path=${socket},export=live,x-dirty-bitmap=qemu:dirty-bitmap:one`;
    const out = await runOk('qemu-img', ['map', '--output=json', '--image-opts', opts]);
    const map = JSON.parse(out.stdout.toString()) as Array<{ start: number; length: number; data: boolean }>;
    const dirty = merged(map.filter((e) => !e.data).map((e) => ({ offsetBytes: e.start, lengthBytes: e.length })));
    expect(dirty).toEqual(blocksOf(writesAfterOne));
  });

  it('nbdsh: can_fast_zero; a FAST_ZERO zero is ENOTSUP and changes nothing; a plain zero then works', async () => {
    const out = await nbdsh(`
import nbd
h.connect_uri(${JSON.stringify(liveUri())})
print("can", h.can_fast_zero())
before = h.pread(65536, 0)
try:
    h.zero(65536, 0, flags=nbd.CMD_FLAG_FAST_ZERO)
    print("fast-zero succeeded")
except nbd.Error as e:
    print("fast-zero", e.errno)
print("unchanged", h.pread(65536, 0) == before)
h.zero(65536, 0)
print("zeroed", h.pread(65536, 0) == bytes(65536))
try:
    h.trim(4096, 0, flags=nbd.CMD_FLAG_FAST_ZERO)
except nbd.Error as e:
    print("trim-fast", e.errno)
# The server's own check, with libnbd's client-side flag checks off: NO_HOLE is for WRITE_ZEROES only.
h.set_strict_mode(0)
try:
    h.trim(4096, 0, flags=nbd.CMD_FLAG_NO_HOLE)
    print("trim-no-hole succeeded")
except nbd.Error as e:
    print("trim-no-hole", e.errno)
h.shutdown()
`);
    expect(out).toContain('can True');
    expect(out).toContain('fast-zero ENOTSUP');
    expect(out).toContain('unchanged True');
    expect(out).toContain('zeroed True');
    expect(out).toContain('trim-fast EINVAL');
    expect(out).toContain('trim-no-hole EINVAL');
  });

  it(`offline, \`cowvol snapshot diff\` names the same blocks as the bitmap did (seed ${SEED})`, async () => {
    const child = server;
    if (child?.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    const diff = jsonOf<{ extents: Array<{ offset: number; length: number }> }>(await cowvolOk(['snapshot', 'diff', vol, 'one', '--json']));
    // The zero at 0 above wrote the first 64 KiB too (it differed), after snapshot one.
    expect(merged(diff.extents.map((e) => ({ offsetBytes: e.offset, lengthBytes: e.length })))).toEqual(blocksOf([...writesAfterOne, { offsetBytes: 0, lengthBytes: 65536 }]));
  });
});
