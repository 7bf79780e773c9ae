import { readFile, writeFile, rm } from 'node:fs/promises';
import lockfile from 'proper-lockfile';
import { IoError } from '@cowvol/journal';
import { LockLostError, VolumeBusyError } from './errors.js';
import type { VolumeLayout } from './layout.js';

/**
 * One process at a time owns a volume. The lock is proper-lockfile's
 * (an atomic `mkdir` of `<sidecar>/lock`, refreshed while held, considered
 * stale after `staleMs` without refresh, so a killed owner does not lock the
 * volume forever). The holder writes its pid to `<sidecar>/owner` so a
 * refused process can say who holds it.
 *
 * @throws VolumeBusyError `VOLUME_BUSY` when another live process holds it.
 */
export class OwnerLock {
  private lost: Error | undefined;
  private release: () => Promise<void> = async () => undefined;

  private constructor(private readonly layout: VolumeLayout) {}

  /**
   * Throws `LOCK_LOST` when the lock was taken over (this process stalled
   * past the stale time and another one claimed the volume): nothing more
   * may be written.
   */
  throwIfLost(): void {
    if (this.lost) throw new LockLostError(this.layout.volumePath, this.lost);
  }

  /**
   * `readOnly` (a read-only open): on a read-only file system, where the
   * lock folder cannot be made, the volume is used without it (no writer can
   * change it through that mount). The pid file is best effort: a full or
   * read-only file system leaves it out.
   */
  static async acquire(layout: VolumeLayout, options: { staleMs?: number; readOnly?: boolean } = {}): Promise<OwnerLock> {
    const owner = new OwnerLock(layout);
    try {
      owner.release = await lockfile.lock(layout.sidecarPath, {
        lockfilePath: layout.lockPath,
        realpath: false,
        retries: 0,
        stale: options.staleMs ?? 10_000,
        // proper-lockfile's default throws from a timer; record it instead
        // and refuse further work (throwIfLost).
        onCompromised: (err) => {
          owner.lost = err;
        },
      });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ELOCKED') {
        const pid = Number.parseInt(await readFile(layout.ownerPath, 'utf8').catch(() => ''), 10);
        throw new VolumeBusyError(layout.volumePath, Number.isSafeInteger(pid) ? pid : undefined);
      }
      if (options.readOnly && (err as NodeJS.ErrnoException).code === 'EROFS') return owner;
      throw new IoError(`cannot lock ${layout.sidecarPath}: ${(err as Error).message}`, { cause: err, details: { path: layout.lockPath } });
    }
    await writeFile(layout.ownerPath, `${process.pid}\n`).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOSPC' || err.code === 'EDQUOT' || err.code === 'EROFS') return;
      await owner.release().catch(() => undefined);
      throw new IoError(`cannot write ${layout.ownerPath}: ${err.message}`, { cause: err, details: { path: layout.ownerPath } });
    });
    return owner;
  }

  async unlock(): Promise<void> {
    await rm(this.layout.ownerPath, { force: true });
    await this.release();
  }
}
