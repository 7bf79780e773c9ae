/**
 * Differential test of `cowvol snapshot diff` against a real peer: qcow2
 * internal snapshots driven by qemu-io / qemu-img.
 *
 * For each seed, one random workload (writes of 1 byte to ~200 KiB with
 * random, zero, or unchanged bytes — a range rewritten with what it already
 * holds —, snapshot creates, deletes of random snapshots) is applied to
 *   (a) a 4 MiB qcow2 image: `qemu-io -c "write -s file off len"`, `qemu-img snapshot -c|-d`;
 *   (b) a 4 MiB cowvol volume (4096-byte blocks), through the API.
 * Then for every pair (A, B) of surviving snapshots, and every (A, live),
 * both qcow2 snapshots are exported (`qemu-img convert -l snapshot.name=`)
 * and `cowvol snapshot diff vol A [B] --json` is run. Asserted:
 *   1. every byte where the two qcow2 exports differ lies inside a cowvol
 *      diff extent (cover), and `qemu-img compare` reporting a difference
 *      implies a non-empty diff;
 *   2. every cowvol diff extent lies inside the block-aligned union of the
 *      byte ranges written between A and B (nothing outside the written
 *      extents).
 * Knobs: COWVOL_QEMU_DIFF_SEEDS (default 2), COWVOL_QEMU_DIFF_OPS (default 24).
 * Skipped only when qemu-img/qemu-io are missing (never under CI=true).
 */
import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Volume } from '@cowvol/cow-core';
import { cowvol, prng, run, runOk, tempDir } from './helpers.js';

const SIZE = 4 * 1024 * 1024;
const BS = 4096;

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}
const SEEDS = Array.from({ length: envInt('COWVOL_QEMU_DIFF_SEEDS', 2) }, (_, i) => i + 1);
const OPS = envInt('COWVOL_QEMU_DIFF_OPS', 24);

const haveQemu = ['qemu-img', 'qemu-io'].every((c) => spawnSync(c, ['--version'], { stdio: 'ignore' }).error === undefined);
if (process.env.CI && !haveQemu) throw new Error('CI=true but qemu-img/qemu-io are not installed (apt-get install qemu-utils)');
const skipReason = haveQemu ? '' : ' [SKIPPED: qemu-img/qemu-io (qemu-utils) not found on PATH]';

interface Snap {
  name: string;
  /** Writes issued before it was taken. */
  at: number;
}

