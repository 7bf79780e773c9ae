import { rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, Errors, Flags, type Interfaces } from '@oclif/core';
import { CowvolError, hasCode, type ErrorCode } from '@cowvol/base';
import { InvalidArgumentError, Volume, escapeTerminalText, setTemporaryPathTracker } from '@cowvol/cow-core';
import { exitCodeFor } from './exit-codes.js';
import { assertStdoutNotVolume, watchStdout } from './io.js';
import { isErrnoError, osError } from './os-errors.js';
import { askServer, isServerRefusal, servedPid, VolumeServedError } from './served.js';
import { installSignalHandlers, interrupting, noteCommitting, onInterrupt } from './signals.js';

/** How a command opens its volume (see {@link CowvolCommand.withVolume}). */
export interface OpenMode {
  /** The command only reads: open with `Volume.openForReading` (writes nothing; works on a full disk and a read-only mount). */
  readOnly?: boolean;
  /** Release the space reserve first (a delete on a full disk). */
  releaseReserve?: boolean;
  /** A volume file changed outside cowvol: `refuse` (default) or `hold` (accept-changes; see Volume.open). */
  outsideChanges?: 'refuse' | 'hold';
  /** Bound of the write-back stage (`Volume.open`'s `writeBackBytes`; 0: write-through); default the engine's. */
  writeBackBytes?: number;
  /** A volume served by `cowvol serve` fails at once with VolumeServedError (withServedVolume routes the command), not after `--wait`. */
  routeServed?: boolean;
  /** The command changes the volume: from the call of `fn` (or the request to the server) on, its change may be made (signals.ts `noteCommitting`). */
  changes?: boolean;
  /** `lazy`: the catalog is not read at open when the volume's catalog index allows it (`Volume.open`'s `catalog`; `snapshot create`). */
  catalog?: 'eager' | 'lazy';
  /** Verify the metadata files' checksums before LevelDB reads them (`Volume.open`'s `verifyMetadata`; `check`). */
  verifyMetadata?: boolean;
}

/**
 * Base of every cowvol command: `--json` (oclif's enableJsonFlag: exactly
 * one JSON document on stdout), error reporting with stable codes on stderr
 * and the exit code from ./exit-codes.ts, and a helper that opens a volume
 * and always closes it, then prints the volume's warnings (`cowvol:
 * warning: …` on stderr, and `warnings` in the JSON result).
 */
export abstract class CowvolCommand extends Command {
  static override enableJsonFlag = true;

  static override baseFlags = {
    wait: Flags.string({
      description: 'when another process holds the volume, wait up to this many seconds for it instead of failing at once with VOLUME_BUSY',
      helpValue: '<seconds>',
    }),
  };

  /** `--wait` in milliseconds (0 without it). @throws INVALID_ARGUMENT for a value that is not a number of seconds */
  protected waitMs(): number {
    const raw = (this.argvFlags().wait as string | undefined) ?? undefined;
    if (raw === undefined) return 0;
    const seconds = Number(raw);
    if (!/^\s*\d+(\.\d+)?\s*$/.test(raw) || !Number.isFinite(seconds)) throw new InvalidArgumentError(`--wait takes a number of seconds, got ${JSON.stringify(raw)}`);
    return seconds * 1000;
  }

