/**
 * The control channel of `cowvol serve` (docs/ARCHITECTURE.md §14.8,
 * docs/FORMAT.md §11) through the CLI: status, stop, snapshot create and
 * list on a served volume give what they give offline; a command not routed
 * to it (a second serve) gets VOLUME_BUSY naming the server; bad control clients leave the server up;
 * and snapshots taken while an nbdsh (libnbd) program writes at queue
 * depth 32 hold every write acknowledged before their create started and
 * none issued after it returned, each read over its own `snapshot/<name>`
 * export. The create pause the writers saw is printed, not asserted.
 * Needs nbdsh with Debian's python3-libnbd (under CI=true a missing one fails).
 */
import type { ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, jsonOf, tempDir } from './helpers.js';
import { nbdsh, requireTools, startServe } from './nbd-peers.js';

const { missing, skipReason } = requireTools([
  ['nbdsh', 'python3-libnbd'],
  ['nbdinfo', 'libnbd-bin'],
]);

let dir: string;
let cleanup: () => Promise<void>;
const running = new Set<ChildProcess>();

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-serve-control-'));
});
afterAll(async () => {
  for (const child of running) child.kill('SIGKILL');
  await cleanup();
});

async function newVolume(name: string, size = '1M'): Promise<string> {
  const vol = join(dir, name);
  await cowvolOk(['create', vol, '--size', size]);
  return vol;
}

interface Served {
  uri: string;
  socket: string;
  log: () => string;
  /** The exit code, once the process exited (after `cowvol stop`: on its own, no signal). */
  exited: Promise<number | null>;
}

/** `cowvol serve <vol>`; resolves once it printed its URI line (`uri` names the `live` export). */
async function served(vol: string): Promise<Served> {
  const { child, socket, log, exited } = await startServe(vol);
  running.add(child);
  void exited.then(() => running.delete(child));
  return { uri: `nbd+unix:///live?socket=${socket}`, socket, log, exited };
}

/** Sends raw bytes to the control socket and resolves with everything it answers until it closes or `waitMs` passed. */
function rawControl(vol: string, bytes: Buffer, waitMs = 300, end = true): Promise<string> {
  return new Promise((resolve) => {
    const socket = createConnection(join(`${vol}.cowvol`, 'control.sock'));
    let out = '';
    socket.on('data', (d: Buffer) => (out += d.toString()));
    socket.on('error', () => undefined);
    socket.once('connect', () => {
      socket.write(bytes);
      if (end) socket.end();
    });
    const done = (): void => {
      socket.destroy();
      resolve(out);
    };
    socket.once('close', done);
    setTimeout(done, waitMs).unref();
  });
}

