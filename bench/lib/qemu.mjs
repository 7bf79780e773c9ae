// The peer: qcow2 through qemu-img (optional; every qcow2 column is "-" without it).
//
// Timing. `qemu-img bench` prints "Run completed in …" *before* its final
// flush completes (the flush of --flush-interval is still in flight when the
// main loop sees the last request done; strace shows the fdatasync after the
// message), so its own figure understates a durable run. We therefore time
// from the moment it announces the run (its last line before the timer
// starts, made unbuffered with `stdbuf -oL`) to process exit: that covers the
// I/O, the final flush (fdatasync of the qcow2 file, metadata included) and
// close, and leaves out process start and image open — as the in-process
// cowvol and raw timings leave out Volume.open / open(2).
import { spawn, spawnSync } from 'node:child_process';
import { now } from './common.mjs';

let cached;
export function qemuInfo() {
  if (cached) return cached;
  const which = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).stdout.trim() || undefined;
  const qemuImg = which('qemu-img');
  const stdbuf = which('stdbuf');
  let version;
  if (qemuImg) version = spawnSync(qemuImg, ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]?.trim();
  cached = { available: Boolean(qemuImg) && process.env.BENCH_NO_QEMU !== '1', qemuImg, stdbuf, version };
  return cached;
}

/**
 * Runs a command; `startMarker` (regex on stdout) marks the start of the
 * timed part. Resolves { seconds, wallSeconds, stdout, stderr }.
 */
export function runTimed(cmd, args, { startMarker } = {}) {
  const info = qemuInfo();
  const useStdbuf = Boolean(startMarker && info.stdbuf);
  const [file, argv] = useStdbuf ? [info.stdbuf, ['-oL', '-eL', cmd, ...args]] : [cmd, args];
  return new Promise((resolve, reject) => {
    const t0 = now();
    let tStart;
    let stdout = '';
    let stderr = '';
    const child = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => {
      stdout += d;
      if (tStart === undefined && startMarker?.test(stdout)) tStart = now();
    });
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const t1 = now();
      if (code !== 0) {
        reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${stderr.trim() || stdout.trim()}`));
        return;
      }
      const timedFromMarker = useStdbuf && tStart !== undefined;
      resolve({ seconds: (timedFromMarker ? t1 - tStart : t1 - t0) / 1000, wallSeconds: (t1 - t0) / 1000, timedFromMarker, stdout, stderr });
    });
  });
}

export async function qemuCreate(img, sizeBytes) {
  await runTimed(qemuInfo().qemuImg, ['create', '-q', '-f', 'qcow2', img, String(sizeBytes)]);
}

/**
 * `qemu-img bench` on a qcow2 image, page cache (-t writeback, like the
 * buffered I/O of raw and cowvol), thread-pool AIO; writes end with one
 * flush (--flush-interval = count: a single fdatasync after the last
 * request drained, like raw's and cowvol's one fdatasync at the end).
 */
export async function qemuBench(img, { write, sizeBytes, stepBytes, count, depth, offsetBytes = 0 }) {
  const args = ['bench', '-f', 'qcow2', '-t', 'writeback', '-c', String(count), '-d', String(depth), '-s', String(sizeBytes), '-S', String(stepBytes), '-o', String(offsetBytes)];
  if (write) args.push('-w', `--flush-interval=${count}`);
  args.push(img);
  const r = await runTimed(qemuInfo().qemuImg, args, { startMarker: write ? /Sending flush every/ : /Sending \d+ /m });
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout);
  return { ...r, reportedSeconds: m ? Number(m[1]) : undefined, args };
}

export async function qemuSnapshotCreate(img, name) {
  return runTimed(qemuInfo().qemuImg, ['snapshot', '-c', name, img]);
}

export async function qemuSnapshotList(img) {
  return runTimed(qemuInfo().qemuImg, ['snapshot', '-l', img]);
}

/**
 * Full sequential read of internal snapshot `name`: `qemu-img convert -l
 * snapshot.name=…` into a null-co target (reads every cluster, writes
 * nowhere). Timed from its first progress line (-p) to exit.
 */
export async function qemuSnapshotRead(img, name, sizeBytes) {
  const args = ['convert', '-p', '-n', '-f', 'qcow2', '-l', `snapshot.name=${name}`, img, '--target-image-opts', `driver=null-co,size=${sizeBytes}`];
  return { ...(await runTimed(qemuInfo().qemuImg, args, { startMarker: /\(/ })), args };
}
