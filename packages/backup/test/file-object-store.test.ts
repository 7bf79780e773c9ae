/**
 * FileObjectStore (docs/ARCHITECTURE.md §17): the conditional put under
 * races (exactly one of several concurrent puts of a key wins; the others
 * are OBJECT_EXISTS and never replace it), listing sorted by bytes and by
 * prefix across subdirectories, bad keys refused, no temporary file left.
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileObjectStore } from '@cowvol/backup';
import { hasCode } from '@cowvol/base';

let dir: string;
let store: FileObjectStore;
beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'cowvol-fos-'));
  store = new FileObjectStore(pathToFileURL(join(dir, 'repo')).href);
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return hasCode(err, 'OBJECT_EXISTS', 'OBJECT_NOT_FOUND', 'INVALID_ARGUMENT', 'IO_ERROR') ? err.code : `uncoded: ${String(err)}`;
  }
  return 'resolved';
}

async function keysOf(prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.list(prefix)) keys.push(info.key);
  return keys;
}

async function allFiles(root: string): Promise<string[]> {
  const entries = await fsp.readdir(root, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => e.name);
}

describe('FileObjectStore', () => {
  it('puts, gets, heads and deletes; a missing key is OBJECT_NOT_FOUND, deleting it twice is fine', async () => {
    expect(await codeOf(store.get('config'))).toBe('OBJECT_NOT_FOUND');
    expect(await store.head('config')).toBeUndefined();
    await store.put('config', Buffer.from('one'));
    await store.put('config', Buffer.from('two')); // unconditional: replaces
    expect((await store.get('config')).toString()).toBe('two');
    expect(await store.head('config')).toMatchObject({ key: 'config', sizeBytes: 3 });
    const stat = await fsp.stat(join(dir, 'repo', 'config'));
    expect(stat.mode & 0o077).toBe(0);
    await store.delete('config');
    await store.delete('config');
    expect(await codeOf(store.get('config'))).toBe('OBJECT_NOT_FOUND');
    expect(await store.head('config')).toBeUndefined();
  });

  it('a conditional put never replaces: OBJECT_EXISTS, the first body kept, no temporary file left', async () => {
    await store.put('chunks/ab/abcd', Buffer.from('first'), { ifNoneMatch: true });
    expect(await codeOf(store.put('chunks/ab/abcd', Buffer.from('second'), { ifNoneMatch: true }))).toBe('OBJECT_EXISTS');
    expect((await store.get('chunks/ab/abcd')).toString()).toBe('first');
    expect(await allFiles(join(dir, 'repo'))).toEqual(['abcd']);
  });

  it('of concurrent conditional puts of one key exactly one wins, and its body is the one stored', async () => {
    for (let round = 0; round < 20; round++) {
      const key = `race/${String(round)}`;
      const bodies = Array.from({ length: 4 }, (_, i) => Buffer.from(`contender ${String(i)} `.repeat(1000 * (i + 1))));
      const outcomes = await Promise.all(bodies.map((body) => codeOf(store.put(key, body, { ifNoneMatch: true }))));
      const winners = outcomes.flatMap((o, i) => (o === 'resolved' ? [i] : []));
      expect(winners.length, `round ${String(round)}: ${outcomes.join(',')}`).toBe(1);
      expect(outcomes.filter((o) => o === 'OBJECT_EXISTS').length).toBe(3);
      expect((await store.get(key)).equals(bodies[winners[0]!]!)).toBe(true);
    }
    expect((await allFiles(join(dir, 'repo', 'race'))).length).toBe(20);
  });

  it('lists every key in ascending byte order, recursively, by prefix', async () => {
    const keys = ['a', 'a.c', 'a0', 'b/x', 'b/y/z', 'b.', 'ba', 'chunks/00/00ff', 'chunks/0f/0fee', 'chunks/ff/ffaa', 'é', 'z'];
    for (const key of [...keys].reverse()) await store.put(key, Buffer.from(key), { ifNoneMatch: true });
    const sorted = [...keys].sort((p, q) => Buffer.compare(Buffer.from(p), Buffer.from(q)));
    expect(await keysOf('')).toEqual(sorted);
    expect(await keysOf('b')).toEqual(['b.', 'b/x', 'b/y/z', 'ba']);
    expect(await keysOf('b/')).toEqual(['b/x', 'b/y/z']);
    expect(await keysOf('chunks/0')).toEqual(['chunks/00/00ff', 'chunks/0f/0fee']);
    expect(await keysOf('chunks/ff/ffaa')).toEqual(['chunks/ff/ffaa']);
    expect(await keysOf('nothing')).toEqual([]);
    for await (const info of store.list('a0')) expect(info).toMatchObject({ key: 'a0', sizeBytes: 2 });
    const missing: string[] = [];
    for await (const info of new FileObjectStore(pathToFileURL(join(dir, 'missing')).href).list('')) missing.push(info.key);
    expect(missing).toEqual([]); // a store whose directory is not there yet lists nothing
  });

  it('refuses a listing where a symbolic link is (INVALID_ARGUMENT naming it): a folder moved elsewhere and linked back, an alias of another folder, a linked file — never followed, never passed over', async () => {
    await store.put('manifests/u1/a', Buffer.from('A'));
    await store.put('chunks/0b/c', Buffer.from('C'));
    expect(await keysOf('')).toEqual(['chunks/0b/c', 'manifests/u1/a']);
    const cases: Array<[string, () => Promise<void>, () => Promise<void>]> = [
      [
        'manifests/u1',
        async () => {
          await fsp.rename(join(dir, 'repo', 'manifests', 'u1'), join(dir, 'moved-u1'));
          await fsp.symlink(join(dir, 'moved-u1'), join(dir, 'repo', 'manifests', 'u1'));
        },
        async () => {
          await fsp.unlink(join(dir, 'repo', 'manifests', 'u1'));
          await fsp.rename(join(dir, 'moved-u1'), join(dir, 'repo', 'manifests', 'u1'));
        },
      ],
      ['chunks/zz', () => fsp.symlink(join(dir, 'repo', 'chunks', '0b'), join(dir, 'repo', 'chunks', 'zz')), () => fsp.unlink(join(dir, 'repo', 'chunks', 'zz'))],
      ['chunks/0b/d', () => fsp.symlink(join(dir, 'repo', 'chunks', '0b', 'c'), join(dir, 'repo', 'chunks', '0b', 'd')), () => fsp.unlink(join(dir, 'repo', 'chunks', '0b', 'd'))],
    ];
    for (const [where, make, undo] of cases) {
      await make();
      const err = await keysOf('').catch((e: unknown) => e);
      expect(err, where).toMatchObject({ code: 'INVALID_ARGUMENT', details: { key: where } });
      await undo();
    }
    expect(await keysOf('')).toEqual(['chunks/0b/c', 'manifests/u1/a']);
  });

  it('a root that is a file, not a folder, lists as an empty store (so a repository there is REPOSITORY_NOT_FOUND, not an odd INVALID_ARGUMENT)', async () => {
    await fsp.writeFile(join(dir, 'afile'), 'x');
    const onFile = new FileObjectStore(pathToFileURL(join(dir, 'afile')).href);
    const keys: string[] = [];
    for await (const info of onFile.list('')) keys.push(info.key);
    expect(keys).toEqual([]);
  });

  it('makes missing directories 0700, many puts at once; where none can be made (/proc) it is IO_ERROR, not a hang', async () => {
    const deep = new FileObjectStore(pathToFileURL(join(dir, 'a', 'b', 'c')).href);
    await Promise.all(Array.from({ length: 16 }, (_, i) => deep.put(`x/y/k${String(i)}`, Buffer.from([i]))));
    const listed: string[] = [];
    for await (const info of deep.list('')) listed.push(info.key);
    expect(listed).toHaveLength(16);
    for (const sub of ['a', 'a/b', 'a/b/c', 'a/b/c/x', 'a/b/c/x/y']) expect((await fsp.stat(join(dir, sub))).mode & 0o777, sub).toBe(0o700);
    // fs.mkdir(…, { recursive: true }) spins forever here: /proc answers ENOENT to any mkdir.
    const proc = new FileObjectStore(`file:///proc/cowvol-test-${String(process.pid)}`);
    expect(await codeOf(proc.put('config', Buffer.from('x')))).toBe('IO_ERROR');
  });

  it('refuses bad keys with INVALID_ARGUMENT and writes nothing outside its directory', async () => {
    for (const key of ['', '/abs', '../escape', 'a/../../b', 'a//b', 'a/', './a', 'nul\0', 'x'.repeat(1025), 'é'.repeat(513), 'a/.cowvol-tmp-1']) {
      expect(await codeOf(store.put(key, Buffer.from('x'))), JSON.stringify(key.slice(0, 20))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(store.get(key))).toBe('INVALID_ARGUMENT');
      expect(await codeOf(store.delete(key))).toBe('INVALID_ARGUMENT');
    }
    await store.put('x'.repeat(200), Buffer.from('longest segment a file system takes')); // within NAME_MAX
    expect(await codeOf(keysOf('\0'))).toBe('INVALID_ARGUMENT');
    expect((await fsp.readdir(dir)).sort()).toEqual(['repo']);
    expect(() => new FileObjectStore('s3://bucket/prefix')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => new FileObjectStore('file://host/path')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    // file:relative would name /relative; file:/// and file:////// the root directory; %00 a NUL in the path.
    // A query or a fragment would be dropped from the path: file:///r/a#b named /r/a, so two scripts with #1 and #2 shared a repository.
    for (const url of ['file:relative', 'file:/abs/but/one/slash', 'file:///', 'file://///', 'file:///tmp/x%00y', 'file:///tmp/host#1', 'file:///tmp/q?x=1']) {
      expect(() => new FileObjectStore(url), url).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    expect(new FileObjectStore('file:///tmp/repo/').rootPath).toBe('/tmp/repo');
    expect(new FileObjectStore('file://localhost/tmp/repo').rootPath).toBe('/tmp/repo');
    expect(new FileObjectStore('file:///tmp/host%231').rootPath).toBe('/tmp/host#1');
  });

  it('refuses a key that is both an object and a prefix followed by /', async () => {
    await store.put('a', Buffer.from('file'));
    expect(await codeOf(store.put('a/b', Buffer.from('under a file')))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(store.get('a/b'))).toBe('OBJECT_NOT_FOUND');
    await store.put('d/e', Buffer.from('under d'));
    expect(await codeOf(store.put('d', Buffer.from('over a prefix'), { ifNoneMatch: true }))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(store.put('d', Buffer.from('over a prefix')))).toBe('INVALID_ARGUMENT');
    expect(await codeOf(store.get('d'))).toBe('OBJECT_NOT_FOUND');
    expect(await keysOf('')).toEqual(['a', 'd/e']);
  });
});