  /**
   * Opens `path`; with `--wait <seconds>`, retries while the volume is busy
   * (VOLUME_BUSY) until the deadline, then fails with the last VOLUME_BUSY
   * (naming the server and the commands that work, when `cowvol serve`
   * holds it: VolumeServedError).
   * @throws INVALID_ARGUMENT (bad --wait), VOLUME_BUSY, and what Volume.open throws
   */
  protected async openVolume(path: string, mode: OpenMode = {}): Promise<Volume> {
    await assertStdoutNotVolume(path); // every command's report goes to stdout: never into the volume or its sidecar
    const deadline = Date.now() + this.waitMs();
    let delay = 50;
    for (;;) {
      try {
        return await (mode.readOnly
          ? Volume.openForReading(path, { ...(mode.outsideChanges ? { outsideChanges: mode.outsideChanges } : {}), ...(mode.verifyMetadata ? { verifyMetadata: true } : {}) })
          : Volume.open(path, {
              ...(mode.verifyMetadata ? { verifyMetadata: true } : {}),
              ...(mode.releaseReserve ? { releaseReserve: true } : {}),
              ...(mode.outsideChanges ? { outsideChanges: mode.outsideChanges } : {}),
              ...(mode.writeBackBytes !== undefined ? { writeBackBytes: mode.writeBackBytes } : {}),
              ...(mode.catalog ? { catalog: mode.catalog } : {}),
            }));
      } catch (err) {
        if (!hasCode(err, 'VOLUME_BUSY')) throw err;
        // A server that refuses even to say who it is (every control connection taken) is asked again while --wait lasts.
        const served = mode.routeServed || Date.now() >= deadline ? await this.servedPidOrRefused(path, deadline) : undefined;
        if (typeof served === 'number') throw new VolumeServedError(path, served, { cause: err });
        if (Date.now() >= deadline) throw err;
        await sleep(Math.min(delay, Math.max(1, deadline - Date.now())));
        delay = Math.min(delay * 2, 1000);
      }
    }
  }

  /** The pid of the server of `path` (servedPid), or 'refused' when it refused to answer with a reason and `deadline` is still ahead. */
  private async servedPidOrRefused(path: string, deadline: number): Promise<number | 'refused' | undefined> {
    try {
      return await servedPid(path);
    } catch (err) {
      if (isServerRefusal(err) && Date.now() < deadline) return 'refused';
      throw err;
    }
  }

  /**
   * A command that stops cleanly on SIGINT/SIGTERM itself (`serve`: finish
   * the requests in flight, close the volume, exit 0) sets this, so the
   * interrupt handlers below are not installed for it.
   */
  protected readonly handlesOwnSignals: boolean = false;

  /** Installs the process-wide handling of stdout errors and of SIGINT/SIGTERM/SIGHUP (README "Interrupting a command"). */
  override async init(): Promise<void> {
    watchStdout();
    if (!this.handlesOwnSignals) {
      installSignalHandlers();
      // The library's temporary paths (a read-only open's metadata copy) go with the command's own on a signal.
      setTemporaryPathTracker((path) => onInterrupt(() => rmSync(path, { recursive: true, force: true })));
    }
    await super.init();
  }

  /** The parsed base flags (set by `parse`). */
  private parsedFlags: Record<string, unknown> = {};

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  protected override async parse<F extends Record<string, any>, B extends Record<string, any>, A extends Record<string, any>>(
    options?: Interfaces.Input<F, B, A>,
    argv?: string[],
  ): Promise<Interfaces.ParserOutput<F, B, A>> {
    const out = await super.parse(options, argv);
    this.parsedFlags = out.flags;
    return out;
  }

  private argvFlags(): Record<string, unknown> {
    return this.parsedFlags;
  }

  /** Warnings of the volumes this command used (printed after close; `warnings` in JSON). */
  private readonly warnings: string[] = [];

  /** Reports `message` as a warning: `cowvol: warning: …` on stderr now, and in `warnings` of the JSON result. */
  protected warnUser(message: string): void {
    this.warnings.push(message);
    process.stderr.write(`cowvol: warning: ${message}\n`);
  }

  /** Opens `path` (honouring `--wait`, in `mode`), runs `fn`, closes the volume even when `fn` throws, then reports its warnings. */
  protected async withVolume<T>(path: string, fn: (volume: Volume) => Promise<T>, mode: OpenMode = {}): Promise<T> {
    const volume = await this.openVolume(path, mode);
    try {
      if (mode.changes === true) noteCommitting(); // the commit inside fn is durable before fn returns
      return await fn(volume);
    } finally {
      try {
        await volume.close();
      } finally {
        for (const w of volume.warnings) {
          this.warnings.push(w);
          process.stderr.write(`cowvol: warning: ${w}\n`);
        }
      }
    }
  }

