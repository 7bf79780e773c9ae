/**
 * Conformance suite of ObjectStore (docs/ARCHITECTURE.md §17): run it with a
 * factory giving a fresh, empty store (its own prefix) for each test.
 */
import { randomBytes } from 'node:crypto';
import { expect, it } from 'vitest';
import type { ObjectStore } from '@cowvol/backup';

export function objectStoreSuite(makeStore: () => Promise<ObjectStore>): void {
  it('round-trips 0 bytes, 1 byte and 5 MiB', async () => {
    const store = await makeStore();
    for (const size of [0, 1, 5 * 1024 * 1024]) {
      const body = randomBytes(size);
      await store.put(`obj-${String(size)}`, body);
      expect((await store.get(`obj-${String(size)}`)).equals(body)).toBe(true);
      expect((await store.head(`obj-${String(size)}`))?.sizeBytes).toBe(size);
    }
  });

  it('a conditional put refuses an existing key and leaves it unchanged', async () => {
    const store = await makeStore();
    await store.put('k', Buffer.from('first'), { ifNoneMatch: true });
    await expect(store.put('k', Buffer.from('second'), { ifNoneMatch: true })).rejects.toMatchObject({ code: 'OBJECT_EXISTS' });
    expect((await store.get('k')).toString()).toBe('first');
  });

  it('of two racing conditional puts exactly one wins', async () => {
    const store = await makeStore();
    for (let round = 0; round < 5; round++) {
      const results = await Promise.allSettled([
        store.put(`race-${String(round)}`, Buffer.from('a'), { ifNoneMatch: true }),
        store.put(`race-${String(round)}`, Buffer.from('b'), { ifNoneMatch: true }),
      ]);
      const won = results.filter((r) => r.status === 'fulfilled');
      expect(won).toHaveLength(1);
      const lost = results.find((r) => r.status === 'rejected');
      expect(lost?.reason).toMatchObject({ code: 'OBJECT_EXISTS' });
      const winner = results[0].status === 'fulfilled' ? 'a' : 'b';
      expect((await store.get(`race-${String(round)}`)).toString()).toBe(winner);
    }
  });

  it('lists by prefix in key order, past 1000 keys', async () => {
    const store = await makeStore();
    const keys = Array.from({ length: 1005 }, (_, i) => `l/${String(i).padStart(5, '0')}`);
    await Promise.all(keys.map((k) => store.put(k, Buffer.from(k))));
    await store.put('other', Buffer.alloc(0));
    const listed: string[] = [];
    for await (const o of store.list('l/')) listed.push(o.key);
    expect(listed).toEqual(keys);
  });

  it('head of a missing key is undefined; get of it is OBJECT_NOT_FOUND; delete is idempotent', async () => {
    const store = await makeStore();
    expect(await store.head('missing')).toBeUndefined();
    await expect(store.get('missing')).rejects.toMatchObject({ code: 'OBJECT_NOT_FOUND' });
    await store.put('d', Buffer.from('x'));
    await store.delete('d');
    await store.delete('d');
    expect(await store.head('d')).toBeUndefined();
  });
}
