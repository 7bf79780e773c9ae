import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { Level } from 'level';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Volume } from '@cowvol/cow-core';
import { CLI, cowvol, run, sha256, sha256File, tempDir } from './helpers.js';

/**
 * End-to-end tests of the `cowvol` CLI as users and scripts run it: real
 * child processes, real files. Exit codes and error codes are the contract
 * documented in README "Exit codes".
 */
let dir: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-cli-'));
});
afterAll(async () => {
  await cleanup();
});

function json(stdout: Buffer): unknown {
  // Exactly one JSON document on stdout, nothing else.
  return JSON.parse(stdout.toString('utf8'));
}

/** Hash of the volume file and every sidecar file (not the lock), to prove nothing changed. */
async function fingerprint(volume: string): Promise<string> {
  const parts: string[] = [await sha256File(volume)];
  const sidecar = `${volume}.cowvol`;
  for (const f of ['store', 'journal']) parts.push(await sha256File(join(sidecar, f)));
  // LevelDB rewrites its own files on every open; compare its logical content.
  const db = new Level<string, Buffer>(join(sidecar, 'meta'), { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    for await (const [k, v] of db.iterator()) parts.push(`${k}=${v.toString('hex')}`);
  } finally {
    await db.close();
  }
  return sha256(Buffer.from(parts.join('\n')));
}

describe('cowvol CLI: the whole path', () => {
  it('create, write from a file and from stdin, snapshot, overwrite, read every snapshot back exactly', async () => {
    const vol = join(dir, 'main.img');
    const created = await cowvol(['create', vol, '--size', '2M', '--json']);
    expect(created.code, created.stderr).toBe(0);
    expect(json(created.stdout)).toMatchObject({ sizeBytes: 2 * 1024 * 1024, blockSizeBytes: 4096, formatVersion: 4, snapshots: [] });
    expect((await stat(vol)).size).toBe(2 * 1024 * 1024);

    const first = randomBytes(300_000);
    await writeFile(join(dir, 'first.bin'), first);
    expect((await cowvol(['write', vol, '--input', join(dir, 'first.bin'), '--offset', '1000'])).code).toBe(0);
    const snap1 = await cowvol(['snapshot', 'create', vol, 'one', '--json']);
    expect(snap1.code, snap1.stderr).toBe(0);
    expect(json(snap1.stdout)).toMatchObject({ name: 'one', ownedBlocks: 0, active: true });
    expect(new Date((json(snap1.stdout) as { createdAt: string }).createdAt).toISOString()).toBe((json(snap1.stdout) as { createdAt: string }).createdAt);

    const second = randomBytes(10_000);
    const w2 = await cowvol(['write', vol, '--offset', '4K'], { input: second }); // stdin
    expect(w2.code, w2.stderr).toBe(0);
    expect((await cowvol(['snapshot', 'create', vol, 'two'])).code).toBe(0);
    expect((await cowvol(['write', vol, '--offset', '1M'], { input: randomBytes(5000) })).code).toBe(0);

    // Whole-snapshot read to a file, and a ranged read to stdout.
    const out1 = join(dir, 'one.img');
    expect((await cowvol(['snapshot', 'read', vol, 'one', '--output', out1])).code).toBe(0);
    const expectedOne = Buffer.alloc(2 * 1024 * 1024);
    first.copy(expectedOne, 1000);
    expect((await readFile(out1)).equals(expectedOne)).toBe(true);
    const ranged = await cowvol(['snapshot', 'read', vol, 'one', '--offset', '1000', '--length', '300000']);
    expect(ranged.stdout.equals(first)).toBe(true);
    const expectedTwo = Buffer.from(expectedOne);
    second.copy(expectedTwo, 4096);
    expect((await cowvol(['snapshot', 'read', vol, 'two'])).stdout.equals(expectedTwo)).toBe(true);
    const live = await cowvol(['read', vol, '--offset', '4096', '--length', '10000']);
    expect(live.stdout.equals(second)).toBe(true);

    const list = await cowvol(['snapshot', 'list', vol, '--json']);
    const snapshots = (json(list.stdout) as { snapshots: Array<{ name: string; ownedBlocks: number; createdAt: string }> }).snapshots;
    expect(snapshots.map((s) => s.name)).toEqual(['one', 'two']);
    expect(snapshots[0]!.ownedBlocks).toBe(3); // the 10,000-byte write at 4K touched blocks 1-3
    expect(snapshots[1]!.ownedBlocks).toBe(2); // the 5,000-byte write at 1M touched blocks 256-257

    const del = await cowvol(['snapshot', 'delete', vol, 'two', '--json']);
    expect(json(del.stdout)).toEqual({ name: 'two', freedBlocks: 0, handedOverBlocks: 2 });
    expect((await cowvol(['snapshot', 'read', vol, 'one'])).stdout.equals(expectedOne)).toBe(true);

    const info = await cowvol(['info', vol, '--json']);
    expect(json(info.stdout)).toMatchObject({ snapshots: [{ name: 'one', ownedBlocks: 5 }], store: { usedBlocks: 5 } });
    const human = await cowvol(['info', vol]);
    expect(human.stdout.toString()).toMatch(/block size:\s+4096/);
  });

  it('a reader that closes the pipe early (`read | head`) ends the command quietly with exit 0', async () => {
    const vol = join(dir, 'pipe.img');
    expect((await cowvol(['create', vol, '--size', '64M'])).code).toBe(0);
    const r = await run('bash', ['-c', `set -o pipefail; "${process.execPath}" "${CLI}" read "${vol}" | head -c 10 | wc -c`]);
    expect(r.stderr).not.toContain('EPIPE');
    expect(r.code).toBe(0);
    expect(r.stdout.toString().trim()).toBe('10');
  });

  it('adopts an existing raw image as the live volume', async () => {
    const img = join(dir, 'adopt.raw');
    const content = randomBytes(64 * 1024);
    await writeFile(img, content);
    const r = await cowvol(['create', img, '--adopt']);
    expect(r.code, r.stderr).toBe(0);
    expect((await cowvol(['snapshot', 'create', img, 'orig'])).code).toBe(0);
    expect((await cowvol(['write', img], { input: Buffer.alloc(100, 1) })).code).toBe(0);
    expect((await cowvol(['snapshot', 'read', img, 'orig'])).stdout.equals(content)).toBe(true);
    // The volume file itself stays a plain raw image holding the live data.
    const raw = await readFile(img);
    expect(raw.subarray(0, 100).equals(Buffer.alloc(100, 1))).toBe(true);
    expect(raw.subarray(100).equals(content.subarray(100))).toBe(true);
  });
});

describe('guarantee 7: bad input is refused, nothing is lost (CLI)', () => {
  let vol: string;
  let before: string;

  beforeAll(async () => {
    vol = join(dir, 'bad.img');
    expect((await cowvol(['create', vol, '--size', '256K'])).code).toBe(0);
    expect((await cowvol(['write', vol], { input: randomBytes(100_000) })).code).toBe(0);
    expect((await cowvol(['snapshot', 'create', vol, 'keep'])).code).toBe(0);
    expect((await cowvol(['write', vol], { input: randomBytes(5000) })).code).toBe(0);
    before = await fingerprint(vol);
  });

  const cases: Array<{ what: string; args: (v: string) => string[]; code: string; exit: number }> = [
    { what: 'unknown snapshot (read)', args: (v) => ['snapshot', 'read', v, 'nope'], code: 'SNAPSHOT_NOT_FOUND', exit: 3 },
    { what: 'unknown snapshot (delete)', args: (v) => ['snapshot', 'delete', v, 'nope', '--json'], code: 'SNAPSHOT_NOT_FOUND', exit: 3 },
    { what: 'duplicate name', args: (v) => ['snapshot', 'create', v, 'keep'], code: 'SNAPSHOT_EXISTS', exit: 4 },
    { what: 'invalid name', args: (v) => ['snapshot', 'create', v, 'bad/name'], code: 'INVALID_SNAPSHOT_NAME', exit: 2 },
    { what: 'a label key given twice (create)', args: (v) => ['snapshot', 'create', v, 'twice', '--label', 'k=1', '--label', 'k=2'], code: 'INVALID_LABEL', exit: 2 },
    { what: 'a label key given twice (label)', args: (v) => ['snapshot', 'label', v, 'keep', 'k=1', 'k=1'], code: 'INVALID_LABEL', exit: 2 },
    { what: 'name too long', args: (v) => ['snapshot', 'create', v, 'x'.repeat(129)], code: 'INVALID_SNAPSHOT_NAME', exit: 2 },
    { what: 'size 10X', args: (v) => ['create', `${v}.new`, '--size', '10X'], code: 'INVALID_SIZE', exit: 2 },
    { what: 'negative offset', args: (v) => ['read', v, '--offset', '-5'], code: 'INVALID_SIZE', exit: 2 },
    { what: 'a fraction of a byte a double would round away', args: (v) => ['read', v, '--offset', '1.00000000000000001K', '--length', '1'], code: 'INVALID_SIZE', exit: 2 },
    { what: 'a duration past 1,000 years', args: (v) => ['snapshot', 'delete', v, '--older-than', '99999999999999d'], code: 'INVALID_DURATION', exit: 2 },
    { what: 'a length just under one byte', args: (v) => ['read', v, '--length', '0.99999999999999999999'], code: 'INVALID_SIZE', exit: 2 },
    { what: 'offset past the end (read)', args: (v) => ['read', v, '--offset', '257K'], code: 'OUT_OF_RANGE', exit: 2 },
    { what: 'length past the end', args: (v) => ['snapshot', 'read', v, 'keep', '--offset', '200K', '--length', '100K'], code: 'OUT_OF_RANGE', exit: 2 },
    { what: 'write past the end', args: (v) => ['write', v, '--offset', '255K', '--input', v], code: 'OUT_OF_RANGE', exit: 2 },
    { what: 'volume that does not exist', args: (v) => ['read', `${v}.missing`], code: 'VOLUME_NOT_FOUND', exit: 3 },
    { what: 'input file that does not exist', args: (v) => ['write', v, '--input', `${v}.nothing`], code: 'INPUT_NOT_FOUND', exit: 3 },
    { what: 'create over an existing file', args: (v) => ['create', v, '--size', '1M'], code: 'VOLUME_EXISTS', exit: 4 },
    { what: 'a file that is not a volume', args: (v) => ['info', join(v, '..', 'plain.bin')], code: 'NOT_A_VOLUME', exit: 6 },
    { what: 'bad block size', args: (v) => ['create', `${v}.bs`, '--size', '1M', '--block-size', '1000'], code: 'INVALID_ARGUMENT', exit: 2 },
    { what: 'missing argument', args: () => ['snapshot', 'create'], code: 'USAGE', exit: 2 },
  ];

  for (const c of cases) {
    it(`${c.what}: ${c.code}, exit ${c.exit}, volume untouched`, async () => {
      await writeFile(join(dir, 'plain.bin'), Buffer.alloc(8192));
      const r = await cowvol(c.args(vol));
      expect(r.code, r.stderr).toBe(c.exit);
      expect(r.stderr).toContain(`[${c.code}]`);
      if (c.args(vol).includes('--json')) expect(json(r.stdout)).toMatchObject({ error: { code: c.code, exitCode: c.exit } });
      expect(await fingerprint(vol)).toBe(before);
      await rm(`${vol}.new`, { force: true });
    });
  }

  it('a flag value the parser refuses is a plain USAGE message: its tab shown as a space, not escaped as \\u{0009}', async () => {
    const r = await cowvol(['snapshot', 'delete', vol, '--keep-newest', '-1', '--label', 'a=b']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Expected an integer greater than or equal to 0');
    expect(r.stderr).not.toContain('\\u{0009}');
    expect(await fingerprint(vol)).toBe(before);
    // Too large for an exact number: the same USAGE, quoting what was typed (not a rounded 1e20 from deeper down).
    for (const args of [
      ['snapshot', 'delete', vol, '--keep-newest', '99999999999999999999', '--label', 'a=b'],
      ['serve', vol, '--max-connections', '99999999999999999999'],
    ]) {
      const big = await cowvol(args);
      expect(big.code, args.join(' ')).toBe(2);
      expect(big.stderr).toContain('[USAGE]');
      expect(big.stderr).toContain('but received: 99999999999999999999');
    }
    expect(await fingerprint(vol)).toBe(before);
  });

  it('a data command given --json by mistake (read has none) prints its USAGE error on stderr only: stdout carries data, never an error document', async () => {
    const r = await cowvol(['read', vol, '--json']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('[USAGE]');
    expect(r.stdout.length).toBe(0);
  });

  it('a second process on a busy volume gets VOLUME_BUSY naming the holder, and the volume is untouched', async () => {
    const holder = await Volume.open(vol);
    try {
      const r = await cowvol(['snapshot', 'create', vol, 'while-busy', '--json']);
      expect(r.code).toBe(5);
      expect(json(r.stdout)).toMatchObject({ error: { code: 'VOLUME_BUSY', details: { pid: process.pid } } });
      expect(r.stderr).toContain(`process ${process.pid}`);
    } finally {
      await holder.close();
    }
    expect(await fingerprint(vol)).toBe(before);
    expect((await cowvol(['snapshot', 'list', vol, '--json'])).stdout.toString()).not.toContain('while-busy');
  });
});
