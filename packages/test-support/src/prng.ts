/**
 * Seeded PRNG (mulberry32): a 32-bit seed → a function returning floats in
 * [0, 1). Deterministic, so a printed seed replays a run: the journal's
 * power-loss suite, cow-core's stress runner and test suites, the kill
 * tests. Not for anything secret.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
