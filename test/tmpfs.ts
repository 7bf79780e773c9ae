import { execFileSync } from 'node:child_process';
import { readdir, stat, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';

/**
 * Small tmpfs file systems for the full-disk tests (root only). Under
 * CI=true not being root is a failure (`requireRootUnderCi`); elsewhere the
 * tests are skipped and say why.
 */
export const IS_ROOT = process.getuid?.() === 0;

export function requireRootUnderCi(): void {
  if (process.env.CI === 'true') expect(IS_ROOT, 'the full-disk tests mount tmpfs file systems: run them as root').toBe(true);
  else if (!IS_ROOT) console.warn('full-disk tests skipped: not root (they mount tmpfs file systems)');
}

export function mountTmpfs(dir: string, sizeBytes: number): void {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeBytes}`, 'tmpfs', dir]);
}

export function unmount(dir: string): void {
  execFileSync('umount', [dir]);
}

export async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

/** Fills `dir`'s file system with `dir/filler` until exactly `leaveBytes` are free (tmpfs counts 4 KiB pages). */
export async function fillTo(dir: string, leaveBytes: number): Promise<void> {
  const grow = (await freeBytes(dir)) - leaveBytes;
  if (grow > 0) await writeFile(join(dir, 'filler'), Buffer.alloc(grow));
  expect(await freeBytes(dir)).toBe(leaveBytes);
}

/**
 * Every file under `dir` with its size and change times. The owner lock of
 * this version (the `lock` folder and the `owner` pid file) is left out: it
 * is the one write a read-only open still makes where it can.
 */
export async function filesOf(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    const path = join(e.parentPath, e.name);
    if (/\.cowvol\/(lock|owner)(\/|$)/.test(path) || e.isDirectory()) continue;
    const st = await stat(path, { bigint: true });
    out.set(path, `${st.size}:${st.mtimeNs}:${st.ctimeNs}`);
  }
  return out;
}
