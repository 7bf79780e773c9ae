import { Flags } from '@oclif/core';
import type { ObjectStore, Repository } from '@cowvol/backup';
import { BackupArgumentError, DEFAULT_JOBS, MAX_JOBS } from '@cowvol/backup/limits';
import { ASYNC_CLEANUP_MS, interrupting, onInterrupt, onInterruptAsync } from './signals.js';

/**
 * @cowvol/backup as a whole (with the AWS SDK), loaded by a backup command
 * when it runs: a static import of anything but its constants and errors
 * would put the SDK into the start of every command (docs/PERFORMANCE.md,
 * "CLI start"; the bundle build refuses it, scripts/bundle.mjs).
 */
export async function loadBackup(): Promise<typeof import('./backup-module.js')> {
  const backup = await import('./backup-module.js');
  if (!interruptCleanups) {
    // An interrupted backup command removes its temporary files (a restore's spool, objects not yet in place) and releases its locks (README "Interrupting a command").
    interruptCleanups = true;
    onInterrupt(backup.removeTempFilesSync);
    onInterruptAsync(async () => {
      const locks = await backup.quiesceAndReleaseLocks(ASYNC_CLEANUP_MS - 200);
      if (locks === 'none') return undefined;
      return locks === 'released' ? 'repository locks released' : 'repository locks left to lapse with their leases (the store did not answer in time)';
    });
  }
  return backup;
}
let interruptCleanups = false;

/**
 * Flags every `cowvol backup` command that reaches a repository takes
 * (README "Backups off the machine", docs/ARCHITECTURE.md §17).
 */
export const repositoryFlags = {
  'key-file': Flags.string({ description: 'the repository key: a private (0600) file of 64 hex digits (cowvol backup key-gen makes one)', helpValue: '<file>', required: true }),
  endpoint: Flags.string({ description: 'S3 endpoint URL, e.g. http://127.0.0.1:7480 for RGW or MinIO (default: AWS_ENDPOINT_URL, else AWS)', helpValue: '<url>' }),
  'path-style': Flags.boolean({ description: 'path-style S3 addressing (endpoint/bucket/key), as RGW and MinIO want' }),
  jobs: Flags.integer({ description: `requests (and chunks) in flight at most, 1..${String(MAX_JOBS)}`, default: DEFAULT_JOBS, min: 1, max: MAX_JOBS }),
};

export interface RepositoryFlags {
  'key-file': string;
  endpoint?: string | undefined;
  'path-style': boolean;
  jobs: number;
}

/** A store for `s3://bucket/prefix` or `file:///abs/path`. @throws INVALID_ARGUMENT for any other URL */
export async function openStore(url: string, flags: Omit<RepositoryFlags, 'key-file'>): Promise<ObjectStore & { close?: () => void }> {
  if (!url.startsWith('file:') && !url.startsWith('s3:')) throw new BackupArgumentError(`a repository URL is s3://bucket/prefix or file:///absolute/path, not ${url}`);
  const { FileObjectStore, S3ObjectStore } = await loadBackup();
  if (url.startsWith('file:')) return new FileObjectStore(url);
  const endpoint = flags.endpoint ?? process.env.AWS_ENDPOINT_URL;
  // RGW and MinIO ignore the region, but the SDK's signer needs one.
  const region = process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? (endpoint === undefined ? undefined : 'us-east-1');
  return new S3ObjectStore({
    url,
    ...(endpoint === undefined ? {} : { endpoint }),
    ...(region === undefined ? {} : { region }),
    forcePathStyle: flags['path-style'],
    jobs: flags.jobs,
  });
}

/**
 * Loads the key file (BAD_KEY first: nothing is contacted with a refused
 * key), opens the store and the repository, runs `fn`, closes the store.
 * `onWarning` hears what went wrong after the work without changing its
 * outcome (Repository.onWarning: a lock that could not be deleted).
 */
export async function withRepository<T>(url: string, flags: RepositoryFlags, fn: (repo: Repository) => Promise<T>, onWarning?: (message: string) => void): Promise<T> {
  const { loadKeyFile, Repository } = await loadBackup();
  const key = await loadKeyFile(flags['key-file']);
  const store = await openStore(url, flags);
  try {
    const repo = await Repository.open(store, key);
    repo.onWarning = onWarning;
    return await fn(repo);
  } finally {
    // Not while a signal's cleanup may still be deleting a lock through it.
    if (!interrupting()) store.close?.();
  }
}

/**
 * Splits `<repository-url>/<volume-uuid>/<snapshot-name>` (the argument of
 * `backup restore`). A leading-dot name may be given as is.
 * @throws INVALID_ARGUMENT
 */
export function splitSnapshotUrl(url: string): { repositoryUrl: string; volumeUuid: string; snapshotName: string } {
  const m = /^(.+?)\/+([0-9a-f]{32})\/([^/]+)$/.exec(url);
  if (m === null) throw new BackupArgumentError(`expected <repository-url>/<volume-uuid>/<snapshot-name>, not ${url}`);
  return { repositoryUrl: m[1] ?? '', volumeUuid: m[2] ?? '', snapshotName: m[3] ?? '' };
}
