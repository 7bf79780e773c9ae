import { spawn } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MAX_VOLUME_BYTES, Volume, exportSnapshot, fileDataRanges, importStream, verifyStream, type ByteRange, type ExportResult, type HoleDetection } from '../src/index.js';
import { CountingOpener, envInt, memorySource, prng, randomBuffer } from './backup-helpers.js';

/**
 * A full export costs what the data costs, not the volume size
 * (docs/ARCHITECTURE.md §15.5): it reads the blocks the snapshot's chain
 * maps and the live file's data regions (SEEK_DATA), and its memory stays
 * bounded whatever the volume size. Work is measured (bytes and read calls
 * at the device seam), never time. Seeded; knob COWVOL_EXPORT_SEEDS
 * (default 3) for the differential against a whole-volume read.
 */
const GiB = 1024 ** 3;
const TiB = 1024 * GiB;
const SEEDS = envInt('COWVOL_EXPORT_SEEDS', 3);

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cowvol-export-scale-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function exportAll(v: Volume, name: string, options: { detectHoles?: boolean } = {}): Promise<{ stream: Buffer; result: ExportResult }> {
  const parts: Buffer[] = [];
  const result = await exportSnapshot(v, name, async (b) => void parts.push(Buffer.from(b)), options);
  return { stream: Buffer.concat(parts), result };
}

describe('full export of a sparse volume', () => {
  it('1 TiB holding 4 KiB of live data and one COW copy reads a few blocks, not the volume', async () => {
    const path = join(dir, 'big.img');
    const opener = new CountingOpener();
    const v = await Volume.create(path, { sizeBytes: TiB, opener });
    try {
      const live = randomBuffer(prng(1), 4096);
      const old = randomBuffer(prng(2), 4096);
      await v.write(700 * GiB, live);
      await v.write(3 * GiB, old);
      await v.createSnapshot('s1');
      await v.write(3 * GiB, Buffer.alloc(4096, 7)); // s1 keeps `old` as a store copy
      await v.write(900 * GiB, Buffer.alloc(4096, 9)); // s1 keeps zeros here (a COW of a hole)
      const readsBefore = opener.reads.get('big.img') ?? 0;
      const { stream, result } = await exportAll(v, 's1');
      const liveReads = (opener.reads.get('big.img') ?? 0) - readsBefore;
      expect(result.holeDetection, 'SEEK_DATA through perl must work on Linux (perl-base)').toBe('seek-data');
      expect(result).toMatchObject({ kind: 'full', extentCount: 2, dataBytes: 8192, totalBytes: 8192 });
      // Three 4 KiB blocks can hold data (two in the file, one mapped at 900 GiB); the file system may report a little more.
      expect(result.readBytes).toBeLessThanOrEqual(16 * 64 * 1024);
      expect(liveReads).toBeLessThanOrEqual(16);
      const verified = await verifyStream(memorySource(stream));
      expect(verified.dataBytes).toBe(8192);
      // Applied to a new volume, the stream gives back both blocks; --verify checks the gaps where data can be, not 1 TiB.
      const copy = join(dir, 'copy.img');
      const copyOpener = new CountingOpener();
      expect(await importStream(copy, memorySource(stream), { verify: true, opener: copyOpener })).toMatchObject({ verified: true, appliedExtents: 2 });
      expect(copyOpener.reads.get('copy.img') ?? 0).toBeLessThanOrEqual(16);
      const c = await Volume.open(copy);
      try {
        expect((await c.readSnapshot('s1', 700 * GiB, 4096)).equals(live)).toBe(true);
        expect((await c.readSnapshot('s1', 3 * GiB, 4096)).equals(old)).toBe(true);
        expect((await c.readSnapshot('s1', 900 * GiB, 4096)).equals(Buffer.alloc(4096))).toBe(true);
      } finally {
        await c.close();
      }
    } finally {
      await v.close();
    }
  });

  it('journal data mode: a block still only in the journal (a hole in the file) is exported', async () => {
    const path = join(dir, 'journal.img');
    const v = await Volume.create(path, { sizeBytes: 64 * 1024 ** 2, dataMode: 'journal' });
    try {
      const data = randomBuffer(prng(3), 8192);
      await v.write(40 * 1024 ** 2, data);
      await v.createSnapshot('s1');
      const { stream, result } = await exportAll(v, 's1');
      expect(result.dataBytes).toBe(8192);
      const copy = join(dir, 'journal-copy.img');
      await importStream(copy, memorySource(stream));
      const c = await Volume.open(copy);
      try {
        expect((await c.readSnapshot('s1', 40 * 1024 ** 2, 8192)).equals(data)).toBe(true);
      } finally {
        await c.close();
      }
    } finally {
      await v.close();
    }
  });

  it('same stream as a whole-volume read, for random writes across several snapshots (both data modes)', async () => {
    for (let seed = 1; seed <= SEEDS; seed++) {
      const mode = seed % 2 === 0 ? 'journal' : 'ordered';
      const rnd = prng(seed);
      const path = join(dir, `diff-${seed}.img`);
      const v = await Volume.create(path, { sizeBytes: 32 * 1024 ** 2, blockSizeBytes: 4096, dataMode: mode });
      try {
        for (let snap = 0; snap < 3; snap++) {
          for (let i = 0; i < 12; i++) {
            const len = 1 + Math.floor(rnd() * 40_000);
            const offset = Math.floor(rnd() * (32 * 1024 ** 2 - len));
            await v.write(offset, rnd() < 0.2 ? Buffer.alloc(len) : randomBuffer(rnd, len));
          }
          await v.createSnapshot(`s${snap}`);
        }
        for (const name of ['s0', 's1', 's2']) {
          const fast = await exportAll(v, name);
          const slow = await exportAll(v, name, { detectHoles: false });
          const what = `seed ${seed} (${mode}, replay: COWVOL_EXPORT_SEEDS=${seed}) snapshot ${name}`;
          expect(fast.result.holeDetection, what).toBe('seek-data');
          expect(slow.result.readBytes, what).toBe(32 * 1024 ** 2);
          // The streams differ only in the header's createdAt: compare everything after the header.
          const f = await verifyStream(memorySource(fast.stream));
          const s = await verifyStream(memorySource(slow.stream));
          expect(fast.stream.subarray(f.firstExtentOffsetBytes, -32).equals(slow.stream.subarray(s.firstExtentOffsetBytes, -32)), what).toBe(true);
          expect([f.extentCount, f.dataBytes], what).toEqual([s.extentCount, s.dataBytes]);
        }
      } finally {
        await v.close();
      }
    }
  });

  it('fileDataRanges: a file with no allocated block has no data region', async () => {
    const path = join(dir, 'empty.img');
    const v = await Volume.create(path, { sizeBytes: 8 * 1024 ** 2 });
    await v.close();
    const report: { holeDetection: HoleDetection } = { holeDetection: 'none' };
    const regions: ByteRange[] = [];
    for await (const r of fileDataRanges(path, 8 * 1024 ** 2, { report })) regions.push(r);
    expect(regions).toEqual([]);
    expect(report.holeDetection).toBe('no-blocks');
  });

  it('fileDataRanges without its helper (no perl on PATH) counts the whole file as data: slow, never wrong', async () => {
    const path = join(dir, 'noperl.img');
    const v = await Volume.create(path, { sizeBytes: 8 * 1024 ** 2 });
    await v.write(4096, Buffer.alloc(4096, 1));
    await v.close();
    const saved = process.env.PATH;
    process.env.PATH = dir; // holds no perl
    try {
      const report: { holeDetection: HoleDetection } = { holeDetection: 'seek-data' };
      const regions: ByteRange[] = [];
      for await (const r of fileDataRanges(path, 8 * 1024 ** 2, { report })) regions.push(r);
      expect(regions).toEqual([{ offsetBytes: 0, lengthBytes: 8 * 1024 ** 2 }]);
      expect(report.holeDetection).toBe('none');
    } finally {
      process.env.PATH = saved;
    }
  });
});

