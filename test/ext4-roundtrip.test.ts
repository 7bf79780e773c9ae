/**
 * A real filesystem image round trip (guarantee 1: a snapshot never changes).
 *
 * A folder of real files is turned into an ext4 image with mke2fs -d
 * (image1), written into a cowvol volume, and snapshotted as "before". A copy
 * of image1 is then changed with debugfs (files removed, replaced, added, a
 * directory created) giving image2, which is written over the live volume.
 *
 * Checked:
 *   - `snapshot read before` is byte-identical to image1, and e2fsck accepts it;
 *   - `read` (live) is byte-identical to image2, and e2fsck accepts it;
 *   - through debugfs, a file deleted in image2 is still readable with its
 *     original bytes in the snapshot, a replaced file has its old content in
 *     the snapshot and its new content live, and a file added in image2 is
 *     absent from the snapshot.
 *
 * Needs e2fsprogs (mke2fs, debugfs, e2fsck); skipped, with that reason in the
 * test name, only when they are not on PATH.
 */
import { spawnSync } from 'node:child_process';
import { copyFile, mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, prng, run, runOk, sha256, sha256File, tempDir, type RunResult } from './helpers.js';

function onPath(cmd: string, args: string[]): boolean {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.error === undefined;
}

const haveMke2fs = onPath('mke2fs', ['-V']) && onPath('debugfs', ['-V']) && onPath('e2fsck', ['-V']);
// CI installs e2fsprogs (.ci/run): there, a missing tool is a failure, never a skip.
if (process.env.CI && !haveMke2fs) throw new Error('CI=true but mke2fs/debugfs/e2fsck are not installed (apt-get install e2fsprogs)');
const skipReason = haveMke2fs ? '' : ' [SKIPPED: mke2fs/debugfs/e2fsck (e2fsprogs) not found on PATH]';

/** Deterministic pseudo-random bytes from a seeded mulberry32. */
function randomBytes(seed: number, length: number): Buffer {
  const next = prng(seed);
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = Math.floor(next() * 256);
  return buf;
}

