import { IoError } from '../src/index.js';

/**
 * The close half of the `BlockDevice` contract for test doubles
 * (docs/ARCHITECTURE.md §1 "packages/base"): `begin`/`end` count an
 * operation in flight, and `begin` refuses it with `IO_ERROR` once the device
 * is closed; `close` waits for the operations in flight, then runs `release`
 * once, however often it is called.
 * `FileBlockDevice` does the same over its descriptor.
 */
export class OpsInFlight {
  private count = 0;
  private drained: (() => void) | undefined;
  private closed: Promise<void> | undefined;

  /** `deviceName`: the device's name, for messages and `details.device`. */
  constructor(private readonly deviceName: () => string) {}

  /**
   * Starts one operation: counts it in flight until {@link end}. Called
   * first thing in the double's own async method, with `end()` in its
   * `finally`, it adds no turn of the event loop (a double's timing is part
   * of what its tests see).
   * @throws IO_ERROR when the device is closed
   */
  begin(op: string, offsetBytes: number, lengthBytes: number): void {
    if (this.closed !== undefined) {
      const device = this.deviceName();
      throw new IoError(`${op} on ${device} after close`, { details: { device, op, offsetBytes, lengthBytes } });
    }
    this.count += 1;
  }

  /** Ends an operation {@link begin} started. */
  end(): void {
    this.count -= 1;
    if (this.count === 0) this.drained?.();
  }

  /** Waits for every operation in flight, then `release` (the first call's); later calls wait for the first. */
  close(release: () => Promise<void> = () => Promise.resolve()): Promise<void> {
    this.closed ??= this.drainThen(release);
    return this.closed;
  }

  private async drainThen(release: () => Promise<void>): Promise<void> {
    if (this.count > 0) await new Promise<void>((resolve) => (this.drained = resolve));
    await release();
  }
}
