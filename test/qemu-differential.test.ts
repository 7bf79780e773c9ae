/**
 * A differential test against a real peer: qcow2 internal snapshots, driven
 * with qemu-io and qemu-img, versus cowvol driven through its CLI.
 *
 * For each seed a random operation sequence is generated from prng(seed):
 * writes (1-byte, small unaligned, block-aligned, large unaligned spanning
 * many blocks up to ~300 KiB, writes touching the first and last byte of the
 * volume, random / zero / repeated-byte contents), snapshot creates (s1, s2,
 * ...) and snapshot deletes (oldest, middle or newest surviving snapshot).
 * The same sequence, carrying the same bytes, is applied to
 *   (a) a 4 MiB qcow2 image (default 64 KiB clusters):
 *       `qemu-io -f qcow2 peer.qcow2 -c "write -s chunk.bin OFF LEN"`,
 *       `qemu-img snapshot -c|-d NAME peer.qcow2`;
 *   (b) a 4 MiB cowvol volume (4096-byte blocks):
 *       `cowvol write vol.img --offset OFF --input chunk.bin`,
 *       `cowvol snapshot create|delete vol.img NAME`;
 *   (c) an in-memory model: a Buffer for the live volume plus a Buffer copy per
 *       snapshot.
 * At the midpoint and at the end, every surviving snapshot and the live volume
 * are exported from both sides (`qemu-img convert -l snapshot.name=NAME`,
 * `cowvol snapshot read --output`, `qemu-img convert`, `cowvol read --output`)
 * and each is compared with the model, and the snapshot name lists (in
 * creation order) of all three are compared. A mismatch names the side that
 * disagrees with the model, the first differing offset, the seed and the
 * operations applied so far, so it can be replayed.
 *
 * Environment knobs:
 *   COWVOL_DIFF_SEEDS=N  run seeds 1..N instead of the default seeds 1, 2, 3
 *   COWVOL_DIFF_OPS=M    operations per seed (default 20)
 * e.g. COWVOL_DIFF_SEEDS=20 COWVOL_DIFF_OPS=60 npx vitest run test/qemu-differential.test.ts
 * The sequence of a seed does not depend on the other seeds, and the first M
 * ops of a seed are the same for any COWVOL_DIFF_OPS >= M. To replay one seed K:
 *   COWVOL_DIFF_SEEDS=K COWVOL_DIFF_OPS=M npx vitest run test/qemu-differential.test.ts -t "seed K:"
 * (each case logs this line, and every failure message carries it).
 *
 * Skipped, with that reason in the test name, only when qemu-img/qemu-io are
 * not installed.
 */
import { spawnSync } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'vitest';
import { cowvol, prng, run, runOk, tempDir, type RunResult } from './helpers.js';

const VOLUME_BYTES = 4 * 1024 * 1024;
const BLOCK_BYTES = 4096;
const MAX_WRITE_BYTES = 300 * 1024;

function positiveIntFromEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

const SEED_COUNT = process.env.COWVOL_DIFF_SEEDS ? positiveIntFromEnv('COWVOL_DIFF_SEEDS', 3) : undefined;
const SEEDS = SEED_COUNT === undefined ? [1, 2, 3] : Array.from({ length: SEED_COUNT }, (_, i) => i + 1);
const OPS = positiveIntFromEnv('COWVOL_DIFF_OPS', 20);
// Only stops a hung run; grows with the knobs (seeds run concurrently, at most 5 at a time).
const TIMEOUT_MS = Math.max(300_000, OPS * Math.min(SEEDS.length, 5) * 4_000);

function onPath(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore' }).error === undefined;
}
const haveQemu = onPath('qemu-img', ['--version']) && onPath('qemu-io', ['--version']);
// CI installs qemu-utils (.ci/run): there, a missing peer is a failure, never a skip.
if (process.env.CI && !haveQemu) throw new Error('CI=true but qemu-img/qemu-io are not installed (apt-get install qemu-utils)');
const skipReason = haveQemu ? '' : ' [SKIPPED: qemu-img/qemu-io (qemu-utils) not found on PATH]';

// --- operation sequence --------------------------------------------------------

