#!/usr/bin/env node
// libuv sizes its thread pool on first use, so the default has to be set
// before anything touches the file system; a value in the environment wins.
// `serve` at queue depth 32 otherwise waits for one of Node's default 4
// threads on every pread/pwrite (docs/PERFORMANCE.md "Serving over NBD").
process.env.UV_THREADPOOL_SIZE ??= '16';

const { execute } = await import('@oclif/core');

await execute({ dir: import.meta.url });
