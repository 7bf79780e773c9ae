import { execFile } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { Config, Help, type Command } from '@oclif/core';
import { beforeAll, describe, expect, it } from 'vitest';

/**
 * `cowvol help <command>` and `<command> --help` show examples for every
 * command (README "Installing the command"): every command, the plugins'
 * too, has at least one `static examples` entry, and oclif's help renders
 * each of them; the built CLI's `help <command>` prints what `--help` does.
 * Loads the built commands (`pnpm build` first).
 */
const CLI_ROOT = resolve(import.meta.dirname, '..');
const BIN = join(CLI_ROOT, 'bin', 'run.js');
const execFileAsync = promisify(execFile);

let config: Config;
beforeAll(async () => {
  config = await Config.load({ root: CLI_ROOT });
});

/** Command ids of the files under src/commands that export a command class: `snapshot/create.ts` is `snapshot:create`. */
async function commandFileIds(): Promise<string[]> {
  const dir = join(CLI_ROOT, 'src', 'commands');
  const ids: string[] = [];
  for (const file of await readdir(dir, { recursive: true })) {
    if (!file.endsWith('.ts') || !/^export default class /m.test(await readFile(join(dir, file), 'utf8'))) continue;
    ids.push(file.slice(0, -'.ts'.length).split(sep).join(':'));
  }
  return ids.sort();
}

/** A command's examples as its help prints them (`<%= config.bin %>` filled in). */
function examplesOf(command: Command.Loadable): string[] {
  return (command.examples ?? []).map((e) => (typeof e === 'string' ? e : e.command).replaceAll('<%= config.bin %>', config.bin));
}

function visibleCommands(): Command.Loadable[] {
  return config.commands.filter((c) => !c.hidden).sort((a, b) => a.id.localeCompare(b.id));
}

/** stdout of `cowvol <args>`, which must exit 0. */
async function cowvolStdout(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(process.execPath, [BIN, ...args], { cwd: CLI_ROOT, encoding: 'utf8' });
  return stdout;
}

/** oclif's help class, printing into a string instead of stdout. */
class CapturedHelp extends Help {
  text = '';
  protected override log(...args: string[]): void {
    this.text += `${args.join('\n')}\n`;
  }
}

async function renderedHelp(command: Command.Loadable): Promise<string> {
  const help = new CapturedHelp(config);
  await help.showCommandHelp(command);
  return help.text;
}

describe('cowvol help: examples for every command', () => {
  it('oclif finds exactly the command files under src/commands', async () => {
    const ours = config.commands.filter((c) => c.pluginName === config.pjson.name).map((c) => c.id);
    expect(ours.sort()).toEqual(await commandFileIds());
  });

  it("every command shown in help, the plugins' included, has at least one example", () => {
    const visible = visibleCommands();
    expect(visible.map((c) => c.id)).toEqual(expect.arrayContaining(['autocomplete', 'help', 'create', 'snapshot:create']));
    expect(visible.filter((c) => examplesOf(c).length === 0).map((c) => c.id)).toEqual([]);
  });

  it("every command's help renders each of its examples under EXAMPLES", async () => {
    const missing: string[] = [];
    for (const command of visibleCommands()) {
      const text = await renderedHelp(command);
      const at = text.indexOf('\nEXAMPLES\n');
      if (at === -1) missing.push(`${command.id}: no EXAMPLES section`);
      for (const example of examplesOf(command)) if (at === -1 || !text.slice(at).includes(example)) missing.push(`${command.id}: ${example}`);
    }
    expect(missing).toEqual([]);
  });

  it('the built CLI: `help <command>` prints what `<command> --help` prints, examples included', async () => {
    for (const words of [['snapshot', 'create'], ['autocomplete']]) {
      const viaFlag = await cowvolStdout([...words, '--help']);
      expect(await cowvolStdout(['help', ...words]), words.join(' ')).toBe(viaFlag);
      expect(viaFlag).toContain(`\nEXAMPLES\n  $ cowvol ${words.join(' ')}`);
    }
    // The help word is oclif's request for the root help; `help help` is the help command's own help.
    expect(await cowvolStdout(['help', 'help'])).toContain('\nEXAMPLES\n  $ cowvol help snapshot create\n');
  });

  it('`help` with an unknown command fails as a usage error (exit 2)', async () => {
    const failure = await cowvolStdout(['help', 'no-such-command']).then(
      () => undefined,
      (err: unknown) => err as { code?: number; stderr?: string },
    );
    expect(failure?.code).toBe(2);
    expect(failure?.stderr).toContain('no-such-command not found');
  });
});
