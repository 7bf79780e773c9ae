// Shared helpers of the benchmark suite: units, statistics, formatting,
// the pseudo-random block permutation every implementation uses, /proc/self/io.
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

export const now = () => performance.now();

export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

export function fmtBytes(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '-';
  const units = ['B', 'K', 'M', 'G', 'T'];
  let i = 0;
  let x = n;
  while (Math.abs(x) >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${x >= 100 || i === 0 ? Math.round(x) : x.toFixed(1)}${units[i]}`;
}

export function fmtNum(x, digits = 3) {
  if (x === undefined || x === null || Number.isNaN(x)) return '-';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString('en-US');
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(digits);
}

export function fmtRatio(x) {
  if (x === undefined || x === null || !Number.isFinite(x)) return '-';
  return `${x >= 10 ? x.toFixed(1) : x.toFixed(2)}x`;
}

function isPrime(n) {
  if (n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/**
 * The "random" order used by every implementation: block i of the workload is
 * volume block (i × P) mod nBlocks, with P the largest prime ≤ 0.618 × nBlocks
 * that does not divide nBlocks. It is a permutation (each block exactly once
 * per nBlocks writes), successive writes land ~0.38 × volume apart, and
 * qemu-img bench can replay exactly the same sequence with -S P×blockSize
 * (its offset wraps modulo the image size). qemu-img bench has no random mode,
 * so this is the most faithful workload all three can share.
 */
export function permutationStep(nBlocks) {
  let p = Math.max(1, Math.floor(nBlocks * 0.6180339887));
  while (p > 1 && (!isPrime(p) || nBlocks % p === 0)) p--;
  return p;
}

export function permBlock(i, step, nBlocks) {
  // (i × step) mod n without losing precision (i, step < 2^26 in practice; use BigInt beyond 2^53).
  const prod = i * step;
  return Number.isSafeInteger(prod) ? prod % nBlocks : Number((BigInt(i) * BigInt(step)) % BigInt(nBlocks));
}

/** Process-wide I/O counters (all threads, LevelDB's included). */
export function procIo() {
  try {
    const out = {};
    for (const line of readFileSync('/proc/self/io', 'utf8').split('\n')) {
      const [k, v] = line.split(':');
      if (k && v) out[k.trim()] = Number(v.trim());
    }
    return out;
  } catch {
    return {};
  }
}

export function diffObj(after, before) {
  const out = {};
  for (const [k, v] of Object.entries(after ?? {})) {
    if (typeof v === 'number') out[k] = v - (before?.[k] ?? 0);
    else if (v && typeof v === 'object') out[k] = diffObj(v, before?.[k]);
  }
  return out;
}

/** One buffer of incompressible bytes; workloads write slices of it. */
let payload;
export function payloadBuffer(bytes) {
  if (!payload || payload.length < bytes) payload = randomBytes(Math.max(bytes, 4 * MiB));
  return payload.subarray(0, bytes);
}

/** Runs `fn(i)` for i in [0, count) with `depth` of them in flight. */
export async function inFlight(count, depth, fn) {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(depth, count) }, worker));
}
