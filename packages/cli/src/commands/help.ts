import { Args, Command, loadHelpClass } from '@oclif/core';

/**
 * `cowvol help [command…]`: the same help as `<command> --help` (oclif's
 * help class: usage, arguments, flags, description, examples), for a
 * command, a topic (`cowvol help snapshot`) or, with no argument, every
 * command. `cowvol help help` shows this command's own help: oclif's help
 * class reads a `help` word as a request for the root help, and so does
 * `cowvol help --help`. It opens no volume, so it is an oclif command, not a
 * `CowvolCommand` (no `--wait`, no `--json`); an unknown command fails as
 * `cowvol <unknown>` does, with oclif's message and exit 2. README
 * "Installing the command".
 */
export default class Help extends Command {
  static override summary = 'Show the help of a command or topic: usage, flags, description and examples';
  static override examples = ['<%= config.bin %> help snapshot create', '<%= config.bin %> help snapshot', '<%= config.bin %> help'];
  static override strict = false;
  static override args = { command: Args.string({ description: 'command (words separated by spaces) or topic; none: every command' }) };

  async run(): Promise<void> {
    const { argv } = await this.parse(Help);
    const HelpClass = await loadHelpClass(this.config);
    const help = new HelpClass(this.config);
    const self = this.config.findCommand('help');
    if (argv.length === 1 && argv[0] === 'help' && self) await help.showCommandHelp(self, []);
    else await help.showHelp(argv as string[]);
  }
}
