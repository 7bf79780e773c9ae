/**
 * `info`, `snapshot info`, `snapshot delete` (names and every filter),
 * `rename`, `label`, `hold`, `release`, `snapshot diff`, `snapshot export`
 * and `check` (with --read-data) on a served volume (README "Serving a volume",
 * docs/FORMAT.md §11.2): the same steps run on two volumes built alike, one offline and one
 * served by `cowvol serve`, give the same stdout (text and --json), stderr
 * and exit code, once the volume path, its uuid and creation times (which
 * legitimately differ) are replaced by placeholders, and so are the journal
 * counters of the process holding the volume open; the streams exported
 * both ways hold the same header (but its creation time) and the same
 * extents; `snapshot restore` (no client on `live`) restores alike. A second table does the same for
 * `import` (full, incremental, stdin, --dry-run, --resume, --verify, and its refusals: STREAM_CORRUPT,
 * NOT_A_STREAM, VOLUME_EXISTS, BASE_MISMATCH, RESUME_MISMATCH, SNAPSHOT_EXISTS), `check --repair` and
 * `accept-changes` on two volumes imported from the same full stream; a file touched while served is
 * accepted as offline. Then SNAPSHOT_IN_USE
 * (exit 4): delete and rename of a snapshot an nbdsh (libnbd) client holds
 * open as `snapshot/<name>` are refused and change nothing, and succeed once
 * it disconnected; so is a delete by filter that chooses it. A restore
 * while a client holds `live` open is EXPORT_IN_USE (exit 4), changes
 * nothing, and succeeds once it disconnected; so does an import (EXPORT_IN_USE). Needs nbdsh with Debian's python3-libnbd (under CI=true a
 * missing one fails). */
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TRAILER_BYTES, readHeader } from '@cowvol/cow-core';
import { cowvol, cowvolOk, jsonOf, run, tempDir, type RunResult } from './helpers.js';
import { requireTools, startServe } from './nbd-peers.js';

const { missing, skipReason } = requireTools([
  ['nbdsh', 'python3-libnbd'],
  ['nbdinfo', 'libnbd-bin'],
]);

let dir: string;
let cleanup: () => Promise<void>;
const running = new Set<ChildProcess>();

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-served-commands-'));
});
afterAll(async () => {
  for (const child of running) child.kill('SIGKILL');
  await cleanup();
});

/** Creates a volume with data and snapshots s1 (labelled), s2 and s3 (held), each over different writes. */
async function buildVolume(name: string): Promise<string> {
  const vol = join(dir, name);
  await cowvolOk(['create', vol, '--size', '1M']);
  await cowvolOk(['write', vol, '--offset', '0'], Buffer.alloc(64 * 1024, 1));
  await cowvolOk(['snapshot', 'create', vol, 's1', '--label', 'kind=nightly', '--label', 'host=db1']);
  await cowvolOk(['write', vol, '--offset', '0'], Buffer.alloc(16 * 1024, 2));
  await cowvolOk(['snapshot', 'create', vol, 's2']);
  await cowvolOk(['write', vol, '--offset', '8192'], Buffer.alloc(32 * 1024, 3));
  await cowvolOk(['snapshot', 'create', vol, 's3']);
  await cowvolOk(['snapshot', 'hold', vol, 's3']);
  return vol;
}

/** `cowvol serve <vol>`, killed at the end if a test failed before stopping it. */
async function serve(vol: string): Promise<{ socket: string; exited: Promise<number | null>; log: () => string }> {
  const s = await startServe(vol);
  running.add(s.child);
  void s.exited.then(() => running.delete(s.child));
  return s;
}

/** Replaces what differs between two volumes built alike: the path, the uuid, ISO times. */
function normalise(text: string, vol: string, uuid: string): string {
  return text
    .replaceAll(vol, '<vol>')
    .replaceAll(uuid, '<uuid>')
    .replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z/g, '<time>');
}

/**
 * A stream file's header (its creation time, which differs from run to
 * run, left out) and the bytes of its extents (between the header and the
 * trailer, whose checksum chains the header's: docs/FORMAT.md, "Snapshot stream").
 */
