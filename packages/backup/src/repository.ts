import { assert, hasCode } from '@cowvol/base';
import { chunkId, openChunk, sealChunk } from './chunk-seal.js';
import { BackupArgumentError, BackupCorruptError, RepositoryExistsError, RepositoryNotFoundError } from './errors.js';
import { decodeManifest, encodeManifest, type Manifest } from './manifest.js';
import type { ObjectStore } from './object-store.js';
import { CHUNKS_PREFIX, chunkObjectKey, CONFIG_KEY, manifestObjectKey, MANIFESTS_PREFIX, isVolumeUuid, parseManifestObjectKey } from './object-keys.js';
import { decodeRepositoryConfig, DEFAULT_CHUNK_SIZE_BYTES, encodeRepositoryConfig, newRepositoryConfig, type RepositoryConfig } from './repository-config.js';
import type { RepositoryKeys } from './repository-keys.js';

/** What {@link Repository.putChunk} did. */
export interface PutChunkResult {
  /** The chunk's id (HMAC-SHA-256 of the plaintext, docs/FORMAT.md §12.3). */
  id: string;
  /** True when this call stored the body; false when the repository held the chunk already (deduplicated). */
  uploaded: boolean;
  /** True when the body it stored replaced a damaged one (`checkPresent`). */
  replaced?: boolean;
  /** Bytes of the sealed body (plaintext + 33), stored or not. */
  sealedBytes: number;
}

/** A manifest named by its key, before it is read. */
export interface ManifestRef {
  key: string;
  volumeUuid: string;
  snapshotName: string;
}

/**
 * A backup repository on an object store (docs/ARCHITECTURE.md §17,
 * docs/FORMAT.md §12): its `config`, its keys, and the chunk and manifest
 * operations every command builds on. Objects are only created, each with a
 * conditional put; nothing here deletes (`prune` does, under the lock).
 */
export class Repository {
  /**
   * Where what went wrong after a command's work is reported without
   * changing its outcome (a lock that could not be deleted: it lapses with
   * its lease); unset, such a note is dropped.
   */
  onWarning: ((message: string) => void) | undefined;

  private constructor(
    readonly store: ObjectStore,
    readonly config: RepositoryConfig,
    readonly keys: RepositoryKeys,
    /** `init` created the store's container (an S3 bucket) for this repository. */
    readonly createdContainer = false,
  ) {}

  /** Bytes of plaintext per chunk (the last chunk of a volume may be shorter). */
  get chunkSizeBytes(): number {
    return this.config.chunkSizeBytes;
  }

  /**
   * Creates a repository: a new `config` (random id, `chunkSizeBytes`),
   * written with a conditional put.
   *
   * When the store's container is missing (an S3 bucket: the put is
   * REPOSITORY_NOT_FOUND) and `createContainer` is set, it is created
   * (`ObjectStore.createContainer`) and the put tried once more.
   *
   * @param keyBytes the key file's 32 bytes (loadKeyFile)
   * @throws REPOSITORY_EXISTS when the store holds a `config` already, or backups without one (a lost config: nothing is written)
   * @throws REPOSITORY_NOT_FOUND when the container is missing and is not to be created
   * @throws INVALID_ARGUMENT for a bad chunk size · STORE_UNAVAILABLE · STORE_ACCESS_DENIED · IO_ERROR
   */
  static async init(store: ObjectStore, keyBytes: Buffer, chunkSizeBytes = DEFAULT_CHUNK_SIZE_BYTES, options: { createContainer?: boolean } = {}): Promise<Repository> {
    const { config, keys } = newRepositoryConfig(keyBytes, chunkSizeBytes);
    try {
      return await Repository.writeConfig(store, config, keys, false);
    } catch (err) {
      if (!hasCode(err, 'REPOSITORY_NOT_FOUND') || options.createContainer !== true || store.createContainer === undefined) throw err;
      const created = await store.createContainer();
      return await Repository.writeConfig(store, config, keys, created);
    }
  }

  /** The conditional put of a new `config`. @throws REPOSITORY_EXISTS, the store's errors */
  private static async writeConfig(store: ObjectStore, config: RepositoryConfig, keys: RepositoryKeys, createdContainer: boolean): Promise<Repository> {
    const exists = (): RepositoryExistsError => new RepositoryExistsError(`${store.url} is a backup repository already (it has a config object)`, { details: { repository: store.url } });
    if ((await store.head(CONFIG_KEY)) !== undefined) throw exists();
    if (await holdsBackups(store)) {
      throw new RepositoryExistsError(
        `${store.url} holds backups (objects under manifests/ or chunks/) but no config object: its config was lost, and a new one would not open them (the repository id in the config salts every key); put the config back from a copy of the repository, or create a new repository elsewhere`,
        { details: { repository: store.url, configMissing: true } },
      );
    }
    try {
      await store.put(CONFIG_KEY, encodeRepositoryConfig(config, keys), { ifNoneMatch: true });
    } catch (err) {
      if (hasCode(err, 'OBJECT_EXISTS')) throw exists();
      throw err;
    }
    return new Repository(store, config, keys, createdContainer);
  }

