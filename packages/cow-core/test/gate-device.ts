import { setTimeout as sleep } from 'node:timers/promises';
import { basename } from 'node:path';
import { FileBlockDevice, type BlockDevice, type DeviceOpener } from '@cowvol/base';
import { OpsInFlight } from '@cowvol/base/conformance';

export interface IoEvent {
  file: string;
  op: 'read' | 'write' | 'sync';
  offsetBytes: number;
  lengthBytes: number;
}

/** A held I/O: `reached` resolves when a matching I/O arrives and stops; `release()` lets it go on (or fail). */
export interface Hold {
  reached: Promise<IoEvent>;
  release(error?: Error): void;
}

/**
 * A controllable scheduler at the block-device seam: `hold(pred)` arms a
 * gate; the next I/O matching `pred` stops until the test releases it. This
 * forces exact interleavings of concurrent operations without sleeps. Its
 * devices keep the BlockDevice contract (`close()` waits for held I/O; a call
 * after it is `IO_ERROR`).
 */
export class GateOpener implements DeviceOpener {
  private holds: Array<{ pred: (e: IoEvent) => boolean; arrive: (e: IoEvent) => void; gate: Promise<Error | undefined> }> = [];
  readonly log: IoEvent[] = [];

  hold(pred: (e: IoEvent) => boolean): Hold {
    let arrive!: (e: IoEvent) => void;
    let release!: (error?: Error) => void;
    const reached = new Promise<IoEvent>((r) => (arrive = r));
    const gate = new Promise<Error | undefined>((r) => (release = r));
    this.holds.push({ pred, arrive, gate });
    return { reached, release: (error?: Error) => release(error) };
  }

  private async pass(e: IoEvent): Promise<void> {
    this.log.push(e);
    const i = this.holds.findIndex((h) => h.pred(e));
    if (i < 0) return;
    const [h] = this.holds.splice(i, 1);
    h!.arrive(e);
    const error = await h!.gate;
    if (error) throw error;
  }

  async open(path: string, options: { create: boolean }): Promise<BlockDevice> {
    const inner = await FileBlockDevice.open(path, options);
    const file = basename(path);
    const ops = new OpsInFlight(() => inner.name);
    return {
      name: inner.name,
      read: async (o, l) => {
        ops.begin('read', o, l);
        try {
          await this.pass({ file, op: 'read', offsetBytes: o, lengthBytes: l });
          return await inner.read(o, l);
        } finally {
          ops.end();
        }
      },
      readInto: async (o, into) => {
        ops.begin('read', o, into.length);
        try {
          await this.pass({ file, op: 'read', offsetBytes: o, lengthBytes: into.length });
          await inner.readInto(o, into);
        } finally {
          ops.end();
        }
      },
      write: async (o, d) => {
        ops.begin('write', o, d.length);
        try {
          await this.pass({ file, op: 'write', offsetBytes: o, lengthBytes: d.length });
          await inner.write(o, d);
        } finally {
          ops.end();
        }
      },
      sync: async () => {
        ops.begin('sync', 0, 0);
        try {
          await this.pass({ file, op: 'sync', offsetBytes: 0, lengthBytes: 0 });
          await inner.sync();
        } finally {
          ops.end();
        }
      },
      truncate: (s) => inner.truncate(s),
      sizeBytes: () => inner.sizeBytes(),
      close: () => ops.close(() => inner.close()),
    };
  }
}

/** Resolves true if `p` settles within a few event-loop turns, false if it is still pending (it is blocked). */
export async function settlesSoon(p: Promise<unknown>): Promise<boolean> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
  return settled;
}

/**
 * Like {@link settlesSoon}, bounded by `ms` of real time instead of turns:
 * for operations that do real file I/O (a COW copies, a create syncs and
 * commits), where a few event-loop turns are not enough to tell "blocked" from "busy". A liveness bound, not
 * a speed assertion: the bound is two orders of magnitude above the work.
 */
export async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  const state = { settled: false };
  p.then(
    () => (state.settled = true),
    () => (state.settled = true),
  );
  for (let waited = 0; !state.settled && waited < ms; waited += 10) await sleep(10);
  return state.settled;
}
