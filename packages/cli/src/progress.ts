import { Flags } from '@oclif/core';
import cliProgress from 'cli-progress';
import { human } from './format.js';

/**
 * `--progress` / `--no-progress` on every long operation. Default: a
 * progress bar with rate and ETA on stderr when stderr is a TTY, nothing
 * otherwise. `--progress`: JSON-lines progress events on stderr (for
 * scripts; also on a TTY). `--no-progress`: nothing. stdout is never used.
 */
export const progressFlag = {
  progress: Flags.boolean({
    description: 'progress on stderr: --progress prints JSON-lines events; default: a bar when stderr is a terminal; --no-progress: nothing',
    allowNo: true,
  }),
};

export type ProgressUnit = 'bytes' | 'blocks';

/**
 * One JSON-lines progress event (README "JSON shapes"). Counts are named by
 * their unit: `doneBytes`/`totalBytes`/`rateBytesPerSecond` for byte
 * operations, `doneBlocks`/`totalBlocks`/`rateBlocksPerSecond` for delete and
 * check.
 */
export type ProgressEvent = {
  type: 'progress' | 'done';
  operation: string;
  phase?: string;
  /** Seconds left at the current rate, or null before there is a rate. */
  etaSeconds: number | null;
  elapsedSeconds: number;
} & Record<string, unknown>;

/**
 * Further byte counts an operation reports beside `done` (e.g. `backup
 * push`: `uploadedBytes`, `deduplicatedBytes`); names end in their unit.
 */
export type ProgressCounts = Readonly<Record<string, number>>;

export interface Progress {
  /** Reports `done` of `total` (of the current phase), with `counts` carried into the event or the bar. */
  update(done: number, total: number, phase?: string, counts?: ProgressCounts): void;
  /** Ends the display (the final event in JSON-lines mode). */
  stop(): void;
}

const NONE: Progress = { update: () => undefined, stop: () => undefined };

/** Minimum time between two JSON-lines events (the first and last always go out). */
const EVENT_INTERVAL_MS = 250;

/**
 * The progress display of one operation (README "JSON shapes" for the
 * events). `flag` is `--progress` (true: JSON lines), `--no-progress`
 * (false: nothing) or absent (a bar when stderr is a TTY, else nothing);
 * counts are in `unit`. Writes to stderr only; throws nothing.
 */
export function createProgress(flag: boolean | undefined, operation: string, unit: ProgressUnit = 'bytes'): Progress {
  const mode = flag === true ? 'json' : flag === false ? 'off' : process.stderr.isTTY ? 'bar' : 'off';
  if (mode === 'json') return jsonLinesProgress(operation, unit);
  if (mode === 'bar') return barProgress(operation, unit);
  return NONE;
}

/**
 * `--progress`: one JSON-lines event per update at most every
 * EVENT_INTERVAL_MS (and always at the end of a phase), a `done` event at
 * stop. A new phase closes the previous one with its last figures and
 * restarts the clock.
 */
function jsonLinesProgress(operation: string, unit: ProgressUnit): Progress {
  let phase: string | undefined;
  let started = Date.now();
  let last = { done: 0, total: 0 };
  let lastCounts: ProgressCounts = {};
  let lastEmit = 0;
  const emit = (type: ProgressEvent['type']): void => {
    const elapsed = (Date.now() - started) / 1000;
    const rate = elapsed > 0 ? last.done / elapsed : 0;
    const u = unit === 'bytes' ? 'Bytes' : 'Blocks';
    const event: ProgressEvent = {
      type,
      operation,
      ...(phase ? { phase } : {}),
      ...lastCounts,
      [`done${u}`]: last.done,
      [`total${u}`]: last.total,
      [`rate${u}PerSecond`]: Math.round(rate),
      etaSeconds: rate > 0 ? Math.max(0, (last.total - last.done) / rate) : null,
      elapsedSeconds: elapsed,
    };
    process.stderr.write(`${JSON.stringify(event)}\n`);
    lastEmit = Date.now();
  };
  let any = false;
  return {
    update(done, total, p, counts) {
      if (p !== phase) {
        if (any) emit('progress'); // close the previous phase with its last figures
        phase = p;
        started = Date.now();
        lastEmit = 0;
      }
      last = { done, total };
      lastCounts = counts ?? {};
      any = true;
      if (Date.now() - lastEmit >= EVENT_INTERVAL_MS || done >= total) emit('progress');
    },
    stop() {
      if (any) emit('done');
    },
  };
}

/** What the bar's format function reads besides cli-progress's own figures. */
interface BarPayload {
  label: string;
  doneH: string;
  totalH: string;
  rateH: string;
  /** `counts` in words (`, uploaded 12 MiB, deduplicated 4 MiB`), or empty. */
  countsH: string;
}

/** A cli-progress bar on stderr: `label [=====     ] 42% done/total rate/s ETA 12s`. */
function newBar(): cliProgress.SingleBar {
  return new cliProgress.SingleBar(
    {
      stream: process.stderr,
      format: (options, params, payload: BarPayload) => {
        const width = options.barsize ?? 30;
        const filled = Math.round(params.progress * width);
        const eta = Number.isFinite(params.eta) && params.value > 0 ? `${params.eta}s` : '?';
        return `${payload.label} [${'='.repeat(filled)}${' '.repeat(width - filled)}] ${Math.floor(params.progress * 100)}% ${payload.doneH}/${payload.totalH} ${payload.rateH}/s ETA ${eta}${payload.countsH}`;
      },
      barsize: 30,
      hideCursor: true,
      clearOnComplete: false,
    },
    cliProgress.Presets.legacy,
  );
}

/** The default on a TTY: a bar with rate and ETA; a new phase starts a new bar and restarts the clock. */
function barProgress(operation: string, unit: ProgressUnit): Progress {
  const bar = newBar();
  const fmt = (n: number): string => (unit === 'bytes' ? human(n) : `${n} blocks`);
  // `uploadedBytes: 5` → `, uploaded 5 B`: the name without its unit, the value in the bar's unit words.
  const countsH = (counts: ProgressCounts | undefined): string =>
    Object.entries(counts ?? {})
      .map(([name, n]) => `, ${name.replace(/Bytes$/, '')} ${name.endsWith('Bytes') ? human(n) : String(n)}`)
      .join('');
  let phase: string | undefined;
  let started = Date.now();
  let running = false;
  return {
    update(done, total, p, counts) {
      const elapsed = (Date.now() - started) / 1000;
      if (!running || p !== phase) {
        if (running) bar.stop();
        phase = p;
        started = Date.now();
        bar.start(Math.max(total, 1), done, { label: phase ? `${operation} (${phase})` : operation, doneH: fmt(done), totalH: fmt(total), rateH: fmt(0), countsH: countsH(counts) });
        running = true;
        return;
      }
      bar.setTotal(Math.max(total, 1));
      bar.update(done, { doneH: fmt(done), totalH: fmt(total), rateH: fmt(elapsed > 0 ? Math.round(done / elapsed) : 0), countsH: countsH(counts) });
    },
    stop() {
      if (running) bar.stop();
      running = false;
    },
  };
}
