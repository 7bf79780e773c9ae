/**
 * SIGKILL of `cowvol serve` under load (docs/ARCHITECTURE.md §14.2, §11
 * "Other named tests"): an acknowledging client writes sequence-numbered
 * 4 KiB blocks (sequence number, offset and CRC32C in each block) at queue
 * depth 16, FUA on some, FLUSH periodically, while fio (ioengine=nbd,
 * iodepth 32) loads another region and snapshots are created over the
 * control channel. At a seeded random moment the server is killed; after
 * a restart every write acknowledged with FUA or before a FLUSH reply is
 * present, every snapshot reads back what it held, and `cowvol check`
 * exits 0 or 3. Rounds: COWVOL_SERVE_KILL_ROUNDS (default 8); seed:
 * COWVOL_SERVE_KILL_SEED (printed). COWVOL_SERVE_KILL_KEEP=<dir> keeps a
 * copy of the volume as the kill left it (before the restart replays its
 * journal) and the failing block's history, for the round that fails.
 */
import { spawn } from 'node:child_process';
import { cp, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { crc32c } from '@cowvol/base';
import { NBD_CMD_FLAG_FUA, NBD_CMD_FLUSH, NBD_CMD_READ, NBD_CMD_WRITE } from '@cowvol/nbd';
import { RawClient } from '../packages/nbd/test/raw-client.js';
import { cowvol, cowvolOk, tempDir } from './helpers.js';
import { requireTools, startServe, type ServeProcess } from './nbd-peers.js';

const { missing, skipReason } = requireTools([
  ['fio', 'fio'],
  ['nbdinfo', 'libnbd-bin'],
]);
const ROUNDS = Number(process.env.COWVOL_SERVE_KILL_ROUNDS ?? 8);
const SEED = Number(process.env.COWVOL_SERVE_KILL_SEED ?? Date.now() % 2 ** 31);
const BLOCK_BYTES = 4096;
/** The acknowledging client's region: blocks [0, REGION_BLOCKS); fio writes from FIO_OFFSET on. */
const REGION_BLOCKS = 512;
const QUEUE_DEPTH = 16;
const FLUSH_EVERY_WRITES = 32;
const KEEP_DIR = process.env.COWVOL_SERVE_KILL_KEEP;

/** mulberry32: a small seeded generator. */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Block `seq` at `block`: [seq u64][offset u64][crc32c u32 of bytes 20..][fill]. */
function blockFor(seq: number, block: number): Buffer {
  const b = Buffer.alloc(BLOCK_BYTES, seq % 251);
  b.writeBigUInt64BE(BigInt(seq), 0);
  b.writeBigUInt64BE(BigInt(block * BLOCK_BYTES), 8);
  b.writeUInt32BE(crc32c(b.subarray(20)), 16);
  return b;
}

/** The sequence number a block read back holds (0: all zeros); throws when torn or misplaced. */
function seqOf(b: Buffer, block: number): number {
  if (b.every((x) => x === 0)) return 0;
  const seq = Number(b.readBigUInt64BE(0));
  if (Number(b.readBigUInt64BE(8)) !== block * BLOCK_BYTES) throw new Error(`block ${block}: holds the block of offset ${b.readBigUInt64BE(8)}`);
  if (b.readUInt32BE(16) !== crc32c(b.subarray(20))) throw new Error(`block ${block}: checksum mismatch (torn write of seq ${seq})`);
  return seq;
}

interface Write {
  seq: number;
  /** ackClock value when acknowledged; undefined while not. */
  ackedClock: number | undefined;
}

/** What the client knows of each block: the verified base, this round's writes, the durable floor. */
class Model {
  base = new Array<number>(REGION_BLOCKS).fill(0);
  durable = new Array<number>(REGION_BLOCKS).fill(0);
  writes: Write[][] = Array.from({ length: REGION_BLOCKS }, () => []);
  ackClock = 0;
  nextSeq = 1;

  /** Allowed sequence numbers of `block` after a crash: base or a write this round, none older than the durable floor. */
  allowedLive(block: number): number[] {
    return [this.base[block]!, ...this.writes[block]!.map((w) => w.seq)].filter((s) => s >= this.durable[block]!);
  }

  /** Allowed contents of a snapshot whose create started at `startClock` and returned when `endSeq` was the next sequence number. */
  allowedSnapshot(startClock: number, endSeq: number): Array<Set<number>> {
    return this.writes.map((ws, block) => {
      const acked = ws.filter((w) => w.ackedClock !== undefined && w.ackedClock <= startClock).at(-1)?.seq ?? this.base[block]!;
      return new Set([acked, ...ws.map((w) => w.seq).filter((s) => s > acked && s < endSeq)]);
    });
  }

  /** A FLUSH sent at `sentClock` was answered: every write acknowledged before it is durable. */
  flushed(sentClock: number): void {
    this.writes.forEach((ws, block) => {
      const last = ws.filter((w) => w.ackedClock !== undefined && w.ackedClock <= sentClock).at(-1);
      if (last) this.durable[block] = Math.max(this.durable[block]!, last.seq);
    });
  }

  /** After a verified restart: what was read is the new base (made durable by the verifier's FLUSH). */
  rebase(observed: number[]): void {
    this.base = observed;
    this.durable = [...observed];
    this.writes = Array.from({ length: REGION_BLOCKS }, () => []);
  }
}

/** Writes until the connection drops; at most QUEUE_DEPTH requests in flight, never two on one block. */
async function acknowledgingClient(socket: string, model: Model, random: () => number): Promise<number> {
  const client = await openClient(socket);
  const inFlight = new Map<bigint, { block: number; write: Write; fua: boolean } | { flushClock: number }>();
  const busy = new Set<number>();
  let cookie = 1n;
  let written = 0;
  const issue = (): void => {
    if (written > 0 && written % FLUSH_EVERY_WRITES === 0 && ![...inFlight.values()].some((v) => 'flushClock' in v)) {
      inFlight.set(cookie, { flushClock: model.ackClock });
      client.sendRequest({ type: NBD_CMD_FLUSH, cookie: cookie++, offsetBytes: 0, lengthBytes: 0 });
    }
    let block = Math.floor(random() * REGION_BLOCKS);
    while (busy.has(block)) block = (block + 1) % REGION_BLOCKS;
    const write: Write = { seq: model.nextSeq++, ackedClock: undefined };
    const fua = random() < 0.25;
    model.writes[block]!.push(write);
    busy.add(block);
    inFlight.set(cookie, { block, write, fua });
    client.sendRequest({ type: NBD_CMD_WRITE, flags: fua ? NBD_CMD_FLAG_FUA : 0, cookie: cookie++, offsetBytes: block * BLOCK_BYTES, lengthBytes: BLOCK_BYTES, payload: blockFor(write.seq, block) });
    written++;
  };
  try {
    for (let i = 0; i < QUEUE_DEPTH; i++) issue();
    for (;;) {
      const reply = await client.readSimpleReply();
      const what = inFlight.get(reply.cookie);
      inFlight.delete(reply.cookie);
      if (reply.error !== 0 || !what) throw new Error(`reply ${reply.cookie}: error ${reply.error}`);
      model.ackClock++;
      if ('flushClock' in what) model.flushed(what.flushClock);
      else {
        what.write.ackedClock = model.ackClock;
        if (what.fua) model.durable[what.block] = Math.max(model.durable[what.block]!, what.write.seq);
        busy.delete(what.block);
        issue();
      }
    }
  } catch (err) {
    if (!client.closed) throw err;
    return written;
  }
}

/** A client attached to `exportName` (the default export: the live volume). */
async function openClient(socket: string, exportName = ''): Promise<RawClient> {
  const c = await RawClient.connect(socket);
  await c.open(exportName);
  return c;
}

/** Reads the client's region through `exportName` and returns each block's sequence number. */
async function readRegion(socket: string, exportName: string): Promise<number[]> {
  const client = await openClient(socket, exportName);
  const out: number[] = [];
  const chunkBlocks = 64;
  for (let first = 0; first < REGION_BLOCKS; first += chunkBlocks) {
    client.sendRequest({ type: NBD_CMD_READ, cookie: BigInt(first + 1), offsetBytes: first * BLOCK_BYTES, lengthBytes: chunkBlocks * BLOCK_BYTES });
    const r = await client.readSimpleReply();
    expect(r.error).toBe(0);
    for (let i = 0; i < chunkBlocks; i++) out.push(seqOf(r.data!.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES), first + i));
  }
  client.sendRequest({ type: NBD_CMD_FLUSH, cookie: 1n << 40n, offsetBytes: 0, lengthBytes: 0 });
  expect((await client.readSimpleReply()).error).toBe(0);
  client.end();
  return out;
}

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await tempDir('cowvol-serve-kill-')));
afterAll(() => cleanup());

