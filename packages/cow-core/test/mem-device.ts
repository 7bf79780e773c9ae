import { IoError, type BlockDevice } from '@cowvol/base';
import { OpsInFlight } from '@cowvol/base/conformance';

/**
 * An in-memory device for store tests. `holdNextRead` makes the next read
 * take its bytes at once and deliver them when it resolves; `holdNextWrite`
 * stops the next write until released; `failWrite` fails the writes it
 * names (IO_ERROR); `writes` logs every write call. Keeps the BlockDevice
 * contract (the shared conformance suite): every call after `close()` is
 * `IO_ERROR`, and `close()` waits for held reads and writes.
 */
export class MemDevice implements BlockDevice {
  readonly name = 'mem-store';
  reads = 0;
  readonly writes: Array<{ offsetBytes: number; lengthBytes: number }> = [];
  holdNextRead: (() => Promise<void>) | undefined;
  failWrite: ((offsetBytes: number, lengthBytes: number) => boolean) | undefined;
  private heldWrite: Promise<void> | undefined;
  private readonly ops = new OpsInFlight(() => this.name);
  constructor(public bytes: Buffer = Buffer.alloc(0)) {}

  /** Holds the next write call until the returned function is called. */
  holdNextWrite(): () => void {
    let release!: () => void;
    this.heldWrite = new Promise<void>((r) => (release = r));
    return release;
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const out = Buffer.alloc(lengthBytes);
    await this.readInto(offsetBytes, out);
    return out;
  }
  async readInto(offsetBytes: number, into: Uint8Array): Promise<void> {
    this.ops.begin('read', offsetBytes, into.length);
    try {
      this.reads += 1;
      const taken = Buffer.alloc(into.length);
      if (offsetBytes < this.bytes.length) this.bytes.copy(taken, 0, offsetBytes, Math.min(this.bytes.length, offsetBytes + into.length));
      const hold = this.holdNextRead;
      this.holdNextRead = undefined;
      await hold?.();
      into.set(taken);
    } finally {
      this.ops.end();
    }
  }
  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.ops.begin('write', offsetBytes, data.length);
    try {
      this.writes.push({ offsetBytes, lengthBytes: data.length });
      const held = this.heldWrite;
      this.heldWrite = undefined;
      await held;
      if (this.failWrite?.(offsetBytes, data.length)) throw new IoError(`injected write failure at ${offsetBytes}`);
      if (offsetBytes + data.length > this.bytes.length) this.bytes = Buffer.concat([this.bytes, Buffer.alloc(offsetBytes + data.length - this.bytes.length)]);
      this.bytes.set(data, offsetBytes);
    } finally {
      this.ops.end();
    }
  }
  async sync(): Promise<void> {
    this.ops.begin('sync', 0, 0);
    this.ops.end();
  }
  async sizeBytes(): Promise<number> {
    this.ops.begin('stat', 0, 0);
    this.ops.end();
    return this.bytes.length;
  }
  async truncate(sizeBytes: number): Promise<void> {
    this.ops.begin('truncate', sizeBytes, 0);
    const next = Buffer.alloc(sizeBytes);
    this.bytes.copy(next, 0, 0, Math.min(sizeBytes, this.bytes.length));
    this.bytes = next;
    this.ops.end();
  }
  close(): Promise<void> {
    return this.ops.close();
  }
}