describe.skipIf(missing)(`cowvol status, stop, snapshot create and list on a served volume${skipReason}`, () => {
  it('status, snapshot create and list answer as offline; other commands get VOLUME_BUSY naming the server; stop releases the volume', async () => {
    const vol = await newVolume('a.img');
    const offlineStatus = await cowvolOk(['status', vol, '--json']);
    expect(jsonOf(offlineStatus)).toEqual({ served: false });
    const server = await served(vol);

    await nbdsh(
      `h.set_strict_mode(0)\nh.connect_uri(${JSON.stringify(server.uri)})\nh.pwrite(b'x' * 4096, 0)\nh.pread(512, 0)\ntry:\n    h.pread(512, 1 << 30)\nexcept nbd.Error:\n    pass\nh.shutdown()`,
    );
    const status = jsonOf<{ served: boolean; pid: number; endpoints: string[]; exports: Array<{ name: string }> }>(await cowvolOk(['status', vol, '--json']));
    expect(status.served).toBe(true);
    expect(status.endpoints).toEqual([server.uri.replace('/live?', '/?')]);
    // The client's write, read and out-of-range read (sent: strict mode off; its error), counted on `live` after it disconnected.
    expect(status.exports).toEqual([{ name: 'live', connections: 0, requests: 3, readBytes: 512, writtenBytes: 4096, errors: 1 }]);
    expect((await cowvolOk(['status', vol])).stdout.toString()).toContain(`served:      yes, by process ${status.pid}`);

    const created = await cowvolOk(['snapshot', 'create', vol, 'one', '--label', 'k=v']);
    expect(created.stdout.toString()).toMatch(/^created snapshot one at \S+\n$/);
    const createdJson = jsonOf(await cowvolOk(['snapshot', 'create', vol, 'two', '--json']));
    const dup = await cowvol(['snapshot', 'create', vol, 'one', '--json']);
    expect([dup.code, jsonOf<{ error: { code: string } }>(dup).error.code]).toEqual([4, 'SNAPSHOT_EXISTS']);
    const badName = await cowvol(['snapshot', 'create', vol, 'a b']);
    expect([badName.code, badName.stderr]).toEqual([2, expect.stringContaining('[INVALID_SNAPSHOT_NAME]')]);
    // An export read, then its snapshot deleted: `status` keeps its counters, listed once, after the catalog's exports.
    await cowvolOk(['snapshot', 'create', vol, 'gone']);
    await nbdsh(`h.connect_uri(${JSON.stringify(server.uri.replace('/live?', '/snapshot/gone?'))})\nh.pread(512, 0)\nh.shutdown()`);
    await cowvolOk(['snapshot', 'delete', vol, 'gone']);
    const afterDelete = jsonOf<{ exports: Array<{ name: string; requests: number }> }>(await cowvolOk(['status', vol, '--json']));
    expect(afterDelete.exports.map((e) => e.name)).toEqual(['live', 'snapshot/one', 'snapshot/two', 'snapshot/gone']);
    expect(afterDelete.exports[3]).toMatchObject({ name: 'snapshot/gone', requests: 1 });
    const listServed = await cowvolOk(['snapshot', 'list', vol]);
    const listServedJson = await cowvolOk(['snapshot', 'list', vol, '--json']);
    expect(listServed.stdout.toString()).toContain('k=v');

    // A command not routed to the server (a second serve of the volume) names it and the commands that work.
    const refused = await cowvol(['serve', vol]);
    expect(refused.code).toBe(5);
    expect(refused.stderr).toContain(`[VOLUME_BUSY]: volume ${vol} is busy: served by cowvol serve (process ${status.pid})`);
    expect(refused.stderr).toContain('cowvol snapshot create');

    const stopped = await cowvolOk(['stop', vol]);
    expect(stopped.stdout.toString()).toContain(`(process ${status.pid}); the volume is released`);
    expect(await server.exited).toBe(0);
    // Offline, right after stop returned: the lock is free and the output is the same.
    expect((await cowvolOk(['snapshot', 'list', vol])).stdout.toString()).toBe(listServed.stdout.toString());
    expect((await cowvolOk(['snapshot', 'list', vol, '--json'])).stdout.toString()).toBe(listServedJson.stdout.toString());
    const offline = jsonOf<{ snapshots: Array<Record<string, unknown>> }>(await cowvolOk(['snapshot', 'list', vol, '--json']));
    expect(offline.snapshots[1]).toMatchObject(createdJson);
  });

  it('stop and status on a volume nobody serves: NOT_SERVED (exit 3) and served: false (exit 0); a missing volume is VOLUME_NOT_FOUND, a directory or a file with no sidecar NOT_A_VOLUME', async () => {
    const vol = await newVolume('b.img');
    const stop = await cowvol(['stop', vol, '--json']);
    expect(stop.code).toBe(3);
    expect(jsonOf<{ error: { code: string } }>(stop).error.code).toBe('NOT_SERVED');
    expect((await cowvolOk(['status', vol])).stdout.toString()).toBe(`served: no (no cowvol serve answers for ${vol})\n`);
    const missingVol = await cowvol(['status', join(dir, 'nope.img')]);
    expect([missingVol.code, missingVol.stderr]).toEqual([3, expect.stringContaining('[VOLUME_NOT_FOUND]')]);
    // Not volumes at all: a directory, and a plain file with no sidecar, are NOT_A_VOLUME (exit 6), never "not served".
    const plain = join(dir, 'plain.raw');
    await writeFile(plain, Buffer.alloc(4096));
    for (const notVolume of [dir, plain]) {
      for (const command of ['status', 'stop']) {
        const r = await cowvol([command, notVolume]);
        expect([r.code, r.stderr], `${command} ${notVolume}`).toEqual([6, expect.stringContaining('[NOT_A_VOLUME]')]);
      }
    }
  });

  it('garbage, a line over 64 KiB, a bad version, an unknown method and a client gone mid-request get errors and leave the server up', async () => {
    const vol = await newVolume('c.img');
    const server = await served(vol);
    const garbage = await rawControl(vol, Buffer.from('\x00\xffnot json\n'));
    expect(JSON.parse(garbage)).toMatchObject({ v: 1, id: null, error: { code: 'INVALID_ARGUMENT' } });
    const huge = await rawControl(vol, Buffer.alloc(70 * 1024, 0x61), 1000, false);
    expect(JSON.parse(huge)).toMatchObject({ id: null, error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('longer than 65536 bytes') as unknown } });
    const version = await rawControl(vol, Buffer.from('{"v":9,"id":4,"method":"status"}\n'));
    expect(JSON.parse(version)).toMatchObject({ id: 4, error: { code: 'INVALID_ARGUMENT' } });
    const unknown = await rawControl(vol, Buffer.from('{"v":1,"id":"x","method":"format"}\n{"v":1,"id":5,"method":"snapshot.create","params":{"name":7}}\n'));
    expect(
      unknown
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as unknown),
    ).toEqual([
      { v: 1, id: 'x', error: { code: 'INVALID_ARGUMENT', message: 'unknown control method "format"' } },
      { v: 1, id: 5, error: { code: 'INVALID_ARGUMENT', message: 'params.name must be a string' } },
    ]);
    await rawControl(vol, Buffer.from('{"v":1,"id":6,"meth'), 50, false);
    await rawControl(vol, Buffer.from('{"v":1,"id":7,"method":"snapshot.create","params":{"name":"gone"}}\n'), 0, false);
    await sleep(200);
    const status = jsonOf<{ served: boolean; exports: Array<{ name: string }> }>(await cowvolOk(['status', vol, '--json']));
    expect(status.served).toBe(true);
    expect(status.exports.map((e) => e.name)).toEqual(['live', 'snapshot/gone']);
    await cowvolOk(['stop', vol]);
    expect(await server.exited).toBe(0);
  });
});

