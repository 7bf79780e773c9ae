/**
 * The `cowvol` executable starts from the bundle only when it is fresh
 * (packages/cli/bin/run.js; docs/PERFORMANCE.md "CLI start"): bin/run.js and
 * package.json are run from a copy of the CLI's folder whose bundle and
 * dist/commands each hold one command saying where it was loaded from, with
 * the bundle's input made older or newer than the bundle. The real build
 * (`pnpm build`) is checked to be fresh, and a command to run from it.
 */
import { copyFile, mkdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, cowvol, run, tempDir } from './helpers.js';

const CLI_ROOT = resolve(import.meta.dirname, '../packages/cli');

/** An oclif command module printing `text` (`cowvol where`). */
const whereCommand = (text: string): string => `import { Command } from '@oclif/core';
export default class Where extends Command {
  static summary = 'where this command was loaded from';
  async run() { this.log(${JSON.stringify(text)}); }
}
`;

describe('bin/run.js starts from a fresh bundle only', () => {
  let dir = '';
  let cleanup: () => Promise<void> = () => Promise.resolve();
  const bundle = (): string => join(dir, 'dist/bundle/cowvol.js');
  const input = (): string => join(dir, 'dist/commands/where.js');
  const manifest = (): string => join(dir, 'oclif.manifest.json');
  const where = async (): Promise<string> => {
    const r = await run(process.execPath, [join(dir, 'bin/run.js'), 'where']);
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.toString().trim();
  };
  const exists = (path: string): Promise<boolean> =>
    stat(path).then(
      () => true,
      () => false,
    );

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('cowvol-bundle-'));
    await mkdir(join(dir, 'bin'));
    await mkdir(join(dir, 'src'));
    await mkdir(join(dir, 'dist/commands'), { recursive: true });
    await mkdir(join(dir, 'dist/bundle'));
    await copyFile(join(CLI_ROOT, 'bin/run.js'), join(dir, 'bin/run.js'));
    await copyFile(join(CLI_ROOT, 'package.json'), join(dir, 'package.json'));
    // @oclif/core and the autocomplete plugin, as the CLI resolves them.
    await symlink(join(CLI_ROOT, 'node_modules'), join(dir, 'node_modules'));
    await writeFile(input(), whereCommand('dist/commands'));
    await writeFile(bundle(), `${whereCommand('bundle').replace('export default class', 'class')}export { execute } from '@oclif/core';\nexport const COMMANDS = { where: Where };\n`);
    await writeFile(join(dir, 'dist/bundle/inputs.json'), JSON.stringify(['dist/commands/where.js', '../not-installed/dist/index.js']));
  });
  afterAll(() => cleanup());

  it('runs the bundle when every input it lists is older (or absent)', async () => {
    await utimes(input(), new Date(1_000_000_000_000), new Date(1_000_000_000_000));
    await utimes(bundle(), new Date(1_000_000_010_000), new Date(1_000_000_010_000));
    expect(await where()).toBe('bundle');
  });

  it('runs dist/commands when an input is newer than the bundle, and removes the manifest made from that bundle', async () => {
    await writeFile(manifest(), JSON.stringify({ version: '0.1.0', commands: {} }));
    await utimes(input(), new Date(1_000_000_020_000), new Date(1_000_000_020_000));
    expect(await where()).toBe('dist/commands');
    expect(await exists(manifest())).toBe(false);
  });

  it('removes a manifest older than a fresh bundle', async () => {
    await utimes(input(), new Date(1_000_000_000_000), new Date(1_000_000_000_000));
    await writeFile(manifest(), JSON.stringify({ version: '0.1.0', commands: {} }));
    await utimes(manifest(), new Date(1_000_000_005_000), new Date(1_000_000_005_000));
    expect(await where()).toBe('bundle');
    expect(await exists(manifest())).toBe(false);
  });

  it('in an installed copy (no src/), runs the bundle whatever the times of its files', async () => {
    await rm(join(dir, 'src'), { recursive: true });
    await utimes(input(), new Date(1_000_000_020_000), new Date(1_000_000_020_000));
    try {
      expect(await where()).toBe('bundle');
    } finally {
      await mkdir(join(dir, 'src'));
    }
  });

  it('runs dist/commands without an inputs list', async () => {
    await writeFile(join(dir, 'dist/bundle/inputs.json'), 'not json');
    expect(await where()).toBe('dist/commands');
  });
});

describe('the built CLI', () => {
  it('is bundled, and the bundle is newer than every workspace file in it (`pnpm build`)', async () => {
    const builtMs = (await stat(join(CLI_ROOT, 'dist/bundle/cowvol.js'))).mtimeMs;
    const inputs = JSON.parse(await readFile(join(CLI_ROOT, 'dist/bundle/inputs.json'), 'utf8')) as string[];
    expect(inputs.length).toBeGreaterThan(100);
    const newer = [];
    for (const i of inputs) if ((await stat(join(CLI_ROOT, i))).mtimeMs > builtMs) newer.push(i);
    expect(newer, 'run `pnpm build`').toEqual([]);
  });

  it('runs a command, and --json errors keep their code and exit code', async () => {
    expect(CLI.endsWith('bin/run.js')).toBe(true);
    const version = await cowvol(['--version']);
    expect(version.code).toBe(0);
    expect(version.stdout.toString()).toMatch(/^@cowvol\/cli\/\d+\.\d+\.\d+ /);
    const missing = await cowvol(['snapshot', 'list', '/nonexistent/cowvol-volume.img', '--json']);
    expect(missing.code).toBe(3);
    expect(JSON.parse(missing.stdout.toString())).toMatchObject({ error: { code: 'VOLUME_NOT_FOUND', exitCode: 3 } });
  });
});
