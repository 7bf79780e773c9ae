/**
 * The lean start's argument parser (docs/ARCHITECTURE.md §1, "The lean
 * start"): parses a command line the way oclif's parser does, for the
 * command lines it is sure of, and declines every other one.
 *
 * Declining is the safety of the design: the caller then starts oclif,
 * whose parser gives the canonical result or the canonical USAGE error.
 * So this parser never reports an error and never guesses; it returns
 * `undefined` for anything unusual. What it accepts, and what oclif
 * gives for the same tokens (checked token for token against oclif's
 * own parser by test/lean-parse.test.ts, a seeded property test):
 *
 * - `--name value` and `--name=value` for a flag that takes a value; the
 *   value may be empty or `-`, but never start with `-` otherwise (oclif
 *   refuses a value that names a flag, and reads others: declined here,
 *   to be sure);
 * - `--name` for a boolean flag, `--no-name` when it has `allowNo`
 *   (`--name=…` for a boolean is declined: oclif parses it oddly);
 * - integers as `/^\d+$/` within `min`/`max`, values within `options`;
 * - a `multiple` flag any number of times (an array, in order) when no
 *   positional comes after it; any other flag at most once;
 * - positionals in order into the `args`, all of them into `argv` (the
 *   surplus of a command that is not strict) in oclif's order: by each
 *   token's first place on the command line; one `--` ends the flags.
 *
 * Declined: short flags (`-x`, so `-h` too), unknown flags (`--help` and
 * `--version` too), a missing required flag or argument, a surplus
 * positional in a strict command, a value that is not valid, a flag
 * given twice, a positional anywhere after a `multiple` flag (oclif takes
 * it as one more value of the flag), an argument left to its default, a
 * missing optional argument without `ignoreStdin` (oclif reads it from a
 * stdin that is not a terminal), a second `--`.
 */

/** A flag definition, as `Flags.*` of the lean core build it (and oclif's, for the fields read here). */
export interface LeanFlag {
  type: 'boolean' | 'option';
  /** `Flags.integer`: the value must be a whole number (oclif's `parse` of it). */
  integer?: boolean;
  required?: boolean;
  multiple?: boolean;
  allowNo?: boolean;
  options?: readonly string[];
  min?: number;
  max?: number;
  default?: unknown;
  char?: string;
}

/** An argument definition (`Args.string`). */
export interface LeanArg {
  required?: boolean;
  default?: unknown;
  /** oclif reads a missing argument from stdin when stdin is not a terminal, unless this is set. */
  ignoreStdin?: boolean;
}

/** What a command class declares (its static fields). */
export interface LeanCommandShape {
  flags?: Record<string, LeanFlag>;
  baseFlags?: Record<string, LeanFlag>;
  args?: Record<string, LeanArg>;
  strict?: boolean;
  enableJsonFlag?: boolean;
}

/** oclif's parse output, the parts commands read. */
export interface LeanParsed {
  args: Record<string, unknown>;
  flags: Record<string, unknown>;
  /** Every positional, in order (non-strict commands read the surplus here). */
  argv: string[];
}

/** Bound on the tokens parsed: a longer line is oclif's to parse (nothing real comes near it). */
const MAX_TOKENS = 4096;

/** The flags a command accepts: its own, the base flags and `--json` (oclif's aggregateFlags). */
function allFlags(shape: LeanCommandShape): Map<string, LeanFlag> {
  const flags = new Map<string, LeanFlag>();
  if (shape.enableJsonFlag) flags.set('json', { type: 'boolean' });
  for (const [name, def] of Object.entries(shape.baseFlags ?? {})) flags.set(name, def);
  for (const [name, def] of Object.entries(shape.flags ?? {})) flags.set(name, def);
  return flags;
}