interface SnapshotExpectation {
  name: string;
  /** ackClock when the create started; the next sequence number when it returned (Infinity: it failed). */
  startClock: number;
  endSeq: number;
  allowed: Array<Set<number>>;
  /** The create returned: the snapshot must exist. */
  confirmed: boolean;
  /**
   * The create returned after the kill: the CLI may have found the server
   * gone and taken the snapshot offline, after crash recovery — then it
   * holds what the live volume holds after the crash (docs/ARCHITECTURE.md
   * §14.8, "Served or offline is decided per command").
   */
  overlapsKill: boolean;
}

/** Snapshots over the control channel, one after another; none is started once the kill is issued. */
async function snapshotter(vol: string, round: number, model: Model, stop: { killed: boolean }, out: SnapshotExpectation[]): Promise<void> {
  for (let k = 0; k < 2; k++) {
    await sleep(150);
    if (stop.killed) return;
    const name = `r${round}-${k}`;
    const startClock = model.ackClock;
    const r = await cowvol(['snapshot', 'create', vol, name]);
    const endSeq = r.code === 0 ? model.nextSeq : Infinity;
    const expectation = { name, startClock, endSeq, allowed: model.allowedSnapshot(startClock, endSeq), confirmed: r.code === 0, overlapsKill: stop.killed };
    out.push(expectation);
    if (r.code !== 0) return;
  }
}

