import { Command, Errors, type Interfaces } from '@oclif/core';
import { CowvolError, Volume } from '@cowvol/cow-core';
import { exitCodeFor } from './exit-codes.js';

/**
 * Base of every cowvol command: `--json` (oclif's enableJsonFlag: exactly
 * one JSON document on stdout), error reporting with stable codes on stderr
 * and the exit code from ./exit-codes.ts, and a helper that opens a volume
 * and always closes it.
 */
export abstract class CowvolCommand extends Command {
  static override enableJsonFlag = true;

  /** Opens `path`, runs `fn`, closes the volume even when `fn` throws. */
  protected async withVolume<T>(path: string, fn: (volume: Volume) => Promise<T>): Promise<T> {
    const volume = await Volume.open(path);
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
