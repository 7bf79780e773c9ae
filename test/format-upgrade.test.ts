import { spawn, spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Volume } from '@cowvol/cow-core';
import { CLI, cowvol, cowvolOk, jsonOf, sha256, tempDir } from './helpers.js';

/**
 * Volumes written by the previous formats open and upgrade to version 4
 * (docs/FORMAT.md §1, "Format versions"). Version 2 (no kept shared
 * counts) is recounted to version 3 (docs/ARCHITECTURE.md §15.3, "The
 * upgrade from version 2"), then gets its catalog index like version 3
 * (docs/FORMAT.md §6.13): two committed fixtures, each a real volume of
 * its version with the SHA-256 of what the release that wrote it read back
 * (test/fixtures/format-v3.json: 38 snapshots after renames, deletes and a
 * name taken again, made by test/fixtures/make-format-v3.mjs). The fixture is a real
 * version-2 volume — 300 snapshots over a 256 KiB volume, built by the
 * release before version 3 with test/fixtures/make-format-v2.mjs — with
 * the SHA-256 of every snapshot and of the live volume as that release
 * wrote and read them back (test/fixtures/format-v2.json).
 *
 * The upgrade's recount takes two transactions here (299 `shared` records,
 * at most 256 per transaction); a kill between them comes from the
 * production seam `COWVOL_KILL_AT=recount:commit#2`, and the run asserts the
 * child really died by SIGKILL, so a recount of one transaction fails it.
 */
const FIXTURE = resolve(import.meta.dirname, 'fixtures/format-v2.tar.gz');
const FIXTURE_V3 = resolve(import.meta.dirname, 'fixtures/format-v3.tar.gz');
const BYTES = 256 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
let expected: Record<string, string>;
let expectedV3: Record<string, string>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-format-upgrade-'));
  expected = JSON.parse(await readFile(resolve(import.meta.dirname, 'fixtures/format-v2.json'), 'utf8')) as Record<string, string>;
  expectedV3 = JSON.parse(await readFile(resolve(import.meta.dirname, 'fixtures/format-v3.json'), 'utf8')) as Record<string, string>;
});
afterAll(async () => {
  await cleanup();
});

/** The fixture, unpacked into a fresh folder (tar keeps the modification times in nanoseconds: posix format). */
function unpack(name: string, fixture = FIXTURE, volume = 'v2.img'): string {
  const into = join(dir, name);
  const r = spawnSync('sh', ['-c', `mkdir -p "${into}" && tar -xzf "${fixture}" -C "${into}"`], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  return join(into, volume);
}

async function formatVersion(vol: string): Promise<number> {
  return jsonOf<{ formatVersion: number }>(await cowvolOk(['info', vol, '--json'])).formatVersion;
}

/** Every snapshot of the fixture and the live volume read back (read-only open, in this process) against the recorded SHA-256. */
async function expectFixtureContent(vol: string, hashes = expected): Promise<void> {
  const v = await Volume.openForReading(vol);
  try {
    const names = (await v.listSnapshots()).map((s) => s.name);
    for (const [name, hash] of Object.entries(hashes)) {
      if (name === 'live') expect(sha256(await v.read(0, BYTES)), 'live').toBe(hash);
      else {
        expect(names, name).toContain(name);
        expect(sha256(await v.readSnapshot(name, 0, BYTES)), name).toBe(hash);
      }
    }
  } finally {
    await v.close();
  }
}

/** `snapshot list --json`: name → freeable blocks (from the kept counts in version 3). */
async function freeable(vol: string): Promise<Record<string, number>> {
  const list = jsonOf<{ snapshots: Array<{ name: string; freeableBlocks: number }> }>(await cowvolOk(['snapshot', 'list', vol, '--json']));
  return Object.fromEntries(list.snapshots.map((s) => [s.name, s.freeableBlocks]));
}

function killedAt(step: string, args: string[]): Promise<NodeJS.Signals | null> {
  return new Promise((ok, fail) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, COWVOL_KILL_AT: step }, stdio: 'ignore' });
    child.on('error', fail);
    child.on('exit', (_code, signal) => ok(signal));
  });
}