  /**
   * Opens a repository: reads and checks its `config` and derives the keys
   * (docs/FORMAT.md §12.2). Nothing is written, so a wrong key is refused
   * before any write.
   *
   * @throws REPOSITORY_NOT_FOUND when there is no `config` and nothing else;
   *   BACKUP_CORRUPT when there is no `config` but backups are (its config was lost)
   * @throws BAD_KEY for a key that is not the repository's
   * @throws BACKUP_CORRUPT, UNSUPPORTED_VERSION for a damaged or newer config · STORE_UNAVAILABLE · STORE_ACCESS_DENIED
   */
  static async open(store: ObjectStore, keyBytes: Buffer): Promise<Repository> {
    let bytes: Buffer;
    try {
      bytes = await store.get(CONFIG_KEY);
    } catch (err) {
      if (hasCode(err, 'OBJECT_NOT_FOUND')) {
        if (await holdsBackups(store)) {
          // Damage, not "no repository": `backup init` here would write a config with a new id, under which none of these opens.
          throw new BackupCorruptError(
            `${store.url} holds backups (objects under manifests/ or chunks/) but its config object is missing: put it back from a copy of the repository (a new config, from backup init, would not open them)`,
            { details: { object: CONFIG_KEY, repository: store.url, missing: true } },
          );
        }
        throw new RepositoryNotFoundError(`${store.url} is not a backup repository (no config object): create one with cowvol backup init`, { details: { repository: store.url } });
      }
      throw err;
    }
    const { config, keys } = decodeRepositoryConfig(bytes, keyBytes, store.url);
    return new Repository(store, config, keys);
  }

  /** The id `plaintext` would be stored under. */
  chunkIdOf(plaintext: Buffer): string {
    return chunkId(this.keys, plaintext);
  }

  /** Whether the chunk `id` is stored (a head request). */
  async hasChunk(id: string): Promise<boolean> {
    return (await this.store.head(chunkObjectKey(id))) !== undefined;
  }

  /**
   * Stores one chunk unless the repository holds it (deduplication by
   * content): a head first, then a sealed body with a conditional put;
   * OBJECT_EXISTS from the put (another push stored it in between) is the
   * same as found.
   *
   * With `checkPresent` (`backup push --full`, the repair `verify` points
   * at), a chunk that is there is read back and authenticated too, and one
   * that fails (BACKUP_CORRUPT: damaged, truncated, or another chunk's
   * body) is replaced by an unconditional put of a fresh sealing of the
   * same plaintext (`replaced`). That is the only overwrite of an object:
   * any body stored under this id holds this plaintext, so a push racing
   * with it writes an equally valid body, and no prune runs meanwhile (the
   * caller holds the shared lock, docs/ARCHITECTURE.md §17).
   *
   * @throws INVALID_ARGUMENT for a plaintext longer than the chunk size · UNSUPPORTED_VERSION (checkPresent: a chunk of a newer format) · STORE_UNAVAILABLE · STORE_ACCESS_DENIED · IO_ERROR · NO_SPACE
   */
  async putChunk(plaintext: Buffer, options: { checkPresent?: boolean } = {}): Promise<PutChunkResult> {
    assert(plaintext.length > 0 && plaintext.length <= this.chunkSizeBytes, 'a chunk is 1..chunk size bytes');
    const id = this.chunkIdOf(plaintext);
    const key = chunkObjectKey(id);
    const sealedBytes = plaintext.length + 33;
    if ((await this.store.head(key)) !== undefined) {
      if (options.checkPresent !== true || (await this.holdsChunk(id, plaintext))) return { id, uploaded: false, sealedBytes };
      const fresh = sealChunk(this.keys, plaintext);
      assert(fresh.id === id && fresh.body.length === sealedBytes, 'a sealed chunk has the id it replaces');
      await this.store.put(key, fresh.body);
      return { id, uploaded: true, replaced: true, sealedBytes };
    }
    const sealed = sealChunk(this.keys, plaintext);
    assert(sealed.id === id && sealed.body.length === sealedBytes, 'a sealed chunk has the id it was headed by');
    try {
      await this.store.put(key, sealed.body, { ifNoneMatch: true });
    } catch (err) {
      if (hasCode(err, 'OBJECT_EXISTS')) return { id, uploaded: false, sealedBytes };
      throw err;
    }
    return { id, uploaded: true, sealedBytes };
  }

