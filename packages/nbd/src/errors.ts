import { CowvolError } from '@cowvol/base';

/**
 * Errors thrown by @cowvol/nbd. Each has a stable `code`; the CLI maps codes
 * to exit codes (packages/cli/src/exit-codes.ts, README "Exit codes").
 */

/**
 * `NBD_FRAMING`: a client broke the framing of the protocol (bad magic, an
 * option payload over 64 KiB, a WRITE payload over 32 MiB, an unknown
 * client flag). Only that connection is closed; nothing of the bad message
 * was applied. Never an exit: the server logs it and keeps serving.
 */
export class NbdFramingError extends CowvolError {
  constructor(message: string) {
    super('NBD_FRAMING', message);
  }
}

/**
 * `ENDPOINT_IN_USE`: the socket path or TCP address to listen on is taken
 * (another server is running there, or a file is in the way).
 */
export class EndpointInUseError extends CowvolError {
  constructor(endpoint: string, options?: { cause?: unknown }) {
    super('ENDPOINT_IN_USE', `${endpoint} is already in use (is another server running?)`, { ...options, details: { endpoint } });
  }
}

/**
 * `NOT_SERVED`: `cowvol stop` (or another request for the server) on a
 * volume no `cowvol serve` serves: nothing answers on its control socket
 * (docs/ARCHITECTURE.md §14.8).
 */
export class NotServedError extends CowvolError {
  constructor(volumePath: string, options?: { cause?: unknown }) {
    super('NOT_SERVED', `volume ${volumePath} is not served (no cowvol serve answers on its control socket)`, { ...options, details: { path: volumePath } });
  }
}

/**
 * `EXPORT_IN_USE`: `snapshot restore` or `import` on a served volume while
 * NBD clients are attached (or attaching) to `live`: it would rewrite the
 * disk under them (docs/ARCHITECTURE.md §14.8). Nothing was changed; retry
 * once they disconnected.
 * @param action the command refused, named in the message (`snapshot restore`, `import`)
 */
export class ExportInUseError extends CowvolError {
  constructor(exportName: string, connections: number, action = 'snapshot restore') {
    super(
      'EXPORT_IN_USE',
      `export ${exportName} is in use: ${connections} NBD connection(s) attached; ${action} would rewrite the disk under them — disconnect them first (cowvol status shows them)`,
      { details: { export: exportName, connections } },
    );
  }
}

/**
 * `SNAPSHOT_IN_USE`: `snapshot delete` or `snapshot rename` of a snapshot a
 * connected NBD client attached to (or is attaching to) as
 * `snapshot/<name>` on a served volume (docs/ARCHITECTURE.md §14.8).
 * Nothing was changed; retry once the clients disconnected.
 */
export class SnapshotInUseError extends CowvolError {
  constructor(snapshotName: string, connections: number) {
    super('SNAPSHOT_IN_USE', `snapshot ${snapshotName} is in use: ${connections} NBD connection(s) attached to snapshot/${snapshotName}; disconnect them first (cowvol status shows them)`, {
      details: { name: snapshotName, connections },
    });
  }
}
