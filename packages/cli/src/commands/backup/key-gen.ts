import { Args } from '../../args.js';
import { loadBackup } from '../../backup-repo.js';
import { CowvolCommand } from '../../base-command.js';

export default class BackupKeyGen extends CowvolCommand {
  static override summary = 'Create a backup repository key file: 32 random bytes as 64 hex digits, mode 0600; never over an existing file';
  static override description = 'Keep it off the machine too: without it nothing in the repository can be read (docs/FORMAT.md §12.1).';
  static override examples = ['<%= config.bin %> backup key-gen ~/.config/cowvol/backup.key'];
  static override args = { file: Args.string({ description: 'path of the key file to create', required: true }) };

  async run(): Promise<{ keyFile: string }> {
    const { args } = await this.parse(BackupKeyGen);
    const { generateKeyFile } = await loadBackup();
    await generateKeyFile(args.file);
    this.say(`created key file ${args.file} (mode 0600): keep a copy somewhere safe, off this machine`);
    return { keyFile: args.file };
  }
}
