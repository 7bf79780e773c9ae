import { setTimeout as sleep } from 'node:timers/promises';
import { CowvolError, hasCode } from '@cowvol/base';
import type { ImportRecord, VolumeInfo } from '@cowvol/cow-core';
import type { NbdClient } from '@cowvol/nbd';
import type { OpenMode } from './base-command.js';
import { askServer, VolumeServedError } from './served.js';

/** The export of the live volume (LIVE_EXPORT of @cowvol/nbd, spelled here so the NBD package loads only for a served volume; docs/ARCHITECTURE.md §14.1). */
export const LIVE_EXPORT_NAME = 'live';
/** The export of snapshot `name` (SNAPSHOT_EXPORT_PREFIX of @cowvol/nbd). */
export function snapshotExportName(name: string): string {
  return `snapshot/${name}`;
}

/**
 * The data of a volume as the data commands (`read`, `write`, `snapshot
 * read`) use it: the opened Volume offline, or an NBD export of the server
 * of a served volume (docs/ARCHITECTURE.md §14.10). Offsets and lengths in
 * bytes; a range past `sizeBytes` is OUT_OF_RANGE either way.
 */
export interface VolumeData {
  readonly sizeBytes: number;
  read(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  write(offsetBytes: number, data: Buffer): Promise<void>;
  flush(): Promise<void>;
}

/** The import marker of a served volume (`info`'s first page, `pendingImport`), or null. @throws NOT_SERVED, the server's error */
export async function servedPendingImport(volumePath: string): Promise<ImportRecord | null> {
  const first = (await askServer(volumePath, 'info')) as { info: Partial<VolumeInfo> };
  return first.info.pendingImport ?? null;
}

/** The NBD export `client` attached, as VolumeData. */
export function exportData(client: NbdClient): VolumeData {
  return {
    sizeBytes: client.info.sizeBytes,
    read: (o, l) => client.read(o, l),
    write: (o, d) => client.write(o, d),
    flush: () => client.flush(),
  };
}

/**
 * The unix socket of the NBD server of `volumePath`, from its `status`
 * control method (`endpoints`: NBD URIs, `nbd+unix:///?socket=…`); undefined
 * when it serves none without TLS (`nbds+unix`: the CLI does not hold the keys).
 * @throws NOT_SERVED when no server answers; the server's error
 */
export async function servedSocketPath(volumePath: string): Promise<string | undefined> {
  const status = await askServer(volumePath, 'status', { exports: false });
  const endpoints = typeof status === 'object' && status !== null && 'endpoints' in status && Array.isArray(status.endpoints) ? (status.endpoints as unknown[]) : [];
  for (const uri of endpoints) {
    if (typeof uri !== 'string' || !uri.startsWith('nbd+unix:')) continue;
    const socket = new URL(uri).searchParams.get('socket');
    if (socket) return socket;
  }
  return undefined;
}

/**
 * Connects to export `exportName` of the server of `volumePath` over its own
 * unix socket (NbdClient). A refusal the server means as "not now" — every
 * NBD connection taken (`serve --max-connections`), `live` being rewritten
 * by a restore — is VOLUME_BUSY, and is tried again until `waitMs` (the
 * command's `--wait`) has passed, as an offline open waits for the owner
 * lock (docs/ARCHITECTURE.md §14.6).
 * @throws `busy` (the VOLUME_BUSY naming the server; a VolumeServedError is restated for a TLS-only server, listing the commands that work there) when the server has no plain unix endpoint; NOT_SERVED when it is gone; `unknownExport()` for an export it does not have; VOLUME_BUSY (the server's refusal, once `waitMs` has passed); what NbdClient.connect throws
 */
export async function servedNbd(volumePath: string, exportName: string, busy: CowvolError, unknownExport?: () => CowvolError, waitMs = 0): Promise<NbdClient> {
  const socketPath = await servedSocketPath(volumePath);
  if (socketPath === undefined) throw busy instanceof VolumeServedError ? tlsOnly(busy) : busy;
  const { NbdClient } = await import('@cowvol/nbd');
  const deadline = Date.now() + waitMs;
  let delayMs = 50;
  for (;;) {
    try {
      return await NbdClient.connect(socketPath, exportName, unknownExport ? { unknownExport } : {});
    } catch (err) {
      if (!hasCode(err, 'VOLUME_BUSY') || Date.now() >= deadline) throw err;
      await sleep(Math.min(delayMs, Math.max(1, deadline - Date.now())));
      delayMs = Math.min(delayMs * 2, 1000);
    }
  }
}

/** `busy` for a server with no plain unix NBD socket (`--tls-psk`): it says so, and lists only the commands that work there. */
function tlsOnly(busy: VolumeServedError): VolumeServedError {
  const note = 'its server takes only TLS clients (serve --tls-psk), so the commands that reach the volume over NBD do not work while it is served';
  return new VolumeServedError(busy.path, busy.pid, { note, plainNbd: false, ...(busy.cause === undefined ? {} : { cause: busy.cause }) });
}

/** How {@link withVolumeData} reaches the volume. */
export interface DataRoute<T> {
  volumePath: string;
  /** The NBD export on a served volume: `live` or `snapshot/<name>`. */
  exportName: string;
  /** Opens the volume as the command does offline (CowvolCommand.withVolume with `mode`) and runs the command on it. */
  offline: (mode: OpenMode) => Promise<T>;
  /** Runs the command on the export of the server (after `before`, when given). */
  served: (data: VolumeData) => Promise<T>;
  /** Checks made on a served volume before connecting (e.g. that a snapshot exists: SNAPSHOT_NOT_FOUND as offline). */
  before?: () => Promise<void>;
  unknownExport?: () => CowvolError;
  /** How long a refusal of the server's NBD socket is tried again (`--wait`, ms; 0: not). */
  waitMs?: number;
}

/**
 * Runs a data command offline, or, when the volume is served by `cowvol
 * serve`, as an NBD client of the server's own socket (docs/ARCHITECTURE.md
 * §14.10). A server that is gone by then (NOT_SERVED) ran nothing: the
 * volume is opened as offline, `--wait` included. The connection is closed
 * (NBD_CMD_DISC) even when the command fails.
 * @throws what `offline` and `served` throw; VOLUME_BUSY when the server serves no plain unix socket
 */
export async function withVolumeData<T>(route: DataRoute<T>): Promise<T> {
  let busy: VolumeServedError;
  try {
    return await route.offline({ routeServed: true });
  } catch (err) {
    if (!(err instanceof VolumeServedError)) throw err;
    busy = err;
  }
  let client: NbdClient;
  try {
    await route.before?.();
    client = await servedNbd(route.volumePath, route.exportName, busy, route.unknownExport, route.waitMs);
  } catch (err) {
    if (!hasCode(err, 'NOT_SERVED')) throw err;
    return route.offline({});
  }
  try {
    return await route.served(exportData(client));
  } finally {
    await client.close();
  }
}
