import { assert } from '@cowvol/base';

/**
 * The freeze gate (like the kernel's `freeze_fs`): I/O operations pass
 * through it *shared*; snapshot create and delete *freeze* it — new
 * operations wait, operations in flight drain, then the freezer runs alone
 * and thaws. Waiters are served in arrival order, so a waiting freeze is
 * not starved by a stream of new I/O, and I/O is not starved by freezes.
 *
 * Bounded: at most `maxShared` operations in flight (back-pressure on
 * callers that issue unbounded concurrent requests).
 */
export class FreezeGate {
  private shared = 0;
  private frozen = false;
  private readonly waiters: Array<{ exclusive: boolean; wake: () => void }> = [];

  constructor(private readonly maxShared = 1024) {}

  /** Enters shared; resolves with the function that leaves. */
  async enter(): Promise<() => void> {
    if (this.frozen || this.waiters.length > 0 || this.shared >= this.maxShared) {
      await new Promise<void>((wake) => this.waiters.push({ exclusive: false, wake }));
    } else {
      this.shared += 1;
    }
    let left = false;
    return () => {
      assert(!left, 'left the freeze gate twice');
      left = true;
      this.shared -= 1;
      this.pump();
    };
  }

  /** Freezes: waits for every shared holder to leave; resolves with thaw. */
  async freeze(): Promise<() => void> {
    if (this.frozen || this.shared > 0 || this.waiters.length > 0) {
      await new Promise<void>((wake) => this.waiters.push({ exclusive: true, wake }));
    } else {
      this.frozen = true;
    }
    let thawed = false;
    return () => {
      assert(!thawed, 'thawed twice');
      thawed = true;
      this.frozen = false;
      this.pump();
    };
  }

  private pump(): void {
    while (this.waiters.length > 0 && !this.frozen) {
      const next = this.waiters[0]!;
      if (next.exclusive) {
        if (this.shared > 0) return;
        this.waiters.shift();
        this.frozen = true;
        next.wake();
        return;
      }
      if (this.shared >= this.maxShared) return;
      this.waiters.shift();
      this.shared += 1;
      next.wake();
    }
  }
}