describe('differential: cowvol snapshot diff vs byte comparison of qcow2 snapshot exports', () => {
  it.skipIf(!haveQemu).concurrent.for(SEEDS)(
    `seed %i: diff extents cover every differing byte and lie inside the written extents${skipReason}`,
    { timeout: 600_000 },
    async (seed, { expect: exp }) => {
      const replay = `COWVOL_QEMU_DIFF_SEEDS=${seed} COWVOL_QEMU_DIFF_OPS=${OPS} npx vitest run test/qemu-snapshot-diff.test.ts -t "seed ${seed}:"`;
      console.log(`[qemu-snapshot-diff] seed=${seed} ops=${OPS}; replay: ${replay}`);
      const rnd = prng(seed * 7919);
      const int = (lo: number, hi: number): number => lo + Math.floor(rnd() * (hi - lo + 1));
      const { dir, cleanup } = await tempDir(`cowvol-qdiff-${seed}-`);
      try {
        const peer = join(dir, 'peer.qcow2');
        const vol = join(dir, 'vol.img');
        const chunk = join(dir, 'chunk.bin');
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', peer, String(SIZE)]);
        const v = await Volume.create(vol, { sizeBytes: SIZE, blockSizeBytes: BS });
        const live = Buffer.alloc(SIZE);
        const writes: Array<{ offset: number; length: number }> = [];
        const snaps: Snap[] = [];
        let next = 1;
        for (let op = 0; op < OPS; op++) {
          const r = rnd();
          if (r < 0.22 || op === 0) {
            const name = `s${next++}`;
            await runOk('qemu-img', ['snapshot', '-c', name, peer]);
            await v.createSnapshot(name);
            snaps.push({ name, at: writes.length });
          } else if (r < 0.3 && snaps.length > 2) {
            const [s] = snaps.splice(int(0, snaps.length - 1), 1);
            await runOk('qemu-img', ['snapshot', '-d', s!.name, peer]);
            await v.deleteSnapshot(s!.name);
          } else {
            const length = rnd() < 0.3 ? int(1, 600) : int(600, 200 * 1024);
            const offset = int(0, SIZE - length);
            const k = rnd();
            const data = k < 0.15 ? Buffer.alloc(length) : k < 0.3 ? Buffer.from(live.subarray(offset, offset + length)) : Buffer.from(Array.from({ length }, () => Math.floor(rnd() * 256)));
            await writeFile(chunk, data);
            const q = await run('qemu-io', ['-f', 'qcow2', peer, '-c', `write -s ${chunk} ${offset} ${length}`]);
            exp(q.code, `qemu-io write: ${q.stderr}`).toBe(0);
            await v.write(offset, data);
            data.copy(live, offset);
            writes.push({ offset, length });
          }
        }
        await v.close();

        const exports = new Map<string, Buffer>();
        for (const s of snaps) {
          const out = join(dir, `${s.name}.raw`);
          await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', '-l', `snapshot.name=${s.name}`, peer, out]);
          exports.set(s.name, await readFile(out));
        }
        const liveOut = join(dir, 'live.raw');
        await runOk('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', peer, liveOut]);
        exports.set('', await readFile(liveOut));
        exp(exports.get('')!.equals(live), 'qcow2 live equals the model').toBe(true);

        let pairs = 0;
        let differingPairs = 0;
        for (let i = 0; i < snaps.length; i++) {
          for (let j = i + 1; j <= snaps.length; j++) {
            const a = snaps[i]!;
            const b = snaps[j];
            const label = `seed ${seed}: diff ${a.name} ${b?.name ?? 'live'} (replay: ${replay})`;
            const r = await cowvol(['snapshot', 'diff', vol, a.name, ...(b ? [b.name] : []), '--json']);
            exp(r.code, `${label}: ${r.stderr}`).toBe(0);
            const d = JSON.parse(r.stdout.toString()) as { extents: Array<{ offset: number; length: number }>; bytes: number };
            const inDiff = (pos: number): boolean => d.extents.some((e) => pos >= e.offset && pos < e.offset + e.length);
            // 1. cover: byte comparison of the two qcow2 exports.
            const x = exports.get(a.name)!;
            const y = exports.get(b?.name ?? '')!;
            let differing = 0;
            for (let blk = 0; blk < SIZE; blk += BS) {
              if (x.subarray(blk, blk + BS).equals(y.subarray(blk, blk + BS))) continue;
              for (let p = blk; p < blk + BS; p++) {
                if (x[p] === y[p]) continue;
                differing += 1;
                if (!inDiff(p)) exp.fail(`${label}: byte ${p} differs between the qcow2 exports but is in no cowvol extent`);
              }
            }
            const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir, `${a.name}.raw`), b ? join(dir, `${b.name}.raw`) : liveOut]);
            exp([0, 1], `qemu-img compare: ${cmp.stderr}`).toContain(cmp.code);
            if (cmp.code === 1) exp(d.bytes, `${label}: qemu-img compare sees a difference`).toBeGreaterThan(0);
            exp(cmp.code === 1, `${label}: qemu-img compare agrees with the byte comparison`).toBe(differing > 0);
            // 2. nothing outside the (block-aligned) written extents.
            const between = writes.slice(a.at, b?.at ?? writes.length);
            for (const e of d.extents) {
              for (let blk = e.offset; blk < e.offset + e.length; blk += BS) {
                const written = between.some((w) => w.offset < blk + BS && w.offset + w.length > blk);
                if (!written) exp.fail(`${label}: extent block at ${blk} was not written between the two points`);
              }
            }
            pairs += 1;
            if (differing > 0) differingPairs += 1;
          }
        }
        console.log(`[qemu-snapshot-diff] seed=${seed}: ${snaps.length} snapshots, ${writes.length} writes, ${pairs} pairs compared (${differingPairs} with differing bytes)`);
        expect(pairs).toBeGreaterThan(0);
      } finally {
        await cleanup();
      }
    },
  );
});
