/**
 * Sealed chunks and the config object (docs/FORMAT.md §12.2, §12.3): round
 * trips, every flipped bit refused, a body under another id refused, no
 * plaintext in the ciphertext, HKDF keys distinct per repository. Random
 * positions come from a seeded generator (COWVOL_SEED replays; the seed is
 * printed); COWVOL_SEAL_FLIPS runs more flips of the 4 MiB chunk.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  CHUNK_OVERHEAD_BYTES,
  CONFIG_BYTES,
  decodeRepositoryConfig,
  deriveRepositoryKeys,
  encodeRepositoryConfig,
  newRepositoryConfig,
  openChunk,
  sealChunk,
  type RepositoryKeys,
} from '@cowvol/backup';
import { crc32c, hasCode } from '@cowvol/base';
import { mulberry32 } from '@cowvol/test-support';

const seed = process.env.COWVOL_SEED === undefined ? Date.now() % 2 ** 31 : Number(process.env.COWVOL_SEED);
console.log(`chunk-seal.test.ts seed ${String(seed)} (COWVOL_SEED=${String(seed)} replays)`);
const flips4MiB = Number(process.env.COWVOL_SEAL_FLIPS ?? '32');

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return hasCode(err, 'BACKUP_CORRUPT', 'BAD_KEY', 'UNSUPPORTED_VERSION', 'INVALID_ARGUMENT') ? err.code : `uncoded: ${String(err)}`;
  }
  return 'returned';
}

const keyBytes = randomBytes(32);
const keys: RepositoryKeys = deriveRepositoryKeys(keyBytes, randomBytes(16));

describe('repository keys', () => {
  it('are five distinct 32-byte values, and differ between repositories with the same key file', () => {
    const values = [keys.encryptionKey, keys.macKey, keys.configMacKey, keys.keyCheck, keys.manifestKey].map((b) => b.toString('hex'));
    expect(new Set(values).size).toBe(5);
    const other = deriveRepositoryKeys(keyBytes, randomBytes(16));
    expect(other.encryptionKey.equals(keys.encryptionKey)).toBe(false);
    expect(other.macKey.equals(keys.macKey)).toBe(false);
  });
});

describe('sealed chunks', () => {
  it.each([0, 1, 4 * 1024 * 1024])('round-trips %i bytes, 33 bytes of overhead, id = HMAC of the plaintext', (size) => {
    const plaintext = randomBytes(size);
    const sealed = sealChunk(keys, plaintext);
    expect(sealed.id).toMatch(/^[0-9a-f]{64}$/);
    expect(sealed.body.length).toBe(size + CHUNK_OVERHEAD_BYTES);
    expect(openChunk(keys, sealed.id, sealed.body).equals(plaintext)).toBe(true);
    const again = sealChunk(keys, plaintext);
    expect(again.id).toBe(sealed.id); // same content, same id: deduplication
    expect(again.body.equals(sealed.body)).toBe(false); // a fresh nonce every seal
  });

  it('refuses every single flipped bit of a small sealed chunk', () => {
    const sealed = sealChunk(keys, randomBytes(100));
    for (let bit = 0; bit < sealed.body.length * 8; bit++) {
      const body = Buffer.from(sealed.body);
      body[bit >> 3] = body[bit >> 3]! ^ (1 << (bit & 7));
      const code = codeOf(() => openChunk(keys, sealed.id, body));
      // The version byte flipped upward reads as a newer version; everything else is damage.
      expect(code === 'BACKUP_CORRUPT' || (code === 'UNSUPPORTED_VERSION' && bit >> 3 === 4), `bit ${String(bit)}: ${code}`).toBe(true);
    }
  });

  it(`refuses seeded random flipped bits of a 4 MiB chunk (${String(flips4MiB)})`, () => {
    const next = mulberry32(seed);
    const sealed = sealChunk(keys, randomBytes(4 * 1024 * 1024));
    for (let i = 0; i < flips4MiB; i++) {
      const bit = Math.floor(next() * sealed.body.length * 8);
      const body = Buffer.from(sealed.body);
      body[bit >> 3] = body[bit >> 3]! ^ (1 << (bit & 7));
      expect(
        codeOf(() => openChunk(keys, sealed.id, body)),
        `seed ${String(seed)} bit ${String(bit)}`,
      ).not.toBe('returned');
    }
  });

  it('refuses a body under another id, a truncated body and a key of another repository, naming the id', () => {
    const a = sealChunk(keys, Buffer.from('chunk a'));
    const b = sealChunk(keys, Buffer.from('chunk b'));
    expect(() => openChunk(keys, b.id, a.body)).toThrow(expect.objectContaining({ code: 'BACKUP_CORRUPT', details: { chunkId: b.id } }));
    expect(codeOf(() => openChunk(keys, a.id, a.body.subarray(0, a.body.length - 1)))).toBe('BACKUP_CORRUPT');
    expect(codeOf(() => openChunk(keys, a.id, a.body.subarray(0, 10)))).toBe('BACKUP_CORRUPT');
    expect(codeOf(() => openChunk(deriveRepositoryKeys(keyBytes, randomBytes(16)), a.id, a.body))).toBe('BACKUP_CORRUPT');
    expect(codeOf(() => openChunk(keys, 'A'.repeat(64), a.body))).toBe('INVALID_ARGUMENT');
  });

  it('refuses a valid seal whose plaintext does not hash to the id it is stored under', () => {
    // A body sealed (with the right keys) for id X but holding other bytes: the tag checks, the HMAC does not.
    const real = sealChunk(keys, Buffer.from('real'));
    const forgedKeys = { ...keys, macKey: randomBytes(32) };
    const forged = sealChunk(forgedKeys, Buffer.from('real'));
    expect(forged.id).not.toBe(real.id);
    expect(codeOf(() => openChunk(keys, forged.id, forged.body))).toBe('BACKUP_CORRUPT');
  });

  it('leaves no plaintext in the sealed body', () => {
    const pattern = Buffer.from('cowvol-plaintext-marker-');
    const plaintext = Buffer.alloc(64 * 1024);
    for (let i = 0; i < plaintext.length; i += pattern.length) pattern.copy(plaintext, i);
    const { body } = sealChunk(keys, plaintext);
    expect(body.includes(pattern.subarray(0, 12))).toBe(false);
    expect(body.includes(Buffer.alloc(32))).toBe(false);
    const zeros = sealChunk(keys, Buffer.alloc(64 * 1024)).body;
    expect(zeros.includes(Buffer.alloc(16))).toBe(false);
  });
});

describe('the config object', () => {
  it('round-trips with the default 4 MiB chunk size and a given one', () => {
    for (const size of [undefined, 64 * 1024, 64 * 1024 * 1024]) {
      const { config, keys: k } = size === undefined ? newRepositoryConfig(keyBytes) : newRepositoryConfig(keyBytes, size);
      const bytes = encodeRepositoryConfig(config, k);
      expect(bytes.length).toBe(CONFIG_BYTES);
      const decoded = decodeRepositoryConfig(bytes, keyBytes, 'file:///r');
      expect(decoded.config.chunkSizeBytes).toBe(size ?? 4 * 1024 * 1024);
      expect(decoded.config.repositoryId.equals(config.repositoryId)).toBe(true);
      expect(decoded.keys.encryptionKey.equals(k.encryptionKey)).toBe(true);
    }
  });

  it('refuses a chunk size that is not a power of two in 64 KiB..64 MiB', () => {
    for (const size of [0, 1000, 32 * 1024, 3 * 1024 * 1024, 128 * 1024 * 1024, 1.5]) {
      expect(
        codeOf(() => newRepositoryConfig(keyBytes, size)),
        String(size),
      ).toBe('INVALID_ARGUMENT');
    }
  });

  it('is BACKUP_CORRUPT for a bad MAC (CRC recomputed) and for any flipped bit (the version field too), UNSUPPORTED_VERSION for a newer version with its trailer CRC', () => {
    const { config, keys: k } = newRepositoryConfig(keyBytes);
    const bytes = encodeRepositoryConfig(config, k);
    const badMac = Buffer.from(bytes);
    badMac[70] = badMac[70]! ^ 1; // inside the MAC (bytes 60..91)
    badMac.writeUInt32LE(crc32c(badMac.subarray(0, 92)), 92);
    expect(() => decodeRepositoryConfig(badMac, keyBytes, 'file:///r')).toThrow(expect.objectContaining({ code: 'BACKUP_CORRUPT' }));
    for (let bit = 0; bit < bytes.length * 8; bit++) {
      const flipped = Buffer.from(bytes);
      flipped[bit >> 3] = flipped[bit >> 3]! ^ (1 << (bit & 7));
      expect(
        codeOf(() => decodeRepositoryConfig(flipped, keyBytes, 'file:///r')),
        `bit ${String(bit)}`,
      ).toBe('BACKUP_CORRUPT');
    }
    // A later version keeps the trailer rule (docs/FORMAT.md §12.2): the CRC32C of all before the last 4 bytes, in them.
    const newer = Buffer.concat([bytes.subarray(0, 92), Buffer.alloc(50), Buffer.alloc(4)]);
    newer.writeUInt32LE(2, 4);
    newer.writeUInt32LE(crc32c(newer.subarray(0, newer.length - 4)), newer.length - 4);
    expect(() => decodeRepositoryConfig(newer, keyBytes, 'file:///r')).toThrow(expect.objectContaining({ code: 'UNSUPPORTED_VERSION', details: expect.objectContaining({ version: 2 }) as unknown }));
    const zero = Buffer.from(bytes);
    zero.writeUInt32LE(0, 4);
    expect(codeOf(() => decodeRepositoryConfig(zero, keyBytes, 'file:///r'))).toBe('BACKUP_CORRUPT');
    expect(codeOf(() => decodeRepositoryConfig(bytes.subarray(0, 95), keyBytes, 'file:///r'))).toBe('BACKUP_CORRUPT');
  });

  it('is BAD_KEY, not BACKUP_CORRUPT, for an intact config opened with another key', () => {
    const { config, keys: k } = newRepositoryConfig(keyBytes);
    expect(codeOf(() => decodeRepositoryConfig(encodeRepositoryConfig(config, k), randomBytes(32), 'file:///r'))).toBe('BAD_KEY');
  });
});
