import { leanParse, type LeanArg, type LeanCommandShape, type LeanFlag, type LeanParsed } from './lean-parse.js';

/**
 * The lean stand-in for the part of `@oclif/core` the commands use
 * (docs/ARCHITECTURE.md §1, "The lean start"). The lean bundle
 * (scripts/bundle.mjs) resolves `@oclif/core` to this module, so that a
 * command line the lean start is sure of runs the same command class
 * without evaluating oclif (about half of a command's start,
 * docs/PERFORMANCE.md "CLI start"). Only what the commands use is here:
 * `Command` with oclif's run order (init, run, catch, finally, then the
 * `--json` result), `Flags.string|boolean|integer`, `Args.string`,
 * `Errors.ExitError`. Help, completion, colours and every USAGE error
 * stay oclif's: the lean start declines those command lines
 * (lean-start.ts).
 */

type FlagOptions = Omit<LeanFlag, 'type' | 'integer'> & { description?: string; helpValue?: string; summary?: string; hidden?: boolean };

/** `Flags.*`: definitions with the fields lean-parse.ts reads (and oclif's descriptive ones, unused here). */
export const Flags = {
  string: (options: FlagOptions = {}): LeanFlag => ({ ...options, type: 'option' }),
  integer: (options: FlagOptions = {}): LeanFlag => ({ ...options, type: 'option', integer: true }),
  boolean: (options: FlagOptions = {}): LeanFlag => ({ ...options, type: 'boolean' }),
};

/** `Args.string`. */
export const Args = {
  string: (options: LeanArg & { description?: string } = {}): LeanArg => ({ ...options }),
};

/** oclif's `Errors.ExitError`: thrown by `Command.exit` (no lean command calls it; `instanceof` checks need the class). */
class ExitError extends Error {
  readonly oclif: { exit: number };
  constructor(exitCode: number) {
    super(`EEXIT: ${String(exitCode)}`);
    this.oclif = { exit: exitCode };
  }
}

export const Errors = { ExitError };

/** The few fields of oclif's Config a command may read. */
export interface LeanConfig {
  bin: string;
  scopedEnvVar(name: string): string | undefined;
}

/**
 * A command line the lean parser declined inside `Command.parse` (a
 * command parsing with another class's definitions than the one the lean
 * start checked): a defect of the lean start, reported as INTERNAL.
 */
export class LeanParseDeclinedError extends Error {
  constructor(id: string | undefined) {
    super(`the lean start could not parse the arguments of ${id ?? 'a command'}; run it with COWVOL_LEAN_START=0`);
    this.name = 'LeanParseDeclinedError';
  }
}

/** The static side of a command class as the lean start sees it. */
export type LeanCommandClass = LeanCommandShape & {
  id?: string;
  new (argv: string[], config: LeanConfig): Command;
};

/** oclif's `Command`, lean: the same run order and `--json` handling. */
export abstract class Command {
  static id: string | undefined;
  static enableJsonFlag = false;
  static strict = true;
  static args: Record<string, LeanArg> = {};
  static flags: Record<string, LeanFlag> | undefined;
  static baseFlags: Record<string, LeanFlag> | undefined;
  static summary: string | undefined;
  static description: string | undefined;
  static examples: string[] | undefined;

  readonly id: string | undefined;

  constructor(
    public argv: string[],
    readonly config: LeanConfig,
  ) {
    this.id = this.ctor.id;
  }

  get ctor(): LeanCommandClass {
    return this.constructor as unknown as LeanCommandClass;
  }

  abstract run(): Promise<unknown>;

  /** oclif's `_run`: init, run, catch on a failure, finally, then the result as JSON under `--json`. */
  async _run(): Promise<unknown> {
    let err: unknown;
    let result: unknown;
    try {
      await this.init();
      result = await this.run();
    } catch (error) {
      err = error;
      await this.catch(error as Error);
    } finally {
      await this.finally(err);
    }
    if (result && this.jsonEnabled()) this.logJson(this.toSuccessJson(result));
    return result;
  }

  /** Nothing of oclif's own init is needed (CowvolCommand's installs its handlers). */
  init(): Promise<void> {
    return Promise.resolve();
  }

  async catch(err: Error): Promise<void> {
    throw err;
  }

  /** Called with the error `run` threw, if any (oclif's signature; nothing to do here). */
  // eslint-disable-next-line @typescript-eslint/no-unused-vars -- oclif's signature; CowvolCommand may read it
  finally(_err?: unknown): Promise<void> {
    return Promise.resolve();
  }

  /** oclif's rule: `--json` before any `--`, or COWVOL_CONTENT_TYPE=json. */
  jsonEnabled(): boolean {
    if (!this.ctor.enableJsonFlag) return false;
    if (this.config.scopedEnvVar('CONTENT_TYPE')?.toLowerCase() === 'json') return true;
    const end = this.argv.indexOf('--');
    const json = this.argv.indexOf('--json');
    return json !== -1 && (end === -1 || json < end);
  }

  /** Plain JSON: the lean start never runs `--json` on a terminal (oclif colours it there). */
  logJson(json: unknown): void {
    process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
  }

  toSuccessJson(result: unknown): unknown {
    return result;
  }

  /** @throws LeanParseDeclinedError when the lean parser declines (see the class) */
  async parse(options?: LeanCommandShape, argv: string[] = this.argv): Promise<LeanParsed> {
    const parsed = leanParse(argv, options ?? this.ctor);
    if (parsed === undefined) throw new LeanParseDeclinedError(this.id);
    this.argv = [...argv];
    return parsed;
  }
}
