/**
 * A real filesystem through `cowvol serve`: an ext4 image made with
 * `mke2fs -t ext4 -d <folder of files>` is written into the `live` export
 * with `qemu-img convert -n` over `nbd+unix://`, then changed twice through
 * the export, with a snapshot taken before each change (the server stopped
 * for it: a snapshot cannot be created while served, docs/ARCHITECTURE.md
 * §14.7).
 *
 * Each change is a debugfs script (files added, removed, replaced, a
 * directory made) run with a fixed E2FSPROGS_FAKE_TIME, so it changes the
 * same bytes wherever it runs. It runs on a local copy of the previous image
 * (the reference) and, through the export:
 *   - where /dev/fuse works (probed by mounting nbdkit's memory plugin with
 *     nbdfuse), on the file nbdfuse mounts for `live`: debugfs's reads and
 *     writes are NBD requests;
 *   - otherwise, the 4 KiB blocks of the reference that differ from the
 *     previous image are pushed with a libnbd program (nbdsh).
 * The test logs which path ran; COWVOL_NBD_EXT4_FUSE=0 forces the second.
 *
 * Checked: every snapshot read back with nbdcopy through its
 * `snapshot/<name>` export, and `live`, are byte-identical to the image
 * written at that point and `e2fsck -fn` clean; each change changed bytes.
 *
 * Under CI=true a missing tool fails (nbdfuse and nbdkit are optional: they
 * only choose the path); elsewhere the suite is skipped, naming the packages.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvolOk, prng, run, runOk, tempDir } from './helpers.js';
import { expectSameBytes, nbdsh, requireTools, serveCowvol, type PeerServer } from './nbd-peers.js';

const { missing, skipReason } = requireTools([
  ['mke2fs', 'e2fsprogs'],
  ['debugfs', 'e2fsprogs'],
  ['e2fsck', 'e2fsprogs'],
  ['qemu-img', 'qemu-utils'],
  ['nbdcopy', 'libnbd-bin'],
  ['nbdsh', 'python3-libnbd'],
]);

const IMAGE_BYTES = 16 * 1024 * 1024;
const PUSH_BLOCK_BYTES = 4096;
const UUID = '6b1c2a4e-1f0d-4c55-9a57-2f3e8d0c7b11';

/** Deterministic bytes from a seeded mulberry32. */
function bytesOf(seed: number, length: number): Buffer {
  const next = prng(seed);
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = Math.floor(next() * 256);
  return buf;
}

