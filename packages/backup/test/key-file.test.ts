/**
 * Key files (docs/FORMAT.md §12.1): generated with O_EXCL and 0600, loaded
 * only when private, regular and 64 hex digits; a wrong key is BAD_KEY
 * through the config's key check value, before anything is written.
 */
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { decodeRepositoryConfig, encodeRepositoryConfig, generateKeyFile, loadKeyFile, newRepositoryConfig } from '@cowvol/backup';
import { crc32c, hasCode } from '@cowvol/base';

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'cowvol-keyfile-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    return hasCode(err, 'BAD_KEY', 'INVALID_ARGUMENT', 'IO_ERROR') ? err.code : `uncoded: ${String(err)}`;
  }
  return 'resolved';
}

describe('key files', () => {
  it('generates a 0600 file of 64 hex digits that loads back to the same 32 bytes', async () => {
    const path = join(dir, 'key');
    const key = await generateKeyFile(path);
    expect(key.length).toBe(32);
    const stat = await fsp.stat(path);
    expect(stat.mode & 0o777).toBe(0o600);
    expect(await fsp.readFile(path, 'latin1')).toBe(`${key.toString('hex')}\n`);
    expect((await loadKeyFile(path)).equals(key)).toBe(true);
  });

  it('never overwrites an existing file', async () => {
    const path = join(dir, 'key');
    await fsp.writeFile(path, 'keep me', { mode: 0o600 });
    expect(await codeOf(generateKeyFile(path))).toBe('INVALID_ARGUMENT');
    expect(await fsp.readFile(path, 'latin1')).toBe('keep me');
  });

  it('accepts 0600 and 0400 and refuses any group, other or execute bit', async () => {
    const path = join(dir, 'key');
    await generateKeyFile(path);
    for (const mode of [0o600, 0o400]) {
      await fsp.chmod(path, mode);
      expect(await codeOf(loadKeyFile(path))).toBe('resolved');
    }
    for (const mode of [0o640, 0o604, 0o644, 0o700, 0o660, 0o602]) {
      await fsp.chmod(path, mode);
      expect(await codeOf(loadKeyFile(path)), `mode 0${mode.toString(8)}`).toBe('BAD_KEY');
    }
  });

  it('refuses a symlink to a good key file, a directory and a missing file', async () => {
    const path = join(dir, 'key');
    await generateKeyFile(path);
    await fsp.symlink(path, join(dir, 'link'));
    expect(await codeOf(loadKeyFile(join(dir, 'link')))).toBe('BAD_KEY');
    await fsp.mkdir(join(dir, 'sub'), { mode: 0o700 });
    expect(await codeOf(loadKeyFile(join(dir, 'sub')))).toBe('BAD_KEY');
    expect(await codeOf(loadKeyFile(join(dir, 'missing')))).toBe('BAD_KEY');
  });

  it('refuses content that is not exactly 64 hex digits and one optional newline', async () => {
    const path = join(dir, 'key');
    const good = 'ab'.repeat(32);
    for (const [content, expected] of [
      [good, 'resolved'],
      [`${good}\n`, 'resolved'],
      [`${good}\n\n`, 'BAD_KEY'],
      [good.slice(2), 'BAD_KEY'],
      [`${good}00`, 'BAD_KEY'],
      [`${good.slice(1)}g`, 'BAD_KEY'],
      [` ${good}`, 'BAD_KEY'],
      ['', 'BAD_KEY'],
    ] as const) {
      await fsp.rm(path, { force: true });
      await fsp.writeFile(path, content, { mode: 0o600 });
      expect(await codeOf(loadKeyFile(path)), JSON.stringify(content)).toBe(expected);
    }
  });

  it('tells a wrong key by the key check value (BAD_KEY), a right one opens the config', async () => {
    const key = await generateKeyFile(join(dir, 'key'));
    const other = await generateKeyFile(join(dir, 'other'));
    const { config, keys } = newRepositoryConfig(key);
    const bytes = encodeRepositoryConfig(config, keys);
    expect(decodeRepositoryConfig(bytes, key, 'file:///r').config.repositoryId.equals(config.repositoryId)).toBe(true);
    expect(() => decodeRepositoryConfig(bytes, other, 'file:///r')).toThrow(expect.objectContaining({ code: 'BAD_KEY' }));
  });

  it('the trailer CRC is checked before the version: a flipped version byte is BACKUP_CORRUPT, a newer version with its own trailer UNSUPPORTED_VERSION', async () => {
    const key = await generateKeyFile(join(dir, 'key'));
    const { config, keys } = newRepositoryConfig(key);
    const bytes = encodeRepositoryConfig(config, keys);
    for (const bit of [0x01, 0x02, 0x10, 0x80]) {
      for (const at of [4, 5, 7]) {
        const flipped = Buffer.from(bytes);
        flipped[at] = (flipped[at] ?? 0) ^ bit;
        expect(() => decodeRepositoryConfig(flipped, key, 'file:///r')).toThrow(expect.objectContaining({ code: 'BACKUP_CORRUPT' }));
      }
    }
    // A later version, of this length or longer, that keeps the trailer rule (docs/FORMAT.md §12.2).
    const withTrailer = (body: Buffer): Buffer => {
      const out = Buffer.concat([body, Buffer.alloc(4)]);
      out.writeUInt32LE(crc32c(body), body.length);
      return out;
    };
    const v2 = Buffer.from(bytes.subarray(0, bytes.length - 4));
    v2.writeUInt32LE(2, 4);
    let newer: unknown;
    try {
      decodeRepositoryConfig(withTrailer(v2), key, 'file:///r');
    } catch (err) {
      newer = err;
    }
    expect(newer).toMatchObject({ code: 'UNSUPPORTED_VERSION', details: { version: 2 } });
    const longer = Buffer.concat([v2, Buffer.alloc(40, 7)]);
    expect(() => decodeRepositoryConfig(withTrailer(longer), key, 'file:///r')).toThrow(expect.objectContaining({ code: 'UNSUPPORTED_VERSION' }));
    // A truncated config fails its trailer, whatever its version says.
    expect(() => decodeRepositoryConfig(bytes.subarray(0, 60), key, 'file:///r')).toThrow(expect.objectContaining({ code: 'BACKUP_CORRUPT' }));
  });
});