async function cowvolOk(args: string[]): Promise<RunResult> {
  const r = await cowvol(args);
  if (r.code !== 0) throw new Error(`cowvol ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r;
}

/** `debugfs -R "cat <path>" <image>`: the file's bytes (debugfs exits 0 even when the file is missing). */
async function debugfsCat(image: string, path: string): Promise<RunResult> {
  return run('debugfs', ['-R', `cat ${path}`, image]);
}

describe('guarantee 1: snapshot immutability — real ext4 image round trip', () => {
  let dir = '';
  let cleanup: () => Promise<void> = async () => undefined;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-ext4-'));
  });
  afterAll(async () => {
    await cleanup();
  });

  it.skipIf(!haveMke2fs)(
    `snapshot "before" stays byte-identical to the ext4 image it captured after the filesystem is changed and rewritten${skipReason}`,
    async () => {
      // --- a folder of real files -------------------------------------------
      const tree = join(dir, 'tree');
      const files: Record<string, Buffer> = {
        'data/random-1m.bin': randomBytes(101, 1024 * 1024),
        'data/random-300k.bin': randomBytes(102, 300_001), // not a multiple of any block size
        'data/nested/deep/random-12k.bin': randomBytes(103, 12 * 1024),
        'data/nested/random-77k.bin': randomBytes(104, 77_777),
        'docs/readme.txt': Buffer.from(Array.from({ length: 400 }, (_, i) => `line ${i}: the quick brown fox jumps over the lazy dog\n`).join('')),
        'docs/notes/todo.txt': Buffer.from('1. write tests\n2. run them\n3. read the failures\n'),
        'config.ini': Buffer.from('[volume]\nname = ext4-roundtrip\nblocks = 8192\n'),
      };
      for (const [rel, content] of Object.entries(files)) {
        const path = join(tree, rel);
        await mkdir(join(path, '..'), { recursive: true });
        await writeFile(path, content);
      }

      // --- image1: mke2fs -d <folder> ---------------------------------------
      const image1 = join(dir, 'image1.img');
      await runOk('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-E', 'root_owner=0:0', '-d', tree, image1, '32M']);
      expect((await stat(image1)).size).toBe(32 * 1024 * 1024);
      const e2fsck1 = await run('e2fsck', ['-fn', image1]);
      expect(e2fsck1.code, `e2fsck image1: ${e2fsck1.stdout.toString()}${e2fsck1.stderr}`).toBe(0);
      // mke2fs really put the files in: read two of them back out of image1.
      expect(sha256((await debugfsCat(image1, '/data/random-1m.bin')).stdout)).toBe(sha256(files['data/random-1m.bin']!));
      expect(sha256((await debugfsCat(image1, '/docs/readme.txt')).stdout)).toBe(sha256(files['docs/readme.txt']!));

      // --- the volume, image1 written in, snapshot "before" -----------------
      const vol = join(dir, 'vol.img');
      await cowvolOk(['create', vol, '--size', '32M', '--data-mode', 'journal']); // ordered mode is covered by the demo and the CLI tests
      await cowvolOk(['write', vol, '--input', image1]);
      await cowvolOk(['snapshot', 'create', vol, 'before']);

      // --- image2: image1 changed with debugfs ------------------------------
      const image2 = join(dir, 'image2.img');
      await copyFile(image1, image2);
      const newBig = randomBytes(201, 640 * 1024 + 123);
      const replacedReadme = Buffer.from('this readme was replaced after the snapshot\n'.repeat(50));
      await writeFile(join(dir, 'new-big.bin'), newBig);
      await writeFile(join(dir, 'new-readme.txt'), replacedReadme);
      const cmdFile = join(dir, 'debugfs-cmds');
      await writeFile(
        cmdFile,
        [
          'rm /data/random-1m.bin',
          'rm /data/nested/deep/random-12k.bin',
          'rm /docs/readme.txt',
          `write ${join(dir, 'new-readme.txt')} /docs/readme.txt`,
          'mkdir /added',
          `write ${join(dir, 'new-big.bin')} /added/new-big.bin`,
          '',
        ].join('\n'),
      );
      await runOk('debugfs', ['-w', '-f', cmdFile, image2]);
      const e2fsck2 = await run('e2fsck', ['-fn', image2]);
      expect(e2fsck2.code, `e2fsck image2: ${e2fsck2.stdout.toString()}${e2fsck2.stderr}`).toBe(0);
      // debugfs exits 0 even when a command fails: check the edits really happened.
      expect(sha256((await debugfsCat(image2, '/added/new-big.bin')).stdout)).toBe(sha256(newBig));
      expect(sha256((await debugfsCat(image2, '/docs/readme.txt')).stdout)).toBe(sha256(replacedReadme));
      const goneInImage2 = await debugfsCat(image2, '/data/random-1m.bin');
      expect(goneInImage2.stdout.length).toBe(0);
      expect(goneInImage2.stderr).toMatch(/not found/i);
      const image1Hash = await sha256File(image1);
      const image2Hash = await sha256File(image2);
      expect(image2Hash).not.toBe(image1Hash);

      // --- image2 over the live volume --------------------------------------
      await cowvolOk(['write', vol, '--input', image2]);

      // --- the snapshot is image1, the live volume is image2 ----------------
      const snap = join(dir, 'snap.img');
      await cowvolOk(['snapshot', 'read', vol, 'before', '--output', snap]);
      expect((await stat(snap)).size).toBe(32 * 1024 * 1024);
      expect(await sha256File(snap), 'snapshot "before" must be byte-identical to image1').toBe(image1Hash);
      const fsckSnap = await run('e2fsck', ['-fn', snap]);
      expect(fsckSnap.code, `e2fsck snap.img: ${fsckSnap.stdout.toString()}${fsckSnap.stderr}`).toBe(0);

      const live = join(dir, 'live.img');
      await cowvolOk(['read', vol, '--output', live]);
      expect(await sha256File(live), 'live volume must be byte-identical to image2').toBe(image2Hash);
      const fsckLive = await run('e2fsck', ['-fn', live]);
      expect(fsckLive.code, `e2fsck live.img: ${fsckLive.stdout.toString()}${fsckLive.stderr}`).toBe(0);

      // --- file level, through debugfs on the snapshot ----------------------
      // Deleted in image2, still whole in the snapshot.
      for (const rel of ['data/random-1m.bin', 'data/nested/deep/random-12k.bin']) {
        const r = await debugfsCat(snap, `/${rel}`);
        expect(r.stdout.length, `/${rel} in the snapshot`).toBe(files[rel]!.length);
        expect(sha256(r.stdout), `/${rel} in the snapshot`).toBe(sha256(files[rel]!));
        const l = await debugfsCat(live, `/${rel}`);
        expect(l.stdout.length, `/${rel} must be gone from the live volume`).toBe(0);
      }
      // Replaced in image2: old bytes in the snapshot, new bytes live.
      expect((await debugfsCat(snap, '/docs/readme.txt')).stdout.equals(files['docs/readme.txt']!)).toBe(true);
      expect((await debugfsCat(live, '/docs/readme.txt')).stdout.equals(replacedReadme)).toBe(true);
      // Added in image2: absent from the snapshot, present live.
      const addedInSnap = await debugfsCat(snap, '/added/new-big.bin');
      expect(addedInSnap.stdout.length).toBe(0);
      expect(addedInSnap.stderr).toMatch(/not found/i);
      expect(sha256((await debugfsCat(live, '/added/new-big.bin')).stdout)).toBe(sha256(newBig));
      // Untouched files are the same in both.
      for (const rel of ['data/random-300k.bin', 'data/nested/random-77k.bin', 'docs/notes/todo.txt', 'config.ini']) {
        expect(sha256((await debugfsCat(snap, `/${rel}`)).stdout), `/${rel} in the snapshot`).toBe(sha256(files[rel]!));
        expect(sha256((await debugfsCat(live, `/${rel}`)).stdout), `/${rel} live`).toBe(sha256(files[rel]!));
      }

      // The same snapshot streamed to stdout (the other output path) is image1 too.
      const again = await cowvol(['snapshot', 'read', vol, 'before']);
      expect(again.code, again.stderr).toBe(0);
      expect(again.stdout.length).toBe(32 * 1024 * 1024);
      expect(sha256(again.stdout)).toBe(image1Hash);
    },
    180_000,
  );
});