type Op = { kind: 'write'; offset: number; data: Buffer; shape: string } | { kind: 'snapshot'; name: string } | { kind: 'delete'; name: string; position: 'only' | 'oldest' | 'middle' | 'newest' };

function describeOp(op: Op): string {
  switch (op.kind) {
    case 'write':
      return `write ${op.data.length}B @${op.offset} (${op.shape})`;
    case 'snapshot':
      return `snapshot create ${op.name}`;
    case 'delete':
      return `snapshot delete ${op.name} (${op.position})`;
  }
}

/** Deterministic op sequence for one seed; everything, bytes included, comes from prng(seed). */
function generateOps(seed: number, count: number): Op[] {
  const rnd = prng(seed);
  const int = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1)); // inclusive
  const ops: Op[] = [];
  const surviving: string[] = [];
  let nextSnap = 1;

  const contents = (length: number): { data: Buffer; fill: string } => {
    const r = rnd();
    if (r < 0.08) return { data: Buffer.alloc(length, 0), fill: 'zeros' };
    if (r < 0.14) {
      const byte = int(1, 255);
      return { data: Buffer.alloc(length, byte), fill: `byte 0x${byte.toString(16)}` };
    }
    const data = Buffer.alloc(length);
    for (let i = 0; i < length; i++) data[i] = Math.floor(rnd() * 256);
    return { data, fill: 'random' };
  };

  // Deletes among >= 3 snapshots rotate oldest -> middle -> newest (from a random
  // start), so every seed with three such deletes exercises all three positions.
  const positions = ['oldest', 'middle', 'newest'] as const;
  let rotation = int(0, 2);

  for (let i = 0; i < count; i++) {
    const r = rnd();
    const deleteChance = surviving.length >= 3 ? 0.14 : surviving.length > 0 ? 0.04 : 0;
    if (r < 0.22 || (i === 1 && surviving.length === 0)) {
      const name = `s${nextSnap++}`;
      surviving.push(name);
      ops.push({ kind: 'snapshot', name });
    } else if (r < 0.22 + deleteChance) {
      let index: number;
      let position: 'only' | 'oldest' | 'middle' | 'newest';
      if (surviving.length === 1) {
        index = 0;
        position = 'only';
      } else if (surviving.length === 2) {
        position = rnd() < 0.5 ? 'oldest' : 'newest';
        index = position === 'oldest' ? 0 : 1;
      } else {
        position = positions[rotation++ % 3]!;
        index = position === 'oldest' ? 0 : position === 'newest' ? surviving.length - 1 : int(1, surviving.length - 2);
      }
      const [name] = surviving.splice(index, 1);
      ops.push({ kind: 'delete', name: name!, position });
    } else {
      let length: number;
      let offset: number;
      let shape: string;
      const s = rnd();
      if (s < 0.15) {
        length = 1;
        offset = int(0, VOLUME_BYTES - 1);
        shape = '1 byte';
      } else if (s < 0.4) {
        length = int(2, 8191);
        offset = int(0, VOLUME_BYTES - length);
        shape = 'small unaligned';
      } else if (s < 0.6) {
        length = int(1, 16) * BLOCK_BYTES;
        offset = int(0, VOLUME_BYTES / BLOCK_BYTES - length / BLOCK_BYTES) * BLOCK_BYTES;
        shape = 'block aligned';
      } else if (s < 0.88) {
        length = int(64 * 1024, MAX_WRITE_BYTES);
        offset = int(0, VOLUME_BYTES - length);
        shape = 'large unaligned';
      } else if (s < 0.94) {
        length = int(1, 20_000);
        offset = 0;
        shape = 'volume start';
      } else {
        length = int(1, 20_000);
        offset = VOLUME_BYTES - length;
        shape = 'volume end';
      }
      const { data, fill } = contents(length);
      ops.push({ kind: 'write', offset, data, shape: `${shape}, ${fill}` });
    }
  }
  return ops;
}

// --- the two real sides ----------------------------------------------------------

function failed(what: string, r: RunResult): Error {
  return new Error(`${what} exited ${r.code}: ${r.stderr}${r.stdout.toString().slice(0, 2000)}`);
}

async function cowvolOk(args: string[]): Promise<RunResult> {
  const r = await cowvol(args);
  if (r.code !== 0) throw failed(`cowvol ${args.join(' ')}`, r);
  return r;
}

