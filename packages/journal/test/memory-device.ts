import { IoError, type BlockDevice } from '@cowvol/base';
import { OpsInFlight } from '@cowvol/base/conformance';

/** A pending (unsynced) write or truncate. */
type Pending = { kind: 'write'; offsetBytes: number; data: Buffer } | { kind: 'truncate'; sizeBytes: number };

/** How a MemoryDevice schedules its I/O. */
export interface MemoryDeviceOptions {
  /**
   * Each read, write, sync and truncate first yields to the event loop (one
   * `setImmediate`), as a real device does, so concurrent callers interleave
   * between I/Os. Default false: an I/O completes in the microtask that
   * issued it (after `before`).
   */
  yieldEachIo?: boolean;
}

/**
 * An in-memory block device with a volatile write cache, for power-loss
 * tests at the journal level (the same BlockDevice interface production
 * uses over node:fs). Reads see every write; `sync()` makes them durable;
 * `crash(decide)` rebuilds the durable image plus, for each pending write,
 * what `decide` says reached the disk: all of it, nothing, a prefix torn at
 * a 512-byte boundary, or a garbled sector. Keeps the BlockDevice contract
 * (the shared conformance suite): every call after `close()` is `IO_ERROR`;
 * `crash`, `clone` and `snapshot` still work on a closed device.
 */
export class MemoryDevice implements BlockDevice {
  private durable: Buffer;
  private current: Buffer;
  private pending: Pending[] = [];
  failSyncs = false;
  syncs = 0;
  /** Called before each write/sync (slow or failing devices in tests). */
  before: ((op: 'write' | 'sync', offsetBytes: number, lengthBytes: number) => Promise<void>) | undefined;
  private readonly ops = new OpsInFlight(() => this.name);

  private readonly yieldEachIo: boolean;

  constructor(
    readonly name: string,
    initial: Buffer = Buffer.alloc(0),
    options: MemoryDeviceOptions = {},
  ) {
    this.durable = Buffer.from(initial);
    this.current = Buffer.from(initial);
    this.yieldEachIo = options.yieldEachIo === true;
  }

  private async yieldIo(): Promise<void> {
    if (this.yieldEachIo) await new Promise<void>((resolve) => setImmediate(resolve));
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    this.ops.begin('read', offsetBytes, lengthBytes);
    try {
      await this.yieldIo();
      const out = Buffer.alloc(lengthBytes);
      if (offsetBytes < this.current.length) this.current.copy(out, 0, offsetBytes, Math.min(this.current.length, offsetBytes + lengthBytes));
      return out;
    } finally {
      this.ops.end();
    }
  }

  async readInto(offsetBytes: number, into: Uint8Array): Promise<void> {
    into.set(await this.read(offsetBytes, into.length));
  }

  async write(offsetBytes: number, data: Uint8Array): Promise<void> {
    this.ops.begin('write', offsetBytes, data.length);
    try {
      await this.yieldIo();
      await this.before?.('write', offsetBytes, data.length);
      this.current = put(this.current, offsetBytes, Buffer.from(data));
      this.pending.push({ kind: 'write', offsetBytes, data: Buffer.from(data) });
    } finally {
      this.ops.end();
    }
  }

  async sync(): Promise<void> {
    this.ops.begin('sync', 0, 0);
    try {
      await this.yieldIo();
      await this.before?.('sync', 0, 0);
      if (this.failSyncs) throw new IoError(`${this.name}: injected sync failure`);
      this.syncs += 1;
      this.durable = Buffer.from(this.current);
      this.pending = [];
    } finally {
      this.ops.end();
    }
  }

  async sizeBytes(): Promise<number> {
    this.ops.begin('stat', 0, 0);
    this.ops.end();
    return this.current.length;
  }

  async truncate(sizeBytes: number): Promise<void> {
    this.ops.begin('truncate', sizeBytes, 0);
    try {
      await this.yieldIo();
      this.current = resize(this.current, sizeBytes);
      this.pending.push({ kind: 'truncate', sizeBytes });
    } finally {
      this.ops.end();
    }
  }

  close(): Promise<void> {
    return this.ops.close();
  }

  /** Bytes as the disk holds them now (durable + pending). */
  snapshot(): Buffer {
    return Buffer.from(this.current);
  }

  get pendingCount(): number {
    return this.pending.length;
  }

  /**
   * Power loss: the device becomes its durable image plus the pending
   * writes as `decide(i)` says, in order. Returns a fresh device holding
   * exactly that image (durable, nothing pending).
   */
  crash(decide: (i: number, p: Pending) => 'apply' | 'drop' | { torn: number } | { garble: number; byte: number }): MemoryDevice {
    let img: Buffer = Buffer.from(this.durable);
    this.pending.forEach((p, i) => {
      const d = decide(i, p);
      if (p.kind === 'truncate') {
        if (d !== 'drop') img = resize(img, p.sizeBytes);
        return;
      }
      if (d === 'drop') return;
      if (d === 'apply') img = put(img, p.offsetBytes, p.data);
      else if ('torn' in d) img = put(img, p.offsetBytes, p.data.subarray(0, Math.min(p.data.length, d.torn * 512)));
      else {
        const data = Buffer.from(p.data);
        const sector = d.garble % Math.max(1, Math.ceil(data.length / 512));
        data.fill(d.byte, sector * 512, Math.min(data.length, sector * 512 + 512));
        img = put(img, p.offsetBytes, data);
      }
    });
    return new MemoryDevice(this.name, img, { yieldEachIo: this.yieldEachIo });
  }

  /** A copy of this device's current image as a fresh durable device. */
  clone(): MemoryDevice {
    return new MemoryDevice(this.name, this.current, { yieldEachIo: this.yieldEachIo });
  }
}

function resize(buf: Buffer, size: number): Buffer {
  if (size === buf.length) return buf;
  const out = Buffer.alloc(size);
  buf.copy(out, 0, 0, Math.min(size, buf.length));
  return out;
}

function put(buf: Buffer, offset: number, data: Buffer): Buffer {
  const out = offset + data.length > buf.length ? resize(buf, offset + data.length) : buf;
  data.copy(out, offset);
  return out;
}
