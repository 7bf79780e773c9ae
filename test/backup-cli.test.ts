import { cp, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, forgetChangeStamp, sha256File, tempDir, cowvolOk as ok, jsonOf as json } from './helpers.js';

/**
 * The backup commands through the real CLI (child processes, real files):
 * snapshot diff / export / restore / rename / hold / release / label / info,
 * import, multi-delete with filters and --dry-run, --progress, --wait, and
 * the JSON shapes and exit codes of README "Backup workflows" and "Exit codes".
 */
let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-backup-cli-'));
});
afterAll(async () => {
  await cleanup();
});

/** A 1 MiB volume with snapshots mon, tue (labelled) and writes after each; built once, copied per test. */
let week: { vol: string; data: Map<string, Buffer> } | undefined;
async function weekVolume(name: string): Promise<{ vol: string; data: Map<string, Buffer> }> {
  if (!week) {
    const vol = join(dir, 'week-template.img');
    await ok(['create', vol, '--size', '1M']);
    const data = new Map<string, Buffer>();
    await ok(['write', vol, '--offset', '0'], randomBytes(200_000));
    await ok(['snapshot', 'create', vol, 'mon', '--label', 'kind=nightly']);
    data.set('mon', (await ok(['read', vol])).stdout);
    await ok(['write', vol, '--offset', '300K'], randomBytes(10_000));
    await ok(['write', vol, '--offset', '4097'], Buffer.alloc(3000)); // zeros in an incremental
    await ok(['snapshot', 'create', vol, 'tue', '--label', 'kind=nightly', '--label', 'host=db1']);
    data.set('tue', (await ok(['read', vol])).stdout);
    await ok(['write', vol, '--offset', '900K'], randomBytes(5000));
    week = { vol, data };
  }
  // A volume is its file and its sidecar: a copy (taken while no process holds it) is another volume with the same uuid.
  const vol = join(dir, name);
  await cp(week.vol, vol);
  await cp(`${week.vol}.cowvol`, `${vol}.cowvol`, { recursive: true });
  await forgetChangeStamp(vol); // the copy has a new inode and times: not a write made outside cowvol here
  return { vol, data: week.data };
}

describe('cowvol snapshot diff', () => {
  it('prints the written extents between two snapshots and to live, as JSON and as a table', async () => {
    const { vol } = await weekVolume('diff.img');
    const d = json<{ from: string; to: string | null; extents: Array<{ offset: number; length: number; snapshot: string }>; bytes: number; blockSizeBytes: number }>(
      await ok(['snapshot', 'diff', vol, 'mon', 'tue', '--json']),
    );
    expect(d).toEqual({
      from: 'mon',
      to: 'tue',
      blockSizeBytes: 4096,
      extents: [
        { offset: 4096, length: 4096, snapshot: 'mon' }, // 3000 zeros at 4097 touch block 1
        { offset: 300 * 1024, length: 3 * 4096, snapshot: 'mon' }, // 10,000 bytes at 300K: blocks 75-77
      ],
      bytes: 4 * 4096,
      blocks: 4,
    });
    const toLive = json<{ to: null; extents: Array<{ offset: number; snapshot: string }>; bytes: number }>(await ok(['snapshot', 'diff', vol, 'mon', '--json']));
    expect(toLive.to).toBeNull();
    expect(toLive.extents.at(-1)).toEqual({ offset: 225 * 4096, length: 2 * 4096, snapshot: 'tue' });
    const human = (await ok(['snapshot', 'diff', vol, 'mon'])).stdout.toString();
    expect(human).toMatch(/OFFSET\s+LENGTH/);
    expect(human).toContain('written between mon and the live volume');
    const missing = await cowvol(['snapshot', 'diff', vol, 'nope', '--json']);
    expect(missing.code).toBe(3);
    expect(json(missing)).toMatchObject({ error: { code: 'SNAPSHOT_NOT_FOUND' } });
  });
});