/** Writes sequence-numbered 4 KiB blocks (block = seq mod BLOCKS, every 8-byte word = seq) at queue depth 32 for DURATION_S; prints `seq block issued_ns acked_ns` per write (CLOCK_MONOTONIC). */
const WRITER = `
import time, struct
h.connect_uri(URI)
BS, QD = 4096, 32
end = time.monotonic_ns() + int(DURATION_S * 1e9)
inflight, log, seq = {}, [], 0
while True:
    while len(inflight) < QD and time.monotonic_ns() < end:
        seq += 1
        block = seq % BLOCKS
        buf = nbd.Buffer.from_bytearray(bytearray(struct.pack('<Q', seq) * (BS // 8)))
        issued = time.monotonic_ns()
        cookie = h.aio_pwrite(buf, block * BS)
        inflight[cookie] = (seq, block, issued, buf)
    if not inflight:
        break
    h.poll(-1)
    for cookie in [c for c in inflight if h.aio_command_completed(c)]:
        s, b, issued, _ = inflight.pop(cookie)
        log.append('%d %d %d %d' % (s, b, issued, time.monotonic_ns()))
h.shutdown()
print('\\n'.join(log))
`;

/** Reads each named export in full and prints, per export and block, `name block seq uniform`. */
const READER = `
import struct
for name in NAMES:
    g = nbd.NBD()
    g.set_export_name(name)
    g.connect_unix(SOCKET)
    for b in range(BLOCKS):
        data = g.pread(4096, b * 4096)
        seq = struct.unpack_from('<Q', data)[0]
        print(name, b, seq, 1 if data == data[:8] * 512 else 0)
    g.shutdown()
`;

interface WriteRecord {
  seq: number;
  block: number;
  issuedNs: bigint;
  ackedNs: bigint;
}

interface CreateRecord {
  name: string;
  startNs: bigint;
  endNs: bigint;
}

const BLOCKS = 256;

function parseWrites(out: string): WriteRecord[] {
  return out
    .trim()
    .split('\n')
    .map((line) => {
      const [seq, block, issued, acked] = line.split(' ');
      return { seq: Number(seq), block: Number(block), issuedNs: BigInt(issued!), ackedNs: BigInt(acked!) };
    });
}

