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

// oclif.manifest.json (`pnpm build`, scripts/manifest.mjs) lets oclif import
// only the command run, not all of them (docs/PERFORMANCE.md, "CLI start").
// One older than a built command would list stale commands: it is removed,
// and oclif scans the commands as it does without one.
const { readdirSync, statSync, unlinkSync } = await import('node:fs');
const manifestUrl = new URL('../oclif.manifest.json', import.meta.url);
try {
  const writtenMs = statSync(manifestUrl).mtimeMs;
  const commands = new URL('../dist/commands/', import.meta.url);
  if (readdirSync(commands, { recursive: true }).some((f) => String(f).endsWith('.js') && statSync(new URL(String(f), commands)).mtimeMs > writtenMs)) unlinkSync(manifestUrl);
} catch {
  // No manifest (or it just went): oclif scans the commands.
}

const { execute } = await import('@oclif/core');

await execute({ dir: import.meta.url });
