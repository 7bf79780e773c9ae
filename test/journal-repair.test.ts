import { spawn, execFileSync } from 'node:child_process';
import { cp, open, rm, truncate } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Level } from 'level';
import { pack, unpack } from 'msgpackr';
import { FileBlockDevice } from '@cowvol/base';
import { Journal, SUPERBLOCK_AREA_BYTES, decodeSuperblock, scanJournal } from '@cowvol/journal';
import { Volume } from '@cowvol/cow-core';
import { cowvol, cowvolOk, tempDir } from './helpers.js';
import { STEPS } from './journal-repair-child.mjs';

/**
 * `check --repair` of a damaged journal (README "check", docs/ARCHITECTURE.md
 * §8.5): a writer is SIGKILLed with its transactions still in the journal,
 * a byte of one of them is damaged, the volume no longer opens
 * (JOURNAL_CORRUPT); `check --repair` replays the transactions that
 * verify, discards the rest, resets the journal, reports what it discarded
 * and exits 4; then the volume opens, `check` is clean and every snapshot
 * reads back what it held.
 */
const CHILD = resolve(import.meta.dirname, 'journal-repair-child.mjs');
const KiB = 1024;
const SIZE = 1024 * KiB;

let dir: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-jrepair-'));
});
afterAll(async () => {
  await cleanup();
});

/** Content of each snapshot and of the live volume after the child's workload (STEPS). */
function expectedContent(): Map<string, Buffer> {
  const live = Buffer.alloc(SIZE);
  const out = new Map<string, Buffer>();
  for (const step of STEPS) {
    if (step[0] === 'write') live.fill(step[3] as number, (step[1] as number) * KiB, ((step[1] as number) + (step[2] as number)) * KiB);
    else out.set(step[1] as string, Buffer.from(live));
  }
  out.set('live', live);
  return out;
}

/** Runs the child to the end of its workload, then SIGKILLs it. */
async function killedWriter(vol: string): Promise<void> {
  const child = spawn(process.execPath, [CHILD, vol], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((ok, fail) => {
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('"done"')) ok();
    });
    child.on('exit', (code) => fail(new Error(`writer exited ${String(code)} before its workload ended: ${err}`)));
  });
  const exited = new Promise((ok) => child.on('exit', ok));
  child.kill('SIGKILL');
  await exited;
  // The dead writer's owner lock would only go stale after its stale time;
  // nobody else uses the volume, so remove it (as test/kill.test.ts does).
  await rm(join(`${vol}.cowvol`, 'lock'), { recursive: true, force: true });
}

/** The committed transactions the journal holds (sequence, first block), as recovery sees them. */
async function journalTransactions(vol: string): Promise<Array<{ sequence: number; startBlock: number }>> {
  const dev = await FileBlockDevice.open(join(`${vol}.cowvol`, 'journal'));
  try {
    const sb = decodeSuperblock(await dev.read(0, SUPERBLOCK_AREA_BYTES), dev.name);
    return (await scanJournal(dev, sb)).transactions.map((t) => ({ sequence: t.sequence, startBlock: t.startBlock }));
  } finally {
    await dev.close();
  }
}

async function flipByte(path: string, offset: number): Promise<void> {
  const fh = await open(path, 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, offset);
  b[0] = b[0]! ^ 0xff;
  await fh.write(b, 0, 1, offset);
  await fh.close();
}

async function expectSnapshotsIntact(vol: string): Promise<void> {
  const v = await Volume.open(vol);
  try {
    for (const [name, want] of expectedContent()) {
      const got = name === 'live' ? await v.read(0, SIZE) : await v.readSnapshot(name, 0, SIZE);
      expect(got.equals(want), `${name} reads back what it held`).toBe(true);
    }
    expect((await v.check()).status).toBe('clean');
  } finally {
    await v.close();
  }
}

