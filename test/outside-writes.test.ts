import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, jsonOf, runOk, tempDir } from './helpers.js';

/**
 * Writes made outside cowvol, through the CLI with real tools (README "Writes
 * go through cowvol"; docs/ARCHITECTURE.md "Writes made outside cowvol"): a
 * volume file written by `dd`, resized by `truncate` or touched by `touch`
 * is refused by every command with VOLUME_MODIFIED_OUTSIDE (exit 6) naming
 * what changed and the snapshots that may read changed data, `check` calls
 * it corruption (exit 2), and only `accept-changes` takes it, marking those
 * snapshots suspect in `snapshot list`, `snapshot info` and `info` (human
 * and --json). Reading the file with cmp, `e2fsck -n` and `qemu-img info`
 * does not trip it.
 *
 * Needs coreutils, diffutils, e2fsprogs and qemu-utils; under CI=true a
 * missing tool fails the run, elsewhere the readers' test is skipped with
 * the package to install in its name.
 */
const MIB = 1024 * 1024;

function onPath(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore' }).error === undefined;
}
const TOOLS: Array<[cmd: string, args: string[], pkg: string]> = [
  ['dd', ['--version'], 'coreutils'],
  ['truncate', ['--version'], 'coreutils'],
  ['touch', ['--version'], 'coreutils'],
  ['cmp', ['--version'], 'diffutils'],
  ['mke2fs', ['-V'], 'e2fsprogs'],
  ['e2fsck', ['-V'], 'e2fsprogs'],
  ['tune2fs', ['-V'], 'e2fsprogs'],
  ['qemu-img', ['--version'], 'qemu-utils'],
];
const missing = TOOLS.filter(([cmd, args]) => !onPath(cmd, args));
const missingNames = missing.map(([cmd, , pkg]) => `${cmd} (${pkg})`).join(', ');
// CI installs them (.ci/run): there, a missing tool is a failure, never a skip.
if (process.env.CI && missing.length > 0) throw new Error(`CI=true but these tools are not installed: ${missingNames}`);
const haveCore = !missing.some(([cmd]) => ['dd', 'truncate', 'touch'].includes(cmd));
const haveReaders = missing.length === 0;

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-outside-'));
});
afterAll(async () => {
  await cleanup();
});

interface ErrorDoc {
  error: { code: string; message: string; exitCode: number; details: { changes: Array<{ field: string }>; suspectSnapshots: string[] } };
}
interface SnapshotDoc {
  name: string;
  suspect: boolean;
}

/** A new 8 MiB volume holding `content`, with snapshot s1 taken of it. */
async function volumeWithSnapshot(name: string, content: Buffer): Promise<string> {
  const vol = join(dir, name);
  await cowvolOk(['create', vol, '--size', '8M']);
  await cowvolOk(['write', vol], content);
  await cowvolOk(['snapshot', 'create', vol, 's1']);
  return vol;
}

