#!/usr/bin/env node
// Bundles the built CLI (dist/, from `tsc -b`) with the workspace packages
// and the pure-JavaScript dependencies into dist/bundle/: cowvol.js, the
// module `bin/run.js` starts from, which holds @oclif/core and every command
// class (exported as COMMANDS for oclif's "explicit" command discovery,
// package.json `oclif.commands`), plus chunks that load only when a command
// reaches them through `await import()` (the NBD server and pino for
// `serve`, the AWS SDK for the backup commands). Resolving, reading and
// linking about 250 modules one by one was about half of the CLI's start
// (docs/PERFORMANCE.md, "CLI start"; docs/ARCHITECTURE.md §1).
//
// Left outside the bundle, resolved at run time from @cowvol/cli's own
// dependencies: the native addons (@node-rs/crc32 whole; the addons of
// classic-level, LevelDB, and msgpackr-extract, whose JavaScript is
// bundled) and TypeScript (which oclif only asks for when it runs
// uncompiled commands).
// The build fails when the copy @cowvol/cli resolves is not the one the
// bundled code would have used, or when the AWS SDK or pino reach the start
// module. It also writes dist/bundle/inputs.json, the
// workspace files bundled, which bin/run.js compares with the bundle's time
// so that a stale bundle never runs. Run by `pnpm build` after `tsc -b`;
// COWVOL_BUNDLE_META=<file> also writes esbuild's metafile (what each output
// holds, for sizing a chunk).
import { build } from 'esbuild';
import { existsSync, mkdirSync, readdirSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = join(root, 'dist/bundle');
const stagingDir = join(root, `dist/bundle.tmp-${String(process.pid)}`);
/** Native addons (and TypeScript) loaded by Node from @cowvol/cli's dependencies, not bundled. */
const EXTERNAL = ['@node-rs/crc32', 'typescript'];
/** Packages that must never be evaluated by a command that does not use them: only `await import()` may reach them. */
const LAZY_ONLY = /node_modules\/(@aws-sdk|@smithy|pino|thread-stream|sonic-boom)\//;

/** Command ids as oclif's pattern discovery derives them from dist/commands: `snapshot/list.js` is `snapshot:list`. */
function commandFiles() {
  const dir = join(root, 'dist/commands');
  return readdirSync(dir, { recursive: true })
    .map(String)
    .filter((f) => f.endsWith('.js'))
    .sort()
    .map((file) => {
      const parts = file.slice(0, -'.js'.length).split(sep);
      if (parts.at(-1) === 'index') parts.pop();
      return { file: `./dist/commands/${parts.length === 0 ? 'index' : file.split(sep).join('/')}`, id: parts.join(':') };
    });
}

function entrySource() {
  const commands = commandFiles();
  return [
    `export { execute } from '@oclif/core';`,
    ...commands.map((c, i) => `import C${String(i)} from ${JSON.stringify(c.file)};`),
    `export const COMMANDS = {`,
    ...commands.map((c, i) => `  ${JSON.stringify(c.id)}: C${String(i)},`),
    `};`,
  ].join('\n');
}

/**
 * classic-level and msgpackr-extract find their addons next to their own
 * files (node-gyp-build); bundled, those are elsewhere. The module that
 * loads each addon is replaced by one that gives the loader the folder of
 * the copy @cowvol/cli depends on, found at run time. classic-level's
 * node-gyp-build stays unbundled (it loads its own files by a computed
 * name); msgpackr-extract's loader and detect-libc are bundled.
 */
const ADDON_LOADERS = [
  {
    name: 'classic-level',
    filter: /[\\/]classic-level[\\/]binding\.js$/,
    contents: `module.exports = require('node:module').createRequire(pkg)('node-gyp-build')(require('node:path').dirname(pkg));`,
  },
  { name: 'msgpackr-extract', filter: /[\\/]msgpackr-extract[\\/]index\.js$/, contents: `module.exports = require('node-gyp-build-optional-packages')(require('node:path').dirname(pkg));` },
];
const addonLoaders = {
  name: 'addon-loaders',
  setup(b) {
    for (const { name, filter, contents } of ADDON_LOADERS) {
      b.onLoad({ filter }, (args) => ({ loader: 'js', resolveDir: dirname(args.path), contents: `const pkg = require.resolve(${JSON.stringify(`${name}/package.json`)});\n${contents}` }));
    }
  },
};

// In an ES module there is no require, __filename or __dirname; bundled CommonJS (oclif, level) uses them.
const banner = [
  `import { createRequire as __cowvolCreateRequire } from 'node:module';`,
  `import { fileURLToPath as __cowvolFileURLToPath } from 'node:url';`,
  `const require = __cowvolCreateRequire(import.meta.url);`,
  `const __filename = __cowvolFileURLToPath(import.meta.url);`,
  `const __dirname = __cowvolFileURLToPath(new URL('.', import.meta.url));`,
].join(' ');

/** The package folder holding `file` (the last node_modules/<name> or node_modules/@scope/<name> in its path). */
function packageFolder(file) {
  const m = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(file);
  return m?.[1];
}

/** Each external, and each package whose addon is found at run time, must be the copy its importers would load: @cowvol/cli depends on the same. */
function checkExternals(metafile) {
  const fromCli = createRequire(join(root, 'package.json'));
  const cliCopy = (name) => realpathSync(dirname(fromCli.resolve(`${name}/package.json`)));
  for (const [input, { imports }] of Object.entries(metafile.inputs)) {
    for (const imp of imports) {
      const name = EXTERNAL.find((n) => imp.path === n || imp.path.startsWith(`${n}/`));
      if (!imp.external || name === undefined || name === 'typescript') continue;
      const theirs = realpathSync(dirname(createRequire(resolve(root, input)).resolve(`${name}/package.json`)));
      if (theirs !== cliCopy(name)) throw new Error(`${input} loads ${name} from ${theirs}, @cowvol/cli from ${cliCopy(name)}: give @cowvol/cli the same version`);
    }
    const folder = packageFolder(input);
    const addon = ADDON_LOADERS.find((l) => folder?.endsWith(`/${l.name}`));
    if (addon !== undefined && folder !== undefined && realpathSync(resolve(root, folder)) !== cliCopy(addon.name)) {
      throw new Error(`the bundle holds ${addon.name} from ${folder}, @cowvol/cli depends on ${cliCopy(addon.name)}: give @cowvol/cli the same version`);
    }
  }
}

/** What starting loads (the start module and the chunks it imports statically) may not hold what only some commands use: they reach it with `await import()`. */
function checkStartModule(metafile) {
  const start = Object.keys(metafile.outputs).find((o) => metafile.outputs[o].entryPoint !== undefined);
  if (start === undefined) throw new Error('esbuild wrote no entry module');
  const loaded = new Set([start]);
  for (const output of loaded) {
    for (const imp of metafile.outputs[output].imports) if (imp.kind === 'import-statement' && !imp.external) loaded.add(imp.path);
  }
  const leaked = [...loaded].flatMap((o) => Object.keys(metafile.outputs[o].inputs)).filter((i) => LAZY_ONLY.test(i));
  if (leaked.length > 0) throw new Error(`the start module loads modules only some commands use (import them with await import()): ${leaked.slice(0, 5).join(', ')}`);
}

rmSync(stagingDir, { recursive: true, force: true });
mkdirSync(stagingDir, { recursive: true });
try {
  const result = await build({
    stdin: { contents: entrySource(), resolveDir: root, sourcefile: 'cowvol-commands.js', loader: 'js' },
    absWorkingDir: root,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    splitting: true,
    outdir: stagingDir,
    entryNames: 'cowvol',
    chunkNames: 'chunk-[hash]',
    external: EXTERNAL,
    plugins: [addonLoaders],
    // Whitespace and syntax only: class and function names stay (error names, stack traces).
    minifyWhitespace: true,
    minifySyntax: true,
    legalComments: 'linked',
    metafile: true,
    banner: { js: banner },
    logLevel: 'warning',
  });
  if (process.env.COWVOL_BUNDLE_META) writeFileSync(process.env.COWVOL_BUNDLE_META, JSON.stringify(result.metafile));
  checkExternals(result.metafile);
  checkStartModule(result.metafile);
  const workspaceInputs = Object.keys(result.metafile.inputs)
    .filter((i) => !i.includes('node_modules/') && !i.startsWith('<stdin>') && existsSync(resolve(root, i)))
    .sort();
  writeFileSync(join(stagingDir, 'inputs.json'), `${JSON.stringify(workspaceInputs, null, 1)}\n`);
  rmSync(outDir, { recursive: true, force: true });
  renameSync(stagingDir, outDir);
  const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
  const start = Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint !== undefined)?.[1];
  process.stderr.write(
    `bundle: ${relative(process.cwd(), join(outDir, 'cowvol.js'))} ${(start.bytes / 1024).toFixed(0)} KiB of ${(bytes / 1024).toFixed(0)} KiB, ` +
      `${String(Object.keys(result.metafile.inputs).length)} modules (${String(workspaceInputs.length)} from the workspace)\n`,
  );
} catch (err) {
  rmSync(stagingDir, { recursive: true, force: true });
  throw err;
}
