import { execFileSync } from 'node:child_process';
import { cp, mkdir, open, readFile, readdir, rm, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Level } from 'level';
import { cowvol, cowvolOk, prng, tempDir } from './helpers.js';

/**
 * A volume whose sidecar is damaged is reported as damaged: every normal
 * command exits 6 with the code of the damaged part (`CORRUPT_METADATA`,
 * `STORE_CORRUPT`, `JOURNAL_CORRUPT`) — never `INTERNAL`, never
 * `NOT_A_VOLUME` — and `check` exits 2 (README "Exit codes",
 * docs/ARCHITECTURE.md §4.8). A sidecar without a metadata database is
 * still not a volume.
 */
/** Knob: COWVOL_META_FLIPS (default 24) — bits flipped, one per copy, in the table test. */
const FLIPS = Number(process.env.COWVOL_META_FLIPS ?? 24);
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
  { name: 'the store replaced by a directory', code: 'STORE_CORRUPT', damage: async (s) => rm(join(s, 'store')).then(() => mkdir(join(s, 'store'))) },
  { name: 'the journal replaced by a directory', code: 'JOURNAL_CORRUPT', damage: async (s) => rm(join(s, 'journal')).then(() => mkdir(join(s, 'journal'))) },
  {
    name: 'a LevelDB table replaced by a directory',
    code: 'CORRUPT_METADATA',
    damage: async (s) => {
      const table = (await tables(join(s, 'meta'))).sort().at(-1)!;
      await rm(table);
      await mkdir(table);
    },
  },
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
  // After a clean close the log holds nothing to replay, yet a cut file is damage all the same (README "check").
  { name: 'the journal truncated to 1 MiB after a clean close', code: 'JOURNAL_CORRUPT', damage: (s) => truncate(join(s, 'journal'), 1024 * 1024) },
  { name: 'the journal deleted', code: 'JOURNAL_CORRUPT', damage: (s) => rm(join(s, 'journal')) },
  // A FIFO in a file's place: its open would block until a writer came, in a thread no signal stops (naive: every command hangs).
  { name: 'the store replaced by a FIFO', code: 'STORE_CORRUPT', damage: (s) => fifoFor(join(s, 'store')) },
  { name: 'the journal replaced by a FIFO', code: 'JOURNAL_CORRUPT', damage: (s) => fifoFor(join(s, 'journal')) },
  { name: 'meta/CURRENT replaced by a FIFO', code: 'CORRUPT_METADATA', damage: (s) => fifoFor(join(s, 'meta', 'CURRENT')) },
  {
    name: 'the LevelDB MANIFEST replaced by a FIFO',
    code: 'CORRUPT_METADATA',
    damage: async (s) => {
      for (const f of await readdir(join(s, 'meta'))) if (f.startsWith('MANIFEST-')) await fifoFor(join(s, 'meta', f));
    },
  },
  // LevelDB writes its next CURRENT to <n>.dbtmp, then renames it: a FIFO there blocked every writable open.
  { name: 'a FIFO where LevelDB writes its next CURRENT', code: 'CORRUPT_METADATA', damage: (s) => fifoAt(join(s, 'meta', '000099.dbtmp')) },
  {
    name: 'a LevelDB table and its log replaced by FIFOs',
    code: 'CORRUPT_METADATA',
    damage: async (s) => {
      for (const f of await readdir(join(s, 'meta'))) if (/\.(ldb|log)$/.test(f)) await fifoFor(join(s, 'meta', f));
    },
  },
];

/** Replaces the file at `path` with a FIFO of the same name. */
async function fifoFor(path: string): Promise<void> {
  await rm(path);
  await fifoAt(path);
}

