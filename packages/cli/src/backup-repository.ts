import { Flags } from '@oclif/core';
import { FileObjectStore, loadKeyFile, Repository, S3ObjectStore, type ObjectStore } from '@cowvol/backup';
import { CowvolError } from '@cowvol/base';

/**
 * The flags every `cowvol backup` command that opens a repository shares
 * (README "Backups off the machine"): the key file, the S3 endpoint and
 * addressing, and the requests in flight.
 */
export const repositoryFlags = {
  'key-file': Flags.string({ description: 'the repository key file (64 hex digits, mode 0600)', required: true }),
  endpoint: Flags.string({ description: 'S3 endpoint URL, e.g. http://127.0.0.1:7480 for RGW or MinIO (default: AWS_ENDPOINT_URL, else AWS)' }),
  'path-style': Flags.boolean({ description: 'path-style S3 addressing (endpoint/bucket/key), as RGW and MinIO want' }),
  jobs: Flags.integer({ description: 'requests in flight at most (1..256)', default: 8, min: 1, max: 256 }),
};

export interface RepositoryFlagValues {
  'key-file': string;
  endpoint?: string | undefined;
  'path-style'?: boolean | undefined;
  jobs: number;
}

/**
 * The object store of a repository URL: `s3://bucket/prefix` (S3ObjectStore,
 * credentials from the SDK's standard chain) or `file:///abs/path`
 * (FileObjectStore).
 *
 * @throws INVALID_ARGUMENT for any other URL
 */
export function openStore(url: string, flags: RepositoryFlagValues): ObjectStore & { close?: () => void } {
  if (url.startsWith('file://')) return new FileObjectStore(url);
  if (url.startsWith('s3://')) {
    return new S3ObjectStore({
      url,
      ...(flags.endpoint === undefined ? {} : { endpoint: flags.endpoint }),
      forcePathStyle: flags['path-style'] === true,
      jobs: flags.jobs,
    });
  }
  throw new CowvolError('INVALID_ARGUMENT', `a repository is an s3://bucket/prefix or file:///absolute/path URL, not ${JSON.stringify(url)}`);
}

/**
 * Loads the key file, then opens the repository at `url` and runs `fn`
 * with it; the store's connections are closed after.
 *
 * @throws BAD_KEY · REPOSITORY_NOT_FOUND · BACKUP_CORRUPT · UNSUPPORTED_VERSION · STORE_UNAVAILABLE · STORE_ACCESS_DENIED
 */
export async function withRepository<T>(url: string, flags: RepositoryFlagValues, fn: (repo: Repository) => Promise<T>): Promise<T> {
  const key = await loadKeyFile(flags['key-file']);
  const store = openStore(url, flags);
  try {
    return await fn(await Repository.open(store, key));
  } finally {
    store.close?.();
  }
}
