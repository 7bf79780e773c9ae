import { FileBlockDevice, IoError, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { OpsInFlight } from '@cowvol/base/conformance';

/** One write or truncate that has not been synced yet. */
type Pending = { kind: 'write'; offsetBytes: number; data: Buffer; old: Buffer; sizeBefore: number } | { kind: 'truncate'; sizeBytes: number; sizeBefore: number };

/**
 * Power-loss simulation through the block-device seam (BRIEF §7). Wraps the
 * production FileBlockDevice; every write, truncate and sync is counted as
 * one I/O. At I/O number `crashAt` the "machine loses power": that I/O and
 * every later one fails, and `restore()` then rewrites each file to what a
 * disk with a volatile write cache could hold: everything synced, plus a
 * seeded random subset of the unsynced writes (possibly none, possibly all,
 * in any combination — a write-back cache persists in any order).
 */
export class CrashController implements DeviceOpener {
  ios = 0;
  crashed = false;
  private readonly pending = new Map<string, Pending[]>();

  /**
   * @param keepFraction chance that an unsynced write survives the power loss
   * @param tearFraction chance that a surviving write is torn: only a prefix
   *   of it, cut at a 512-byte sector boundary, reaches the disk
   */
  constructor(
    private crashAt: number,
    private readonly random: () => number,
    private readonly keepFraction: number,
    private readonly tearFraction = 0,
  ) {}

  /** Re-arms the power loss at the n-th I/O from now. */
  crashAfter(n: number): void {
    this.crashAt = this.ios + n;
  }

  async open(path: string, options: { create: boolean }): Promise<BlockDevice> {
    const inner = await FileBlockDevice.open(path, options);
    if (!this.pending.has(path)) this.pending.set(path, []);
    return new CrashDevice(inner, this, this.pending.get(path)!);
  }

  /** Counts one I/O; at the crash point and after it, throws. */
  tick(name: string): void {
    if (this.crashed) throw new IoError(`${name}: device lost (simulated power loss)`);
    this.ios += 1;
    if (this.ios === this.crashAt) {
      this.crashed = true;
      throw new IoError(`${name}: simulated power loss at I/O ${this.ios}`);
    }
  }

  /** Rewrites every file to a state the disk could hold after the power loss. */
  async restore(): Promise<{ keptWrites: number; lostWrites: number }> {
    let keptWrites = 0;
    let lostWrites = 0;
    for (const [path, list] of this.pending) {
      if (list.length === 0) continue;
      const dev = await FileBlockDevice.open(path);
      // Undo every unsynced change, newest first, back to the synced state …
      for (let i = list.length - 1; i >= 0; i--) {
        const p = list[i]!;
        if (p.kind === 'write') await dev.write(p.offsetBytes, p.old);
        await dev.truncate(p.sizeBefore);
      }
      // … then let the cache persist a random subset of them, in order.
      for (const p of list) {
        if (this.random() < this.keepFraction) {
          keptWrites += 1;
          if (p.kind === 'write') {
            let data = p.data;
            if (data.length > 512 && this.random() < this.tearFraction) {
              // Torn: the first k sectors made it, the rest did not.
              data = data.subarray(0, 512 * Math.floor(this.random() * Math.ceil(data.length / 512)));
            }
            await dev.write(p.offsetBytes, data);
          } else await dev.truncate(p.sizeBytes);
        } else {
          lostWrites += 1;
        }
      }
      await dev.sync();
      await dev.close();
      list.length = 0;
    }
    return { keptWrites, lostWrites };
  }
}

/** One file under a {@link CrashController}; keeps the BlockDevice contract (a call after `close()` is `IO_ERROR` and counts no I/O). */
class CrashDevice implements BlockDevice {
  private readonly ops = new OpsInFlight(() => this.name);
  constructor(
    private readonly inner: FileBlockDevice,
    private readonly ctl: CrashController,
    private readonly pending: Pending[],
  ) {}

  get name(): string {
    return this.inner.name;
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.ops.begin('read', offsetBytes, lengthBytes);
    try {
      if (this.ctl.crashed) throw new IoError(`${this.name}: device lost (simulated power loss)`);
      return await this.inner.read(offsetBytes, lengthBytes);
    } finally {
      this.ops.end();
    }
  }

  async readInto(offsetBytes: number, into: Uint8Array): Promise<void> {
    this.ops.begin('read', offsetBytes, into.length);
    try {
      if (this.ctl.crashed) throw new IoError(`${this.name}: device lost (simulated power loss)`);
      await this.inner.readInto(offsetBytes, into);
    } finally {
      this.ops.end();
    }
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.ops.begin('write', offsetBytes, data.length);
    try {
      this.ctl.tick(this.name);
      const sizeBefore = await this.inner.sizeBytes();
      const old = await this.inner.read(offsetBytes, data.length);
      this.pending.push({ kind: 'write', offsetBytes, data: Buffer.from(data), old, sizeBefore });
      await this.inner.write(offsetBytes, data);
    } finally {
      this.ops.end();
    }
  }

  async sync(): Promise<void> {
    this.ops.begin('sync', 0, 0);
    try {
      this.ctl.tick(this.name);
      await this.inner.sync();
      this.pending.length = 0;
    } finally {
      this.ops.end();
    }
  }

  sizeBytes(): Promise<number> {
    return this.inner.sizeBytes();
  }

  async truncate(sizeBytes: number): Promise<void> {
    this.ops.begin('truncate', sizeBytes, 0);
    try {
      this.ctl.tick(this.name);
      this.pending.push({ kind: 'truncate', sizeBytes, sizeBefore: await this.inner.sizeBytes() });
      await this.inner.truncate(sizeBytes);
    } finally {
      this.ops.end();
    }
  }

  close(): Promise<void> {
    return this.ops.close(() => this.inner.close());
  }
}