async function killRound(vol: string, round: number, random: () => number, model: Model, snapshots: SnapshotExpectation[]): Promise<void> {
  const server: ServeProcess = await startServe(vol);
  const fio = spawn(
    'fio',
    ['--name=load', '--ioengine=nbd', `--uri=nbd+unix:///?socket=${server.socket}`, '--rw=randrw', '--bs=4k', '--iodepth=32', '--offset=4m', '--size=12m', '--time_based', '--runtime=60'],
    { stdio: 'ignore' },
  );
  const stop = { killed: false };
  const pending: SnapshotExpectation[] = [];
  const writing = acknowledgingClient(server.socket, model, random);
  const snapshotting = snapshotter(vol, round, model, stop, pending);
  await sleep(300 + Math.floor(random() * 1700));
  stop.killed = true;
  server.child.kill('SIGKILL');
  await server.exited;
  const written = await writing;
  await snapshotting;
  fio.kill('SIGKILL');
  console.log(`round ${round}: ${written} writes issued, ${model.ackClock} replies, ${pending.length} snapshot creates`);
  const kept = await keepKilled(vol, round);

  const again = await startServe(vol);
  const observed = await readRegion(again.socket, '');
  const history = { round, observedLive: observed, writes: model.writes, durable: [...model.durable], base: [...model.base], snapshots: [...snapshots, ...pending] };
  await onFailure(kept, history, () =>
    observed.forEach((seq, block) => {
      const allowed = model.allowedLive(block);
      expect(allowed, `seed ${SEED} round ${round} block ${block}: read seq ${seq}, allowed ${allowed.join(',')}`).toContain(seq);
    }),
  );
  model.rebase(observed);
  for (const s of pending) if (s.overlapsKill) s.allowed.forEach((set, block) => set.add(observed[block]!));
  for (const s of pending) {
    const present = await readRegion(again.socket, `snapshot/${s.name}`).then(
      () => true,
      (err: unknown) => (String(err).includes('GO failed') ? false : Promise.reject(err as Error)),
    );
    if (!present) expect(s.confirmed, `seed ${SEED}: snapshot ${s.name} acknowledged but missing`).toBe(false);
    else snapshots.push(s);
  }
  for (const s of snapshots) {
    const seqs = await readRegion(again.socket, `snapshot/${s.name}`);
    await onFailure(kept, history, () =>
      seqs.forEach((seq, block) =>
        expect(
          [...s.allowed[block]!],
          `seed ${SEED} round ${round} snapshot ${s.name} (started at ack ${s.startClock}, returned before seq ${s.endSeq}) block ${block}, live read ${String(observed[block])}`,
        ).toContain(seq),
      ),
    );
  }
  if (kept) await rm(kept, { recursive: true, force: true });
  again.child.kill('SIGTERM');
  expect(await again.exited).toBe(0);
  expect([0, 3]).toContain((await cowvol(['check', vol])).code);
}

/** With COWVOL_SERVE_KILL_KEEP: a copy of the volume and its sidecar as the kill left them. */
async function keepKilled(vol: string, round: number): Promise<string | undefined> {
  if (!KEEP_DIR) return undefined;
  const to = join(KEEP_DIR, `seed-${SEED}-round-${round}`);
  await mkdir(to, { recursive: true });
  await cp(vol, join(to, 'vol.img'));
  // The sockets a killed server leaves behind cannot be copied (and need not be).
  await cp(`${vol}.cowvol`, join(to, 'vol.img.cowvol'), { recursive: true, filter: (from) => !from.endsWith('.sock') });
  return to;
}

/** Runs the checks in `check`; when one fails and a copy was kept, writes the round's history next to it first. */
async function onFailure(kept: string | undefined, history: object, check: () => void): Promise<void> {
  try {
    check();
  } catch (err) {
    if (kept) {
      const replacer = (_key: string, v: unknown): unknown => (v instanceof Set ? [...(v as Set<number>)] : v === Infinity ? 'Infinity' : v);
      await writeFile(join(kept, 'history.json'), JSON.stringify(history, replacer));
      console.log(`serve-kill: the killed volume and its history are kept in ${kept}`);
    }
    throw err;
  }
}

describe.skipIf(missing)(`cowvol serve: SIGKILL during writes, ${ROUNDS} rounds${skipReason}`, () => {
  it(
    `after each restart every acknowledged-durable write is present, every snapshot reads back, check exits 0 or 3 (seed ${SEED}: COWVOL_SERVE_KILL_SEED replays it)`,
    { timeout: 60_000 + ROUNDS * 30_000 },
    async () => {
      console.log(`serve-kill seed ${SEED} (COWVOL_SERVE_KILL_SEED), ${ROUNDS} rounds (COWVOL_SERVE_KILL_ROUNDS)`);
      const vol = join(dir, 'vol.img');
      await cowvolOk(['create', vol, '--size', '16M']);
      const random = generator(SEED);
      const model = new Model();
      const snapshots: SnapshotExpectation[] = [];
      for (let round = 0; round < ROUNDS; round++) await killRound(vol, round, random, model, snapshots);
    },
  );
});