/** Per export name, per block: the sequence number it holds and whether every word of the block holds it. */
async function readSnapshots(socket: string, names: string[]): Promise<Map<string, Array<{ seq: number; uniform: boolean }>>> {
  const dump = await nbdsh(`NAMES = ${JSON.stringify(names)}\nSOCKET = ${JSON.stringify(socket)}\nBLOCKS = ${BLOCKS}\n${READER}`);
  const seen = new Map<string, Array<{ seq: number; uniform: boolean }>>();
  for (const line of dump.trim().split('\n')) {
    const [name, block, seq, uniform] = line.split(' ');
    const rows = seen.get(name!) ?? [];
    rows[Number(block)] = { seq: Number(seq), uniform: uniform === '1' };
    seen.set(name!, rows);
  }
  return seen;
}

/** Each block of the snapshot holds the newest write acknowledged before the create started, or a later one issued before it returned. */
function checkSnapshot(create: CreateRecord, rows: Array<{ seq: number; uniform: boolean }>, writes: WriteRecord[]): void {
  const bySeq = new Map(writes.map((w) => [w.seq, w]));
  const requiredByBlock = new Array<number>(BLOCKS).fill(0);
  for (const w of writes) if (w.ackedNs < create.startNs) requiredByBlock[w.block] = Math.max(requiredByBlock[w.block]!, w.seq);
  for (let block = 0; block < BLOCKS; block++) {
    const { seq, uniform } = rows[block]!;
    const where = `${create.name} block ${block} holds write ${seq}`;
    expect(uniform, `${where}: torn`).toBe(true);
    const required = requiredByBlock[block]!;
    expect(seq, `${where}, write ${required} was acknowledged before the create`).toBeGreaterThanOrEqual(required);
    if (seq === 0) continue;
    const w = bySeq.get(seq);
    expect(w?.block, `${where}: not a write of this block`).toBe(block);
    expect(w!.issuedNs < create.endNs, `${where}, issued after the create returned`).toBe(true);
  }
}

function percentile(sorted: number[], p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Prints the pause: per create, the longest a write in flight during it waited; and every write's latency. */
function reportPause(creates: CreateRecord[], writes: WriteRecord[]): void {
  const ms = (w: WriteRecord): number => Number(w.ackedNs - w.issuedNs) / 1e6;
  const pauses = creates.map((c) => Math.max(0, ...writes.filter((w) => w.issuedNs < c.endNs && w.ackedNs > c.startNs).map(ms))).sort((a, b) => a - b);
  const all = writes.map(ms).sort((a, b) => a - b);
  const line = (xs: number[]): string => `p50 ${percentile(xs, 50).toFixed(2)} ms, p99 ${percentile(xs, 99).toFixed(2)} ms, max ${(xs.at(-1) ?? 0).toFixed(2)} ms`;
  console.log(
    `snapshot create under queue depth 32 (${creates.length} creates, ${writes.length} writes):\n  longest write wait per create: ${line(pauses)}\n  every write's latency:         ${line(all)}`,
  );
}

describe.skipIf(missing)(`snapshots of a volume written at queue depth 32${skipReason}`, () => {
  it('each snapshot holds every write acknowledged before its create started and none issued after it returned', { timeout: 120_000 }, async () => {
    const vol = await newVolume('load.img', '1M');
    const server = await served(vol);
    const writer = nbdsh(`URI = ${JSON.stringify(server.uri)}\nBLOCKS = ${BLOCKS}\nDURATION_S = 5\n${WRITER}`);
    const creates: CreateRecord[] = [];
    await sleep(300);
    for (let i = 0; i < 8; i++) {
      const name = `s${i}`;
      const startNs = process.hrtime.bigint();
      await cowvolOk(['snapshot', 'create', vol, name]);
      creates.push({ name, startNs, endNs: process.hrtime.bigint() });
      await sleep(Math.max(0, 500 - Number((process.hrtime.bigint() - startNs) / 1_000_000n)));
    }
    const writes = parseWrites(await writer);
    expect(writes.length).toBeGreaterThan(1000);
    // Every snapshot export appeared while the server ran: read them now, without a restart.
    const seen = await readSnapshots(
      server.socket,
      creates.map((c) => `snapshot/${c.name}`),
    );
    for (const create of creates) checkSnapshot(create, seen.get(`snapshot/${create.name}`)!, writes);
    reportPause(creates, writes);
    await cowvolOk(['stop', vol]);
    expect(await server.exited).toBe(0);
  });
});