/** Runs `debugfs -w -f <script> <image>` at a fixed fake time; debugfs reports failed commands on stderr only. */
async function debugfsWrite(image: string, scriptPath: string, fakeTime: number): Promise<void> {
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve, reject) => {
    const child = spawn('debugfs', ['-w', '-f', scriptPath, image], { env: { ...process.env, E2FSPROGS_FAKE_TIME: String(fakeTime) }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
  // debugfs echoes each command on stderr ("debugfs: write …"); anything else is an error.
  const errors = r.stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('debugfs ') && !l.startsWith('debugfs:') && !l.startsWith('Allocated inode'));
  expect({ code: r.code, errors }, `debugfs -f ${scriptPath} ${image}`).toEqual({ code: 0, errors: [] });
}

/** Mounts `uri` as `<mountpoint>/nbd` with nbdfuse; resolves once it is ready. `unmount` waits for nbdfuse to exit 0. */
async function nbdfuse(mountpoint: string, args: string[]): Promise<{ file: string; unmount: () => Promise<void> }> {
  const pidFile = join(dirname(mountpoint), `${String(Date.now())}.pid`);
  const child = spawn('nbdfuse', ['-P', pidFile, join(mountpoint, 'nbd'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  for (let i = 0; !existsSync(pidFile); i++) {
    if (child.exitCode !== null || i > 200) {
      child.kill('SIGTERM');
      throw new Error(`nbdfuse did not mount ${mountpoint}: exit ${String(child.exitCode)} ${log}`);
    }
    await sleep(25);
  }
  return {
    file: join(mountpoint, 'nbd'),
    unmount: async () => {
      await runOk('umount', [mountpoint]);
      expect(await exited, `nbdfuse: ${log}`).toBe(0);
    },
  };
}

/** Whether nbdfuse can mount here: /dev/fuse, nbdfuse and nbdkit present, and a mount of nbdkit's memory plugin works. */
async function fuseWorks(dir: string): Promise<boolean> {
  const onPath = (tool: string) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).error === undefined;
  if (process.env.COWVOL_NBD_EXT4_FUSE === '0' || !existsSync('/dev/fuse') || !onPath('nbdfuse') || !onPath('nbdkit')) return false;
  const mountpoint = join(dir, 'probe');
  await mkdir(mountpoint);
  try {
    const m = await nbdfuse(mountpoint, ['--command', 'nbdkit', '-s', 'memory', '1M']);
    await m.unmount();
    return true;
  } catch {
    await run('umount', [mountpoint]);
    return false;
  }
}

/** Writes the 4 KiB blocks where `next` differs from `previous` into `uri` with libnbd, then flushes. */
async function pushChangedBlocks(uri: string, previous: string, next: string): Promise<number> {
  const out = await nbdsh(`
import nbd
prev = open(${JSON.stringify(previous)}, "rb").read()
cur = open(${JSON.stringify(next)}, "rb").read()
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
n = 0
for off in range(0, len(cur), ${String(PUSH_BLOCK_BYTES)}):
    block = cur[off:off + ${String(PUSH_BLOCK_BYTES)}]
    if block != prev[off:off + ${String(PUSH_BLOCK_BYTES)}]:
        h.pwrite(block, off)
        n += 1
h.flush()
h.shutdown()
print(n)
`);
  return Number(out.trim());
}

describe.skipIf(missing)(`ext4 through cowvol serve: written with qemu-img, changed through the export, snapshots e2fsck-clean and byte-identical${skipReason}`, () => {
  let dir = '';
  let cleanup: () => Promise<void> = async () => undefined;
  let useFuse = false;
  const running = new Set<PeerServer>();

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-nbd-ext4-'));
    useFuse = await fuseWorks(dir);
  });
  afterAll(async () => {
    await Promise.all([...running].map((s) => s.stop()));
    await cleanup();
  });

  /** Serves the volume, runs `body` with the `live` URI, stops the server (exit 0). */
  async function served<T>(vol: string, body: (server: PeerServer & { socket: string }) => Promise<T>): Promise<T> {
    const server = await serveCowvol(vol);
    running.add(server);
    try {
      return await body(server);
    } finally {
      running.delete(server);
      expect(await server.stop(), `cowvol serve: ${server.log()}`).toBe(0);
    }
  }

  /** Applies change `script` to the live export (nbdfuse + debugfs, or pushed blocks) and to a copy of `previous`; returns the copy's path. */
  async function change(vol: string, previous: string, step: number, script: string): Promise<string> {
    const scriptPath = join(dir, `change-${String(step)}.debugfs`);
    await writeFile(scriptPath, script);
    const fakeTime = 1_700_000_000 + step * 3600;
    const reference = join(dir, `image-${String(step)}.raw`);
    await copyFile(previous, reference);
    await debugfsWrite(reference, scriptPath, fakeTime);
    await served(vol, async (server) => {
      if (useFuse) {
        const mountpoint = join(dir, `mnt-${String(step)}`);
        await mkdir(mountpoint);
        const m = await nbdfuse(mountpoint, [server.uri]);
        try {
          await debugfsWrite(m.file, scriptPath, fakeTime);
        } finally {
          await m.unmount();
        }
      } else {
        expect(await pushChangedBlocks(server.uri, previous, reference)).toBeGreaterThan(0);
      }
    });
    return reference;
  }

  it.skipIf(missing)('each snapshot read through snapshot/<name>, and live, equal the image written at that point and are e2fsck clean', async () => {
    console.log(`nbd-ext4: changes made ${useFuse ? 'through nbdfuse' : 'by pushing changed blocks with nbdsh (no usable nbdfuse, or COWVOL_NBD_EXT4_FUSE=0)'}`);
    const tree = join(dir, 'tree');
    const files: Record<string, Buffer> = {
      'data/random-1m.bin': bytesOf(1, 1024 * 1024),
      'data/random-300k.bin': bytesOf(2, 300_001),
      'data/nested/random-12k.bin': bytesOf(3, 12 * 1024),
      'docs/readme.txt': Buffer.from(Array.from({ length: 300 }, (_, i) => `line ${String(i)}: a filesystem on a served volume\n`).join('')),
    };
    for (const [rel, content] of Object.entries(files)) {
      await mkdir(dirname(join(tree, rel)), { recursive: true });
      await writeFile(join(tree, rel), content);
    }
    await writeFile(join(dir, 'new-700k.bin'), bytesOf(4, 700_000));
    await writeFile(join(dir, 'new-5k.bin'), bytesOf(5, 5_000));
    const image0 = join(dir, 'image-0.raw');
    const mke2fs = await new Promise<number | null>((resolve) => {
      const child = spawn('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, '-U', UUID, '-E', `hash_seed=${UUID}`, image0, `${String(IMAGE_BYTES / 1024)}k`], {
        env: { ...process.env, E2FSPROGS_FAKE_TIME: '1700000000' },
        stdio: 'ignore',
      });
      child.on('close', resolve);
    });
    expect(mke2fs).toBe(0);

    const vol = join(dir, 'vol.img');
    await cowvolOk(['create', vol, '--size', String(IMAGE_BYTES)]);
    await served(vol, (server) => runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image0, server.uri]));
    await cowvolOk(['snapshot', 'create', vol, 's0']);
    const image1 = await change(vol, image0, 1, `write ${join(dir, 'new-700k.bin')} data/new-700k.bin\nrm data/random-300k.bin\nmkdir logs\nwrite ${join(dir, 'new-5k.bin')} logs/new-5k.bin\n`);
    await cowvolOk(['snapshot', 'create', vol, 's1']);
    const image2 = await change(
      vol,
      image1,
      2,
      `rm data/random-1m.bin\nwrite ${join(dir, 'new-5k.bin')} data/random-1m.bin\nrm docs/readme.txt\nrmdir docs\nwrite ${join(dir, 'new-700k.bin')} logs/second.bin\n`,
    );

    const images = [image0, image1, image2].map((p) => readFile(p));
    const [bytes0, bytes1, bytes2] = await Promise.all(images);
    expect(bytes1!.equals(bytes0!), 'change 1 changed bytes').toBe(false);
    expect(bytes2!.equals(bytes1!), 'change 2 changed bytes').toBe(false);

    await served(vol, async (server) => {
      const reads: Array<[string, string, Buffer]> = [
        [`nbd+unix:///snapshot/s0?socket=${server.socket}`, 'snapshot s0', bytes0!],
        [`nbd+unix:///snapshot/s1?socket=${server.socket}`, 'snapshot s1', bytes1!],
        [server.uri, 'live', bytes2!],
      ];
      for (const [uri, what, expected] of reads) {
        const out = join(dir, `${what.replace(' ', '-')}.read.raw`);
        await runOk('nbdcopy', [uri, out]);
        expectSameBytes(await readFile(out), expected, `${what} against the image written at that point`);
        const fsck = await run('e2fsck', ['-fn', out]);
        expect(fsck.code, `e2fsck -fn of ${what}: ${fsck.stdout.toString()}${fsck.stderr}`).toBe(0);
      }
    });
  });
});
