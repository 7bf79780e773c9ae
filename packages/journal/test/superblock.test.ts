import { describe, expect, it } from 'vitest';
import { SUPERBLOCK_AREA_BYTES, decodeSuperblock, encodeSuperblock } from '../src/index.js';

/** The order of the superblock slot checks (docs/FORMAT.md §5.1, "Reading"). */
describe('journal superblock checks', () => {
  const uuid = Buffer.alloc(16, 7);
  const area = (): Buffer => {
    const buf = Buffer.alloc(SUPERBLOCK_AREA_BYTES);
    encodeSuperblock({ generation: 0, uuid, blockSizeBytes: 4096, lengthBlocks: 256, tailSequence: 1, tailBlock: 1 }).copy(buf, 0);
    encodeSuperblock({ generation: 1, uuid, blockSizeBytes: 4096, lengthBlocks: 256, tailSequence: 1, tailBlock: 1 }).copy(buf, 512);
    return buf;
  };
  const flipByte = (buf: Buffer, offsetBytes: number): void => {
    buf.writeUInt8(buf.readUInt8(offsetBytes) ^ 0xff, offsetBytes);
  };

  it('checks the version before the checksum: a version-1 slot is UNSUPPORTED_VERSION, not JOURNAL_CORRUPT', () => {
    const buf = area();
    for (const slot of [0, 512]) buf.writeUInt32BE(1, slot + 4); // the checksum no longer matches either
    expect(() => decodeSuperblock(buf, 'j')).toThrow(expect.objectContaining({ code: 'UNSUPPORTED_VERSION', details: { version: 1 } }));
  });

  it('a slot of the right version with a bad checksum is JOURNAL_CORRUPT; the other slot is used while it is valid', () => {
    const buf = area();
    flipByte(buf, 512 + 30); // slot B, lengthBlocks
    expect(decodeSuperblock(buf, 'j').generation).toBe(0);
    flipByte(buf, 30); // slot A too
    expect(() => decodeSuperblock(buf, 'j')).toThrow(expect.objectContaining({ code: 'JOURNAL_CORRUPT', message: 'j: journal superblock checksum mismatch' }));
  });
});
