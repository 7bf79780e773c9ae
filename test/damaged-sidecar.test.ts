import { execFileSync } from 'node:child_process';
import { cp, open, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, tempDir } from './helpers.js';

/**
 * A volume whose sidecar is damaged is reported as damaged: every normal
 * command exits 6 with the code of the damaged part (`CORRUPT_METADATA`,
 * `STORE_CORRUPT`, `JOURNAL_CORRUPT`) — never `INTERNAL`, never
 * `NOT_A_VOLUME` — and `check` exits 2 (README "Exit codes",
 * docs/ARCHITECTURE.md §4.8). A sidecar without a metadata database is
 * still not a volume.
 */
let dir: string;
let cleanup: () => Promise<void>;
let pristine: string;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-damage-'));
  pristine = join(dir, 'pristine.img');
  await cowvolOk(['create', pristine, '--size', '1M']);
  await writeFile(join(dir, 'a.bin'), randomBytes(64 * 1024));
  await writeFile(join(dir, 'b.bin'), randomBytes(64 * 1024));
  await cowvolOk(['write', pristine, '--input', join(dir, 'a.bin')]);
  await cowvolOk(['snapshot', 'create', pristine, 's1']);
  await cowvolOk(['write', pristine, '--input', join(dir, 'b.bin')]);
});
afterAll(async () => {
  await cleanup();
});

async function tables(meta: string): Promise<string[]> {
  return (await readdir(meta)).filter((f) => f.endsWith('.ldb')).map((f) => join(meta, f));
}

/** Each damage, done to a fresh copy of a healthy volume, and the code it must be reported as. */
const DAMAGES: Array<{ name: string; code: string; damage: (sidecar: string) => Promise<void> }> = [
  {
    name: 'garbled LevelDB tables',
    code: 'CORRUPT_METADATA',
    damage: async (s) => {
      for (const t of await tables(join(s, 'meta'))) {
        const fh = await open(t, 'r+');
        await fh.write(Buffer.from('GARBAGE!'), 0, 8, 0);
        await fh.close();
      }
    },
  },
  { name: 'meta/CURRENT deleted', code: 'CORRUPT_METADATA', damage: (s) => rm(join(s, 'meta', 'CURRENT')) },
  {
    name: 'the LevelDB MANIFEST deleted',
    code: 'CORRUPT_METADATA',
    damage: async (s) => {
      for (const f of await readdir(join(s, 'meta'))) if (f.startsWith('MANIFEST-')) await rm(join(s, 'meta', f));
    },
  },
  {
    name: 'LevelDB tables truncated to 0',
    code: 'CORRUPT_METADATA',
    damage: async (s) => {
      for (const t of await tables(join(s, 'meta'))) await truncate(t, 0);
    },
  },
  { name: 'the store truncated to 0', code: 'STORE_CORRUPT', damage: (s) => truncate(join(s, 'store'), 0) },
  { name: 'the store deleted', code: 'STORE_CORRUPT', damage: (s) => rm(join(s, 'store')) },
  { name: 'the journal truncated to 0', code: 'JOURNAL_CORRUPT', damage: (s) => truncate(join(s, 'journal'), 0) },
  { name: 'the journal deleted', code: 'JOURNAL_CORRUPT', damage: (s) => rm(join(s, 'journal')) },
];

async function damagedCopy(name: string, damage: (sidecar: string) => Promise<void>): Promise<string> {
  const vol = join(dir, `${name.replace(/[^a-z0-9]+/gi, '-')}.img`);
  execFileSync('cp', ['-a', pristine, vol]); // keeps the modification time to the nanosecond: the same content, not a write made outside cowvol
  await cp(`${pristine}.cowvol`, `${vol}.cowvol`, { recursive: true });
  await damage(`${vol}.cowvol`);
  return vol;
}

describe('a damaged sidecar is reported as damage (exit 6, check exit 2)', () => {
  it('the healthy volume the damages start from passes every command', async () => {
    for (const args of [
      ['info', pristine],
      ['snapshot', 'list', pristine],
      ['snapshot', 'read', pristine, 's1', '--output', join(dir, 'ok.out')],
    ]) {
      const r = await cowvol(args);
      expect(r.code, r.stderr).toBe(0);
    }
    expect((await cowvol(['check', pristine])).code).toBe(0);
  });

  for (const { name, code, damage } of DAMAGES) {
    it(`${name}: ${code}, exit 6; check exits 2`, async () => {
      const vol = await damagedCopy(name, damage);
      const commands = [
        ['info', vol],
        ['snapshot', 'read', vol, 's1', '--output', join(dir, 'out.bin')],
      ];
      for (const args of commands) {
        const r = await cowvol(args);
        expect(r.stderr, `${args.slice(0, 2).join(' ')} after ${name}`).not.toMatch(/INTERNAL|NOT_A_VOLUME|\n\s+at /);
        expect(r.code, `${args.slice(0, 2).join(' ')} after ${name}: ${r.stderr}`).toBe(6);
        expect(r.stderr, `${args.slice(0, 2).join(' ')} after ${name}`).toContain(`cowvol: error [${code}]`);
      }
      const check = await cowvol(['check', vol]);
      expect(check.stderr).toContain(`[${code}]`);
      expect(check.code, `check after ${name}: ${check.stderr}`).toBe(2);
    });
  }

  it('a sidecar with no metadata database is not a volume (NOT_A_VOLUME, exit 6)', async () => {
    const vol = await damagedCopy('no meta', (s) => rm(join(s, 'meta'), { recursive: true }));
    const r = await cowvol(['info', vol, '--json']);
    expect(r.code).toBe(6);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ error: { code: 'NOT_A_VOLUME' } });
  });
});
