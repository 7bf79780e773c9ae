import { readFileSync } from 'node:fs';
import { arch, release } from 'node:os';
import { leanParse } from './lean-parse.js';
import type { LeanCommandClass, LeanConfig } from './lean-core.js';

/**
 * The lean start (docs/ARCHITECTURE.md §1, "The lean start"): runs a
 * command without oclif when the command line is one it is sure of, and
 * otherwise says so, so that bin/run.js starts oclif instead. The lean
 * bundle's start module (scripts/bundle.mjs) calls it with a loader per
 * command id; each loader imports only that command's code, built against
 * lean-core.ts in place of `@oclif/core`.
 *
 * Declined, so left to oclif: an id that is not in the table (`help`,
 * `autocomplete`, a typo, `--help` with no command); `--version` under
 * Windows' Linux subsystem (oclif names it `wsl`); a
 * `snapshot:list`-style id; `--json` on a terminal (oclif colours it);
 * COWVOL_CONTENT_TYPE or DEBUG set (oclif's debug output); a working
 * directory that is gone (oclif warns); anything lean-parse.ts declines;
 * and every command line when COWVOL_LEAN_START=0.
 */

/** Command id (`snapshot:list`) → import of its module. */
export type CommandLoaders = Record<string, () => Promise<{ default: unknown }>>;

/** The command id that `argv` names and the tokens after it, or undefined (topics are one word deep: `snapshot list`). */
export function commandOf(argv: readonly string[], loaders: CommandLoaders): { id: string; rest: string[] } | undefined {
  const [first, second] = argv;
  if (first === undefined || first.startsWith('-') || first.includes(':')) return undefined;
  if (second !== undefined && !second.startsWith('-') && Object.hasOwn(loaders, `${first}:${second}`)) return { id: `${first}:${second}`, rest: argv.slice(2) };
  if (Object.hasOwn(loaders, first)) return { id: first, rest: argv.slice(1) };
  return undefined;
}

/** oclif warns on stderr when the working directory is gone: such a start is oclif's. */
function cwdExists(): boolean {
  try {
    process.cwd();
    return true;
  } catch {
    return false;
  }
}

const config: LeanConfig = {
  bin: 'cowvol',
  scopedEnvVar: (name) => process.env[`COWVOL_${name}`],
};

/** The CLI's package.json fields oclif's `--version` prints. */
export interface CliPackage {
  name: string;
  version: string;
}

/**
 * oclif's `--version` (its first token only, whatever follows):
 * `<name>/<version> <platform>-<arch> node-<version>`. oclif says `wsl`
 * for the platform under Windows' Linux subsystem; there it is oclif's.
 */
function printVersion(pkg: CliPackage): boolean {
  if (process.platform === 'linux') {
    let procVersion: string;
    try {
      procVersion = readFileSync('/proc/version', 'utf8');
    } catch {
      return false;
    }
    if (`${release()} ${procVersion}`.toLowerCase().includes('microsoft')) return false;
  }
  const cpu = arch() === 'ia32' ? 'x86' : arch();
  process.stdout.write(`${pkg.name}/${pkg.version} ${process.platform}-${cpu} node-${process.version}\n`);
  return true;
}

/**
 * Runs the command `argv` names, as oclif would, and resolves true; or
 * resolves false having run nothing (see the module comment). With `pkg`,
 * `--version` is answered too.
 * @throws what the command's `catch` rethrows (nothing a cowvol command reports: it sets the exit code)
 */
export async function startLean(argv: readonly string[], loaders: CommandLoaders, pkg?: CliPackage): Promise<boolean> {
  if (process.env.COWVOL_LEAN_START === '0' || process.env.COWVOL_CONTENT_TYPE !== undefined || process.env.DEBUG !== undefined || !cwdExists()) return false;
  if (argv[0] === '--version') return pkg !== undefined && printVersion(pkg);
  const named = commandOf(argv, loaders);
  if (named === undefined) return false;
  if (process.stdout.isTTY && named.rest.includes('--json')) return false;
  const CommandClass = (await loaders[named.id]!()).default as LeanCommandClass;
  if (leanParse(named.rest, CommandClass) === undefined) return false;
  CommandClass.id = named.id;
  await new CommandClass(named.rest, config)._run();
  return true;
}
