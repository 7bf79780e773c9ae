/**
 * An ObjectStore over S3 with the AWS SDK for JavaScript v3
 * (docs/ARCHITECTURE.md §17): the SDK's standard credential chain and
 * retries with backoff, request timeouts so a stalled connection fails,
 * and a bound on requests in flight (a small FIFO semaphore).
 */
import { CreateBucketCommand, DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { CowvolError, isCowvolError, type ErrorCode } from '@cowvol/base';
import { trackedWrite } from './interrupt-cleanup.js';
import type { ObjectInfo, ObjectStore } from './object-store.js';

/** Options of an S3ObjectStore; unset ones come from the SDK's standard chain (AWS_* variables, profiles). */
export interface S3ObjectStoreOptions {
  /** `s3://bucket/prefix` */
  url: string;
  /** e.g. `http://127.0.0.1:7480` for RGW or MinIO; default: AWS_ENDPOINT_URL or AWS. */
  endpoint?: string;
  /** Path-style addressing (`endpoint/bucket/key`), as RGW and MinIO want. */
  forcePathStyle?: boolean;
  region?: string;
  credentials?: { accessKeyId: string; secretAccessKey: string };
  /** Attempts per request, including the first (SDK standard retry with backoff); default 4. */
  maxAttempts?: number;
  /** Requests in flight at most; default 8. */
  jobs?: number;
  /** A request whose connection moves no byte either way for this long (a stalled gateway) fails, then is retried; default 30,000 ms. */
  requestTimeoutMs?: number;
  /** Connecting for longer than this fails; default 5,000 ms. */
  connectionTimeoutMs?: number;
}

/** Bucket and key prefix of an `s3://bucket/prefix` URL. @throws INVALID_ARGUMENT */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url);
  if (m === null) throw new CowvolError('INVALID_ARGUMENT', `not an s3://bucket/prefix URL: ${url}`);
  let prefix = m[2] ?? '';
  if (prefix !== '' && !prefix.endsWith('/')) prefix += '/';
  return { bucket: m[1] ?? '', prefix };
}

/** A FIFO counting semaphore bounding requests in flight. */
class Semaphore {
  private free: number;
  private readonly waiters: Array<() => void> = [];
  constructor(n: number) {
    this.free = n;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiters.push(resolve));
    try {
      return await fn();
    } finally {
      const next = this.waiters.shift();
      if (next === undefined) this.free++;
      else next();
    }
  }
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

/** The stable code for an SDK or transport error (docs/ARCHITECTURE.md §17). */
export function storeErrorCode(err: unknown): ErrorCode {
  if (err instanceof S3ServiceException) {
    const status = err.$metadata.httpStatusCode ?? 0;
    if (status === 412 || err.name === 'PreconditionFailed') return 'OBJECT_EXISTS';
    // Before the 404 rule: a missing bucket is not a missing object (a repository cannot be there at all).
    if (err.name === 'NoSuchBucket') return 'REPOSITORY_NOT_FOUND';
    if (status === 404 || err.name === 'NoSuchKey' || err.name === 'NotFound') return 'OBJECT_NOT_FOUND';
    if (status === 403 || status === 401 || err.name === 'InvalidAccessKeyId' || err.name === 'SignatureDoesNotMatch') {
      return 'STORE_ACCESS_DENIED';
    }
    return 'STORE_UNAVAILABLE';
  }
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && NETWORK_CODES.has(code)) return 'STORE_UNAVAILABLE';
  return 'STORE_UNAVAILABLE';
}

/** ObjectStore on S3 (RGW, MinIO, AWS). Every error is a CowvolError with a code of storeErrorCode. */
export class S3ObjectStore implements ObjectStore {
  readonly url: string;
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly limit: Semaphore;

  constructor(options: S3ObjectStoreOptions) {
    const { bucket, prefix } = parseS3Url(options.url);
    this.url = options.url;
    this.bucket = bucket;
    this.prefix = prefix;
    const jobs = options.jobs ?? 8;
    if (!Number.isInteger(jobs) || jobs < 1 || jobs > 256) throw new CowvolError('INVALID_ARGUMENT', `jobs must be 1..256, not ${String(jobs)}`);
    this.limit = new Semaphore(jobs);
    this.client = new S3Client({
      ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
      ...(options.region === undefined ? {} : { region: options.region }),
      ...(options.credentials === undefined ? {} : { credentials: options.credentials }),
      forcePathStyle: options.forcePathStyle ?? false,
      maxAttempts: options.maxAttempts ?? 4,
      requestHandler: {
        // A socket with no byte either way for this long fails the request, which is retried (the SDK's requestTimeout would only log, and bounds a whole upload).
        socketTimeout: options.requestTimeoutMs ?? 30_000,
        connectionTimeout: options.connectionTimeoutMs ?? 5_000,
        httpAgent: { maxSockets: jobs },
      },
    });
  }

