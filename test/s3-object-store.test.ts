import { randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { S3ObjectStore } from '@cowvol/backup';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { objectStoreSuite } from './object-store-suite.js';
import { requireCeph, type S3Env } from './ceph.js';

const ceph = requireCeph();
const bucket = `cowvol-test-${randomBytes(4).toString('hex')}`;
const env = typeof ceph === 'string' ? undefined : ceph;
if (typeof ceph === 'string') console.warn(`skipping the S3 tests: ${ceph}`);

function store(e: S3Env, prefix: string, extra: Partial<ConstructorParameters<typeof S3ObjectStore>[0]> = {}, inBucket = bucket): S3ObjectStore {
  return new S3ObjectStore({
    url: `s3://${inBucket}/${prefix}`,
    endpoint: e.endpoint,
    forcePathStyle: true,
    region: e.region,
    credentials: { accessKeyId: e.accessKeyId, secretAccessKey: e.secretAccessKey },
    ...extra,
  });
}

describe.skipIf(env === undefined)('S3ObjectStore on Ceph RGW', () => {
  if (env === undefined) return;
  const e = env;
  beforeAll(async () => {
    const s = store(e, '');
    await s.createContainer();
    s.close();
  }, 60_000);
  afterAll(() => {
    e.stop();
  });

  let n = 0;
  objectStoreSuite(() => Promise.resolve(store(e, `suite-${String(n++)}-${randomBytes(3).toString('hex')}`)));

  it('wrong credentials are STORE_ACCESS_DENIED', async () => {
    const s = store(e, 'denied', { credentials: { accessKeyId: 'nobody', secretAccessKey: 'wrong' }, maxAttempts: 1 });
    await expect(s.put('k', Buffer.from('x'))).rejects.toMatchObject({ code: 'STORE_ACCESS_DENIED', message: expect.stringContaining('refused the request (wrong or missing credentials') as unknown });
    await expect(s.get('k')).rejects.toMatchObject({ code: 'STORE_ACCESS_DENIED', message: expect.stringContaining('credentials') as unknown });
  });

  it('a bucket that does not exist is REPOSITORY_NOT_FOUND naming the bucket, not a missing object; head finds nothing', async () => {
    const missing = `${bucket}-missing`;
    const s = store(e, 'p/', { maxAttempts: 1 }, missing);
    const named = { code: 'REPOSITORY_NOT_FOUND', message: expect.stringContaining(`bucket ${missing} does not exist`) as unknown };
    await expect(s.get('k')).rejects.toMatchObject(named);
    await expect(s.put('k', Buffer.from('x'))).rejects.toMatchObject(named);
    const listed: string[] = [];
    await expect(
      (async () => {
        for await (const o of s.list('')) listed.push(o.key);
      })(),
    ).rejects.toMatchObject(named);
    expect(listed).toEqual([]);
    expect(await s.head('k')).toBeUndefined();
    s.close();
  });

  it('an unreachable endpoint is STORE_UNAVAILABLE', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    await new Promise<void>((resolve) =>
      server.close(() => {
        resolve();
      }),
    );
    const s = store(e, 'down', { endpoint: `http://127.0.0.1:${String(port)}`, maxAttempts: 2 });
    await expect(s.get('k')).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
  });
});

// Needs no gateway: a local socket that takes requests and never answers.
it('a gateway that accepts connections and then stalls (reads, never answers) is STORE_UNAVAILABLE once the socket idles out, retried, never a hang', async () => {
  let accepted = 0;
  const sockets: Socket[] = [];
  const stalled = createServer((socket) => {
    accepted++;
    sockets.push(socket);
    socket.on('data', () => undefined); // takes the request, sends nothing back
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => stalled.listen(0, '127.0.0.1', resolve));
  const address = stalled.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  const s = new S3ObjectStore({
    url: 's3://stalled/p',
    endpoint: `http://127.0.0.1:${String(port)}`,
    forcePathStyle: true,
    region: 'us-east-1',
    credentials: { accessKeyId: 'test', secretAccessKey: 'test' },
    maxAttempts: 2,
    requestTimeoutMs: 300,
  });
  try {
    await expect(s.get('k')).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
    await expect(s.put('k', randomBytes(256 * 1024))).rejects.toMatchObject({ code: 'STORE_UNAVAILABLE' });
    expect(accepted, 'each request was tried twice').toBeGreaterThanOrEqual(2);
  } finally {
    s.close();
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => stalled.close(() => resolve()));
  }
});
