/**
 * Manifests (docs/FORMAT.md §12.4): a round trip keeps every field, every
 * flipped bit of the body is refused (BACKUP_CORRUPT), a body stored under
 * another key does not open, a newer version is UNSUPPORTED_VERSION, a
 * manifest breaking a rule is refused at encode (assertion) and decode,
 * names starting with `.` map to keys one to one. Flip positions are seeded
 * (COWVOL_SEED replays; the seed is printed).
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decodeManifest, deriveRepositoryKeys, encodeManifest, manifestObjectKey, manifestProblem, parseManifestObjectKey, MANIFEST_VERSION, type Manifest } from '@cowvol/backup';
import { hasCode } from '@cowvol/base';
import { mulberry32 } from '@cowvol/test-support';

const seed = process.env.COWVOL_SEED === undefined ? Date.now() % 2 ** 31 : Number(process.env.COWVOL_SEED);
console.log(`manifest.test.ts seed ${String(seed)} (COWVOL_SEED=${String(seed)} replays)`);

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return hasCode(err, 'BACKUP_CORRUPT', 'UNSUPPORTED_VERSION', 'INVALID_ARGUMENT', 'ASSERTION_FAILED') ? err.code : `uncoded: ${String(err)}`;
  }
  return 'returned';
}

const keys = deriveRepositoryKeys(randomBytes(32), randomBytes(16));
const uuid = 'a1'.repeat(16);

function sample(): Manifest {
  const chunks = new Map<number, string>();
  for (const i of [0, 3, 4, 9]) chunks.set(i, randomBytes(32).toString('hex'));
  return {
    volumeUuid: uuid,
    sizeBytes: 10 * 1024 * 1024 - 4096,
    blockSizeBytes: 4096,
    chunkSizeBytes: 1024 * 1024,
    snapshotName: 'nightly-1',
    identity: { volumeUuid: uuid, snapshotId: 7, createdAt: '2026-12-03T06:00:00.123Z', name: 'nightly-1' },
    labels: { owner: 'ops', 'tier/x': 'gold' },
    createdAt: '2026-12-03T06:00:00.123Z',
    pushedAt: '2026-12-03T06:01:00.000Z',
    parent: manifestObjectKey(uuid, 'nightly-0'),
    chunks,
    bytesNew: 123456,
    logicalBytes: 4 * 1024 * 1024,
  };
}

describe('manifest', () => {
  it('round-trips every field; the payload hides names, labels and ids', () => {
    const m = sample();
    const key = manifestObjectKey(m.volumeUuid, m.snapshotName);
    const body = encodeManifest(keys, key, m);
    expect(body.subarray(0, 4).toString('latin1')).toBe('CVMF');
    expect(body.readUInt8(4)).toBe(MANIFEST_VERSION);
    const back = decodeManifest(keys, key, body);
    expect(back).toEqual(m);
    for (const plain of ['nightly', 'owner', 'gold']) expect(body.includes(Buffer.from(plain, 'latin1'))).toBe(false);
    for (const id of m.chunks.values()) expect(body.includes(Buffer.from(id, 'hex'))).toBe(false);
  });

  it('refuses every flipped bit of a sample of positions, and a body stored under another key', () => {
    const m = sample();
    const key = manifestObjectKey(m.volumeUuid, m.snapshotName);
    const body = encodeManifest(keys, key, m);
    const random = mulberry32(seed);
    const positions = new Set<number>([0, 4, 5, 16, 17, body.length - 1]);
    while (positions.size < 64) positions.add(Math.floor(random() * body.length));
    for (const pos of positions) {
      const bad = Buffer.from(body);
      bad[pos] = (bad[pos] ?? 0) ^ (1 << Math.floor(random() * 8));
      const code = codeOf(() => decodeManifest(keys, key, bad));
      // Bit flips in the version byte to a larger version are told apart as UNSUPPORTED_VERSION.
      expect(pos === 4 ? ['BACKUP_CORRUPT', 'UNSUPPORTED_VERSION'] : ['BACKUP_CORRUPT'], `byte ${String(pos)}`).toContain(code);
    }
    expect(codeOf(() => decodeManifest(keys, manifestObjectKey(uuid, 'other'), body))).toBe('BACKUP_CORRUPT');
    expect(codeOf(() => decodeManifest(deriveRepositoryKeys(randomBytes(32), randomBytes(16)), key, body))).toBe('BACKUP_CORRUPT');
    expect(codeOf(() => decodeManifest(keys, key, body.subarray(0, 20)))).toBe('BACKUP_CORRUPT');
    const newer = Buffer.from(body);
    newer[4] = MANIFEST_VERSION + 1;
    expect(codeOf(() => decodeManifest(keys, key, newer))).toBe('UNSUPPORTED_VERSION');
  });

  it('states what breaks a rule: chunk indexes past the end, bad ids, a parent equal to itself, a foreign key, bad sizes', () => {
    const key = manifestObjectKey(uuid, 'nightly-1');
    expect(manifestProblem(sample(), key)).toBeUndefined();
    const cases: Array<(m: Manifest) => void> = [
      (m) => m.chunks.set(10, 'ab'.repeat(32)), // 10 chunks: index 10 is past the end
      (m) => m.chunks.set(1, 'AB'.repeat(32)),
      (m) => (m.parent = key),
      (m) => (m.snapshotName = 'other'),
      (m) => (m.chunkSizeBytes = 1000),
      (m) => (m.blockSizeBytes = 3000),
      (m) => (m.sizeBytes = 4097),
      (m) => (m.logicalBytes = m.sizeBytes + 1),
      (m) => (m.labels = { __proto__x: 'y', 'bad key': 'z' }),
      (m) => (m.identity = { ...m.identity, volumeUuid: 'nope' }),
      (m) => (m.createdAt = 'yesterday'),
    ];
    for (const [i, breakIt] of cases.entries()) {
      const m = sample();
      breakIt(m);
      expect(manifestProblem(m, key), `case ${String(i)}`).toBeDefined();
      expect(
        codeOf(() => encodeManifest(keys, key, m)),
        `case ${String(i)}`,
      ).toBe('ASSERTION_FAILED');
    }
  });

  it('maps snapshot names to keys one to one, escaping a leading dot', () => {
    for (const name of ['.', '..', '.cowvol-tmp-1', 'a.b', 'x:y', '%', '_-.']) {
      if (name === '%') {
        expect(codeOf(() => manifestObjectKey(uuid, name))).toBe('INVALID_ARGUMENT');
        continue;
      }
      const key = manifestObjectKey(uuid, name);
      expect(key.split('/').every((s) => s !== '.' && s !== '..' && !s.startsWith('.'))).toBe(true);
      expect(parseManifestObjectKey(key)).toEqual({ volumeUuid: uuid, snapshotName: name });
    }
    expect(parseManifestObjectKey(`manifests/${uuid}/.x`)).toBeUndefined();
    expect(parseManifestObjectKey(`manifests/${uuid}`)).toBeUndefined();
    expect(parseManifestObjectKey('manifests/zz/a')).toBeUndefined();
  });
});
