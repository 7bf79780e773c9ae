// The content of the kill tests' writes, shared by the writer child
// (kill-child.mjs) and the checker (kill.test.ts): a write's bytes are a
// pure function of its sequence number and offset, so the checker knows
// what every acknowledged write left without the child reporting data.

/**
 * Byte `offset` (absolute, in the volume) of write number `seqNo`.
 * @param {number} seqNo
 * @param {number} offset
 * @returns {number}
 */
export function contentByte(seqNo, offset) {
  let x = Math.imul(seqNo ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul((offset >>> 2) + 0x27d4eb2f, 0xc2b2ae35);
  x ^= x >>> 15;
  x = Math.imul(x, 0x2c1b3c6d);
  x ^= x >>> 12;
  x = Math.imul(x, 0x297a2d39);
  x ^= x >>> 15;
  return (x >>> ((offset & 3) * 8)) & 0xff;
}