describe.skipIf(!haveCore)(`writes made outside cowvol${haveCore ? '' : ` [SKIPPED: not found: ${missingNames}]`}`, () => {
  it('dd into the volume file: snapshot read exits 6, check exits 2, accept-changes marks s1 suspect, then reads work', async () => {
    const content = randomBytes(8 * MIB);
    const vol = await volumeWithSnapshot('story.img', content);
    await runOk('dd', ['if=/dev/urandom', `of=${vol}`, 'bs=1M', 'count=4', 'conv=notrunc', 'status=none']);

    const read = await cowvol(['snapshot', 'read', vol, 's1']);
    expect(read.code).toBe(6);
    expect(read.stdout.length).toBe(0); // not one byte of possibly changed data
    expect(read.stderr).toContain('VOLUME_MODIFIED_OUTSIDE');
    expect(read.stderr).toMatch(/modification time .* → /);
    expect(read.stderr).toContain('read blocks through to the live volume): s1.');
    expect(read.stderr).toContain(`cowvol accept-changes ${vol}`);
    const info = await cowvol(['info', vol, '--json']);
    expect(info.code).toBe(6);
    expect(jsonOf<ErrorDoc>(info).error).toMatchObject({ code: 'VOLUME_MODIFIED_OUTSIDE', exitCode: 6, details: { suspectSnapshots: ['s1'] } });
    const write = await cowvol(['write', vol], { input: Buffer.alloc(10) });
    expect(write.code).toBe(6);

    const check = await cowvol(['check', vol, '--json']);
    expect(check.code, check.stderr).toBe(2);
    expect(jsonOf<ErrorDoc>(check).error.code).toBe('VOLUME_MODIFIED_OUTSIDE');

    const accepted = await cowvol(['accept-changes', vol, '--json']);
    expect(accepted.code, accepted.stderr).toBe(0);
    expect(jsonOf(accepted)).toMatchObject({ accepted: true, suspectSnapshots: ['s1'] });
    expect(jsonOf<{ changes: Array<{ field: string }> }>(accepted).changes.map((c) => c.field)).toContain('mtime');

    const live = await readFile(vol);
    expect(live.subarray(0, 4 * MIB).equals(content.subarray(0, 4 * MIB))).toBe(false);
    expect((await cowvolOk(['snapshot', 'read', vol, 's1'])).stdout.equals(live)).toBe(true); // s1 reads the file as accepted
    expect((await cowvol(['check', vol])).code).toBe(0);

    // Suspect everywhere, never silently.
    expect(jsonOf<{ snapshots: SnapshotDoc[] }>(await cowvolOk(['snapshot', 'list', vol, '--json'])).snapshots).toMatchObject([{ name: 's1', suspect: true }]);
    expect(jsonOf<{ snapshots: SnapshotDoc[] }>(await cowvolOk(['info', vol, '--json'])).snapshots).toMatchObject([{ name: 's1', suspect: true }]);
    expect(jsonOf<SnapshotDoc>(await cowvolOk(['snapshot', 'info', vol, 's1', '--json']))).toMatchObject({ name: 's1', suspect: true });
    expect((await cowvolOk(['snapshot', 'list', vol])).stdout.toString()).toMatch(/SUSPECT[\s\S]*s1 .*suspect/);
    expect((await cowvolOk(['info', vol])).stdout.toString()).toMatch(/SUSPECT[\s\S]*s1 .*suspect/);
    expect((await cowvolOk(['snapshot', 'info', vol, 's1'])).stdout.toString()).toMatch(/suspect:\s+yes/);

    // A snapshot taken after the acceptance is not suspect; accepting again does nothing.
    await cowvolOk(['snapshot', 'create', vol, 's2']);
    expect(jsonOf<{ snapshots: SnapshotDoc[] }>(await cowvolOk(['snapshot', 'list', vol, '--json'])).snapshots.map((s) => s.suspect)).toEqual([true, false]);
    expect(jsonOf(await cowvolOk(['accept-changes', vol, '--json']))).toEqual({ volume: vol, accepted: false, changes: [], suspectSnapshots: [], abandonedImport: false });
  });

  it('truncate: refused naming the size; accept-changes refuses until the size is back', async () => {
    const content = randomBytes(8 * MIB);
    const vol = await volumeWithSnapshot('truncated.img', content);
    await runOk('truncate', ['-s', '4M', vol]);
    const list = await cowvol(['snapshot', 'list', vol, '--json']);
    expect(list.code).toBe(6);
    const err = jsonOf<ErrorDoc>(list).error;
    expect(err.code).toBe('VOLUME_MODIFIED_OUTSIDE');
    expect(err.details.changes).toContainEqual({ field: 'size', recorded: String(8 * MIB), found: String(4 * MIB) });
    expect(err.message).toContain(`restore it to ${8 * MIB} bytes`);
    const refused = await cowvol(['accept-changes', vol, '--json']);
    expect(refused.code).toBe(6);
    expect(jsonOf<ErrorDoc>(refused).error.code).toBe('VOLUME_SIZE_MISMATCH');
    await runOk('truncate', ['-s', '8M', vol]);
    expect((await cowvol(['accept-changes', vol])).code).toBe(0);
    const back = (await cowvolOk(['snapshot', 'read', vol, 's1'])).stdout;
    expect(back.subarray(0, 4 * MIB).equals(content.subarray(0, 4 * MIB))).toBe(true);
    expect(back.subarray(4 * MIB).equals(Buffer.alloc(4 * MIB))).toBe(true); // what truncate left: zeros
  });

  it('touch (times only): refused, saying the modification time changed', async () => {
    const vol = await volumeWithSnapshot('touched.img', randomBytes(MIB));
    await runOk('touch', [vol]);
    const r = await cowvol(['snapshot', 'read', vol, 's1', '--length', '4K']);
    expect(r.code).toBe(6);
    expect(r.stderr).toContain('VOLUME_MODIFIED_OUTSIDE');
    expect(r.stderr).toContain('its times set, e.g. by touch');
  });
});

describe.skipIf(!haveReaders)(`reading the volume file from outside${haveReaders ? '' : ` [SKIPPED: not found: ${missingNames}]`}`, () => {
  it('cmp, e2fsck -n and qemu-img info do not trip the change stamp', async () => {
    const image = join(dir, 'ext4.img');
    await runOk('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', image, '8M']);
    const content = await readFile(image);
    const vol = await volumeWithSnapshot('read-outside.img', content);
    await writeFile(join(dir, 'copy.img'), content);
    await runOk('cmp', [vol, join(dir, 'copy.img')]);
    await runOk('e2fsck', ['-n', vol]);
    const qemu = JSON.parse((await runOk('qemu-img', ['info', '--output=json', vol])).stdout.toString()) as { format: string; 'virtual-size': number };
    expect(qemu).toMatchObject({ format: 'raw', 'virtual-size': 8 * MIB });
    const snap = await cowvol(['snapshot', 'read', vol, 's1']);
    expect(snap.code, snap.stderr).toBe(0);
    expect(snap.stdout.equals(content)).toBe(true);
    expect((await cowvol(['check', vol])).code).toBe(0);
    expect(jsonOf<{ snapshots: SnapshotDoc[] }>(await cowvolOk(['snapshot', 'list', vol, '--json'])).snapshots).toMatchObject([{ name: 's1', suspect: false }]);
    // The comparison is real: the same tools writing are refused.
    await runOk('tune2fs', ['-L', 'changed', vol]);
    expect((await cowvol(['snapshot', 'read', vol, 's1', '--length', '4K'])).code).toBe(6);
  });
});
