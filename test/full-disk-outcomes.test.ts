import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CowvolError } from '@cowvol/base';
import { Volume, type OpenVolumeOptions, type SnapshotInfo } from '@cowvol/cow-core';
import { cowvol, jsonOf, prng } from './helpers.js';
import { IS_ROOT, fillTo, mountTmpfs, requireRootUnderCi, unmount } from './tmpfs.js';

/**
 * A command that reports failure must not have happened (docs/ARCHITECTURE.md,
 * "Outcomes of a failed command"). Each change is run on a copy of one
 * volume on a tmpfs left with a swept amount of free space, then space is
 * freed and the volume opened again:
 * - success ⇒ the change is there;
 * - NO_SPACE, IO_ERROR, JOURNAL_ABORTED ⇒ the change is not there;
 * - OUTCOME_UNKNOWN ⇒ either;
 * - anything else (INTERNAL, an assertion, an error without a code) fails;
 * and every snapshot reads back its content.
 *
 * Knobs: COWVOL_FULLDISK_MAX_KIB (default 64), COWVOL_FULLDISK_STEP_KIB
 * (default 4, a tmpfs page): the free-space levels, 0 to max in steps.
 */
const MAX_KIB = Number(process.env.COWVOL_FULLDISK_MAX_KIB ?? 64);
const STEP_KIB = Number(process.env.COWVOL_FULLDISK_STEP_KIB ?? 4);
const LEVELS = Array.from({ length: Math.floor(MAX_KIB / STEP_KIB) + 1 }, (_, i) => i * STEP_KIB * 1024);
const BS = 4096;
const VOLUME_BYTES = 64 * BS;
const NOT_HAPPENED = new Set(['NO_SPACE', 'IO_ERROR', 'JOURNAL_ABORTED']);

const seed = 77_1202;
const rnd = prng(seed);
const content = (): Buffer => Buffer.from(Array.from({ length: VOLUME_BYTES }, () => Math.floor(rnd() * 256)));
const A = content();
const B = content();
const C = content();
/** What the `write` change writes at offset 0: 16 blocks (one piece of one write), each copied into s3 first. */
const WRITE_BYTES = 16 * BS;
const D = content().subarray(0, WRITE_BYTES);

interface Change {
  name: string;
  /** CLI arguments after the volume path's command words. */
  cli: (path: string) => string[];
  run: (v: Volume) => Promise<unknown>;
  open?: OpenVolumeOptions;
  present: (list: SnapshotInfo[], live: Buffer) => boolean;
  /** Free space the change needs besides its metadata (added to every level). */
  baseBytes?: number;
}

const CHANGES: Change[] = [
  { name: 'snapshot create', cli: (p) => ['snapshot', 'create', p, 's4'], run: (v) => v.createSnapshot('s4'), present: (l) => l.some((s) => s.name === 's4') },
  { name: 'snapshot rename', cli: (p) => ['snapshot', 'rename', p, 's1', 'r1'], run: (v) => v.renameSnapshot('s1', 'r1'), present: (l) => l.some((s) => s.name === 'r1') },
  { name: 'snapshot hold', cli: (p) => ['snapshot', 'hold', p, 's1'], run: (v) => v.holdSnapshot('s1'), present: (l) => l.find((s) => s.name === 's1')?.held === true },
  { name: 'snapshot label', cli: (p) => ['snapshot', 'label', p, 's1', 'k=v'], run: (v) => v.setSnapshotLabels('s1', { k: 'v' }), present: (l) => l.find((s) => s.name === 's1')?.labels.k === 'v' },
  {
    name: 'snapshot delete',
    cli: (p) => ['snapshot', 'delete', p, 's1'],
    run: (v) => v.deleteSnapshots(['s1']),
    open: { releaseReserve: true },
    present: (l) => !l.some((s) => s.name === 's1'),
  },
  {
    // One write whose 16 blocks are copied into s3 first (64 KiB of store), then a flush (the CLI's write always flushes).
    name: 'write',
    cli: (p) => ['write', p, '--input', D_FILE],
    run: async (v) => {
      await v.write(0, D);
      await v.flush();
    },
    present: (_l, live) => live.subarray(0, WRITE_BYTES).equals(D),
    baseBytes: WRITE_BYTES,
  },
];
/** D as a file outside the tmpfs, for the CLI's `write --input`. */
let D_FILE = '';

