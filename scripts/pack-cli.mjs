#!/usr/bin/env node
/**
 * Packs the `cowvol` command as one self-contained npm tarball,
 * `cowvol-<version>.tgz`, that `npm install -g ./cowvol-<version>.tgz`
 * installs on a machine with Node.js 20 and no checkout, and no registry
 * access to the workspace packages (they are not published): every
 * dependency travels inside the tarball as a bundled dependency
 * (README "Installing the command").
 *
 *   node scripts/pack-cli.mjs [--out-dir <dir>]   (default: the repository root)
 *
 * Prints the tarball's absolute path on stdout; progress goes to stderr.
 * Exits non-zero when a step fails. Expects a build (`pnpm pack:cli` runs
 * `tsc -b` first).
 *
 * Steps:
 * 1. `pnpm deploy --prod` of @cowvol/cli into a staging folder, from the
 *    workspace lockfile (pnpm 10 deploys from it only with
 *    inject-workspace-packages, given on the command line so the lockfile
 *    stays as it is), with a hoisted node_modules (real folders, no
 *    symlinks, which `npm pack` needs to bundle them) whose files are copies,
 *    not hard links into pnpm's store (`npm pack` of a tree in which two
 *    files share an inode never finishes). The workspace packages the CLI
 *    depends on, directly or not, are copied in with their `files`,
 *    whatever they are: nothing here names them.
 * 2. Every staged package.json that names another package by a `workspace:`,
 *    `file:` or `link:` spec gets the version of the copy staged beside it,
 *    so that npm reads the bundled tree as complete. TypeScript build-info
 *    files are left out.
 * 3. The root package is renamed `cowvol`, bundles all its dependencies and
 *    drops its devDependencies; `npm pack` writes the tarball.
 *
 * Native parts: classic-level (LevelDB) ships prebuilds for every platform
 * it supports; @node-rs/crc32 and msgpackr-extract come as the one
 * platform package installed here, so the tarball is for the platform
 * (operating system, CPU, libc) it was packed on.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const CLI_PACKAGE = '@cowvol/cli';
const PACKAGE_NAME = 'cowvol';
/** `workspace:*`, `file:…`, `link:…`, and the `<name>@file:…` form pnpm deploy writes. */
const LOCAL_SPEC = /(^|@)(workspace|file|link):/;

function parseOutDir(argv) {
  const i = argv.indexOf('--out-dir');
  if (i === -1) return ROOT;
  if (argv[i + 1] === undefined) throw new Error('--out-dir needs a folder');
  return resolve(argv[i + 1]);
}

/** Runs a command; stdout is returned, stderr passes through. */
function run(cmd, args, cwd, env = process.env) {
  return execFileSync(cmd, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
}

/** The environment without pnpm's `npm_config_*` variables (set when run as `pnpm pack:cli`): npm warns about the ones it does not know. */
function envForNpm() {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.toLowerCase().startsWith('npm_config_')));
}

function readJson(path) {
  return JSON.parse(readFileSync(path, 'utf8'));
}

/** Writes a new file rather than into the old one: staged files may be hard links into the pnpm store or the workspace. */
function replaceJson(path, value) {
  unlinkSync(path);
  writeFileSync(path, `${JSON.stringify(value, null, 2)}\n`);
}

/** The folders of every package in a hoisted node_modules, scoped ones included (nested node_modules too). */
function stagedPackages(nodeModules) {
  if (!existsSync(nodeModules)) return [];
  const out = [];
  for (const entry of readdirSync(nodeModules, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
    const path = join(nodeModules, entry.name);
    const folders = entry.name.startsWith('@')
      ? readdirSync(path, { withFileTypes: true })
          .filter((e) => e.isDirectory())
          .map((e) => join(path, e.name))
      : [path];
    for (const folder of folders) {
      if (existsSync(join(folder, 'package.json'))) out.push(folder, ...stagedPackages(join(folder, 'node_modules')));
    }
  }
  return out;
}

/** Step 2: `workspace:`/`file:`/`link:` specs become the version of the staged copy. */
function pinLocalSpecs(staging) {
  const versions = new Map();
  const folders = [staging, ...stagedPackages(join(staging, 'node_modules'))];
  for (const folder of folders) {
    const manifest = readJson(join(folder, 'package.json'));
    if (!versions.has(manifest.name)) versions.set(manifest.name, manifest.version);
  }
  for (const folder of folders) {
    const manifest = readJson(join(folder, 'package.json'));
    let changed = false;
    for (const field of ['dependencies', 'optionalDependencies', 'peerDependencies']) {
      for (const [name, spec] of Object.entries(manifest[field] ?? {})) {
        if (!LOCAL_SPEC.test(spec)) continue;
        const version = versions.get(name);
        if (version === undefined) throw new Error(`${manifest.name} depends on ${name} (${spec}), which the deploy did not stage`);
        manifest[field][name] = version;
        changed = true;
      }
    }
    if (changed) replaceJson(join(folder, 'package.json'), manifest);
  }
}

/** TypeScript's incremental build state is of no use to an install. */
function dropBuildInfo(staging) {
  for (const file of readdirSync(staging, { recursive: true })) {
    if (file.endsWith('.tsbuildinfo')) unlinkSync(join(staging, file));
  }
}

/** Step 3: the root manifest users install. */
function finishRootManifest(staging) {
  const path = join(staging, 'package.json');
  const manifest = readJson(path);
  manifest.name = PACKAGE_NAME;
  delete manifest.devDependencies;
  manifest.bundleDependencies = Object.keys(manifest.dependencies ?? {});
  manifest.engines = readJson(join(ROOT, 'package.json')).engines;
  replaceJson(path, manifest);
  return manifest.version;
}

function main() {
  const outDir = parseOutDir(process.argv.slice(2));
  mkdirSync(outDir, { recursive: true });
  const staging = mkdtempSync(join(tmpdir(), 'cowvol-pack-'));
  try {
    const target = join(staging, 'package');
    process.stderr.write(`staging ${CLI_PACKAGE} in ${target}\n`);
    run(
      'pnpm',
      ['--filter', CLI_PACKAGE, 'deploy', '--prod', '--prefer-offline', '--config.inject-workspace-packages=true', '--config.node-linker=hoisted', '--config.package-import-method=copy', target],
      ROOT,
    );
    pinLocalSpecs(target);
    dropBuildInfo(target);
    const version = finishRootManifest(target);
    const [packed] = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', outDir], target, envForNpm()));
    if (packed?.filename !== `${PACKAGE_NAME}-${version}.tgz`) throw new Error(`npm pack wrote ${packed?.filename}, expected ${PACKAGE_NAME}-${version}.tgz`);
    process.stderr.write(`${packed.filename}: ${packed.entryCount} files, ${(packed.size / 2 ** 20).toFixed(1)} MiB, ${packed.bundled.length} bundled packages\n`);
    process.stdout.write(`${join(outDir, packed.filename)}\n`);
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
}

main();
