import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import { escapeTerminalText } from '@cowvol/cow-core';
import type { CatalogEntry, DamagedEntry } from '@cowvol/backup';
import { CowvolCommand } from '../../base-command.js';
import { loadBackup, repositoryFlags, withRepository } from '../../backup-repo.js';
import { human, table } from '../../format.js';

export default class BackupList extends CowvolCommand {
  static override summary = 'List the snapshots in a backup repository: volume, name, labels, created, logical size, new bytes stored by its push';
  static override examples = ['<%= config.bin %> backup list s3://backups/cowvol --key-file backup.key', '<%= config.bin %> backup list file:///mnt/usb/cowvol --key-file backup.key --json'];
  static override args = { url: Args.string({ description: 's3://bucket/prefix or file:///absolute/path', required: true }) };
  static override flags = {
    ...repositoryFlags,
    volume: Flags.string({ description: 'only the snapshots of this volume uuid', helpValue: '<uuid>' }),
  };

  async run(): Promise<{ snapshots: CatalogEntry[]; damaged: DamagedEntry[] }> {
    const { args, flags } = await this.parse(BackupList);
    const { listBackups } = await loadBackup();
    const damaged: DamagedEntry[] = [];
    const snapshots = await withRepository(
      args.url,
      flags,
      async (repo) => {
        const out: CatalogEntry[] = [];
        const onDamaged = (d: DamagedEntry): void => {
          damaged.push(d);
          this.warnUser(`manifest ${d.key} does not open (${d.code}): ${d.message}; it is not listed (cowvol backup verify reports it)`);
        };
        for await (const entry of listBackups(repo, flags.volume, onDamaged)) out.push(entry);
        return out;
      },
      (message) => this.warnUser(message),
    );
    const rows = snapshots.map((s) => [
      s.volumeUuid,
      escapeTerminalText(s.snapshot),
      s.createdAt,
      human(s.logicalBytes),
      human(s.bytesNew),
      Object.entries(s.labels)
        .map(([k, v]) => escapeTerminalText(`${k}=${v}`))
        .join(','),
    ]);
    this.say(table(['VOLUME', 'SNAPSHOT', 'CREATED', 'LOGICAL', 'NEW', 'LABELS'], rows));
    return { snapshots, damaged };
  }
}