  /**
   * Runs `offline` on the opened volume as withVolume does, or, when the
   * volume is served by `cowvol serve`, sends `method` with `params` over
   * its control channel and resolves with the server's result, which is
   * what `offline` resolves with, as JSON (docs/ARCHITECTURE.md §14.8).
   * The one place a command is routed to a server: a command works while
   * served once it calls this and the server has the method. A server
   * that is stopping (VOLUME_BUSY) or gone (NOT_SERVED) ran nothing: the
   * volume is then opened as offline, `--wait` included.
   * @throws what withVolume throws; the server's error (the same code as offline)
   */
  protected async withServedVolume<T>(path: string, method: string, params: Record<string, unknown>, offline: (volume: Volume) => Promise<T>, mode: OpenMode = {}): Promise<T> {
    return this.withServedVolumeVia(path, async () => (await askServer(path, method, params)) as T, offline, mode);
  }

  /**
   * {@link withServedVolume} for a command that asks its server more than
   * one request (a paged `snapshot diff`): `served` runs them.
   * @throws what withVolume throws; what `served` throws
   */
  protected async withServedVolumeVia<T>(path: string, served: () => Promise<T>, offline: (volume: Volume) => Promise<T>, mode: OpenMode = {}): Promise<T> {
    try {
      return await this.withVolume(path, offline, { ...mode, routeServed: true });
    } catch (err) {
      if (!(err instanceof VolumeServedError)) throw err;
    }
    const deadline = Date.now() + this.waitMs();
    let delay = 50;
    for (;;) {
      try {
        if (mode.changes === true) noteCommitting(); // the server commits, whatever becomes of this process
        return await served();
      } catch (err) {
        // A refusal of the server's own that says why (a restore running, every control connection taken: details.served) ran
        // nothing: asked again while --wait lasts, else it is the answer.
        if (isServerRefusal(err)) {
          if (Date.now() >= deadline) throw err;
          await sleep(Math.min(delay, Math.max(1, deadline - Date.now())));
          delay = Math.min(delay * 2, 1000);
          continue;
        }
        // The server is stopping (it refused the request) or gone: nothing was done; open the volume as offline (honouring --wait).
        if (!hasCode(err, 'VOLUME_BUSY', 'NOT_SERVED')) throw err;
        return this.withVolume(path, offline, mode);
      }
    }
  }

  /** Writes a line for people to stdout, unless `--json` is on; a function is called only then (a table of 65,536 snapshots is not built for nothing). */
  protected say(line: string | (() => string)): void {
    if (!this.jsonEnabled()) process.stdout.write(`${typeof line === 'string' ? line : line()}\n`);
  }