  /**
   * Whether the stored chunk `id` opens (authenticated) to exactly
   * `plaintext`; false when it is damaged or gone (BACKUP_CORRUPT).
   * @throws UNSUPPORTED_VERSION · STORE_UNAVAILABLE · STORE_ACCESS_DENIED · IO_ERROR
   */
  private async holdsChunk(id: string, plaintext: Buffer): Promise<boolean> {
    try {
      return (await this.getChunk(id, plaintext.length)).equals(plaintext);
    } catch (err) {
      if (hasCode(err, 'BACKUP_CORRUPT')) return false;
      throw err;
    }
  }

  /**
   * One chunk's plaintext, authenticated (openChunk): a missing chunk that a
   * manifest names is damage too.
   *
   * @param expectedBytes when given, the plaintext must be this long
   * @throws BACKUP_CORRUPT (details.chunkId; details.missing when absent) · UNSUPPORTED_VERSION · STORE_UNAVAILABLE · STORE_ACCESS_DENIED
   */
  async getChunk(id: string, expectedBytes?: number): Promise<Buffer> {
    let body: Buffer;
    try {
      body = await this.store.get(chunkObjectKey(id));
    } catch (err) {
      if (hasCode(err, 'OBJECT_NOT_FOUND')) throw new BackupCorruptError(`chunk ${id} is missing from ${this.store.url}`, { details: { chunkId: id, missing: true } });
      throw err;
    }
    const plaintext = openChunk(this.keys, id, body);
    if (expectedBytes !== undefined && plaintext.length !== expectedBytes) {
      throw new BackupCorruptError(`chunk ${id} holds ${String(plaintext.length)} bytes where ${String(expectedBytes)} are expected`, { details: { chunkId: id } });
    }
    return plaintext;
  }

  /**
   * Stores a manifest under `manifests/<volume-uuid>/<snapshot-name>` with a
   * conditional put: the last write of a push (docs/ARCHITECTURE.md §17).
   *
   * @returns the manifest's key
   * @throws OBJECT_EXISTS when that snapshot's manifest is there already (it is not replaced) · STORE_UNAVAILABLE · …
   */
  async putManifest(manifest: Manifest): Promise<string> {
    const key = manifestObjectKey(manifest.volumeUuid, manifest.snapshotName);
    await this.store.put(key, encodeManifest(this.keys, key, manifest), { ifNoneMatch: true });
    return key;
  }

  /**
   * Reads and checks one manifest, by key or by volume uuid and name.
   *
   * @throws OBJECT_NOT_FOUND when there is none · BACKUP_CORRUPT · UNSUPPORTED_VERSION · STORE_UNAVAILABLE · …
   */
  async getManifest(keyOrVolumeUuid: string, snapshotName?: string): Promise<Manifest> {
    const key = snapshotName === undefined ? keyOrVolumeUuid : manifestObjectKey(keyOrVolumeUuid, snapshotName);
    return decodeManifest(this.keys, key, await this.store.get(key));
  }

  /** Whether a manifest of that snapshot is stored (a complete push). */
  async hasManifest(volumeUuid: string, snapshotName: string): Promise<boolean> {
    return (await this.store.head(manifestObjectKey(volumeUuid, snapshotName))) !== undefined;
  }

  /**
   * The manifests stored, in ascending key order, from their keys alone
   * (nothing is read or decrypted); of one volume when `volumeUuid` is
   * given. Keys under `manifests/` that are not manifest keys are skipped.
   *
   * @throws INVALID_ARGUMENT for a malformed uuid · STORE_UNAVAILABLE · …
   */
  async *listManifests(volumeUuid?: string): AsyncIterable<ManifestRef> {
    if (volumeUuid !== undefined && !isVolumeUuid(volumeUuid)) throw new BackupArgumentError(`not a volume uuid: ${JSON.stringify(volumeUuid.slice(0, 80))}`);
    const prefix = volumeUuid === undefined ? MANIFESTS_PREFIX : `${MANIFESTS_PREFIX}${volumeUuid}/`;
    for await (const info of this.store.list(prefix)) {
      const parsed = parseManifestObjectKey(info.key);
      if (parsed !== undefined) yield { key: info.key, ...parsed };
    }
  }
}

/** Whether the store holds any object under `manifests/` or `chunks/` (one listing each, stopped at the first object). */
async function holdsBackups(store: ObjectStore): Promise<boolean> {
  for (const prefix of [MANIFESTS_PREFIX, CHUNKS_PREFIX]) {
    for await (const found of store.list(prefix)) {
      if (found.key.startsWith(prefix)) return true;
    }
  }
  return false;
}