/** The value of an option flag as oclif's parse gives it, or undefined when oclif would refuse it (or might). */
function optionValue(def: LeanFlag, raw: string): unknown {
  if (def.options !== undefined && !def.options.includes(raw)) return undefined;
  if (!def.integer) return raw;
  if (!/^\d{1,15}$/.test(raw)) return undefined;
  const n = Number.parseInt(raw, 10);
  if ((def.min !== undefined && n < def.min) || (def.max !== undefined && n > def.max)) return undefined;
  return n;
}

/** The flags and positionals of `argv`, as oclif reads them, or undefined (see the module comment). */
function parseTokens(argv: readonly string[], defs: Map<string, LeanFlag>): { flags: Record<string, unknown>; positionals: string[] } | undefined {
  const flags: Record<string, unknown> = {};
  const given = (name: string): boolean => Object.hasOwn(flags, name);
  const positionals: string[] = [];
  let onlyPositionals = false;
  let multipleSeen = false;
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (onlyPositionals || token === '-' || !token.startsWith('-')) {
      // oclif takes every positional after a `multiple` flag as one more value of it: such a line is oclif's.
      if (multipleSeen) return undefined;
      positionals.push(token);
      continue;
    }
    if (token === '--') {
      // A second `--` oclif keeps in an order of its own.
      if (argv.slice(i + 1).includes('--')) return undefined;
      onlyPositionals = true;
      continue;
    }
    if (!token.startsWith('--')) return undefined;
    const eq = token.indexOf('=');
    const name = token.slice(2, eq === -1 ? undefined : eq);
    const def = defs.get(name);
    if (def === undefined && eq === -1 && name.startsWith('no-')) {
      const positive = defs.get(name.slice(3));
      if (positive?.type !== 'boolean' || !positive.allowNo || given(name.slice(3))) return undefined;
      flags[name.slice(3)] = false;
      continue;
    }
    if (def === undefined || (given(name) && !def.multiple)) return undefined;
    if (def.type === 'boolean') {
      if (eq !== -1) return undefined;
      flags[name] = true;
      continue;
    }
    // A value starting with `-` (but `-` alone) is declined in both spellings: oclif refuses one that names a flag (`--output=--json`).
    const raw = eq !== -1 ? token.slice(eq + 1) : argv[++i];
    if (raw === undefined || (raw.startsWith('-') && raw !== '-')) return undefined;
    const value = optionValue(def, raw);
    if (value === undefined) return undefined;
    if (!def.multiple) flags[name] = value;
    else {
      multipleSeen = true;
      flags[name] = [...((flags[name] as unknown[] | undefined) ?? []), value];
    }
  }
  for (const [name, def] of defs) {
    if (given(name)) continue;
    if (def.required || typeof def.default === 'function') return undefined;
    if (def.default !== undefined) flags[name] = def.default;
  }
  return { flags, positionals };
}

/**
 * Parses `argv` (the tokens after the command's id) for `shape`, or
 * returns undefined when oclif should parse it (see the module comment).
 */
export function leanParse(argv: readonly string[], shape: LeanCommandShape): LeanParsed | undefined {
  if (argv.length > MAX_TOKENS) return undefined;
  const defs = allFlags(shape);
  for (const def of defs.values()) if (def.char !== undefined) return undefined;
  const parsed = parseTokens(argv, defs);
  if (parsed === undefined) return undefined;
  const { flags, positionals } = parsed;
  const argDefs = Object.entries(shape.args ?? {});
  if ((shape.strict ?? true) && positionals.length > argDefs.length) return undefined;
  const args: Record<string, unknown> = {};
  for (const [index, [name, def]] of argDefs.entries()) {
    if (index < positionals.length) args[name] = positionals[index];
    // A missing required argument is oclif's USAGE error; a default is put into argv by oclif in an order of its own;
    // a missing argument without `ignoreStdin` oclif reads from a stdin that is not a terminal.
    else if (def.required || def.default !== undefined || !def.ignoreStdin) return undefined;
  }
  // oclif orders argv by each token's first place on the command line (a repeated word moves up to its first place).
  const argvOut = [...positionals].sort((a, b) => argv.indexOf(a) - argv.indexOf(b));
  return { args, flags, argv: argvOut };
}