  protected override async catch(raw: Error & { code?: string; oclif?: { exit?: number } }): Promise<void> {
    // Being stopped by a signal: what fails meanwhile is the stop, which the signal handler reports (and exits 128 + n).
    if (interrupting()) return new Promise<void>(() => undefined);
    // An OS error no path handler claimed is still the operating system's failure: IO_ERROR or NO_SPACE, not a bug.
    const err: Error & { code?: string; oclif?: { exit?: number } } = isErrnoError(raw) ? osError(raw) : raw;
    let code: ErrorCode;
    let details: Record<string, unknown> | undefined;
    if (err instanceof CowvolError) {
      code = err.code;
      details = err.details;
    } else if (err instanceof Errors.ExitError) {
      throw err;
    } else if (err.oclif?.exit !== undefined) {
      // oclif parse errors: missing or unknown arguments and flags.
      code = 'USAGE';
    } else {
      code = 'INTERNAL';
    }
    const exit = this.exitCodeOf(code);
    // Messages quote user text (names, labels, paths): control and bidirectional code points are escaped (README, "Labels").
    // A tab (oclif indents its parse errors with one) is harmless: a space, not the escape every other control character gets.
    process.stderr.write(
      `cowvol: error [${code}]: ${err.message
        .split('\n')
        .map((line) => escapeTerminalText(line.replaceAll('\t', ' ')))
        .join('\n')}\n`,
    );
    if (code === 'OUTCOME_UNKNOWN') {
      process.stderr.write(
        'cowvol: the change may or may not have been made (its commit was written, its flush failed). Run `cowvol snapshot list <volume>` or `cowvol info <volume>` to see which.\n',
      );
    }
    if (code === 'NO_SPACE' && (details?.role === 'output' || details?.role === 'input' || details?.role === 'tmpdir')) {
      const where = details.role === 'output' ? 'the output' : 'the temporary folder ($TMPDIR)';
      process.stderr.write(`cowvol: the disk holding ${where} is full; the volume and every snapshot are unchanged. Free space there, or use another folder.\n`);
    } else if (code === 'NO_SPACE' && this.id === 'backup:restore') {
      process.stderr.write(
        'cowvol: the disk the restore writes to is full (the target volume and its spool, next to it); the repository is unchanged. Free space there, then run the same restore again: it finishes what was written.\n',
      );
    } else if (code === 'NO_SPACE' && this.id?.startsWith('backup:')) {
      // The repository's disk, or $TMPDIR: deleting snapshots frees nothing there.
      process.stderr.write("cowvol: the disk is full (the repository's, or $TMPDIR's); the volume and its snapshots are unchanged. Free space there, then retry.\n");
    } else if (code === 'NO_SPACE' || (code === 'JOURNAL_ABORTED' && causedByNoSpace(err))) {
      process.stderr.write('cowvol: the disk is full; every snapshot is intact. Free disk space, or delete snapshots (`cowvol snapshot list` shows what deleting each frees), then retry.\n');
    }
    if (code === 'JOURNAL_CORRUPT' && !this.argv.includes('--repair')) {
      process.stderr.write('cowvol: the journal is damaged; `cowvol check --repair <volume>` replays the transactions that verify, discards the rest and says what it discarded.\n');
    }
    if (code === 'INTERNAL' && process.env.COWVOL_DEBUG) process.stderr.write(`${err.stack ?? err.message}\n`);
    // Only a command that has --json answers in JSON: a data command's stdout (read, snapshot read) carries data, never an error document.
    if ((this.constructor as typeof CowvolCommand).enableJsonFlag && this.argv.includes('--json')) {
      process.stdout.write(`${JSON.stringify({ error: { code, message: err.message, exitCode: exit, ...(details ? { details } : {}) } }, null, 2)}\n`);
    }
    process.exitCode = exit;
  }

  /** The exit code for an error code (the README table); a command with its own exit-code contract overrides it. */
  protected exitCodeOf(code: ErrorCode): number {
    return exitCodeFor(code);
  }

  /**
   * `--json` output. oclif's own tokenizes the text to colour it, at a cost
   * that grows faster than the output (a second for 4,096 snapshots); a
   * script reading a pipe gets the same text from one `JSON.stringify`
   * (docs/PERFORMANCE.md "Many snapshots"). A terminal still gets colours.
   */
  protected override logJson(json: unknown): void {
    if (process.stdout.isTTY) super.logJson(json);
    else process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
  }

  protected override toSuccessJson(result: unknown): unknown {
    if (this.warnings.length > 0 && typeof result === 'object' && result !== null && !Array.isArray(result)) return { ...result, warnings: [...this.warnings] };
    return result;
  }
}

/** Whether a full disk is in `err`'s cause chain (at most 8 deep): a JOURNAL_ABORTED whose first failure was NO_SPACE or ENOSPC. */
function causedByNoSpace(err: unknown): boolean {
  let cause: unknown = err instanceof Error ? err.cause : undefined;
  for (let depth = 0; depth < 8 && cause instanceof Error; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (code === 'NO_SPACE' || code === 'ENOSPC' || code === 'EDQUOT') return true;
    cause = cause.cause;
  }
  return false;
}
