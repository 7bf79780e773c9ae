import { readFile, writeFile, rm } from 'node:fs/promises';
import lockfile from 'proper-lockfile';
import { VolumeBusyError } from './errors.js';
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
  private constructor(private readonly layout: VolumeLayout, private readonly release: () => Promise<void>) {}

  static async acquire(layout: VolumeLayout, options: { staleMs?: number } = {}): Promise<OwnerLock> {
    let release: () => Promise<void>;
    try {
      release = await lockfile.lock(layout.sidecarPath, {
        lockfilePath: layout.lockPath,
        realpath: false,
        retries: 0,
        stale: options.staleMs ?? 10_000,
      });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ELOCKED') {
        const pid = Number.parseInt(await readFile(layout.ownerPath, 'utf8').catch(() => ''), 10);
        throw new VolumeBusyError(layout.volumePath, Number.isSafeInteger(pid) ? pid : undefined);
      }
      throw err;
    }
    await writeFile(layout.ownerPath, `${process.pid}\n`);
    return new OwnerLock(layout, release);
  }

  async unlock(): Promise<void> {
    await rm(this.layout.ownerPath, { force: true });
    await this.release();
  }
}