describe('format version 2 volume (committed fixture)', () => {
  it('reads as the release before version 3 wrote it, upgrades to version 4 at its first read-write open, and still reads the same; check is clean', async () => {
    const vol = unpack('clean');
    expect(await formatVersion(vol)).toBe(2);
    await expectFixtureContent(vol);
    const readOnlyCheck = await cowvol(['check', vol]);
    expect(readOnlyCheck.code, readOnlyCheck.stderr).toBe(0);
    expect(await formatVersion(vol), 'check (read-only) does not upgrade').toBe(2);

    await cowvolOk(['snapshot', 'create', vol, 'after']);
    expect(await formatVersion(vol)).toBe(4);
    await expectFixtureContent(vol);
    const v = await Volume.openForReading(vol);
    try {
      expect(sha256(await v.readSnapshot('after', 0, BYTES))).toBe(expected.live);
    } finally {
      await v.close();
    }
    const check = await cowvol(['check', vol, '--json']);
    expect(check.code, check.stderr).toBe(0);
    expect(jsonOf<{ status: string; corruptions: unknown[] }>(check)).toMatchObject({ status: 'clean', corruptions: [] });
    // Every snapshot but the oldest shares block 0 with its older neighbour (make-format-v2.mjs), so each count moved.
    const counts = await freeable(vol);
    expect(Object.values(counts).filter((n) => n >= 1)).toHaveLength(300); // all but `after`, which maps nothing
  }, 300_000);

  it('an upgrade killed between its recount transactions stays version 2 and is finished by the next open (to version 4), with the same counts as an upgrade that ran through', async () => {
    const reference = unpack('reference');
    await cowvolOk(['snapshot', 'create', reference, 'after']);
    const vol = unpack('killed');
    expect(await killedAt('recount:commit#2', ['snapshot', 'create', vol, 'after'])).toBe('SIGKILL');
    expect(await formatVersion(vol), 'the version record joins the last transaction').toBe(2);
    await expectFixtureContent(vol);

    await cowvolOk(['snapshot', 'create', vol, 'after']);
    expect(await formatVersion(vol)).toBe(4);
    await expectFixtureContent(vol);
    const check = await cowvol(['check', vol, '--json']);
    expect(check.code, check.stderr).toBe(0);
    expect(jsonOf<{ status: string; corruptions: unknown[] }>(check)).toMatchObject({ status: 'clean', corruptions: [] });
    expect(await freeable(vol)).toEqual(await freeable(reference));
  }, 300_000);
});

describe('format version 3 volume (committed fixture)', () => {
  it('reads as the release before version 4 wrote it; the first snapshot create (a lazy open) builds its catalog index and upgrades it to version 4; it still reads the same, and check is clean', async () => {
    const vol = unpack('v3-clean', FIXTURE_V3, 'v3.img');
    expect(await formatVersion(vol)).toBe(3);
    await expectFixtureContent(vol, expectedV3);
    const taken = await cowvol(['snapshot', 'create', vol, 's1']); // a name renamed into (s2 -> s1): the index has it
    expect([taken.code, taken.stderr]).toEqual([4, expect.stringContaining('[SNAPSHOT_EXISTS]')]);
    expect(await formatVersion(vol), 'the writable open upgraded before the create was refused').toBe(4);
    await cowvolOk(['snapshot', 'create', vol, 's2']); // a name renamed away from: free
    await cowvolOk(['snapshot', 'create', vol, 's10']); // the name of a deleted snapshot: free
    await expectFixtureContent(vol, expectedV3);
    const v = await Volume.openForReading(vol);
    try {
      expect(sha256(await v.readSnapshot('s10', 0, BYTES))).toBe(expectedV3.live);
      expect((await v.listSnapshots()).map((s) => s.name).slice(-3)).toEqual(['s5', 's2', 's10']);
    } finally {
      await v.close();
    }
    const check = await cowvol(['check', vol, '--json']);
    expect(check.code, check.stderr).toBe(0);
    expect(jsonOf<{ status: string; corruptions: unknown[] }>(check)).toMatchObject({ status: 'clean', corruptions: [] });
  }, 300_000);

  it('an upgrade killed right before its one batch (index and version record) stays version 3 and is finished by the next open', async () => {
    const vol = unpack('v3-killed', FIXTURE_V3, 'v3.img');
    expect(await killedAt('index:upgrade', ['snapshot', 'create', vol, 'after'])).toBe('SIGKILL');
    expect(await formatVersion(vol)).toBe(3);
    await expectFixtureContent(vol, expectedV3);
    await cowvolOk(['snapshot', 'create', vol, 'after']);
    expect(await formatVersion(vol)).toBe(4);
    await expectFixtureContent(vol, expectedV3);
    const check = await cowvol(['check', vol, '--json']);
    expect(check.code, check.stderr).toBe(0);
    expect(jsonOf<{ status: string }>(check).status).toBe('clean');
  }, 300_000);
});