/** Makes a FIFO at `path` (nothing there before). */
function fifoAt(path: string): Promise<void> {
  execFileSync('mkfifo', [path]);
  return Promise.resolve();
}

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

  it('check --repair reports a LevelDB table that fails its checksum and repairs nothing: the damage is still found afterwards and leaves the table as it is (naive: a writable open whose compaction rewrites it with fresh checksums, after which every check calls the volume clean)', async () => {
    // A history with several LevelDB tables, the newest one damaged; the premise (a compaction launders it) is
    // asserted below on a copy.
    const vol = join(dir, 'laundered.img');
    await writeFile(join(dir, 'big.bin'), randomBytes(16 * 1024 * 1024));
    await writeFile(join(dir, 'r1.bin'), randomBytes(1024 * 1024));
    await cowvolOk(['create', vol, '--size', '16M']);
    await cowvolOk(['write', vol, '--input', join(dir, 'r1.bin')]);
    await cowvolOk(['snapshot', 'create', vol, 'x']);
    await cowvolOk(['write', vol, '--input', join(dir, 'big.bin')]);
    await cowvolOk(['snapshot', 'create', vol, 'z']);
    await cowvolOk(['write', vol, '--input', join(dir, 'big.bin')]);
    const later = new Date(Date.now() + 5000);
    await utimes(vol, later, later); // a change outside cowvol, accepted: one more writable open that writes metadata
    await cowvolOk(['accept-changes', vol]);
    const newest = (await tables(join(`${vol}.cowvol`, 'meta'))).sort().at(-1)!;
    // Damage only a checksum, so the table's contents still read as before: the CRC of its index block. The
    // footer (the last 48 bytes) holds two block handles, varint offset and size each: metaindex, then index;
    // a block is followed by its 1-byte compression type and its 4-byte CRC (LevelDB's table format).
    const table = await readFile(newest);
    const footer = table.subarray(table.length - 48);
    let at = 0;
    const varint = (): number => {
      let value = 0;
      for (let shift = 0; ; shift += 7) {
        const b = footer[at++]!;
        value += (b & 0x7f) * 2 ** shift;
        if (b < 0x80) return value;
      }
    };
    varint();
    varint();
    const indexOffset = varint();
    const crcAt = indexOffset + varint() + 1;
    table[crcAt] = table[crcAt]! ^ 0x55;
    await writeFile(newest, table);
    const copy = join(dir, 'laundered-copy.img');
    execFileSync('cp', ['-a', vol, copy]);
    await cp(`${vol}.cowvol`, `${copy}.cowvol`, { recursive: true });

    const before = await cowvol(['check', vol, '--json']);
    expect(before.code, before.stderr).toBe(2);
    const found = (stdout: Buffer): { status: string; repairedBlocks: number; checksumFindings: number } => {
      const report = JSON.parse(stdout.toString()) as { status: string; repairedBlocks: number; corruptions: Array<{ kind: string }> };
      return { status: report.status, repairedBlocks: report.repairedBlocks, checksumFindings: report.corruptions.filter((c) => c.kind === 'metadata-checksum').length };
    };
    expect(found(before.stdout)).toMatchObject({ status: 'corrupt', checksumFindings: 1 });
    const repair = await cowvol(['check', vol, '--repair', '--json']);
    expect(repair.code, repair.stderr).toBe(2);
    expect(found(repair.stdout)).toEqual({ status: 'corrupt', repairedBlocks: 0, checksumFindings: 1 });
    const after = await cowvol(['check', vol]);
    expect(after.code, `the damage must survive check --repair: ${after.stdout.toString()}`).toBe(2);
    expect((await readFile(newest)).equals(table), 'check --repair left the damaged table byte for byte').toBe(true);

    // The premise: a compaction of the damaged table — which LevelDB runs whenever a writable open's level-0 tables
    // call for one — rewrites it with fresh checksums, and check then calls the copy clean.
    const db = new Level<string, Buffer>(join(`${copy}.cowvol`, 'meta'), { valueEncoding: 'buffer', createIfMissing: false });
    await db.open();
    try {
      await (db as unknown as { compactRange(start: string, end: string): Promise<void> }).compactRange('\x00', '\xff');
    } finally {
      await db.close();
    }
    const laundered = await cowvol(['check', copy]);
    expect(laundered.code, 'a compaction no longer rewrites the damaged table: the test above proves nothing').toBe(0);
  });

  it(`one flipped bit anywhere in a LevelDB table: check exits 2 with metadata-checksum, never another code, never an abort of LevelDB (seeded, ${FLIPS} flips)`, async () => {
    const seed = Number(process.env.COWVOL_SEED ?? 5101);
    const rnd = prng(seed);
    const spots: Array<{ table: string; offset: number }> = [];
    const sizes = new Map<string, number>();
    for (const t of await tables(join(`${pristine}.cowvol`, 'meta'))) sizes.set(t.slice(t.lastIndexOf('/') + 1), (await readFile(t)).length);
    const names = [...sizes.keys()];
    for (let i = 0; i < FLIPS; i++) {
      const table = names[Math.floor(rnd() * names.length)]!;
      spots.push({ table, offset: Math.floor(rnd() * sizes.get(table)!) });
    }
    for (const [i, { table, offset }] of spots.entries()) {
      const vol = await damagedCopy(`flip-${i}`, async (s) => {
        const fh = await open(join(s, 'meta', table), 'r+');
        const b = Buffer.alloc(1);
        await fh.read(b, 0, 1, offset);
        b[0] = b[0]! ^ (1 << Math.floor(rnd() * 8));
        await fh.write(b, 0, 1, offset);
        await fh.close();
      });
      const r = await cowvol(['check', vol, '--json']);
      const where = `seed ${seed}, ${table} byte ${offset} (replay: COWVOL_SEED=${seed} COWVOL_META_FLIPS=${FLIPS})`;
      expect(r.code, `${where}: ${r.stderr}`).toBe(2);
      const report = JSON.parse(r.stdout.toString()) as { corruptions: Array<{ kind: string }> };
      expect(
        report.corruptions.map((c) => c.kind),
        where,
      ).toContain('metadata-checksum');
      await rm(`${vol}.cowvol`, { recursive: true, force: true });
      await rm(vol, { force: true });
    }
  });

  it('a file changed outside cowvol with a damaged journal behind it: check --repair repairs the journal and says what changed (exit 2), then accept-changes takes the file (naive: each command sends the user to the other)', async () => {
    const vol = await damagedCopy('outside and journal', (s) => rm(join(s, 'journal')));
    const later = new Date(Date.now() + 5000);
    await utimes(vol, later, later);
    const repair = await cowvol(['check', vol, '--repair']);
    expect([repair.code, repair.stderr]).toEqual([2, expect.stringContaining('[VOLUME_MODIFIED_OUTSIDE]')]);
    expect(repair.stderr).toContain('journal repaired');
    const accept = await cowvol(['accept-changes', vol]);
    expect(accept.code, accept.stderr).toBe(0);
    const check = await cowvol(['check', vol]);
    expect(check.code, check.stderr).toBe(0);
  });

  it('a directory where the space reserve was: a delete goes on (nothing to release); a journal that is a loop of links: check --repair says to move it (exit 2)', async () => {
    const reserved = await damagedCopy('reserve dir', async (s) => {
      await rm(join(s, 'reserve'), { force: true });
      await mkdir(join(s, 'reserve'));
    });
    const del = await cowvol(['snapshot', 'delete', reserved, 's1']);
    expect(del.code, del.stderr).toBe(0);
    const looped = await damagedCopy('journal loop', async (s) => {
      await rm(join(s, 'journal'));
      await symlink('journal', join(s, 'journal'));
    });
    const repair = await cowvol(['check', looped, '--repair']);
    expect([repair.code, repair.stderr]).toEqual([2, expect.stringContaining('[JOURNAL_CORRUPT]')]);
    expect(repair.stderr).toContain('a loop of symbolic links');
  });

  it('a FIFO where LevelDB writes its next CURRENT: a writable command is refused too (exit 6), not blocked for good', async () => {
    const vol = await damagedCopy('dbtmp fifo write', (s) => fifoAt(join(s, 'meta', '000099.dbtmp')));
    const r = await cowvol(['write', vol, '--input', '-'], { input: Buffer.alloc(4096, 1) });
    expect([r.code, r.stderr]).toEqual([6, expect.stringContaining('[CORRUPT_METADATA]')]);
  });

  it('a FIFO where a create keeps its intent (<sidecar>/creating) is nothing cowvol made: create says VOLUME_EXISTS and leaves the folder as it is (naive: blocked for good, or the folder taken over)', async () => {
    const vol = join(dir, 'creating-fifo.img');
    await mkdir(`${vol}.cowvol`);
    await writeFile(join(`${vol}.cowvol`, 'notes.txt'), 'mine');
    await fifoAt(join(`${vol}.cowvol`, 'creating'));
    const r = await cowvol(['create', vol, '--size', '1M']);
    expect([r.code, r.stderr]).toEqual([4, expect.stringContaining('[VOLUME_EXISTS]')]);
    expect((await readdir(`${vol}.cowvol`)).sort()).toEqual(['creating', 'notes.txt']);
  });

  it('a volume whose create left its intent behind and whose metadata is damaged: create of the path refuses, it never removes the sidecar (naive: read as a create that never got far, and reclaimed)', async () => {
    const vol = await damagedCopy('creating damaged', async (s) => {
      await writeFile(join(s, 'creating'), 'torn');
      await fifoAt(join(s, 'meta', '000099.dbtmp'));
    });
    const before = (await readdir(`${vol}.cowvol`)).sort();
    const r = await cowvol(['create', vol, '--size', '1M']);
    expect([r.code, r.stderr]).toEqual([6, expect.stringContaining('[CORRUPT_METADATA]')]);
    expect((await readdir(`${vol}.cowvol`)).sort()).toEqual(before);
    // The damage gone, the volume is whole: every snapshot still reads.
    await rm(join(`${vol}.cowvol`, 'meta', '000099.dbtmp'));
    await cowvolOk(['snapshot', 'read', vol, 's1', '--output', join(dir, 'creating-damaged.out')]);
  });

  it("a FIFO at LevelDB's LOG with a folder at LOG.old (so LOG cannot be renamed away): refused (exit 6), not blocked for good", async () => {
    const vol = await damagedCopy('log fifo', async (s) => {
      await rm(join(s, 'meta', 'LOG'), { force: true });
      await rm(join(s, 'meta', 'LOG.old'), { force: true });
      await fifoAt(join(s, 'meta', 'LOG'));
      await mkdir(join(s, 'meta', 'LOG.old'));
    });
    const r = await cowvol(['write', vol, '--input', '-'], { input: Buffer.alloc(4096, 1) });
    expect([r.code, r.stderr]).toEqual([6, expect.stringContaining('[CORRUPT_METADATA]')]);
  });

  it('a sidecar with no metadata database is not a volume (NOT_A_VOLUME, exit 6)', async () => {
    const vol = await damagedCopy('no meta', (s) => rm(join(s, 'meta'), { recursive: true }));
    const r = await cowvol(['info', vol, '--json']);
    expect(r.code).toBe(6);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ error: { code: 'NOT_A_VOLUME' } });
  });
});