describe('cowvol snapshot export / import', () => {
  it('full + incremental through files and through pipes reproduce both snapshots; a flipped bit is refused (exit 8) with the target unchanged', async () => {
    const { vol, data } = await weekVolume('src.img');
    const full = join(dir, 'mon.cvs');
    const incr = join(dir, 'tue.cvs');
    const e1 = json<{ kind: string; extentCount: number; output: string }>(await ok(['snapshot', 'export', vol, 'mon', '--output', full, '--json']));
    expect(e1).toMatchObject({ kind: 'full', output: full, source: { name: 'mon' }, base: null });
    // Incremental to stdout: only stream bytes on stdout.
    const piped = await ok(['snapshot', 'export', vol, 'tue', '--since', 'mon', '--output', '-']);
    await writeFile(incr, piped.stdout);
    expect(piped.stderr).toBe('');
    const target = join(dir, 'restored.img');
    const i1 = json(await ok(['import', target, '--input', full, '--json']));
    expect(i1).toMatchObject({ kind: 'full', created: true, snapshot: 'mon', appliedExtents: e1.extentCount });
    // Corrupt copy of the incremental: refused, nothing changes.
    const bad = Buffer.from(piped.stdout);
    bad[Math.floor(bad.length * 0.7)]! ^= 0x04;
    const badPath = join(dir, 'bad.cvs');
    await writeFile(badPath, bad);
    const before = await sha256File(target);
    const refused = await cowvol(['import', target, '--input', badPath, '--json']);
    expect(refused.code, refused.stderr).toBe(8);
    expect(json(refused)).toMatchObject({ error: { code: 'STREAM_CORRUPT', details: { record: 'extent' } } });
    expect(refused.stderr).toMatch(/extent \d+ \(volume bytes \d+\+\d+/);
    expect(await sha256File(target)).toBe(before);
    // Through stdin.
    const i2 = json(await ok(['import', target, '--input', '-', '--verify', '--json'], piped.stdout));
    expect(i2).toMatchObject({ kind: 'incremental', snapshot: 'tue', verified: true, base: { name: 'mon' } });
    for (const [name, content] of data) expect((await ok(['snapshot', 'read', target, name])).stdout.equals(content), name).toBe(true);
    const list = json<{ snapshots: Array<{ name: string; labels: Record<string, string>; origin: { name: string } }> }>(await ok(['snapshot', 'list', target, '--json']));
    expect(list.snapshots.map((s) => [s.name, s.labels, s.origin.name])).toEqual([
      ['mon', { kind: 'nightly' }, 'mon'],
      ['tue', { kind: 'nightly', host: 'db1' }, 'tue'],
    ]);
    // Applying it again: the snapshot is there already (exit 4).
    const again = await cowvol(['import', target, '--input', incr]);
    expect(again.code).toBe(4);
    expect(again.stderr).toContain('[SNAPSHOT_EXISTS]');
    // A foreign file is not a stream.
    const foreign = await cowvol(['import', join(dir, 'x.img'), '--input', vol]);
    expect(foreign.code).toBe(8);
    expect(foreign.stderr).toContain('[NOT_A_STREAM]');
    await expect(stat(join(dir, 'x.img'))).rejects.toMatchObject({ code: 'ENOENT' });
    // An incremental onto a volume that is not at its base: BASE_MISMATCH (exit 4).
    await ok(['write', target, '--offset', '0'], Buffer.from('diverged'));
    const mismatch = await cowvol(['import', target, '--input', incr, '--json']);
    expect(json(mismatch)).toMatchObject({ error: { code: 'SNAPSHOT_EXISTS' } });
    // --json with --output - is a usage error: stdout would carry both.
    const usage = await cowvol(['snapshot', 'export', vol, 'tue', '--output', '-', '--json']);
    expect(usage.code).toBe(2);
    // --since must be older.
    expect((await cowvol(['snapshot', 'export', vol, 'mon', '--since', 'tue', '--output', join(dir, 'x.cvs')])).code).toBe(2);
    await expect(stat(join(dir, 'x.cvs'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('cowvol snapshot restore', () => {
  it('restores the live volume to a snapshot, keeps newer snapshots, takes a safety snapshot; restoring that undoes it', async () => {
    const { vol, data } = await weekVolume('restore.img');
    const liveBefore = (await ok(['read', vol])).stdout;
    const r = json<{ name: string; safetySnapshot: string; restoredBytes: number }>(await ok(['snapshot', 'restore', vol, 'mon', '--json']));
    expect(r.name).toBe('mon');
    expect(r.safetySnapshot).toMatch(/^pre-restore-/);
    expect(r.restoredBytes).toBeGreaterThan(0);
    expect((await ok(['read', vol])).stdout.equals(data.get('mon')!)).toBe(true);
    expect((await ok(['snapshot', 'read', vol, 'tue'])).stdout.equals(data.get('tue')!)).toBe(true);
    expect((await ok(['snapshot', 'read', vol, r.safetySnapshot])).stdout.equals(liveBefore)).toBe(true);
    const undo = json<{ safetySnapshot: null }>(await ok(['snapshot', 'restore', vol, r.safetySnapshot, '--no-safety-snapshot', '--json']));
    expect(undo.safetySnapshot).toBeNull();
    expect((await ok(['read', vol])).stdout.equals(liveBefore)).toBe(true);
    expect((await cowvol(['snapshot', 'restore', vol, 'nope'])).code).toBe(3);
    // A safety name with no safety snapshot would be ignored: refused, nothing restored.
    const both = await cowvol(['snapshot', 'restore', vol, 'mon', '--no-safety-snapshot', '--safety-name', 'q']);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('--safety-name names the safety snapshot: it cannot be given with --no-safety-snapshot');
    expect((await ok(['read', vol])).stdout.equals(liveBefore)).toBe(true);
  });
});

describe('cowvol snapshot rename, hold, release, label, info; delete of several, filters, --dry-run', () => {
  it('rename and labels show in list and info; a held snapshot cannot be deleted (exit 4, nothing deleted); --dry-run equals the real delete', async () => {
    const { vol } = await weekVolume('manage.img');
    await ok(['snapshot', 'create', vol, 'wed', '--label', 'kind=nightly']);
    await ok(['write', vol, '--offset', '600K'], randomBytes(40_000));
    await ok(['snapshot', 'create', vol, 'manual']);
    await ok(['write', vol, '--offset', '200K'], randomBytes(90_000));
    expect(json(await ok(['snapshot', 'rename', vol, 'manual', 'before-upgrade', '--json']))).toMatchObject({ name: 'before-upgrade' });
    expect((await cowvol(['snapshot', 'rename', vol, 'mon', 'tue'])).code).toBe(4);
    expect(json(await ok(['snapshot', 'label', vol, 'before-upgrade', 'keep=yes', 'owner=ops', '--json']))).toMatchObject({ labels: { keep: 'yes', owner: 'ops' } });
    expect(json(await ok(['snapshot', 'label', vol, 'before-upgrade', '--remove', 'owner', '--json']))).toMatchObject({ labels: { keep: 'yes' } });
    const badLabel = await cowvol(['snapshot', 'create', vol, 'x', '--label', 'no-equals-sign']);
    expect(badLabel.code).toBe(2);
    expect(badLabel.stderr).toContain('[INVALID_LABEL]');

    const held = json<{ snapshots: Array<{ held: boolean }> }>(await ok(['snapshot', 'hold', vol, 'tue', '--json']));
    expect(held.snapshots[0]!.held).toBe(true);
    const info = json<{ name: string; held: boolean; ownedBytes: number; freeableBytes: number; identity: { snapshotId: number } }>(await ok(['snapshot', 'info', vol, 'tue', '--json']));
    expect(info).toMatchObject({ name: 'tue', held: true, labels: { kind: 'nightly', host: 'db1' }, identity: { snapshotId: 2 } });
    const list = json<{ snapshots: Array<{ name: string; ownedBytes: number; freeableBytes: number; held: boolean }>; store: { usedBytes: number; ownedBytes: number } }>(
      await ok(['snapshot', 'list', vol, '--json']),
    );
    expect(list.snapshots.map((s) => s.name)).toEqual(['mon', 'tue', 'wed', 'before-upgrade']);
    expect(list.store.ownedBytes).toBe(list.store.usedBytes);
    expect(list.snapshots[0]!.freeableBytes).toBe(list.snapshots[0]!.ownedBytes); // the oldest: everything it owns
    const humanList = (await ok(['snapshot', 'list', vol])).stdout.toString();
    expect(humanList).toMatch(/NAME\s+CREATED\s+BLOCKS\s+OWNED\s+FREES\s+HELD/);
    expect(humanList).toContain('keep=yes');
    const infoAll = json<{ snapshots: Array<{ freeableBytes: number }>; store: { freeBytes: number } }>(await ok(['info', vol, '--json']));
    expect(infoAll.snapshots).toHaveLength(4);
    expect(infoAll.store.freeBytes).toBe(0);

    // Held: the whole delete is refused, nothing is deleted.
    const refused = await cowvol(['snapshot', 'delete', vol, 'mon', 'tue', '--json']);
    expect(refused.code).toBe(4);
    expect(json(refused)).toMatchObject({ error: { code: 'SNAPSHOT_HELD', details: { names: ['tue'] } } });
    expect(json<{ snapshots: unknown[] }>(await ok(['snapshot', 'list', vol, '--json'])).snapshots).toHaveLength(4);

    // Filters skip held snapshots; --dry-run figures = what the real delete frees.
    const dry = json<{ dryRun: boolean; deleted: Array<{ name: string; freedBytes: number }>; skippedHeld: string[]; freedBytes: number }>(
      await ok(['snapshot', 'delete', vol, '--label', 'kind=nightly', '--keep-newest', '1', '--dry-run', '--json']),
    );
    expect(dry).toMatchObject({ dryRun: true, skippedHeld: ['tue'] });
    expect(dry.deleted.map((d) => d.name)).toEqual(['mon']);
    const usedBefore = json<{ store: { usedBytes: number } }>(await ok(['info', vol, '--json'])).store.usedBytes;
    const real = json<{ dryRun: boolean; deleted: Array<{ name: string; freedBytes: number }>; freedBytes: number }>(
      await ok(['snapshot', 'delete', vol, '--label', 'kind=nightly', '--keep-newest', '1', '--json']),
    );
    expect(real.dryRun).toBe(false);
    expect(real.deleted).toEqual(dry.deleted.map((d) => ({ ...d })));
    expect(real.freedBytes).toBe(dry.freedBytes);
    expect(usedBefore - json<{ store: { usedBytes: number } }>(await ok(['info', vol, '--json'])).store.usedBytes).toBe(dry.freedBytes);

    await ok(['snapshot', 'release', vol, 'tue']);
    // --older-than: everything is younger than a day; 0s matches all.
    expect(json<{ deleted: unknown[] }>(await ok(['snapshot', 'delete', vol, '--older-than', '1d', '--json'])).deleted).toEqual([]);
    expect((await cowvol(['snapshot', 'delete', vol, '--older-than', '3x'])).code).toBe(2);
    const many = json<{ deleted: Array<{ name: string }> }>(await ok(['snapshot', 'delete', vol, 'tue', 'before-upgrade', '--json']));
    expect(many.deleted.map((d) => d.name)).toEqual(['tue', 'before-upgrade']);
    const anyNumber: unknown = expect.any(Number); // an asymmetric matcher, opaque to the object holding it
    // One name keeps the historic shape.
    expect(json(await ok(['snapshot', 'delete', vol, 'wed', '--json']))).toEqual({ name: 'wed', freedBlocks: anyNumber, handedOverBlocks: anyNumber });
    expect((await cowvol(['snapshot', 'delete', vol])).code).toBe(2);
    expect((await ok(['check', vol])).code).toBe(0);
  });
});

describe('progress and scripting contract', () => {
  it('--progress prints JSON-lines events on stderr (stdout stays data); without it a non-TTY stderr stays silent', async () => {
    const { vol } = await weekVolume('progress.img');
    const withProgress = await ok(['snapshot', 'read', vol, 'mon', '--progress']);
    expect(withProgress.stdout.length).toBe(1024 * 1024);
    const events = withProgress.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; operation: string; doneBytes: number; totalBytes: number; etaSeconds: number | null; rateBytesPerSecond: number });
    expect(events.at(-1)).toMatchObject({ type: 'done', operation: 'snapshot read', doneBytes: 1024 * 1024, totalBytes: 1024 * 1024 });
    for (const e of events) expect(typeof e.rateBytesPerSecond).toBe('number');
    const silent = await ok(['snapshot', 'read', vol, 'mon']);
    expect(silent.stderr).toBe('');
    const exp = await ok(['snapshot', 'export', vol, 'tue', '--since', 'mon', '--output', join(dir, 'p.cvs'), '--progress', '--json']);
    expect(json(exp)).toMatchObject({ kind: 'incremental' });
    expect(exp.stderr).toContain('"operation":"export"');
    // An incremental stream into a path that does not exist: VOLUME_NOT_FOUND.
    await expect(ok(['import', join(dir, 'p-full.img'), '--input', join(dir, 'p.cvs'), '--dry-run', '--progress', '--json'])).rejects.toThrow('exited 3');
    const check = await ok(['check', vol, '--progress']);
    expect(check.stderr).toContain('"operation":"check"');
    expect(check.stderr).toContain('"doneBlocks":');
    const del = await ok(['snapshot', 'delete', vol, 'mon', '--progress', '--json']);
    expect(del.stderr).toContain('"operation":"delete"');
    expect(json(del)).toMatchObject({ name: 'mon' });
  });
});
