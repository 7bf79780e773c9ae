import fc from 'fast-check';
import { Args as OclifArgs, Flags as OclifFlags, Parser } from '@oclif/core';
import { describe, expect, it } from 'vitest';
import { Args as LeanArgs, Flags as LeanFlags } from '../src/lean-core.js';
import { leanParse, type LeanCommandShape } from '../src/lean-parse.js';

/**
 * The lean start's parser against oclif's own (docs/ARCHITECTURE.md §1,
 * "The lean start"): for random command shapes (flags of every kind the
 * commands use: string, integer with bounds, options, multiple, boolean
 * with allowNo, defaults, required; required and optional arguments;
 * strict or not) and random command lines over their names, whatever the
 * lean parser accepts, oclif's parser accepts with the same args, flags
 * and argv. Declining is always allowed (oclif then parses); the test
 * also counts acceptances, so that a parser that declines everything
 * fails. Seeded: COWVOL_LEAN_PARSE_SEED replays a printed seed.
 */
const SEED = Number(process.env.COWVOL_LEAN_PARSE_SEED ?? Date.now() % 2 ** 31);
const RUNS = Number(process.env.COWVOL_LEAN_PARSE_RUNS ?? 3000);

interface FlagSpec {
  kind: 'string' | 'integer' | 'boolean';
  required: boolean;
  multiple: boolean;
  allowNo: boolean;
  options: string[] | undefined;
  min: number | undefined;
  max: number | undefined;
  default: string | number | boolean | undefined;
}
interface Spec {
  flags: Record<string, FlagSpec>;
  args: Array<{ name: string; required: boolean; default: string | undefined; ignoreStdin: boolean }>;
  strict: boolean;
  json: boolean;
}

const WORDS = ['vol.img', 'a', 'b=c', '-', '', 'x y', '7', '0', '-3', '--', '1e3', 'é'];
const FLAG_NAMES = ['size', 'jobs', 'force', 'label', 'mode', 'progress'];

const flagSpec: fc.Arbitrary<FlagSpec> = fc
  .record({
    kind: fc.constantFrom('string', 'integer', 'boolean'),
    required: fc.constantFrom(false, false, false, true),
    multiple: fc.constantFrom(false, false, true),
    allowNo: fc.boolean(),
    options: fc.option(fc.constant<string[]>(['a', 'b', '7']), { nil: undefined }),
    min: fc.option(fc.integer({ min: 0, max: 5 }), { nil: undefined }),
    max: fc.option(fc.integer({ min: 5, max: 100 }), { nil: undefined }),
    default: fc.option(fc.constantFrom<string | number | boolean>('a', 7, true, false), { nil: undefined }),
  })
  .map((f): FlagSpec => {
    // Only shapes the commands can have: a default of the flag's own type (and among its options), no multiple boolean, no required flag with a default.
    const options = f.kind === 'string' ? f.options : undefined;
    const fits = (v: unknown): boolean =>
      (f.kind === 'boolean' && typeof v === 'boolean') ||
      (f.kind === 'integer' && typeof v === 'number') ||
      (f.kind === 'string' && typeof v === 'string' && (options === undefined || options.includes(v)));
    return {
      ...f,
      options,
      multiple: f.kind !== 'boolean' && f.multiple,
      allowNo: f.kind === 'boolean' && f.allowNo,
      min: f.kind === 'integer' ? f.min : undefined,
      max: f.kind === 'integer' ? f.max : undefined,
      default: fits(f.default) && !f.required && !(f.kind !== 'boolean' && f.multiple) ? f.default : undefined,
    };
  });

const spec: fc.Arbitrary<Spec> = fc.record({
  flags: fc.dictionary(fc.constantFrom(...FLAG_NAMES), flagSpec, { maxKeys: 4 }),
  args: fc
    .array(fc.record({ required: fc.boolean(), default: fc.option(fc.constantFrom('d', '-'), { nil: undefined }), ignoreStdin: fc.constantFrom(true, true, false) }), { maxLength: 3 })
    // oclif requires the required arguments first.
    .map((args) =>
      args.map((a, i) => ({ name: `arg${String(i)}`, required: a.required && args.slice(0, i).every((b) => b.required), default: a.required ? undefined : a.default, ignoreStdin: a.ignoreStdin })),
    ),
  strict: fc.boolean(),
  json: fc.boolean(),
});

/** Tokens a command line is made of, for one spec: its flags in every spelling, values, positionals, and tokens the lean parser must decline. */
function tokens(s: Spec): fc.Arbitrary<string[]> {
  const names = Object.keys(s.flags);
  const flagTokens = names.flatMap((n) => [`--${n}`, `--no-${n}`, `--${n}=a`, `--${n}=7`, `--${n}=`, `--${n}=--json`, `--${n}=-x`, `--${n}=-`]);
  const common = fc.constantFrom(...(flagTokens.length > 0 ? flagTokens : ['--json']), 'vol.img', 'a', '7', '--json');
  const rare = fc.constantFrom(...WORDS, '--help', '-h', '--unknown', '-x', '--json=true');
  return fc.array(fc.oneof({ weight: 5, arbitrary: common }, { weight: 1, arbitrary: rare }), { maxLength: 6 });
}