async function streamParts(path: string): Promise<{ header: Record<string, unknown>; body: Buffer }> {
  const bytes = await readFile(path);
  const { header, lengthBytes } = await readHeader({ lengthBytes: bytes.length, read: (offset, length) => Promise.resolve(bytes.subarray(offset, offset + length)) });
  const rest: Record<string, unknown> = { ...header };
  delete rest.createdAt;
  return { header: rest, body: bytes.subarray(lengthBytes, bytes.length - TRAILER_BYTES) };
}

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * The journal's counters and the last open's recovery describe the process
 * that has the volume open (the server's since it started, the offline
 * command's own): they legitimately differ and are replaced too.
 */
function withoutSession(stdout: string): string {
  if (!stdout.startsWith('{')) return stdout.replace(/^journal: .*$/m, 'journal: <session>');
  return JSON.stringify(
    JSON.parse(stdout, (key, value: unknown) => (key === 'journal' || key === 'recovery' ? '<session>' : value)),
    null,
    2,
  );
}

function outcome(r: RunResult, vol: string, uuid: string): Outcome {
  return { code: r.code, stdout: withoutSession(normalise(r.stdout.toString(), vol, uuid)), stderr: normalise(r.stderr, vol, uuid) };
}

/** The steps, in order (each changes what the next sees), and the exit code each must give. */
const STEPS: Array<{ args: string[]; exit: number }> = [
  { args: ['info'], exit: 0 },
  { args: ['info', '--json'], exit: 0 },
  { args: ['snapshot', 'info', '<vol>', 's1'], exit: 0 },
  { args: ['snapshot', 'info', '<vol>', 's3', '--json'], exit: 0 },
  { args: ['snapshot', 'info', '<vol>', 'nope'], exit: 3 },
  { args: ['snapshot', 'info', '<vol>', 'nope', '--json'], exit: 3 },
  { args: ['snapshot', 'diff', '<vol>', 's1'], exit: 0 },
  { args: ['snapshot', 'diff', '<vol>', 's1', 's3', '--json'], exit: 0 },
  { args: ['snapshot', 'diff', '<vol>', 's2', '--json'], exit: 0 },
  { args: ['snapshot', 'diff', '<vol>', 'nope'], exit: 3 },
  { args: ['snapshot', 'diff', '<vol>', 's1', 'nope', '--json'], exit: 3 },
  { args: ['snapshot', 'export', '<vol>', 's2', '--output', '<out>'], exit: 0 },
  { args: ['snapshot', 'export', '<vol>', 's3', '--since', 's1', '--output', '<out>.inc', '--json'], exit: 0 },
  { args: ['snapshot', 'export', '<vol>', 'nope', '--output', '<out>.nope'], exit: 3 },
  { args: ['snapshot', 'export', '<vol>', 's3', '--since', 'nope', '--output', '<out>.nope', '--json'], exit: 3 },
  { args: ['snapshot', 'export', '<vol>', 's1', '--since', 's3', '--output', '<out>.nope', '--json'], exit: 2 },
  { args: ['snapshot', 'export', '<vol>', 's1', '--output', '-', '--json'], exit: 2 },
  { args: ['check'], exit: 0 },
  { args: ['check', '--json'], exit: 0 },
  { args: ['check', '--read-data'], exit: 0 },
  { args: ['check', '--read-data', '--json'], exit: 0 },
  { args: ['snapshot', 'label', '<vol>', 's1', 'env=prod', '--remove', 'kind'], exit: 0 },
  { args: ['snapshot', 'label', '<vol>', 's2', 'k=v', '--json'], exit: 0 },
  { args: ['snapshot', 'label', '<vol>', 'nope', 'k=v', '--json'], exit: 3 },
  { args: ['snapshot', 'label', '<vol>', 's2', 'bad key=v', '--json'], exit: 2 },
  { args: ['snapshot', 'hold', '<vol>', 's1', 'nope', 's2', '--json'], exit: 3 },
  { args: ['snapshot', 'list', '<vol>', '--json'], exit: 0 },
  { args: ['snapshot', 'hold', '<vol>', 's1', 's2'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', 's2', '--json'], exit: 4 },
  { args: ['snapshot', 'delete', '<vol>', 's1', 's2', '--dry-run', '--json'], exit: 4 },
  { args: ['snapshot', 'release', '<vol>', 's2', '--json'], exit: 0 },
  { args: ['snapshot', 'hold', '<vol>', 'nope', '--json'], exit: 3 },
  { args: ['snapshot', 'release', '<vol>', 's1'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--label', 'host=db1'], exit: 2 },
  { args: ['snapshot', 'delete', '<vol>', 's1', '--keep-newest', '1', '--json'], exit: 2 },
  { args: ['snapshot', 'delete', '<vol>', '--older-than', '3x', '--json'], exit: 2 },
  { args: ['snapshot', 'delete', '<vol>', '--label', 'bad key=v', '--keep-newest', '0', '--json'], exit: 2 },
  { args: ['snapshot', 'delete', '<vol>', '--keep-newest', '0', '--dry-run'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--keep-newest', '0', '--dry-run', '--json'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--keep-newest', '1', '--label', 'host=db1', '--dry-run', '--json'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--older-than', '1d'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--older-than', '1d', '--label', 'env=prod', '--json'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--older-than', '0s', '--label', 'k=v', '--dry-run'], exit: 0 },
  { args: ['snapshot', 'rename', '<vol>', 's2', 's2b'], exit: 0 },
  { args: ['snapshot', 'rename', '<vol>', 's1', 's3', '--json'], exit: 4 },
  { args: ['snapshot', 'rename', '<vol>', 'nope', 'x', '--json'], exit: 3 },
  { args: ['snapshot', 'delete', '<vol>', 'nope'], exit: 3 },
  { args: ['snapshot', 'delete', '<vol>', 's1', 'nope', '--json'], exit: 3 },
  { args: ['snapshot', 'delete', '<vol>', 's2b', '--dry-run'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', 's2b'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', 's1', '--json'], exit: 0 },
  { args: ['snapshot', 'create', '<vol>', 'n1', '--label', 'kind=nightly'], exit: 0 },
  { args: ['snapshot', 'create', '<vol>', 'n2', '--label', 'kind=nightly', '--json'], exit: 0 },
  { args: ['snapshot', 'create', '<vol>', 'n3', '--label', 'kind=nightly'], exit: 0 },
  { args: ['snapshot', 'create', '<vol>', 'n4', '--label', 'kind=nightly'], exit: 0 },
  { args: ['snapshot', 'hold', '<vol>', 'n2'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--label', 'kind=nightly', '--keep-newest', '2', '--json'], exit: 0 },
  { args: ['snapshot', 'label', '<vol>', 'n3', 'keep=yes', '--remove', 'kind', '--json'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--older-than', '0s', '--label', 'kind=nightly'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--keep-newest', '0', '--label', 'kind=nightly', '--json'], exit: 0 },
  { args: ['snapshot', 'release', '<vol>', 'n2'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--keep-newest', '1', '--label', 'kind=nightly', '--dry-run', '--json'], exit: 0 },
  { args: ['snapshot', 'delete', '<vol>', '--keep-newest', '0', '--label', 'kind=nightly'], exit: 0 },
  { args: ['snapshot', 'diff', '<vol>', 's3', 'n3'], exit: 0 },
  { args: ['snapshot', 'restore', '<vol>', 'nope', '--json'], exit: 3 },
  { args: ['snapshot', 'restore', '<vol>', 's3', '--safety-name', 'n3', '--json'], exit: 4 },
  { args: ['snapshot', 'restore', '<vol>', 's3', '--safety-name', 'pre'], exit: 0 },
  { args: ['snapshot', 'restore', '<vol>', 'pre', '--no-safety-snapshot', '--json'], exit: 0 },
  { args: ['snapshot', 'diff', '<vol>', 'pre'], exit: 0 },
  { args: ['check', '--read-data', '--json'], exit: 0 },
  { args: ['snapshot', 'info', '<vol>', 's3'], exit: 0 },
  { args: ['info', '--json'], exit: 0 },
  { args: ['info'], exit: 0 },
];

/** The step's argv for `vol`: `<vol>` is replaced, or the volume follows the command's first word (`info <vol>`); `<out>` is a file beside the volume. */
function argvOf(args: string[], vol: string): string[] {
  const out = args.map((a) => a.replace('<out>', `${vol}.out`));
  return out.includes('<vol>') ? out.map((a) => (a === '<vol>' ? vol : a)) : [out[0]!, vol, ...out.slice(1)];
}

describe.skipIf(missing)(`info and snapshot info, delete, rename, label, hold, release on a served volume${skipReason}`, () => {
  it(`each of ${STEPS.length} steps gives on a served volume the stdout, stderr and exit code it gives offline`, async () => {
    const [offline, servedVol] = await Promise.all([buildVolume('offline.img'), buildVolume('served.img')]);
    const uuidOf = async (vol: string): Promise<string> => jsonOf<{ uuid: string }>(await cowvolOk(['info', vol, '--json'])).uuid;
    const [offlineUuid, servedUuid] = [await uuidOf(offline), await uuidOf(servedVol)];
    const server = await serve(servedVol);
    for (const step of STEPS) {
      const [ra, rb] = await Promise.all([cowvol(argvOf(step.args, offline)), cowvol(argvOf(step.args, servedVol))]);
      const [a, b] = [outcome(ra, offline, offlineUuid), outcome(rb, servedVol, servedUuid)];
      expect(b, `cowvol ${step.args.join(' ')} served vs offline`).toEqual(a);
      expect(a.code, `cowvol ${step.args.join(' ')}: ${a.stderr}`).toBe(step.exit);
    }
    // The streams written offline and through the server: the same header (but its creation time) and the same bytes after it.
    for (const suffix of ['.out', '.out.inc']) {
      const [a, b] = await Promise.all([streamParts(join(dir, `offline.img${suffix}`)), streamParts(join(dir, `served.img${suffix}`))]);
      expect(normalise(JSON.stringify(b.header), servedVol, servedUuid), suffix).toBe(normalise(JSON.stringify(a.header), offline, offlineUuid));
      expect(b.body.equals(a.body), `stream ${suffix}: extents served vs offline`).toBe(true);
    }
    await cowvolOk(['stop', servedVol]);
    expect(await server.exited).toBe(0);
    // Stopped: both volumes hold the same snapshots.
    const names = async (vol: string): Promise<string[]> => jsonOf<{ snapshots: Array<{ name: string }> }>(await cowvolOk(['snapshot', 'list', vol, '--json'])).snapshots.map((s) => s.name);
    expect(await names(servedVol)).toEqual(await names(offline));
    expect(await names(offline)).toEqual(['s3', 'n3', 'pre']);
  }, 900_000);

  it('delete (by name or filter) and rename of a snapshot an NBD client holds open: SNAPSHOT_IN_USE (exit 4), nothing changed; after it disconnects both succeed', async () => {
    const vol = await buildVolume('in-use.img');
    const server = await serve(vol);
    await cowvolOk(['snapshot', 'release', vol, 's3']);
    const client = await attachNbdsh(`nbd+unix:///snapshot/s2?socket=${server.socket}`);
    expect(client.out()).toBe('2\n'); // s2 was taken after the second write: its first block reads 2s

    for (const args of [
      ['snapshot', 'delete', vol, 's2', '--json'],
      ['snapshot', 'delete', vol, 's1', 's2', '--json'],
      ['snapshot', 'rename', vol, 's2', 'moved', '--json'],
      // A filter that chooses it (with s1 and s3): the whole delete is refused.
      ['snapshot', 'delete', vol, '--keep-newest', '0', '--json'],
    ]) {
      const refused = await cowvol(args);
      expect(refused.code, refused.stderr).toBe(4);
      expect(jsonOf<{ error: { code: string; details: unknown } }>(refused).error).toMatchObject({ code: 'SNAPSHOT_IN_USE', details: { name: 's2', connections: 1 } });
    }
    // A dry run says what the delete would say (by name or filter); other snapshots can go.
    for (const args of [
      ['snapshot', 'delete', vol, 's2', '--dry-run', '--json'],
      ['snapshot', 'delete', vol, '--keep-newest', '0', '--dry-run', '--json'],
    ]) {
      const dry = await cowvol(args);
      expect(dry.code, dry.stderr).toBe(4);
      expect(jsonOf<{ error: { code: string } }>(dry).error.code).toBe('SNAPSHOT_IN_USE');
    }
    expect(jsonOf<{ dryRun: boolean }>(await cowvolOk(['snapshot', 'delete', vol, 's3', '--dry-run', '--json'])).dryRun).toBe(true);
    await cowvolOk(['snapshot', 'delete', vol, 's3']);
    const listed = jsonOf<{ snapshots: Array<{ name: string }> }>(await cowvolOk(['snapshot', 'list', vol, '--json']));
    expect(listed.snapshots.map((s) => s.name)).toEqual(['s1', 's2']);

    expect(await client.release()).toBe('2\n2\n'); // the client read its snapshot unchanged to the end
    await untilDetached(vol, 'snapshot/s2');
    expect(jsonOf(await cowvolOk(['snapshot', 'rename', vol, 's2', 'moved', '--json']))).toMatchObject({ name: 'moved' });
    expect(jsonOf(await cowvolOk(['snapshot', 'delete', vol, 'moved', '--json']))).toMatchObject({ name: 'moved' });
    await cowvolOk(['stop', vol]);
    expect(await server.exited).toBe(0);
  }, 300_000);

  it('a client with qemu:dirty-bitmap:s2 selected pins s2: delete and rename are SNAPSHOT_IN_USE, so the bitmap never comes to mean another snapshot of that name', async () => {
    const vol = await buildVolume('bitmap-pin.img');
    const server = await serve(vol);
    const client = await attachNbdsh(`nbd+unix:///live?socket=${server.socket}`, 'qemu:dirty-bitmap:s2');
    for (const args of [
      ['snapshot', 'delete', vol, 's2', '--json'],
      ['snapshot', 'rename', vol, 's2', 's2-old', '--json'],
    ]) {
      const refused = await cowvol(args);
      expect(refused.code, refused.stderr).toBe(4);
      expect(jsonOf<{ error: { code: string; details: unknown } }>(refused).error).toMatchObject({ code: 'SNAPSHOT_IN_USE', details: { name: 's2', connections: 1 } });
    }
    await cowvolOk(['snapshot', 'rename', vol, 's1', 's1-old']); // a snapshot whose bitmap nobody selected changes as ever
    await client.release();
    await untilDetached(vol, 'live');
    expect(jsonOf(await cowvolOk(['snapshot', 'rename', vol, 's2', 's2-old', '--json']))).toMatchObject({ name: 's2-old' });
    await cowvolOk(['stop', vol]);
    expect(await server.exited).toBe(0);
  }, 300_000);

  it('restore while an NBD client holds live open: EXPORT_IN_USE (exit 4), nothing changed; after it disconnects the restore runs on the server', async () => {
    const vol = await buildVolume('restore-in-use.img');
    const server = await serve(vol);
    const client = await attachNbdsh(`nbd+unix:///live?socket=${server.socket}`);
    expect(client.out()).toBe('2\n'); // live's first block was last written with 2s
    const before = await cowvolOk(['snapshot', 'list', vol, '--json']);
    const refused = await cowvol(['snapshot', 'restore', vol, 's1', '--json']);
    expect(refused.code, refused.stderr).toBe(4);
    expect(jsonOf<{ error: { code: string; details: unknown } }>(refused).error).toMatchObject({ code: 'EXPORT_IN_USE', details: { export: 'live', connections: 1 } });
    expect((await cowvolOk(['snapshot', 'list', vol, '--json'])).stdout.toString(), 'no safety snapshot, nothing changed').toBe(before.stdout.toString());
    expect(await client.release()).toBe('2\n2\n'); // live did not change under the client
    await untilDetached(vol, 'live');
    const restored = jsonOf<{ name: string; safetySnapshot: string }>(await cowvolOk(['snapshot', 'restore', vol, 's1', '--safety-name', 'before', '--json']));
    expect(restored).toMatchObject({ name: 's1', safetySnapshot: 'before' });
    // Read back through the server: live is s1 again (64 KiB of 1s, then zeros).
    const live = (await cowvolOk(['read', vol, '--offset', '0', '--length', '128K'])).stdout;
    expect(live.equals(Buffer.concat([Buffer.alloc(64 * 1024, 1), Buffer.alloc(64 * 1024)]))).toBe(true);
    await cowvolOk(['stop', vol]);
    expect(await server.exited).toBe(0);
  }, 300_000);
});

/**
 * The streams of a source volume (1 MiB): `full` (s1: 64 KiB of 1s), `inc`
 * (s2 since s1: 16 KiB of 2s at 0), `inc3` (s3 since s2: 8 KiB of 3s at
 * 32 KiB), `bad` (`inc` with a byte of its extent data flipped) and `text`
 * (not a stream).
 */
function buildStreams(): Promise<Streams> {
  return (streamsBuilt ??= writeStreams());
}
type Streams = Record<'full' | 'inc' | 'inc3' | 'bad' | 'text', string>;
let streamsBuilt: Promise<Streams> | undefined;

async function writeStreams(): Promise<Streams> {
  const src = join(dir, 'stream-source.img');
  const file = (name: string): string => join(dir, `stream-${name}.cvs`);
  await cowvolOk(['create', src, '--size', '1M']);
  await cowvolOk(['write', src, '--offset', '0'], Buffer.alloc(64 * 1024, 1));
  await cowvolOk(['snapshot', 'create', src, 's1', '--label', 'kind=nightly']);
  await cowvolOk(['snapshot', 'export', src, 's1', '--output', file('full')]);
  await cowvolOk(['write', src, '--offset', '0'], Buffer.alloc(16 * 1024, 2));
  await cowvolOk(['snapshot', 'create', src, 's2']);
  await cowvolOk(['snapshot', 'export', src, 's2', '--since', 's1', '--output', file('inc')]);
  await cowvolOk(['write', src, '--offset', '32K'], Buffer.alloc(8 * 1024, 3));
  await cowvolOk(['snapshot', 'create', src, 's3']);
  await cowvolOk(['snapshot', 'export', src, 's3', '--since', 's2', '--output', file('inc3')]);
  const bytes = await readFile(file('inc'));
  bytes[bytes.length - TRAILER_BYTES - 100]! ^= 0xff; // inside the last extent's data
  await writeFile(file('bad'), bytes);
  await writeFile(file('text'), 'not a cowvol stream\n');
  return { full: file('full'), inc: file('inc'), inc3: file('inc3'), bad: file('bad'), text: file('text') };
}

/** Steps of the import table (in order), on a volume imported from the `full` stream; `<name>` is that stream's file, `stdin` feeds one. */
const IMPORT_STEPS: Array<{ args: string[]; exit: number; stdin?: 'inc3' }> = [
  { args: ['import', '<vol>', '--input', '<bad>'], exit: 8 },
  { args: ['import', '<vol>', '--input', '<bad>', '--json'], exit: 8 },
  { args: ['import', '<vol>', '--input', '<text>', '--json'], exit: 8 },
  { args: ['import', '<vol>', '--input', '<full>'], exit: 4 },
  { args: ['import', '<vol>', '--input', '<full>', '--dry-run', '--json'], exit: 4 },
  { args: ['import', '<vol>', '--input', '<inc3>', '--json'], exit: 4 },
  { args: ['import', '<vol>', '--input', '<inc>', '--resume', '--json'], exit: 4 },
  { args: ['import', '<vol>', '--input', '<inc>', '--dry-run'], exit: 0 },
  { args: ['import', '<vol>', '--input', '<inc>', '--dry-run', '--json'], exit: 0 },
  { args: ['import', '<vol>', '--input', '<inc>', '--verify'], exit: 0 },
  { args: ['import', '<vol>', '--input', '<inc>', '--resume', '--json'], exit: 0 },
  { args: ['import', '<vol>', '--input', '<inc>'], exit: 4 },
  { args: ['snapshot', 'list', '<vol>', '--json'], exit: 0 },
  { args: ['snapshot', 'diff', '<vol>', 's1', 's2', '--json'], exit: 0 },
  { args: ['snapshot', 'read', '<vol>', 's2', '--length', '64K'], exit: 0 },
  { args: ['write', '<vol>', '--offset', '48K', '--input', '<inc>'], exit: 0 },
  { args: ['import', '<vol>', '--input', '<inc3>', '--dry-run', '--json'], exit: 4 },
  { args: ['snapshot', 'restore', '<vol>', 's2', '--no-safety-snapshot'], exit: 0 },
  { args: ['import', '<vol>', '--json'], exit: 0, stdin: 'inc3' },
  { args: ['snapshot', 'read', '<vol>', 's3', '--length', '64K'], exit: 0 },
  { args: ['check', '<vol>', '--repair'], exit: 0 },
  { args: ['check', '<vol>', '--repair', '--read-data', '--json'], exit: 0 },
  { args: ['accept-changes', '<vol>'], exit: 0 },
  { args: ['accept-changes', '<vol>', '--json'], exit: 0 },
  { args: ['snapshot', 'list', '<vol>'], exit: 0 },
  { args: ['info', '<vol>', '--json'], exit: 0 },
];

describe.skipIf(missing)(`import, check --repair and accept-changes on a served volume${skipReason}`, () => {
  it(`each of ${IMPORT_STEPS.length} steps gives on a served volume the stdout, stderr and exit code it gives offline`, async () => {
    const streams = await buildStreams();
    const [offline, servedVol] = [join(dir, 'import-offline.img'), join(dir, 'import-served.img')];
    for (const vol of [offline, servedVol]) await cowvolOk(['import', vol, '--input', streams.full]);
    const uuidOf = async (vol: string): Promise<string> => jsonOf<{ uuid: string }>(await cowvolOk(['info', vol, '--json'])).uuid;
    const [offlineUuid, servedUuid] = [await uuidOf(offline), await uuidOf(servedVol)];
    const server = await serve(servedVol);
    const argv = (args: string[], vol: string): string[] => args.map((a) => (a === '<vol>' ? vol : a.replace(/^<(\w+)>$/, (_, name: keyof typeof streams) => streams[name])));
    for (const step of IMPORT_STEPS) {
      const input = step.stdin === undefined ? {} : { input: await readFile(streams[step.stdin]) };
      const [ra, rb] = await Promise.all([cowvol(argv(step.args, offline), input), cowvol(argv(step.args, servedVol), input)]);
      const [a, b] = [outcome(ra, offline, offlineUuid), outcome(rb, servedVol, servedUuid)];
      expect(b, `cowvol ${step.args.join(' ')} served vs offline`).toEqual(a);
      expect(a.code, `cowvol ${step.args.join(' ')}: ${a.stderr}`).toBe(step.exit);
    }
    // The imported snapshots are exports of the server as soon as the import returned.
    const listed = await run('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${server.socket}`], {});
    expect(listed.code, listed.stderr).toBe(0);
    expect(jsonOf<{ exports: Array<{ 'export-name': string }> }>(listed).exports.map((e) => e['export-name'])).toEqual(['live', 'snapshot/s1', 'snapshot/s2', 'snapshot/s3']);
    await cowvolOk(['stop', servedVol]);
    expect(await server.exited).toBe(0);
    // Stopped: both read the same, and an import left no marker behind.
    for (const name of ['s1', 's2', 's3']) {
      const [a, b] = await Promise.all([cowvolOk(['snapshot', 'read', offline, name]), cowvolOk(['snapshot', 'read', servedVol, name])]);
      expect(b.stdout.equals(a.stdout), name).toBe(true);
    }
  }, 600_000);

  it('accept-changes of a volume file touched while served (before the server wrote it): accepted as offline, its snapshots marked suspect', async () => {
    const [offline, servedVol] = [await buildVolume('touched-offline.img'), await buildVolume('touched-served.img')];
    const uuidOf = async (vol: string): Promise<string> => jsonOf<{ uuid: string }>(await cowvolOk(['info', vol, '--json'])).uuid;
    const [offlineUuid, servedUuid] = [await uuidOf(offline), await uuidOf(servedVol)];
    const server = await serve(servedVol);
    await Promise.all([run('touch', [offline]), run('touch', [servedVol])]);
    // Offline every command now refuses; served, the server has had the file open since before the change.
    expect((await cowvol(['info', offline])).code).toBe(6);
    for (const args of [
      ['accept-changes', '<vol>', '--json'],
      ['accept-changes', '<vol>'],
      ['snapshot', 'list', '<vol>', '--json'],
    ]) {
      const [ra, rb] = await Promise.all([cowvol(argvOf(args, offline)), cowvol(argvOf(args, servedVol))]);
      const [a, b] = [outcome(ra, offline, offlineUuid), outcome(rb, servedVol, servedUuid)];
      // The recorded and found times differ from volume to volume: compared once they are replaced.
      const times = (o: Outcome): Outcome => ({ ...o, stdout: o.stdout.replace(/"\d{10,}"/g, '"<ns>"') });
      expect(times(b), args.join(' ')).toEqual(times(a));
      expect(a.code, a.stderr).toBe(0);
    }
    const accepted = jsonOf(await cowvolOk(['snapshot', 'list', servedVol, '--json']));
    expect(accepted).toMatchObject({
      snapshots: [
        { name: 's1', suspect: true },
        { name: 's2', suspect: true },
        { name: 's3', suspect: true },
      ],
    });
    await cowvolOk(['stop', servedVol]);
    expect(await server.exited).toBe(0);
    expect((await cowvol(['info', servedVol])).code, 'accepted: the stamp was taken anew').toBe(0);
  }, 300_000);

  it('import while an NBD client holds live open: EXPORT_IN_USE (exit 4), nothing changed; after it disconnects the import runs on the server', async () => {
    const streams = await buildStreams();
    const vol = join(dir, 'import-in-use.img');
    await cowvolOk(['import', vol, '--input', streams.full]);
    const server = await serve(vol);
    const client = await attachNbdsh(`nbd+unix:///live?socket=${server.socket}`);
    expect(client.out()).toBe('1\n');
    const before = await cowvolOk(['snapshot', 'list', vol, '--json']);
    const refused = await cowvol(['import', vol, '--input', streams.inc, '--json']);
    expect(refused.code, refused.stderr).toBe(4);
    expect(jsonOf<{ error: { code: string; message: string; details: unknown } }>(refused).error).toMatchObject({
      code: 'EXPORT_IN_USE',
      message: expect.stringContaining('import would rewrite') as unknown,
      details: { export: 'live', connections: 1 },
    });
    // The dry run changes nothing: it answers while live is attached.
    expect(jsonOf(await cowvolOk(['import', vol, '--input', streams.inc, '--dry-run', '--json']))).toMatchObject({ dryRun: true, appliedExtents: 0 });
    expect((await cowvolOk(['snapshot', 'list', vol, '--json'])).stdout.toString(), 'no snapshot, no marker: nothing changed').toBe(before.stdout.toString());
    expect(await client.release()).toBe('1\n1\n');
    await untilDetached(vol, 'live');
    expect(jsonOf(await cowvolOk(['import', vol, '--input', streams.inc, '--json']))).toMatchObject({ snapshot: 's2', appliedExtents: 1, volume: vol });
    const live = (await cowvolOk(['read', vol, '--offset', '0', '--length', '64K'])).stdout;
    expect(live.equals(Buffer.concat([Buffer.alloc(16 * 1024, 2), Buffer.alloc(48 * 1024, 1)]))).toBe(true);
    await cowvolOk(['stop', vol]);
    expect(await server.exited).toBe(0);
  }, 300_000);
});

/**
 * A libnbd client (nbdsh) attached to `uri` that reads the first byte of
 * block 0, prints it, and stays attached until `release()` closes its stdin;
 * then reads and prints again and disconnects. `release()` resolves with
 * everything it printed once it exited 0.
 */
async function attachNbdsh(uri: string, metaContext?: string): Promise<{ out: () => string; release: () => Promise<string> }> {
  const select = metaContext === undefined ? '' : `h.add_meta_context(${JSON.stringify(metaContext)})\n`;
  const script = `${select}h.connect_uri(${JSON.stringify(uri)})\nprint(h.pread(4096, 0)[0], flush=True)\nimport sys\nsys.stdin.read()\nprint(h.pread(4096, 0)[0], flush=True)\nh.shutdown()`;
  const client = spawn('nbdsh', ['-c', script], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }, stdio: ['pipe', 'pipe', 'pipe'] });
  running.add(client);
  let out = '';
  let err = '';
  client.stdout.on('data', (d: Buffer) => (out += d.toString()));
  client.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => client.once('close', (code) => resolve(code)));
  while (!out.includes('\n')) {
    if (client.exitCode !== null) throw new Error(`nbdsh exited ${client.exitCode}: ${err}`);
    await sleep(20);
  }
  return {
    out: () => out,
    release: async () => {
      client.stdin.end();
      expect(await exited, err).toBe(0);
      return out;
    },
  };
}

/** Waits until the server of `vol` counts no connection on `exportName` (it sees a disconnect on its own schedule). */
async function untilDetached(vol: string, exportName: string): Promise<void> {
  for (let i = 0; ; i++) {
    const status = jsonOf<{ exports: Array<{ name: string; connections: number }> }>(await cowvolOk(['status', vol, '--json']));
    if (status.exports.find((e) => e.name === exportName)?.connections === 0) return;
    expect(i, `${exportName} still has a connection 10 s after its client exited`).toBeLessThan(200);
    await sleep(50);
  }
}