/** First offset where a and b differ, or -1 (lengths differing count as a difference at the shorter length). */
function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  // Coarse scan by 4 KiB slices, then bytewise inside the first differing slice.
  for (let start = 0; start < n; start += BLOCK_BYTES) {
    const end = Math.min(n, start + BLOCK_BYTES);
    if (a.subarray(start, end).equals(b.subarray(start, end))) continue;
    for (let i = start; i < end; i++) if (a[i] !== b[i]) return i;
  }
  return a.length === b.length ? -1 : n;
}

function hex(buf: Buffer, at: number): string {
  return buf.subarray(at, at + 16).toString('hex');
}

// --- the test --------------------------------------------------------------------

describe('differential: cowvol vs qcow2 internal snapshots (qemu-io / qemu-img) vs an in-memory model', () => {
  // Seeds run concurrently (each in its own temp dir): nearly all the time is spent
  // waiting for child processes. The context's `expect` keeps assertions per test.
  it.skipIf(!haveQemu).concurrent.for(SEEDS)(
    `seed %i: random writes, snapshot creates and deletes give identical snapshots and live data${skipReason}`,
    { timeout: TIMEOUT_MS },
    async (seed, { expect }) => {
      const ops = generateOps(seed, OPS);
      const counts = {
        writes: ops.filter((o) => o.kind === 'write').length,
        creates: ops.filter((o) => o.kind === 'snapshot').length,
        deletes: ops.filter((o) => o.kind === 'delete').map((o) => (o as { position: string }).position),
      };
      const replay = `COWVOL_DIFF_SEEDS=${seed} COWVOL_DIFF_OPS=${OPS} npx vitest run test/qemu-differential.test.ts -t "seed ${seed}:"`;
      console.log(`[qemu-differential] seed=${seed} ops=${OPS} (${counts.writes} writes, ${counts.creates} snapshot creates, ` + `deletes: ${counts.deletes.join(',') || 'none'}); replay: ${replay}`);

      const { dir, cleanup } = await tempDir(`cowvol-qemu-diff-${seed}-`);
      try {
        const peer = join(dir, 'peer.qcow2');
        const vol = join(dir, 'vol.img');
        const chunk = join(dir, 'chunk.bin');
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', peer, String(VOLUME_BYTES)]);
        // Even seeds run the volume in data=journal mode, odd ones in ordered mode.
        await cowvolOk(['create', vol, '--size', '4M', '--block-size', String(BLOCK_BYTES), '--data-mode', seed % 2 === 0 ? 'journal' : 'ordered']);

        const live = Buffer.alloc(VOLUME_BYTES);
        const modelSnapshots = new Map<string, Buffer>(); // insertion order = creation order
        const applied: string[] = [];
        const context = (): string => `seed=${seed} (replay: ${replay}) after ${applied.length} ops:\n${applied.map((d, i) => `  ${i + 1}. ${d}`).join('\n')}`;

        /** Compares one image (snapshot or live) of both sides with the model. */
        const compareImage = (label: string, model: Buffer, qcow: Buffer, cow: Buffer): void => {
          const qDiff = firstDifference(qcow, model);
          const cDiff = firstDifference(cow, model);
          if (qDiff === -1 && cDiff === -1) return;
          const lines = [`${label} mismatch, ${context()}`];
          if (cDiff === -1) lines.push('  cowvol agrees with the model');
          else lines.push(`  cowvol differs from the model at offset ${cDiff} (length ${cow.length} vs ${model.length}): ` + `cowvol ${hex(cow, cDiff)} model ${hex(model, cDiff)}`);
          if (qDiff === -1) lines.push('  qcow2 agrees with the model');
          else lines.push(`  qcow2 differs from the model at offset ${qDiff} (length ${qcow.length} vs ${model.length}): ` + `qcow2 ${hex(qcow, qDiff)} model ${hex(model, qDiff)}`);
          const qcDiff = firstDifference(qcow, cow);
          lines.push(qcDiff === -1 ? '  cowvol and qcow2 agree with each other' : `  cowvol vs qcow2 first differ at ${qcDiff}`);
          expect.fail(lines.join('\n'));
        };

        const checkpoint = async (when: string): Promise<void> => {
          // Snapshot names, in creation order, on all three sides.
          const info = JSON.parse((await runOk('qemu-img', ['info', '--output=json', peer])).stdout.toString()) as {
            snapshots?: Array<{ id: string; name: string }>;
          };
          const qNames = (info.snapshots ?? [])
            .slice()
            .sort((a, b) => Number(a.id) - Number(b.id))
            .map((s) => s.name);
          const list = await cowvolOk(['snapshot', 'list', vol, '--json']);
          const cNames = (JSON.parse(list.stdout.toString()) as { snapshots: Array<{ name: string }> }).snapshots.map((s) => s.name);
          const mNames = [...modelSnapshots.keys()];
          expect(cNames, `cowvol snapshot names (${when}), ${context()}`).toEqual(mNames);
          expect(qNames, `qcow2 snapshot names (${when}), ${context()}`).toEqual(mNames);

          for (const [name, model] of modelSnapshots) {
            const qOut = join(dir, `qemu-${name}.raw`);
            const cOut = join(dir, `cowvol-${name}.raw`);
            await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', '-l', `snapshot.name=${name}`, peer, qOut]);
            await cowvolOk(['snapshot', 'read', vol, name, '--output', cOut]);
            compareImage(`snapshot ${name} (${when})`, model, await readFile(qOut), await readFile(cOut));
            await rm(qOut);
            await rm(cOut);
          }
          const qLive = join(dir, 'qemu-live.raw');
          const cLive = join(dir, 'cowvol-live.raw');
          await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', peer, qLive]);
          await cowvolOk(['read', vol, '--output', cLive]);
          compareImage(`live volume (${when})`, live, await readFile(qLive), await readFile(cLive));
        };

        const midpoint = Math.floor(ops.length / 2);
        for (let i = 0; i < ops.length; i++) {
          const op = ops[i]!;
          applied.push(describeOp(op));
          switch (op.kind) {
            case 'write': {
              await writeFile(chunk, op.data);
              const len = op.data.length;
              // qemu-io -s: fills the write buffer from the file (exactly len bytes here,
              // so its repeat-the-pattern behaviour never kicks in); sub-sector offsets and
              // lengths are handled by qemu's read-modify-write.
              const q = await run('qemu-io', ['-f', 'qcow2', peer, '-c', `write -s ${chunk} ${op.offset} ${len}`]);
              if (q.code !== 0) throw failed(`qemu-io write (${context()})`, q);
              // qemu-io reported success by exit code; also require its own confirmation line.
              expect(q.stdout.toString(), `qemu-io output, ${context()}`).toContain(`wrote ${len}/${len} bytes at offset ${op.offset}`);
              const c = await cowvol(['write', vol, '--offset', String(op.offset), '--input', chunk]);
              expect(c.code, `cowvol write failed: ${c.stderr} ${context()}`).toBe(0);
              op.data.copy(live, op.offset);
              break;
            }
            case 'snapshot': {
              await runOk('qemu-img', ['snapshot', '-c', op.name, peer]);
              const c = await cowvol(['snapshot', 'create', vol, op.name]);
              expect(c.code, `cowvol snapshot create failed: ${c.stderr} ${context()}`).toBe(0);
              modelSnapshots.set(op.name, Buffer.from(live));
              break;
            }
            case 'delete': {
              await runOk('qemu-img', ['snapshot', '-d', op.name, peer]);
              const c = await cowvol(['snapshot', 'delete', vol, op.name]);
              expect(c.code, `cowvol snapshot delete failed: ${c.stderr} ${context()}`).toBe(0);
              expect(modelSnapshots.delete(op.name), `model had no snapshot ${op.name}, seed=${seed}`).toBe(true);
              break;
            }
          }
          if (i + 1 === midpoint) await checkpoint(`midpoint, op ${i + 1}/${ops.length}`);
        }
        await checkpoint(`end, op ${ops.length}/${ops.length}`);

        // qcow2 must still be consistent after all this (a broken peer would make the comparison meaningless).
        const check = await run('qemu-img', ['check', '-f', 'qcow2', peer]);
        expect(check.code, `qemu-img check, seed=${seed}: ${check.stdout.toString()}${check.stderr}`).toBe(0);
      } finally {
        await cleanup();
      }
    },
  );
});
