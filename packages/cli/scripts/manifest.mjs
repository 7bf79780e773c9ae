#!/usr/bin/env node
// Writes packages/cli/oclif.manifest.json from the bundle's commands
// (dist/bundle/cowvol.js, scripts/bundle.mjs), as `oclif manifest` does:
// with it, oclif lists the commands, topics and flags (help, autocomplete)
// from one JSON file instead of building the list from every command class
// at each start (docs/PERFORMANCE.md, "CLI start"). Run by `pnpm build`
// after the bundle; bin/run.js removes a manifest older than the bundle.
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
