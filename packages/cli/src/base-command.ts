import { setTimeout as sleep } from 'node:timers/promises';
import { Command, Errors, Flags, type Interfaces } from '@oclif/core';
import { CowvolError, InvalidArgumentError, Volume, type OpenVolumeOptions } from '@cowvol/cow-core';
import { exitCodeFor } from './exit-codes.js';

/**
 * Base of every cowvol command: `--json` (oclif's enableJsonFlag: exactly
 * one JSON document on stdout), error reporting with stable codes on stderr
 * and the exit code from ./exit-codes.ts, and a helper that opens a volume
 * and always closes it.
 */
export abstract class CowvolCommand extends Command {
  static override enableJsonFlag = true;

  static override baseFlags = {
    wait: Flags.string({
      description: 'when another process holds the volume, wait up to this many seconds for it instead of failing at once with VOLUME_BUSY',
      helpValue: '<seconds>',
    }),
  };

  /**
   * Opens `path`; with `--wait <seconds>`, retries while the volume is busy
   * (VOLUME_BUSY) until the deadline, then fails with the last VOLUME_BUSY.
   * @throws INVALID_ARGUMENT (bad --wait), VOLUME_BUSY, and what Volume.open throws
   */
  protected async openVolume(path: string, options: OpenVolumeOptions = {}): Promise<Volume> {
    const raw = (this.argvFlags().wait as string | undefined) ?? undefined;
    let waitMs = 0;
    if (raw !== undefined) {
      const seconds = Number(raw);
      if (!/^\s*\d+(\.\d+)?\s*$/.test(raw) || !Number.isFinite(seconds)) throw new InvalidArgumentError(`--wait takes a number of seconds, got ${JSON.stringify(raw)}`);
      waitMs = seconds * 1000;
    }
    const deadline = Date.now() + waitMs;
    let delay = 50;
    for (;;) {
      try {
        return await Volume.open(path, options);
      } catch (err) {
        if (!(err instanceof CowvolError) || err.code !== 'VOLUME_BUSY' || Date.now() >= deadline) throw err;
        await sleep(Math.min(delay, Math.max(1, deadline - Date.now())));
        delay = Math.min(delay * 2, 1000);
      }
    }
  }

  /** The parsed base flags (set by `parse`). */
  private parsedFlags: Record<string, unknown> = {};

  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  protected override async parse<F extends Record<string, any>, B extends Record<string, any>, A extends Record<string, any>>(
    options?: Interfaces.Input<F, B, A>,
    argv?: string[],
  ): Promise<Interfaces.ParserOutput<F, B, A>> {
    const out = await super.parse(options, argv);
    this.parsedFlags = out.flags as Record<string, unknown>;
    return out;
  }

  private argvFlags(): Record<string, unknown> {
    return this.parsedFlags;
  }

  /** Opens `path` (honouring `--wait`; `options` as for Volume.open), runs `fn`, closes the volume even when `fn` throws. */
  protected async withVolume<T>(path: string, fn: (volume: Volume) => Promise<T>, options: OpenVolumeOptions = {}): Promise<T> {
    const volume = await this.openVolume(path, options);
    try {
      return await fn(volume);
    } finally {
      await volume.close();
    }
  }

  /** Writes a line for people to stdout, unless `--json` is on. */
  protected say(line: string): void {
    if (!this.jsonEnabled()) process.stdout.write(`${line}\n`);
  }

  protected override async catch(err: Error & { code?: string; oclif?: { exit?: number } }): Promise<void> {
    let code: string;
    let exit: number;
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
    exit = this.exitCodeOf(code);
    process.stderr.write(`cowvol: error [${code}]: ${err.message}\n`);
    if (code === 'NO_SPACE') {
      process.stderr.write('cowvol: the disk is full; every snapshot is intact. Free disk space, or delete snapshots (`cowvol snapshot list` shows what deleting each frees), then retry.\n');
    }
    if (code === 'INTERNAL' && process.env.COWVOL_DEBUG) process.stderr.write(`${err.stack}\n`);
    if (this.argv.includes('--json')) {
      process.stdout.write(`${JSON.stringify({ error: { code, message: err.message, exitCode: exit, ...(details ? { details } : {}) } }, null, 2)}\n`);
    }
    process.exitCode = exit;
  }

  /** The exit code for an error code (the README table); a command with its own exit-code contract overrides it. */
  protected exitCodeOf(code: string): number {
    return exitCodeFor(code);
  }

  protected override toSuccessJson(result: unknown): unknown {
    return result;
  }
}

export type Flags<T extends typeof Command> = Interfaces.InferredFlags<T['flags']>;