describe('check --repair: a damaged journal is repaired like e2fsck does', () => {
  it('replays the transactions that verify, discards the rest, reports them, and the volume opens clean', async () => {
    const vol = join(dir, 'killed.img');
    await cowvolOk(['create', vol, '--size', String(SIZE)]);
    await killedWriter(vol);
    const txs = await journalTransactions(vol);
    expect(txs.length, 'the killed writer left its transactions in the journal').toBeGreaterThanOrEqual(4);
    // Damage one byte in the first block of a transaction in the middle.
    const victim = txs[Math.floor(txs.length / 2)]!;
    const last = txs.at(-1)!.sequence;
    await flipByte(join(`${vol}.cowvol`, 'journal'), victim.startBlock * 4096 + 100);
    console.log(`[journal-repair] ${txs.length} transactions ${txs[0]!.sequence}..${last}; damaged ${victim.sequence} at block ${victim.startBlock}`);

    const info = await cowvol(['info', vol]);
    expect(info.code, info.stderr).toBe(6);
    expect(info.stderr).toContain('[JOURNAL_CORRUPT]');
    const plain = await cowvol(['check', vol]);
    expect(plain.code, plain.stderr).toBe(2);

    // People's output, on a copy: says what was discarded.
    const copy = join(dir, 'copy.img');
    execFileSync('cp', ['-a', vol, copy]); // keeps the modification time: the same content
    await cp(`${vol}.cowvol`, `${copy}.cowvol`, { recursive: true });
    const human = await cowvol(['check', copy, '--repair']);
    expect(human.code, human.stderr).toBe(4);
    expect(human.stdout.toString()).toContain(`discarded ${last - victim.sequence + 1} transaction(s): `);
    expect(human.stdout.toString()).toContain('journal repaired: replayed');

    const repaired = await cowvol(['check', vol, '--repair', '--json']);
    expect(repaired.code, repaired.stderr).toBe(4);
    expect(JSON.parse(repaired.stdout.toString())).toMatchObject({ journalRepair: { dataMode: 'ordered', imagesMayBeLost: false } });
    const report = JSON.parse(repaired.stdout.toString()) as {
      status: string;
      journalRepair: { replayedTransactions: number; lastReplayedSequence: number; discarded: Array<{ sequence: number; inMetadata: boolean }>; newTailSequence: number };
    };
    expect(report.status).toBe('clean');
    const jr = report.journalRepair;
    expect(jr.lastReplayedSequence).toBe(victim.sequence - 1);
    expect(jr.replayedTransactions).toBe(victim.sequence - txs[0]!.sequence);
    const discarded = Array.from({ length: last - victim.sequence + 1 }, (_, i) => victim.sequence + i);
    expect(jr.discarded.map((d) => d.sequence)).toEqual(discarded);
    // The writer was killed after LevelDB applied every commit: their metadata changes stay.
    expect(jr.discarded.every((d) => d.inMetadata)).toBe(true);
    expect(jr.newTailSequence).toBeGreaterThan(last);

    const after = await cowvol(['check', vol]);
    expect(after.code, after.stdout.toString()).toBe(0);
    await expectSnapshotsIntact(vol);
    // The volume is usable again: a new snapshot and a write go through the reset journal.
    const v = await Volume.open(vol);
    await v.createSnapshot('s4');
    await v.write(0, Buffer.alloc(4 * KiB, 0x66));
    expect((await v.check()).status).toBe('clean');
    await v.close();
  });

  it('journal data mode: discarded transactions held block images, so the repair reports possible loss (exit 2)', async () => {
    const vol = join(dir, 'journaled.img');
    await cowvolOk(['create', vol, '--size', String(SIZE), '--data-mode', 'journal']);
    await killedWriter(vol);
    const txs = await journalTransactions(vol);
    const victim = txs[Math.floor(txs.length / 2)]!;
    await flipByte(join(`${vol}.cowvol`, 'journal'), victim.startBlock * 4096 + 100);
    const repaired = await cowvol(['check', vol, '--repair', '--json']);
    expect(repaired.code, repaired.stderr).toBe(2);
    const jr = (JSON.parse(repaired.stdout.toString()) as { journalRepair: { dataMode: string; imagesMayBeLost: boolean; discarded: Array<{ sequence: number }> } }).journalRepair;
    expect(jr).toMatchObject({ dataMode: 'journal', imagesMayBeLost: true });
    expect(jr.discarded.map((d) => d.sequence)).toEqual(Array.from({ length: txs.at(-1)!.sequence - victim.sequence + 1 }, (_, i) => victim.sequence + i));
    // The journal itself is repaired: the volume opens again.
    await (await Volume.open(vol)).close();
  });

  it('a journal truncated to 0 or deleted is recreated; nothing else changes', async () => {
    const base = join(dir, 'clean.img');
    await cowvolOk(['create', base, '--size', String(SIZE)]);
    await killedWriter(base);
    await (await Volume.open(base)).close(); // replays and checkpoints: the journal is empty now
    for (const [name, damage] of [
      ['truncated', (j: string) => truncate(j, 0)],
      ['deleted', (j: string) => rm(j)],
    ] as const) {
      const vol = join(dir, `${name}.img`);
      execFileSync('cp', ['-a', base, vol]); // keeps the modification time: the same content
      await cp(`${base}.cowvol`, `${vol}.cowvol`, { recursive: true });
      await damage(join(`${vol}.cowvol`, 'journal'));
      await expect(Volume.open(vol), name).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
      const repaired = await cowvol(['check', vol, '--repair', '--json']);
      expect(repaired.code, `${name}: ${repaired.stderr}`).toBe(4);
      expect(JSON.parse(repaired.stdout.toString())).toMatchObject({ journalRepair: { superblockDamaged: true, discarded: [] } });
      await expectSnapshotsIntact(vol);
    }
  });

  it('journal data mode, the journal lost with images not yet home: the repair says images may be lost (exit 2), it cannot know which', async () => {
    const vol = join(dir, 'lost-images.img');
    await cowvolOk(['create', vol, '--size', String(SIZE), '--data-mode', 'journal']);
    await killedWriter(vol); // its transactions' images are only in the journal
    await rm(join(`${vol}.cowvol`, 'journal'));
    const repaired = await cowvol(['check', vol, '--repair', '--json']);
    expect(repaired.code, repaired.stderr).toBe(2);
    expect(JSON.parse(repaired.stdout.toString())).toMatchObject({ journalRepair: { superblockDamaged: true, dataMode: 'journal', imagesMayBeLost: true } });
  });

  it('a journal cut short with its superblock intact is JOURNAL_CORRUPT (not extended with zeros); check --repair resets it and nothing else changes', async () => {
    const base = join(dir, 'clean-short.img');
    await cowvolOk(['create', base, '--size', String(SIZE)]);
    await killedWriter(base);
    await (await Volume.open(base)).close(); // replays and checkpoints: nothing is lost by the cut below
    const vol = join(dir, 'short.img');
    execFileSync('cp', ['-a', base, vol]);
    await cp(`${base}.cowvol`, `${vol}.cowvol`, { recursive: true });
    const journal = join(`${vol}.cowvol`, 'journal');
    await truncate(journal, 1024 * 1024);
    await expect(Volume.open(vol)).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
    await expect(Volume.openForReading(vol)).rejects.toMatchObject({ code: 'JOURNAL_CORRUPT' });
    const repaired = await cowvol(['check', vol, '--repair', '--json']);
    expect(repaired.code, repaired.stderr).toBe(4);
    expect(JSON.parse(repaired.stdout.toString())).toMatchObject({ status: 'clean', journalRepair: { discarded: [] } });
    await expectSnapshotsIntact(vol);
    expect((await cowvol(['check', vol])).code).toBe(0);
  });

  it('a discarded transaction the metadata never applied: after the repair check is clean (the metadata skips its sequence too), not journal-not-recovered forever', async () => {
    const vol = join(dir, 'unapplied.img');
    await cowvolOk(['create', vol, '--size', String(SIZE)]);
    await killedWriter(vol);
    await (await Volume.open(vol)).close(); // replays and checkpoints: the log is empty, the metadata up to date
    const applied = await putCheckpointSequence(vol);
    // Two more transactions reach the log but never the metadata (a writer killed between its commits and their apply);
    // the first is damaged, so recovery cannot pass it and the second is beyond it: JOURNAL_CORRUPT.
    const dev = await FileBlockDevice.open(join(`${vol}.cowvol`, 'journal'));
    const { journal } = await Journal.open(dev, { replay: async () => undefined });
    const sequences: number[] = [];
    for (const n of [1, 2]) {
      const handle = await journal.start(1);
      handle.log({ never: 'applied', n });
      sequences.push(await handle.commit());
    }
    await journal.close();
    const [first] = await journalTransactions(vol);
    expect(first?.sequence).toBe(sequences[0]);
    const journalPath = join(`${vol}.cowvol`, 'journal');
    await flipByte(journalPath, first!.startBlock * 4096 + 100);
    // A damaged head alone reads as a torn end of the log; cut the file's last block too, so the open refuses it.
    const { size } = await (await import('node:fs/promises')).stat(journalPath);
    await truncate(journalPath, size - 4096);
    expect((await cowvol(['info', vol])).code).toBe(6);
    const repaired = await cowvol(['check', vol, '--repair', '--json']);
    expect(repaired.code, repaired.stderr).toBe(4);
    const jr = (JSON.parse(repaired.stdout.toString()) as { journalRepair: { discarded: Array<{ sequence: number; inMetadata: boolean }>; newTailSequence: number } }).journalRepair;
    expect(jr.discarded).toMatchObject(sequences.map((sequence) => ({ sequence, inMetadata: false })));
    expect(jr.newTailSequence).toBe(sequences[1]! + 1);
    const after = await cowvol(['check', vol]);
    expect(after.code, after.stdout.toString()).toBe(0);
    // A crash between the reset and the checkpoint record's move leaves the old record: the next writable open
    // (here check --repair, which finds the journal sound) moves it.
    await putCheckpointSequence(vol, applied);
    expect((await cowvol(['check', vol])).code).toBe(2);
    const again = await cowvol(['check', vol, '--repair']);
    expect(again.code, again.stdout.toString()).toBe(0);
    expect((await cowvol(['check', vol])).code).toBe(0);
    await expectSnapshotsIntact(vol);
  });
});

/** The metadata's `cp` record (the last transaction applied, FORMAT.md §6): read, or set to `sequence`. The volume must be closed. */
async function putCheckpointSequence(vol: string, sequence?: number): Promise<number> {
  const db = new Level<string, Buffer>(join(`${vol}.cowvol`, 'meta'), { valueEncoding: 'buffer', createIfMissing: false });
  await db.open();
  try {
    if (sequence !== undefined) await db.put('cp', pack({ v: 1, sequence }));
    return (unpack(await db.get('cp')) as { sequence: number }).sequence;
  } finally {
    await db.close();
  }
}