/** Runs `node --max-old-space-size=<mb> -e <script>` in the repository root; resolves with its exit code and output. */
function runNode(heapMb: number, script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [`--max-old-space-size=${heapMb}`, '--input-type=module', '-e', script], { cwd: resolve(import.meta.dirname, '..'), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', fail);
    child.on('close', (code) => done({ code, stdout, stderr }));
  });
}

describe('memory of a full export', () => {
  it('exports the largest volume cowvol accepts (MAX_VOLUME_BYTES, sparse, on tmpfs) within a 128 MiB heap', async () => {
    // The largest volume needs a file system that holds a 4 PiB sparse file: tmpfs does, ext4 does not.
    await access('/dev/shm').catch(() => {
      throw new Error('this test needs /dev/shm (tmpfs) for a sparse file of MAX_VOLUME_BYTES');
    });
    const shm = await mkdtemp('/dev/shm/cowvol-export-max-');
    try {
      const script = `
        import { Volume, exportSnapshot } from './dist/index.js';
        const size = ${MAX_VOLUME_BYTES};
        const v = await Volume.create(${JSON.stringify(join(shm, 'max.img'))}, { sizeBytes: size });
        await v.write(0, Buffer.alloc(4096, 1));
        await v.write(size - 4096, Buffer.alloc(4096, 2));
        await v.createSnapshot('s');
        let streamBytes = 0;
        const r = await exportSnapshot(v, 's', async (b) => { streamBytes += b.length; });
        await v.close();
        console.log(JSON.stringify({ ...r, streamBytes, heapUsed: process.memoryUsage().heapUsed }));
      `;
      const r = await runNode(128, script);
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as ExportResult;
      expect(out, r.stdout).toMatchObject({ kind: 'full', extentCount: 2, dataBytes: 8192, holeDetection: 'seek-data' });
      expect(out.readBytes).toBeLessThanOrEqual(4 * 1024 * 1024);
    } finally {
      await rm(shm, { recursive: true, force: true });
    }
  });
});
