import { chmod, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { StreamWriter, escapeTerminalText, type SnapshotIdentity, type StreamHeader } from '@cowvol/cow-core';
import { fingerprint } from '../packages/cow-core/test/backup-helpers.js';
import { CLI, cowvol, cowvolOk as ok, jsonOf as json, run, tempDir } from './helpers.js';

/**
 * What a hostile or careless user can hand cowvol through its CLI (README
 * "Labels", "Backup workflows"; docs/FORMAT.md §9.1): label values with
 * terminal controls, the label key `__proto__`, streams whose checksums hold
 * but whose header cannot be applied here (refused before the first write,
 * and by `--dry-run`), and the permissions of a private volume's sidecar.
 */
let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-security-'));
});
afterAll(async () => {
  await cleanup();
});

interface Listed {
  snapshots: Array<{ name: string; labels: Record<string, string> }>;
}

/** A stream built by hand: `header` as given (checksums right), one data extent per entry. */
async function craftStream(header: StreamHeader, extents: Array<{ offset: number; data: Buffer }>): Promise<Buffer> {
  const parts: Buffer[] = [];
  const w = new StreamWriter(header, async (b) => void parts.push(Buffer.from(b)));
  await w.start();
  for (const e of extents) await w.data(e.offset, e.data);
  await w.finish();
  return Buffer.concat(parts);
}

function identity(name: string, snapshotId = 7): SnapshotIdentity {
  return { volumeUuid: '0123456789abcdef0123456789abcdef', snapshotId, createdAt: '2026-11-22T00:00:00.000Z', name };
}