let root: string;
let mnt: string;
let template: string;

beforeAll(async () => {
  if (!IS_ROOT) return;
  root = await mkdtemp(join(tmpdir(), 'cowvol-outcomes-'));
  mnt = join(root, 'mnt');
  execFileSync('mkdir', [mnt]);
  mountTmpfs(mnt, 16 * 1024 * 1024);
  template = join(mnt, 'template');
  execFileSync('mkdir', [template]);
  const v = await Volume.create(join(template, 'v.img'), { sizeBytes: VOLUME_BYTES, journalSizeBytes: 256 * BS });
  await v.write(0, A);
  await v.createSnapshot('s1');
  await v.write(0, B);
  await v.createSnapshot('s2');
  await v.write(0, C);
  await v.createSnapshot('s3');
  await v.close();
  D_FILE = join(root, 'd.bin');
  await writeFile(D_FILE, D);
});

afterAll(async () => {
  if (!IS_ROOT || !root) return;
  try {
    unmount(mnt);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

/** A fresh copy of the template (sparse files stay sparse); `reserve` false drops the space reserve. */
async function copyOfTemplate(reserve: boolean): Promise<string> {
  const dir = await mkdtemp(join(mnt, 'case-'));
  execFileSync('cp', ['-a', '--sparse=always', `${template}/.`, dir]);
  const reservePath = join(dir, 'v.img.cowvol', 'reserve');
  await rm(reservePath, { force: true });
  // The reserve is zeros written in full: a sparse copy would hold no space.
  if (reserve) execFileSync('cp', ['-a', '--sparse=never', join(template, 'v.img.cowvol', 'reserve'), reservePath]);
  return join(dir, 'v.img');
}

/** Runs the change through the API like the CLI does (open, change, close); its outcome: 'ok' or the error's code, and the volume's warnings. */
async function outcomeOf(path: string, change: Change): Promise<{ outcome: string; warnings: readonly string[]; message?: string }> {
  let v: Volume | undefined;
  try {
    v = await Volume.open(path, change.open ?? {});
    try {
      await change.run(v);
    } finally {
      await v.close();
    }
    return { outcome: 'ok', warnings: v.warnings };
  } catch (err) {
    const warnings = v?.warnings ?? [];
    if (!(err instanceof CowvolError)) return { outcome: `not a CowvolError: ${err instanceof Error ? String(err.stack) : String(err)}`, warnings };
    return { outcome: err.code, warnings, message: err.message };
  }
}

/** Runs every level on a fresh copy; returns what happened at each, for the log; fails at the end with every level that went wrong. */
async function sweep(change: Change, reserve: boolean, check: (outcome: string, what: string) => void): Promise<string> {
  const seen: string[] = [];
  const failures: string[] = [];
  for (const level of LEVELS) {
    const path = await copyOfTemplate(reserve);
    try {
      await fillTo(join(path, '..'), level + (change.baseBytes ?? 0));
      const { outcome, warnings, message } = await outcomeOf(path, change);
      const what = `${change.name} at ${level} + ${change.baseBytes ?? 0} bytes free${reserve ? ' (reserve)' : ''}: ${outcome} ${message ?? ''} ${warnings.join('; ')}`;
      seen.push(`${level / 1024}K:${outcome}${warnings.length > 0 ? `+${warnings.length}w` : ''}`);
      check(outcome, what);
      if (process.env.COWVOL_FULLDISK_VERBOSE) console.log(what);
      await verify(path, change, outcome, what);
    } catch (err) {
      failures.push((err as Error).message);
    } finally {
      await rm(join(path, '..'), { recursive: true, force: true });
    }
  }
  const log = `${change.name}${reserve ? ' (reserve)' : ''}: ${seen.join(' ')}`;
  expect(failures, log).toEqual([]);
  return log;
}

/** Frees the space, opens the volume (recovering), checks the outcome against the change and every snapshot's content. */
async function verify(path: string, change: Change, outcome: string, what: string): Promise<void> {
  await rm(join(path, '..', 'filler'), { force: true });
  const v = await Volume.open(path);
  try {
    const list = await v.listSnapshots();
    const live = await v.read(0, VOLUME_BYTES);
    const present = change.present(list, live);
    if (outcome === 'ok') expect(present, `${what}: reported success, change absent`).toBe(true);
    else if (NOT_HAPPENED.has(outcome)) expect(present, `${what}: reported ${outcome}, change present`).toBe(false);
    else expect(outcome, `${what}: outcome`).toBe('OUTCOME_UNKNOWN');
    const expected = new Map<string, Buffer>([
      ['s1', A],
      ['r1', A],
      ['s2', B],
      ['s3', C],
      ['s4', C],
    ]);
    for (const s of list) expect((await v.readSnapshot(s.name, 0, VOLUME_BYTES)).equals(expected.get(s.name)!), `${what}: snapshot ${s.name}`).toBe(true);
    const written = Buffer.concat([D, C.subarray(WRITE_BYTES)]);
    if (change.name !== 'write') expect(live.equals(C), `${what}: live`).toBe(true);
    else expect(live.equals(C) || live.equals(written), `${what}: live is all old or all new`).toBe(true);
    const report = await v.check();
    expect(report.corruptions, `${what}: check`).toEqual([]);
  } finally {
    await v.close();
  }
}

it('runs as root under CI (mounting a tmpfs needs it)', () => requireRootUnderCi());

describe.skipIf(!IS_ROOT)(`outcomes of changes on a full disk (levels ${LEVELS.map((b) => b / 1024).join(', ')} KiB free; seed ${seed})`, () => {
  for (const change of CHANGES) {
    it(`${change.name}: success means done, a "did not happen" code means not done, never INTERNAL (no space reserve)`, async () => {
      const log = await sweep(change, false, (outcome, what) => expect(outcome === 'ok' || NOT_HAPPENED.has(outcome) || outcome === 'OUTCOME_UNKNOWN', what).toBe(true));
      console.log(log);
    });
  }

  it('snapshot delete succeeds at every level: it releases the space reserve first', async () => {
    const log = await sweep(
      CHANGES.find((c) => c.name === 'snapshot delete')!,
      true,
      (outcome, what) => expect(outcome, what).toBe('ok'),
    );
    console.log(log);
  });

  it('through the CLI at 16 KiB free: exit 0, 7 or 9 only, no INTERNAL, no stack trace, and the outcome matches', async () => {
    // A sample (each CLI run costs a process start; the API sweep above covers every change).
    for (const change of CHANGES.filter((c) => ['snapshot create', 'snapshot delete', 'write'].includes(c.name))) {
      const path = await copyOfTemplate(false);
      try {
        await fillTo(join(path, '..'), 16 * 1024 + (change.baseBytes ?? 0));
        const r = await cowvol([...change.cli(path), '--json']);
        expect([0, 7, 9], `${change.name}: exit ${r.code} ${r.stderr}`).toContain(r.code);
        expect(r.stderr).not.toMatch(/INTERNAL|\n\s+at /);
        const outcome = r.code === 0 ? 'ok' : jsonOf<{ error: { code: string } }>(r).error.code;
        await verify(path, change, outcome, `cowvol ${change.name} at 16 KiB free`);
      } finally {
        await rm(join(path, '..'), { recursive: true, force: true });
      }
    }
  });
});
