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
// dependencies: the native addons (of @node-rs/crc32, classic-level —
// LevelDB — and msgpackr-extract, whose JavaScript is bundled) and
// TypeScript (which oclif only asks for when it runs uncompiled commands).
//
// A second build, dist/bundle/lean/ (docs/ARCHITECTURE.md §1, "The lean
// start"), holds the same commands with `@oclif/core` resolved to
// src/lean-core.ts, and a start module with one loader per command.
// The build fails when the copy @cowvol/cli resolves is not the one the
// bundled code would have used, or when the AWS SDK or pino reach the start
// module. It also writes dist/bundle/inputs.json, the
// workspace files bundled, which bin/run.js compares with the bundle's time
// so that a stale bundle never runs. Run by `pnpm build` after `tsc -b`;
// COWVOL_BUNDLE_META=<file> also writes esbuild's metafile (what each output
// holds, for sizing a chunk), and <file>.lean the lean bundle's.
import { build } from 'esbuild';
import { existsSync, mkdirSync, readdirSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = join(root, 'dist/bundle');
const stagingDir = join(root, `dist/bundle.tmp-${String(process.pid)}`);
/** Loaded by Node from @cowvol/cli's dependencies, not bundled (oclif asks for it only to run uncompiled commands). */
const EXTERNAL = ['typescript'];
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

/**
 * The lean bundle's start module (src/lean-start.ts, docs/ARCHITECTURE.md
 * §1 "The lean start"): a loader per command, so that starting evaluates
 * the start module and then the one command's chunks. `help` is oclif's.
 */
function leanEntrySource() {
  const commands = commandFiles().filter((c) => c.id !== 'help');
  return [
    `import { startLean } from './dist/lean-start.js';`,
    `const LOADERS = {`,
    ...commands.map((c) => `  ${JSON.stringify(c.id)}: () => import(${JSON.stringify(c.file)}),`),
    `};`,
    `export const start = (argv, pkg) => startLean(argv, LOADERS, pkg);`,
  ].join('\n');
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
 * classic-level, msgpackr-extract and @node-rs/crc32 find their addons
 * next to their own files; bundled, those are elsewhere. The module that
 * loads each addon is replaced by one that finds the copy @cowvol/cli
 * depends on at run time (`pkg`, its package.json) and loads the addon of
 * the common case, glibc Linux, by its path: their own loaders scan
 * folders, read /usr/bin/ldd or start a child process to tell glibc from
 * musl, about 35 ms of every start together (docs/PERFORMANCE.md, "CLI
 * start"). Anywhere else, or when that file does not load (musl: the
 * glibc build fails to link), the package's own loader runs, from its
 * folder, as it would unbundled (also when NAPI_RS_NATIVE_LIBRARY_PATH
 * names an addon for napi-rs's loader, or COWVOL_ADDON_LOADERS=own).
 * Where a package names its file otherwise (classic-level's ARM builds),
 * the direct load finds nothing and the own loader runs.
 */
const ADDON_LOADERS = [
  {
    name: 'classic-level',
    filter: /[\\/]classic-level[\\/]binding\.js$/,
    direct: 'join(dir, "prebuilds", `linux-${process.arch}`, "classic-level.node")',
    fallback: 'createRequire(pkg)("node-gyp-build")(dir)',
  },
  {
    name: 'msgpackr-extract',
    filter: /[\\/]msgpackr-extract[\\/]index\.js$/,
    direct: 'createRequire(pkg).resolve(`@msgpackr-extract/msgpackr-extract-linux-${process.arch}/package.json`).replace(/package\\.json$/, `node.abi${process.versions.modules}.glibc.node`)',
    fallback: 'createRequire(pkg)("node-gyp-build-optional-packages")(dir)',
  },
  {
    name: '@node-rs/crc32',
    filter: /[\\/]@node-rs[\\/]crc32[\\/]index\.js$/,
    direct: 'createRequire(pkg).resolve(`@node-rs/crc32-linux-${process.arch}-gnu`)',
    fallback: 'require(join(dir, "index.js"))',
  },
];
const addonLoaders = {
  name: 'addon-loaders',
  setup(b) {
    for (const { name, filter, direct, fallback } of ADDON_LOADERS) {
      b.onLoad({ filter }, (args) => ({
        loader: 'js',
        resolveDir: dirname(args.path),
        contents: [
          `const { createRequire } = require('node:module');`,
          `const { dirname, join } = require('node:path');`,
          `const pkg = require.resolve(${JSON.stringify(`${name}/package.json`)});`,
          `const dir = dirname(pkg);`,
          `let binding;`,
          `if (process.platform === 'linux' && process.env.COWVOL_ADDON_LOADERS !== 'own' && process.env.NAPI_RS_NATIVE_LIBRARY_PATH === undefined) {`,
          `  try { binding = require(${direct}); } catch { binding = undefined; }`,
          `}`,
          `module.exports = binding ?? ${fallback};`,
        ].join('\n'),
      }));
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

/** Options both builds share: one platform, format and minification; addons and TypeScript outside. */
const common = {
  absWorkingDir: root,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  splitting: true,
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
};

/** The lean bundle may not hold oclif: that is what it is for. */
function checkLean(metafile) {
  const oclif = Object.keys(metafile.inputs).filter((i) => /node_modules\/@oclif\//.test(i));
  if (oclif.length > 0) throw new Error(`the lean bundle holds oclif modules (a command imports from @oclif/core what src/lean-core.ts lacks?): ${oclif.slice(0, 5).join(', ')}`);
}

rmSync(stagingDir, { recursive: true, force: true });
mkdirSync(stagingDir, { recursive: true });
try {
  const result = await build({
    ...common,
    stdin: { contents: entrySource(), resolveDir: root, sourcefile: 'cowvol-commands.js', loader: 'js' },
    outdir: stagingDir,
    entryNames: 'cowvol',
  });
  const lean = await build({
    ...common,
    stdin: { contents: leanEntrySource(), resolveDir: root, sourcefile: 'cowvol-lean.js', loader: 'js' },
    outdir: join(stagingDir, 'lean'),
    entryNames: 'start',
    alias: { '@oclif/core': './dist/lean-core.js' },
  });
  if (process.env.COWVOL_BUNDLE_META) {
    writeFileSync(process.env.COWVOL_BUNDLE_META, JSON.stringify(result.metafile));
    writeFileSync(`${process.env.COWVOL_BUNDLE_META}.lean`, JSON.stringify(lean.metafile));
  }
  for (const { metafile } of [result, lean]) {
    checkExternals(metafile);
    checkStartModule(metafile);
  }
  checkLean(lean.metafile);
  const workspaceInputs = [...new Set([...Object.keys(result.metafile.inputs), ...Object.keys(lean.metafile.inputs)])]
    .filter((i) => !i.includes('node_modules/') && !i.startsWith('<stdin>') && existsSync(resolve(root, i)))
    .sort();
  writeFileSync(join(stagingDir, 'inputs.json'), `${JSON.stringify(workspaceInputs, null, 1)}\n`);
  rmSync(outDir, { recursive: true, force: true });
  renameSync(stagingDir, outDir);
  const bytes = Object.values(result.metafile.outputs).reduce((n, o) => n + o.bytes, 0);
  const start = Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint !== undefined)?.[1];
  const leanStart = Object.entries(lean.metafile.outputs).find(([, o]) => o.entryPoint !== undefined)?.[1];
  process.stderr.write(
    `bundle: ${relative(process.cwd(), join(outDir, 'cowvol.js'))} ${(start.bytes / 1024).toFixed(0)} KiB of ${(bytes / 1024).toFixed(0)} KiB, ` +
      `${String(Object.keys(result.metafile.inputs).length)} modules (${String(workspaceInputs.length)} from the workspace); ` +
      `lean start ${relative(process.cwd(), join(outDir, 'lean/start.js'))} ${(leanStart.bytes / 1024).toFixed(1)} KiB\n`,
  );
} catch (err) {
  rmSync(stagingDir, { recursive: true, force: true });
  throw err;
}