function leanShape(s: Spec): LeanCommandShape {
  const flags = Object.fromEntries(
    Object.entries(s.flags).map(([name, f]) => {
      const common = { required: f.required, ...(f.default !== undefined ? { default: f.default } : {}) };
      if (f.kind === 'boolean') return [name, LeanFlags.boolean({ ...common, allowNo: f.allowNo })];
      const opt = { ...common, multiple: f.multiple, ...(f.options ? { options: f.options } : {}) };
      return [name, f.kind === 'integer' ? LeanFlags.integer({ ...opt, ...(f.min !== undefined ? { min: f.min } : {}), ...(f.max !== undefined ? { max: f.max } : {}) }) : LeanFlags.string(opt)];
    }),
  );
  const args = Object.fromEntries(s.args.map((a) => [a.name, LeanArgs.string({ required: a.required, ignoreStdin: a.ignoreStdin, ...(a.default !== undefined ? { default: a.default } : {}) })]));
  return { flags, args, strict: s.strict, enableJsonFlag: s.json };
}

/* eslint-disable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-argument -- oclif's flag types are generic per flag; the test builds them from data. */
function oclifOptions(s: Spec): any {
  const flags: Record<string, any> = {};
  for (const [name, f] of Object.entries(s.flags)) {
    const common = { required: f.required, ...(f.default !== undefined ? { default: f.default as any } : {}) };
    if (f.kind === 'boolean') flags[name] = OclifFlags.boolean({ ...common, allowNo: f.allowNo });
    else {
      const opt: any = { ...common, multiple: f.multiple, ...(f.options ? { options: f.options } : {}) };
      flags[name] = f.kind === 'integer' ? OclifFlags.integer({ ...opt, ...(f.min !== undefined ? { min: f.min } : {}), ...(f.max !== undefined ? { max: f.max } : {}) }) : OclifFlags.string(opt);
    }
  }
  if (s.json) flags.json = OclifFlags.boolean({});
  const args = Object.fromEntries(s.args.map((a) => [a.name, OclifArgs.string({ required: a.required, ignoreStdin: a.ignoreStdin, ...(a.default !== undefined ? { default: a.default } : {}) })]));
  return { flags, args, strict: s.strict, context: { config: {} } };
}
/* eslint-enable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-assignment, @typescript-eslint/no-unsafe-argument */

describe(`leanParse against oclif's parser (seed ${String(SEED)})`, () => {
  it('what the lean parser accepts, oclif parses the same', async () => {
    let accepted = 0;
    await fc.assert(
      fc.asyncProperty(
        spec.chain((s) => fc.tuple(fc.constant(s), tokens(s))),
        async ([s, argv]) => {
          const lean = leanParse(argv, leanShape(s));
          if (lean === undefined) return;
          accepted++;
          // eslint-disable-next-line @typescript-eslint/no-unsafe-argument -- see oclifOptions
          const oclif = await Parser.parse(argv, oclifOptions(s));
          expect({ args: lean.args, flags: lean.flags, argv: lean.argv }).toEqual({ args: oclif.args, flags: oclif.flags, argv: oclif.argv });
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
    // A parser that declines everything would pass the property: at least one line in twenty must be parsed (about one in eleven is).
    expect(accepted).toBeGreaterThan(RUNS / 20);
  });

  it('parses the command lines people type', () => {
    const shape: LeanCommandShape = {
      enableJsonFlag: true,
      baseFlags: { wait: LeanFlags.string({}) },
      flags: { input: LeanFlags.string({}), jobs: LeanFlags.integer({ min: 1, max: 64, default: 8 }), progress: LeanFlags.boolean({ allowNo: true }) },
      args: { volume: LeanArgs.string({ required: true }) },
    };
    expect(leanParse(['vol.img', '--input', 'data', '--json'], shape)).toEqual({ args: { volume: 'vol.img' }, flags: { input: 'data', json: true, jobs: 8 }, argv: ['vol.img'] });
    expect(leanParse(['--jobs=4', '--no-progress', 'vol.img', '--input', '-'], shape)).toEqual({ args: { volume: 'vol.img' }, flags: { jobs: 4, progress: false, input: '-' }, argv: ['vol.img'] });
    expect(leanParse(['vol.img', '--input=-'], shape)?.flags).toEqual({ input: '-', jobs: 8 });
    expect(leanParse(['vol.img', '--wait', '5'], shape)?.flags).toEqual({ wait: '5', jobs: 8 });
  });

  it('declines what oclif must answer: help, short flags, unknown flags, bad values, missing arguments', () => {
    const shape: LeanCommandShape = { enableJsonFlag: true, flags: { jobs: LeanFlags.integer({ min: 1, max: 64 }) }, args: { volume: LeanArgs.string({ required: true }) } };
    for (const argv of [
      ['vol', '--help'],
      ['vol', '-h'],
      ['vol', '--jobs', '0'],
      ['vol', '--jobs', 'x'],
      ['vol', '--jobs'],
      ['vol', '--jobs', '-1'],
      [],
      ['vol', 'extra'],
      ['vol', '--json=1'],
      ['vol', '--nope'],
    ]) {
      expect(leanParse(argv, shape), JSON.stringify(argv)).toBeUndefined();
    }
  });
});
