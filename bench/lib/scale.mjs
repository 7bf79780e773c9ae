// Sizes of every scenario: the specification's in full mode, scaled down in --quick.
import { GiB, MiB, TiB, fmtBytes } from './common.mjs';

export const BLOCK_BYTES = 4096;

export function scaleFor(quick) {
  const s = quick
    ? {
        name: 'quick',
        reps: 3,
        volBytes: 16 * MiB,
        bigVolBytes: 1 * TiB, // sparse: costs nothing to create, kept at full size
        manySnapshots: 50,
        createSamples: 15,
        deleteBlocks: 3_000,
        readNewerMany: 10,
        openSnapshots: 50,
        openMapped: 20_000,
        journalBytes: 1 * MiB,
        cliSnapshots: 5,
        cliSamples: 2,
        cliWriteBytes: 16 * MiB,
      }
    : {
        name: 'full',
        reps: 3,
        volBytes: 1 * GiB,
        bigVolBytes: 1 * TiB,
        manySnapshots: 1_000,
        createSamples: 30,
        deleteBlocks: 100_000,
        readNewerMany: 100,
        openSnapshots: 1_000,
        openMapped: 1_000_000,
        journalBytes: 64 * MiB,
        cliSnapshots: 10,
        cliSamples: 5,
        cliWriteBytes: 256 * MiB,
      };
  return {
    ...s,
    quick,
    blockBytes: BLOCK_BYTES,
    seqIoBytes: 1 * MiB,
    depth: 16,
    stripeBytes: 64 * 1024,
    /** Fraction of the volume's blocks each newer snapshot COWs in scenario 5. */
    readNewerFraction: 0.01,
    readIoBytes: 1 * MiB,
  };
}

export function describeScale(s) {
  return [
    `scale ${s.name}: volume ${fmtBytes(s.volBytes)} (block ${fmtBytes(s.blockBytes)}), sparse volume ${fmtBytes(s.bigVolBytes)}, reps ${s.reps}`,
    `  random 4K: every block once (${(s.volBytes / s.blockBytes).toLocaleString('en-US')} writes), ${s.depth} in flight; seq: ${fmtBytes(s.seqIoBytes)} writes, 1 in flight; stride ${fmtBytes(s.stripeBytes)}`,
    `  snapshots: ${s.manySnapshots} existing (scenario 6), delete of ${s.deleteBlocks.toLocaleString('en-US')} blocks, snapshot read with 1 and ${s.readNewerMany} newer (each COWed ${s.readNewerFraction * 100}%)`,
    `  open: ${s.openSnapshots} snapshots with ${s.openMapped.toLocaleString('en-US')} mapped blocks; recovery from ${fmtBytes(s.journalBytes)} of un-checkpointed journal; CLI: ${s.cliSnapshots} snapshots, ${s.cliSamples} calls per run, write of ${fmtBytes(s.cliWriteBytes)}`,
  ].join('\n');
}
