#!/usr/bin/env node
// Writes packages/cli/oclif.manifest.json from the built commands (dist/),
// as `oclif manifest` does: with it, oclif finds a command's module without
// importing every command first, so `cowvol <command>` loads only the
// modules that command uses (docs/PERFORMANCE.md, "CLI start"). Run by
// `pnpm build`; bin/run.js ignores a manifest older than the commands.
import { rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Plugin } from '@oclif/core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const plugin = new Plugin({ root, type: 'core', isRoot: true, ignoreManifest: true, errorOnManifestCreate: true });
await plugin.load();
const path = join(root, 'oclif.manifest.json');
await writeFile(`${path}.tmp`, `${JSON.stringify(plugin.manifest, null, 2)}\n`);
await rename(`${path}.tmp`, path);
