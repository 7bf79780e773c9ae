import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createProgress } from '../src/progress.js';

/**
 * `--progress` displays (README "JSON shapes"): JSON lines with
 * `--progress`, a bar on a terminal, nothing otherwise. The clock is
 * vitest's fake one, so rates and throttling are exact; stderr is captured.
 */
let written: string[];
let ttyBefore: boolean | undefined;

beforeEach(() => {
  vi.useFakeTimers({ now: 1_000_000 });
  written = [];
  ttyBefore = process.stderr.isTTY;
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    written.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    return true;
  });
});
afterEach(() => {
  vi.restoreAllMocks();
  vi.useRealTimers();
  // Typed boolean, but undefined when stderr is not a terminal: put back whatever was there.
  process.stderr.isTTY = ttyBefore!;
});

function events(): Array<Record<string, unknown>> {
  return written
    .join('')
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe('createProgress', () => {
  it('--progress: events at most every 250 ms, always at the end of a phase, a phase change closes the previous one, done at stop', () => {
    const p = createProgress(true, 'check', 'blocks');
    p.update(0, 100, 'maps'); // first event
    vi.advanceTimersByTime(100);
    p.update(40, 100, 'maps'); // throttled
    vi.advanceTimersByTime(200);
    p.update(60, 100, 'maps'); // 300 ms after the first: out
    vi.advanceTimersByTime(100);
    p.update(70, 100, 'maps'); // throttled, but closes the phase below
    vi.advanceTimersByTime(1000);
    p.update(5, 10, 'data'); // closes `maps` with 70/100; the new phase's first update goes out at once
    vi.advanceTimersByTime(500);
    p.update(10, 10, 'data'); // done >= total: out
    p.stop();
    expect(events().map((e) => [e.type, e.phase, e.doneBlocks, e.totalBlocks])).toEqual([
      ['progress', 'maps', 0, 100],
      ['progress', 'maps', 60, 100],
      ['progress', 'maps', 70, 100],
      ['progress', 'data', 5, 10],
      ['progress', 'data', 10, 10],
      ['done', 'data', 10, 10],
    ]);
    const last = events().at(-1);
    expect(last).toMatchObject({ operation: 'check', elapsedSeconds: 0.5, rateBlocksPerSecond: 20, etaSeconds: 0 });
  });

  it('byte operations name their counts in bytes; before any rate the ETA is null', () => {
    const p = createProgress(true, 'export');
    p.update(0, 4096);
    p.stop();
    expect(events()[0]).toEqual({ type: 'progress', operation: 'export', doneBytes: 0, totalBytes: 4096, rateBytesPerSecond: 0, etaSeconds: null, elapsedSeconds: 0 });
    expect(events()).toHaveLength(2);
  });

  it('counts beside done (backup push): carried into each event and shown in words on the bar', () => {
    const p = createProgress(true, 'backup push');
    p.update(0, 8192, 'read', { uploadedBytes: 0, deduplicatedBytes: 0 });
    p.update(8192, 8192, 'read', { uploadedBytes: 4096, deduplicatedBytes: 4096 });
    p.stop();
    expect(events().map((e) => [e.type, e.doneBytes, e.uploadedBytes, e.deduplicatedBytes])).toEqual([
      ['progress', 0, 0, 0],
      ['progress', 8192, 4096, 4096],
      ['done', 8192, 4096, 4096],
    ]);
    written = [];
    process.stderr.isTTY = true;
    const bar = createProgress(undefined, 'backup push');
    bar.update(0, 8192, 'read', { uploadedBytes: 0, deduplicatedBytes: 0 });
    vi.advanceTimersByTime(1000);
    bar.update(8192, 8192, 'read', { uploadedBytes: 4096, deduplicatedBytes: 4096 });
    bar.stop();
    expect(written.join('')).toMatch(/backup push \(read\) \[=+\] 100% 8(\.0)? KiB\/8(\.0)? KiB .*ETA \S+, uploaded 4(\.0)? KiB, deduplicated 4(\.0)? KiB/);
  });

  it('--no-progress, and no flag on a non-terminal stderr: nothing at all', () => {
    process.stderr.isTTY = false;
    for (const flag of [false, undefined]) {
      const p = createProgress(flag, 'write');
      p.update(1, 2);
      p.update(2, 2);
      p.stop();
    }
    expect(written).toEqual([]);
  });

  it('no flag on a terminal: a bar with label, percentage, sizes, rate and ETA; a new phase starts a new bar', () => {
    process.stderr.isTTY = true;
    const p = createProgress(undefined, 'check', 'blocks');
    p.update(0, 8, 'maps');
    vi.advanceTimersByTime(2000);
    p.update(8, 8, 'maps');
    p.update(1, 4, 'data');
    vi.advanceTimersByTime(1000);
    p.update(4, 4, 'data');
    p.stop();
    const text = written.join('');
    expect(text).toContain('check (maps) [==============================] 100% 8 blocks/8 blocks 4 blocks/s ETA');
    expect(text).toContain('check (data) [==============================] 100% 4 blocks/4 blocks 4 blocks/s ETA');
  });
});
