#!/usr/bin/env node
// libuv sizes its thread pool on first use, so the default has to be set
// before anything touches the file system; a value in the environment wins.
// `serve` at queue depth 32 otherwise waits for one of Node's default 4
// threads on every pread/pwrite (docs/PERFORMANCE.md "Serving over NBD").
process.env.UV_THREADPOOL_SIZE ??= '16';
// The pinned AWS SDK release runs on Node 20 (docs/ARCHITECTURE.md §17); its
// nine-line notice that later releases will not would otherwise open the
// stderr of every backup command. A value in the environment wins.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

// `pnpm build` bundles the CLI into dist/bundle/cowvol.js (scripts/bundle.mjs):
// one module to load instead of about 250 (docs/PERFORMANCE.md, "CLI start").
// In a checkout (src/ is there), a bundle older than a workspace file it
// holds (dist/bundle/inputs.json: a `tsc -b` since) is stale and never runs:
// the commands are then loaded from dist/commands, as oclif does without a
// bundle. oclif.manifest.json (scripts/manifest.mjs) describes the bundle's
// commands: one older than the bundle, or beside a stale bundle, is removed,
// and oclif reads the commands themselves. An installed copy has no src/ and
// nothing rebuilds it (npm gives its files the time they were unpacked, in
// no useful order): it starts from its bundle.
const { readFileSync, statSync, unlinkSync } = await import('node:fs');
const { fileURLToPath } = await import('node:url');
const { join } = await import('node:path');
const root = new URL('../', import.meta.url);
const bundleUrl = new URL('dist/bundle/cowvol.js', root);
const manifestUrl = new URL('oclif.manifest.json', root);
const pjson = JSON.parse(readFileSync(new URL('package.json', root), 'utf8'));

/** Modification time in ms, or undefined when `url` (a URL or a path) does not exist. */
function mtimeMs(url) {
  return statSync(url, { throwIfNoEntry: false })?.mtimeMs;
}

function bundleIsFresh() {
  const builtMs = mtimeMs(bundleUrl);
  if (builtMs === undefined) return false;
  let inputs;
  try {
    inputs = JSON.parse(readFileSync(new URL('dist/bundle/inputs.json', root), 'utf8'));
  } catch {
    return false;
  }
  // An input that is not there (gone from the workspace) cannot be newer. Paths, not URLs: about 180 of them at every start.
  const rootPath = fileURLToPath(root);
  return Array.isArray(inputs) && inputs.every((input) => !((mtimeMs(join(rootPath, input)) ?? 0) > builtMs));
}

const checkout = mtimeMs(new URL('src/', root)) !== undefined;
const fresh = checkout ? bundleIsFresh() : mtimeMs(bundleUrl) !== undefined;
const manifestMs = mtimeMs(manifestUrl);
if (checkout && manifestMs !== undefined && (!fresh || manifestMs < (mtimeMs(bundleUrl) ?? Infinity))) {
  try {
    unlinkSync(manifestUrl);
  } catch {
    // Gone already (another run removed it): oclif reads the commands.
  }
}
// The lean start (dist/bundle/lean/start.js, docs/ARCHITECTURE.md §1 "The
// lean start") runs a command line it is sure of without oclif, and says
// false for any other: oclif then parses it (help, USAGE errors, colours).
// COWVOL_LEAN_START=0 always starts oclif; =require fails (INTERNAL, exit 1) where the
// lean start declines, so that a test can tell which one ran.
const leanUrl = new URL('dist/bundle/lean/start.js', root);
if (!fresh || mtimeMs(leanUrl) === undefined || !(await (await import(leanUrl.href)).start(process.argv.slice(2), pjson))) {
  if (process.env.COWVOL_LEAN_START === 'require') {
    process.stderr.write('cowvol: error [INTERNAL]: COWVOL_LEAN_START=require, and the lean start declined this command line (or the bundle is stale)\n');
    process.exit(1);
  }
  let execute;
  if (fresh) ({ execute } = await import(bundleUrl.href));
  else {
    pjson.oclif.commands = './dist/commands';
    ({ execute } = await import('@oclif/core'));
  }
  await execute({ loadOptions: { root: fileURLToPath(root), pjson } });
}
// Exit here rather than let the event loop drain: on a natural exit Node
// closes its signal handles during teardown, restoring the default action,
// so a SIGHUP or SIGTERM in that window killed a command that had made its
// change and printed its report (exit 129 or 143, which says "not made";
// README "Exit codes"). The command has ended: every write it waited for is
// done. What it handed stdout and stderr may still be queued (a pipe whose
// reader is slow, a device such as /dev/full: those writes are
// asynchronous), so each is flushed first — an empty write's callback runs
// once everything before it was written or failed — and a failure's
// handler (io.ts: NO_SPACE, OUTCOME_UNKNOWN) has run before the exit code
// is read. The signal handlers stay installed meanwhile.
for (const stream of [process.stdout, process.stderr]) {
  if (!stream.writable || stream.destroyed) continue;
  await new Promise((resolve) => stream.write('', () => resolve(undefined)));
}
await new Promise((resolve) => setImmediate(resolve));
process.exit(process.exitCode ?? 0);
