import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CowvolError, hasCode } from '@cowvol/base';

/**
 * Commands that work on a volume served by `cowvol serve`, through its
 * control channel (README "Serving a volume", docs/ARCHITECTURE.md §14.8)
 * or, for the data commands, its NBD socket (§14.10);
 * every other command gets VOLUME_BUSY naming the server.
 */
export const SERVED_COMMANDS = [
  'status',
  'stop',
  'info',
  'snapshot create',
  'snapshot list',
  'snapshot info',
  'snapshot delete',
  'snapshot rename',
  'snapshot label',
  'snapshot hold',
  'snapshot release',
  'read',
  'write',
  'snapshot read',
  'snapshot restore',
  'snapshot diff',
  'snapshot export',
  'check',
  'import',
  'accept-changes',
  'backup push',
  'backup restore --into',
] as const;

/**
 * The served commands that reach the volume through the server's own NBD
 * socket (docs/ARCHITECTURE.md §14.10): none of them works on a server
 * that takes only TLS clients (`serve --tls-psk`, no plain unix socket).
 * `backup restore --into` reads over NBD only with `--verify`, and says so
 * itself then.
 */
export const SERVED_NBD_COMMANDS: ReadonlyArray<(typeof SERVED_COMMANDS)[number]> = ['read', 'write', 'snapshot read', 'snapshot export', 'backup push'];

/**
 * `VOLUME_BUSY` for a command that does not work on a served volume: the
 * message names the server's pid and the commands that do work there.
 */
export class VolumeServedError extends CowvolError {
  /**
   * @param options.note what of a served command does not work served (it is put first in the message)
   * @param options.plainNbd false when the server serves no plain unix NBD socket (TLS only): the commands of SERVED_NBD_COMMANDS are then left out of the list
   */
  constructor(
    readonly path: string,
    readonly pid: number,
    options?: { cause?: unknown; note?: string; plainNbd?: boolean },
  ) {
    const working = options?.plainNbd === false ? SERVED_COMMANDS.filter((c) => !SERVED_NBD_COMMANDS.includes(c)) : [...SERVED_COMMANDS];
    super(
      'VOLUME_BUSY',
      `volume ${path} is busy: served by cowvol serve (process ${pid}); ${options?.note ? `${options.note}; ` : ''}while it is served only ${working.map((c) => `cowvol ${c}`).join(', ')} work on it (stop it first: cowvol stop ${path})`,
      {
        ...(options?.cause !== undefined ? { cause: options.cause } : {}),
        details: { path, pid, served: true, servedCommands: working },
      },
    );
  }
}

/**
 * Sends one control request to the server of `volumePath` (loaded on
 * first use: commands that never meet a served volume do not load the
 * NBD package).
 * @throws NOT_SERVED when no server answers; the server's error otherwise (same code as offline)
 */
export async function askServer(volumePath: string, method: string, params: Record<string, unknown> = {}): Promise<unknown> {
  const { controlRequest } = await import('@cowvol/nbd');
  return controlRequest(volumePath, method, params);
}

/** The pid of the `cowvol serve` serving `volumePath`, or undefined when none answers (or its answer has no pid). */
export async function servedPid(volumePath: string): Promise<number | undefined> {
  try {
    const status = await askServer(volumePath, 'status', { exports: false });
    const pid = typeof status === 'object' && status !== null && 'pid' in status ? status.pid : undefined;
    return typeof pid === 'number' ? pid : undefined;
  } catch (err) {
    // The server's own refusal with its reason (every control connection taken) says more than "in use by process N".
    if (err instanceof CowvolError && !isServerRefusal(err)) return undefined;
    throw err;
  }
}

/**
 * Whether a `cowvol serve` answers for `volumePath` now: false at once when
 * its sidecar has no control socket `control.sock` (controlSocketPath of
 * @cowvol/nbd, spelled here so a volume never served does not load the NBD
 * package), else as {@link servedPid}.
 */
export async function isServed(volumePath: string): Promise<boolean> {
  const { volumeLayout } = await import('@cowvol/cow-core');
  const socket = await stat(join(volumeLayout(volumePath).sidecarPath, 'control.sock')).catch(() => undefined);
  return socket?.isSocket() === true && (await servedPid(volumePath)) !== undefined;
}

/**
 * What opening `volumePath` offline would refuse first, checked without
 * opening it: VOLUME_NOT_FOUND when nothing is there, NOT_A_VOLUME for a
 * directory, pipe or device, or a file with no sidecar — so `status` and
 * `stop` never call a non-volume "not served".
 */
export async function assertVolumeExists(volumePath: string): Promise<void> {
  const { NotAVolumeError, VolumeNotFoundError, volumeLayout } = await import('@cowvol/cow-core');
  const st = await stat(volumePath).catch((err: unknown) => {
    throw new VolumeNotFoundError(volumePath, { cause: err });
  });
  if (!st.isFile()) throw new NotAVolumeError(`${volumePath} is not a regular file`);
  const { sidecarPath } = volumeLayout(volumePath);
  const sidecar = await stat(sidecarPath).catch(() => undefined);
  if (sidecar?.isDirectory() !== true) throw new NotAVolumeError(`${volumePath} is not a cowvol volume (no ${sidecarPath})`);
}

/** True for the VOLUME_BUSY a served volume gives: route the command to its server. */
export function isBusy(err: unknown): err is CowvolError {
  return hasCode(err, 'VOLUME_BUSY');
}

/** A VOLUME_BUSY a running server gave with its reason (`details.served`: a restore or import running, every control connection taken), not "stopping". */
export function isServerRefusal(err: unknown): boolean {
  // Not this CLI's own VolumeServedError ("works only served…"), which carries `served` too.
  return err instanceof CowvolError && !(err instanceof VolumeServedError) && err.code === 'VOLUME_BUSY' && err.details?.served === true;
}