function fullHeader(overrides: Partial<StreamHeader>): StreamHeader {
  return { kind: 'full', sizeBytes: 256 * 1024, blockSizeBytes: 4096, source: identity('good'), base: null, labels: {}, createdAt: '2026-11-22T00:00:01.000Z', producer: 'test', ...overrides };
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

describe('labels', () => {
  it('a label value with a C1 control (CSI) or a bidi override is refused (INVALID_LABEL, exit 2); nothing is stored', async () => {
    // Every refused code point is covered at the API level (packages/cow-core/test/labels.test.ts); here, both commands that set labels.
    const vol = join(dir, 'labels.img');
    await ok(['create', vol, '--size', '1M']);
    await ok(['snapshot', 'create', vol, 's1', '--label', 'kind=nightly']);
    const created = await cowvol(['snapshot', 'create', vol, 's2', '--label', 'k=\u009b31mred', '--json']);
    expect(created.code).toBe(2);
    expect(json(created)).toMatchObject({ error: { code: 'INVALID_LABEL' } });
    const labelled = await cowvol(['snapshot', 'label', vol, 's1', 'k=x\u202egnp.exe']);
    expect(labelled.code).toBe(2);
    expect(labelled.stderr).toContain('[INVALID_LABEL]');
    const list = json<Listed>(await ok(['snapshot', 'list', vol, '--json']));
    expect(list.snapshots.map((s) => [s.name, s.labels])).toEqual([['s1', { kind: 'nightly' }]]);
  });

  it('the key __proto__ is refused everywhere a label is set, and never silently dropped or renamed', async () => {
    const vol = join(dir, 'proto.img');
    await ok(['create', vol, '--size', '1M']);
    await ok(['snapshot', 'create', vol, 's1', '--label', 'kind=nightly']);
    const labelled = await cowvol(['snapshot', 'label', vol, 's1', '__proto__=x', '--json']);
    expect(labelled.code).toBe(2);
    expect(json(labelled)).toMatchObject({ error: { code: 'INVALID_LABEL', details: { label: '__proto__' } } });
    const created = await cowvol(['snapshot', 'create', vol, 's2', '--label', '__proto__=x']);
    expect(created.code).toBe(2);
    expect(created.stderr).toContain('[INVALID_LABEL]');
    // Keys that are ordinary properties in JavaScript round-trip as given, through export and import too.
    await ok(['snapshot', 'label', vol, 's1', 'constructor=c', '__proto_=p', 'toString=t']);
    const stream = join(dir, 'proto.cvs');
    await ok(['snapshot', 'export', vol, 's1', '--output', stream]);
    const target = join(dir, 'proto-copy.img');
    await ok(['import', target, '--input', stream]);
    const want = { kind: 'nightly', constructor: 'c', __proto_: 'p', toString: 't' };
    for (const v of [vol, target]) {
      const listed = json<Listed>(await ok(['snapshot', 'list', v, '--json'])).snapshots;
      expect(listed.map((s) => s.name)).toEqual(['s1']); // s2 was never created
      const labels = listed[0]!.labels;
      expect(labels).toEqual(want);
      expect(Object.keys(labels).sort()).toEqual(Object.keys(want).sort());
    }
    // A stream whose header carries __proto__ (JSON makes it an own key) is refused before anything is created.
    const crafted = join(dir, 'proto-label.cvs');
    const labels = JSON.parse('{"kind":"nightly","__proto__":"x"}') as Record<string, string>;
    await writeFile(crafted, await craftStream(fullHeader({ labels }), [{ offset: 0, data: randomBytes(4096) }]));
    for (const args of [['--dry-run'], []]) {
      const r = await cowvol(['import', join(dir, 'proto-target.img'), '--input', crafted, '--json', ...args]);
      expect(r.code, r.stderr).toBe(8);
      expect(json(r)).toMatchObject({ error: { code: 'STREAM_CORRUPT', details: { record: 'header', field: 'labels' } } });
      expect(await exists(join(dir, 'proto-target.img'))).toBe(false);
    }
  });

  it('error messages quoting user text print control characters escaped', async () => {
    const vol = join(dir, 'escape.img');
    await ok(['create', vol, '--size', '1M']);
    const r = await cowvol(['snapshot', 'read', vol, 'no\u009b2Jsuch']);
    expect(r.code).toBe(3);
    expect(r.stderr).not.toContain('\u009b');
    expect(r.stderr).toContain('no\\u{009B}2Jsuch');
    expect(escapeTerminalText('a\u202eb\nc')).toBe('a\\u{202E}b\\u{000A}c');
  });
});

describe('import validates the whole stream header before the first write', () => {
  it('a full stream with an invalid snapshot name or an impossible block size is refused (exit 8) by --dry-run and by the import; no target appears', async () => {
    // Every header rule is covered at the API level (packages/cow-core/test/stream-header.test.ts); here, the exit codes.
    const cases: Array<[string, Partial<StreamHeader>, string]> = [
      ['bad-name', { source: identity('x\u009b two') }, 'source.name'],
      ['bs-1000', { blockSizeBytes: 1000, sizeBytes: 1000 * 64 }, 'blockSizeBytes'],
    ];
    for (const [name, overrides, field] of cases) {
      const path = join(dir, `${name}.cvs`);
      await writeFile(path, await craftStream(fullHeader(overrides), [{ offset: 0, data: randomBytes(overrides.blockSizeBytes ?? 4096) }]));
      const target = join(dir, `${name}.img`);
      for (const args of [['--dry-run'], []]) {
        const r = await cowvol(['import', target, '--input', path, '--json', ...args]);
        expect(r.code, `${name} ${args.join(' ')}: ${r.stderr}`).toBe(8);
        expect(json(r), name).toMatchObject({ error: { code: 'STREAM_CORRUPT', details: { record: 'header' } } });
        expect(json<{ error: { details: { field: string } } }>(r).error.details.field.startsWith(field)).toBe(true);
        expect(r.stderr).not.toContain('\u009b');
        expect(await exists(target), name).toBe(false);
        expect(await exists(`${target}.cowvol`), name).toBe(false);
      }
    }
  });

  it('an incremental stream onto its real base with an invalid snapshot name fails --dry-run and leaves the target byte-identical', async () => {
    const vol = join(dir, 'incr.img');
    await ok(['create', vol, '--size', '1M']);
    await ok(['write', vol, '--offset', '0'], randomBytes(20_000));
    await ok(['snapshot', 'create', vol, 'base']);
    const e = json<{ source: SnapshotIdentity }>(await ok(['snapshot', 'export', vol, 'base', '--output', join(dir, 'incr-base.cvs'), '--json']));
    const header: StreamHeader = {
      kind: 'incremental',
      sizeBytes: 1024 * 1024,
      blockSizeBytes: 4096,
      source: { ...e.source, snapshotId: e.source.snapshotId + 1, name: 'not valid!' },
      base: e.source,
      labels: { kind: 'nightly' },
      createdAt: '2026-11-22T00:00:01.000Z',
      producer: 'test',
    };
    const path = join(dir, 'incr-bad.cvs');
    await writeFile(path, await craftStream(header, [{ offset: 8192, data: randomBytes(3 * 4096) }]));
    const before = await fingerprint(vol);
    const volumeBytes = await readFile(vol);
    for (const args of [['--dry-run'], []]) {
      const r = await cowvol(['import', vol, '--input', path, '--json', ...args]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(8);
      expect(json(r)).toMatchObject({ error: { code: 'STREAM_CORRUPT', details: { record: 'header', field: 'source.name "not valid!"' } } });
      expect((await readFile(vol)).equals(volumeBytes)).toBe(true);
      expect(await fingerprint(vol)).toBe(before);
    }
    // The same stream with a valid name applies (the refusal was the name, not the base).
    const good = join(dir, 'incr-good.cvs');
    await writeFile(good, await craftStream({ ...header, source: { ...header.source, name: 'valid' } }, [{ offset: 8192, data: randomBytes(3 * 4096) }]));
    expect(json(await ok(['import', vol, '--input', good, '--dry-run', '--json']))).toMatchObject({ dryRun: true, snapshot: 'valid' });
  });
});

/** Every entry under `root` (root included) with its permission bits. */
async function walkModes(root: string): Promise<Array<[string, number]>> {
  const out: Array<[string, number]> = [[root, (await stat(root)).mode & 0o777]];
  for (const entry of await readdir(root, { withFileTypes: true, recursive: true })) {
    const p = join(entry.parentPath, entry.name);
    out.push([p, (await stat(p)).mode & 0o777]);
  }
  return out;
}

/**
 * The entries of a walked tree that group or others can read: read bit on
 * the entry for that class, and search (x) on the root and every folder
 * between the root and the entry.
 */
function readableByOthers(root: string, modes: Array<[string, number]>): string[] {
  const modeOf = new Map(modes);
  const out: string[] = [];
  for (const [path, mode] of modes) {
    for (const [who, r, x] of [
      ['group', 0o040, 0o010],
      ['others', 0o004, 0o001],
    ] as const) {
      let reachable = true;
      for (let p = dirname(path); reachable && p.length >= root.length; p = dirname(p)) reachable = ((modeOf.get(p) ?? 0) & x) !== 0;
      if (reachable && mode & r) out.push(`${path} (${who}, mode ${mode.toString(8)})`);
    }
  }
  return out;
}

/** `cowvol <args>` run under `umask <mask>` (through sh, as a user's shell would). */
function cowvolUnderUmask(mask: string, args: string[]): ReturnType<typeof run> {
  return run('sh', ['-c', `umask ${mask} && exec "$0" "$@"`, process.execPath, CLI, ...args]);
}

describe('sidecar permissions', () => {
  it('create --adopt of a 0600 volume under umask 022: nothing in the sidecar is open to group or others (LevelDB files included)', async () => {
    const vol = join(dir, 'private.img');
    await writeFile(vol, Buffer.alloc(1024 * 1024), { mode: 0o600 });
    await chmod(vol, 0o600);
    const r = await cowvolUnderUmask('022', ['create', vol, '--adopt']);
    expect(r.code, r.stderr).toBe(0);
    // Use it too: the journal, store and LevelDB files written afterwards are covered.
    await ok(['snapshot', 'create', vol, 's1']);
    await ok(['write', vol, '--offset', '0'], randomBytes(10_000));
    const modes = await walkModes(`${vol}.cowvol`);
    expect(modes.length).toBeGreaterThan(4);
    const sidecar = modes[0]!;
    expect(sidecar[1], 'the sidecar folder').toBe(0o700);
    for (const name of ['store', 'journal']) expect(modes.find(([p]) => p === join(`${vol}.cowvol`, name))?.[1], name).toBe(0o600);
    expect(modes.some(([p]) => p.includes(join('.cowvol', 'meta', '')))).toBe(true);
    // LevelDB creates its files with the umask (0644): the 0700 folder above them is what keeps others out.
    expect(readableByOthers(`${vol}.cowvol`, modes)).toEqual([]);
  });

  it('a new volume under umask 022 keeps its usual modes; a volume made private later gets its sidecar narrowed at the next open, never widened', async () => {
    const vol = join(dir, 'later.img');
    expect((await cowvolUnderUmask('022', ['create', vol, '--size', '1M'])).code).toBe(0);
    expect((await stat(vol)).mode & 0o777).toBe(0o644);
    expect((await stat(`${vol}.cowvol`)).mode & 0o777).toBe(0o755);
    await chmod(vol, 0o600);
    await ok(['info', vol]);
    expect((await stat(`${vol}.cowvol`)).mode & 0o777).toBe(0o700);
    // The volume opened up again: the sidecar stays as it is.
    await chmod(vol, 0o644);
    await ok(['info', vol]);
    expect((await stat(`${vol}.cowvol`)).mode & 0o777).toBe(0o700);
  });

  it('a group-readable volume (0640) gets a 0750 sidecar and 0640 store and journal', async () => {
    const vol = join(dir, 'group.img');
    await writeFile(vol, Buffer.alloc(1024 * 1024), { mode: 0o640 });
    await chmod(vol, 0o640);
    expect((await cowvolUnderUmask('022', ['create', vol, '--adopt'])).code).toBe(0);
    expect((await stat(`${vol}.cowvol`)).mode & 0o777).toBe(0o750);
    for (const name of ['store', 'journal']) expect((await stat(join(`${vol}.cowvol`, name))).mode & 0o777, name).toBe(0o640);
  });

  it('files read, snapshot read and snapshot export create are no more open than a private volume (0600 under umask 022)', async () => {
    const vol = join(dir, 'private-out.img');
    await writeFile(vol, Buffer.alloc(1024 * 1024, 7), { mode: 0o600 });
    await chmod(vol, 0o600);
    expect((await cowvolUnderUmask('022', ['create', vol, '--adopt'])).code).toBe(0);
    expect((await cowvolUnderUmask('022', ['snapshot', 'create', vol, 's'])).code).toBe(0);
    const outputs = { read: join(dir, 'out-read.bin'), snap: join(dir, 'out-snap.bin'), export: join(dir, 'out.cvs') };
    expect((await cowvolUnderUmask('022', ['read', vol, '--output', outputs.read])).code).toBe(0);
    expect((await cowvolUnderUmask('022', ['snapshot', 'read', vol, 's', '--output', outputs.snap])).code).toBe(0);
    expect((await cowvolUnderUmask('022', ['snapshot', 'export', vol, 's', '--output', outputs.export])).code).toBe(0);
    for (const [what, path] of Object.entries(outputs)) expect((await stat(path)).mode & 0o777, what).toBe(0o600);
    // An existing output keeps its mode, whichever way it is rewritten (export replaces it by a rename).
    for (const path of Object.values(outputs)) await chmod(path, 0o640);
    expect((await cowvolUnderUmask('077', ['read', vol, '--output', outputs.read])).code).toBe(0);
    expect((await cowvolUnderUmask('077', ['snapshot', 'read', vol, 's', '--output', outputs.snap])).code).toBe(0);
    expect((await cowvolUnderUmask('077', ['snapshot', 'export', vol, 's', '--output', outputs.export])).code).toBe(0);
    for (const [what, path] of Object.entries(outputs)) expect((await stat(path)).mode & 0o777, `${what} rewritten`).toBe(0o640);
  });
});

describe('stdout is an output like any other', () => {
  it('a shell redirect of stdout onto the volume or a sidecar file is refused (INVALID_ARGUMENT, exit 2) before anything is written', async () => {
    const vol = join(dir, 'redirect.img');
    await ok(['create', vol, '--size', '1M']);
    await ok(['write', vol, '--offset', '0'], Buffer.alloc(4096, 0x33));
    await ok(['snapshot', 'create', vol, 's']);
    await ok(['write', vol, '--offset', '0'], Buffer.alloc(4096, 0x44));
    const before = await readFile(vol);
    const targets = [vol, join(`${vol}.cowvol`, 'store')];
    for (const target of targets) {
      for (const args of [
        ['snapshot', 'read', vol, 's', '--offset', '512K', '--length', '4K'],
        ['read', vol, '--length', '4K', '--output', '-'],
        ['snapshot', 'export', vol, 's', '--output', '-'],
        ['info', vol], // a report, not data: it would overwrite the store's header just the same
        ['snapshot', 'diff', vol, 's'],
      ]) {
        // `1<>target`: stdout opened read-write on the file itself, as a careless script might.
        const r = await run('sh', ['-c', `exec "$0" "$@" 1<>"${target}"`, process.execPath, CLI, ...args]);
        expect(r.code, `${args.join(' ')} 1<>${target}: ${r.stderr}`).toBe(2);
        expect(r.stderr).toContain('[INVALID_ARGUMENT]');
      }
    }
    expect((await readFile(vol)).equals(before)).toBe(true);
    expect(json<{ status: string }>(await ok(['check', vol, '--read-data', '--json'])).status).toBe('clean');
    expect((await ok(['snapshot', 'read', vol, 's', '--length', '4K'])).stdout.equals(Buffer.alloc(4096, 0x33))).toBe(true);
  });
});
