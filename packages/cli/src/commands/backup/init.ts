import { Flags } from '@oclif/core';
import { Args } from '../../args.js';
import { CowvolCommand } from '../../base-command.js';
import { loadBackup, openStore, repositoryFlags } from '../../backup-repo.js';
import { human } from '../../format.js';
import { parseSize } from '../../size.js';

export default class BackupInit extends CowvolCommand {
  static override summary = 'Create a backup repository at an S3 or file URL (REPOSITORY_EXISTS if one is there)';
  static override description =
    'Writes the config object (format version, repository id, chunk size, key check value; docs/FORMAT.md §12.2). An S3 bucket that does not exist is created first (as `restic init` does); an existing one is used as it is.';
  static override examples = [
    '<%= config.bin %> backup init s3://backups/cowvol --key-file backup.key --endpoint http://127.0.0.1:7480 --path-style',
    '<%= config.bin %> backup init file:///mnt/usb/cowvol --key-file backup.key',
  ];
  static override args = { url: Args.string({ description: 's3://bucket/prefix or file:///absolute/path', required: true }) };
  static override flags = {
    ...repositoryFlags,
    'chunk-size': Flags.string({ description: 'chunk size: a power of two from 64K to 64M (default 4M)', helpValue: '<size>' }),
  };

  async run(): Promise<{ repository: string; chunkSizeBytes: number; repositoryId: string; createdBucket: boolean }> {
    const { args, flags } = await this.parse(BackupInit);
    const { DEFAULT_CHUNK_SIZE_BYTES, loadKeyFile, Repository } = await loadBackup();
    const chunkSizeBytes = flags['chunk-size'] === undefined ? DEFAULT_CHUNK_SIZE_BYTES : parseSize(flags['chunk-size'], '--chunk-size');
    const key = await loadKeyFile(flags['key-file']);
    const store = await openStore(args.url, flags);
    try {
      const repo = await Repository.init(store, key, chunkSizeBytes, { createContainer: true });
      if (repo.createdContainer) this.say(`created bucket for ${store.url}`);
      this.say(`created backup repository ${store.url} (chunks of ${human(repo.chunkSizeBytes)})`);
      return { repository: store.url, chunkSizeBytes: repo.chunkSizeBytes, repositoryId: repo.config.repositoryId.toString('hex'), createdBucket: repo.createdContainer };
    } finally {
      store.close?.();
    }
  }
}