  private async call<T>(what: string, key: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await this.limit.run(fn);
    } catch (err) {
      if (isCowvolError(err)) throw err;
      const code = storeErrorCode(err);
      // NoSuchBucket's own text does not say which bucket; ours does. A refusal's is often the SDK's "UnknownError" (no body to a HEAD, or a 403 it cannot parse).
      const sdkText = err instanceof Error ? err.message : String(err);
      const message =
        code === 'REPOSITORY_NOT_FOUND'
          ? `bucket ${this.bucket} does not exist (check the URL, or create the bucket first)`
          : code === 'STORE_ACCESS_DENIED'
            ? `the store refused the request (wrong or missing credentials — AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or a profile — or no permission on bucket ${this.bucket}): ${sdkText}`
            : sdkText;
      throw new CowvolError(code, `${what} ${this.url} ${key}: ${message}`, { cause: err, details: { key } });
    }
  }

  async put(key: string, body: Buffer, options?: { ifNoneMatch?: boolean }): Promise<void> {
    const cmd = new PutObjectCommand({
      Bucket: this.bucket,
      Key: this.prefix + key,
      Body: body,
      ContentLength: body.length,
      ...(options?.ifNoneMatch === true ? { IfNoneMatch: '*' } : {}),
    });
    // Tracked, as every mutation: none starts once the command is interrupted (interrupt-cleanup.ts).
    await trackedWrite(() => this.call('put', key, () => this.client.send(cmd)));
  }

  async get(key: string): Promise<Buffer> {
    return this.call('get', key, async () => {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
      if (out.Body === undefined) return Buffer.alloc(0);
      const bytes = Buffer.from(await out.Body.transformToByteArray());
      if (out.ContentLength !== undefined && out.ContentLength !== bytes.length) {
        throw new CowvolError('STORE_UNAVAILABLE', `get ${this.url} ${key}: ${String(bytes.length)} bytes of ${String(out.ContentLength)}`);
      }
      return bytes;
    });
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const out = await this.call('head', key, () => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.prefix + key })));
      return { key, sizeBytes: out.ContentLength ?? 0, lastModified: out.LastModified ?? new Date(0) };
    } catch (err) {
      if (isCowvolError(err) && err.code === 'OBJECT_NOT_FOUND') return undefined;
      throw err;
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    do {
      const input = { Bucket: this.bucket, Prefix: this.prefix + prefix, ...(token === undefined ? {} : { ContinuationToken: token }) };
      const out = await this.call('list', prefix, () => this.client.send(new ListObjectsV2Command(input)));
      for (const o of out.Contents ?? []) {
        if (o.Key === undefined) continue;
        yield { key: o.Key.slice(this.prefix.length), sizeBytes: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0) };
      }
      token = out.IsTruncated === true ? out.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async delete(key: string): Promise<void> {
    // Tracked: an interrupted prune's deletes land before its lock goes (interrupt-cleanup.ts).
    await trackedWrite(() => this.call('delete', key, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }))));
  }

  /**
   * Creates the URL's bucket (`backup init` of a bucket that does not
   * exist, like `restic init`; tests and benches): true when created, false
   * when this owner has it already. A bucket another owner holds is STORE_ACCESS_DENIED.
   * @throws STORE_ACCESS_DENIED, STORE_UNAVAILABLE
   */
  async createContainer(): Promise<boolean> {
    try {
      await this.limit.run(() => this.client.send(new CreateBucketCommand({ Bucket: this.bucket })));
      return true;
    } catch (err) {
      if (err instanceof S3ServiceException && err.name === 'BucketAlreadyOwnedByYou') return false;
      // Taken by someone else: the name cannot be this repository's (S3 bucket names are global).
      const code = err instanceof S3ServiceException && err.name === 'BucketAlreadyExists' ? 'STORE_ACCESS_DENIED' : storeErrorCode(err);
      throw new CowvolError(code, `create bucket ${this.bucket}: ${err instanceof Error ? err.message : String(err)}`, { cause: err, details: { bucket: this.bucket } });
    }
  }

  /** Closes the client's sockets. */
  close(): void {
    this.client.destroy();
  }
}
