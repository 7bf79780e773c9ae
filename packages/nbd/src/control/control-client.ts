import { createConnection } from 'node:net';
import { join } from 'node:path';
import { CowvolError, IoError, type ErrorCode } from '@cowvol/base';
import { volumeLayout } from '@cowvol/cow-core';
import { NotServedError } from '../errors.js';
import { encodeControlRequest, parseControlResponse, takeLines, MAX_CONTROL_RESPONSE_BYTES } from './protocol.js';

/** The control socket of a volume: `<volume>.cowvol/control.sock` (docs/FORMAT.md §11). */
export function controlSocketPath(volumePath: string): string {
  return join(volumeLayout(volumePath).sidecarPath, 'control.sock');
}

/**
 * An error a served volume answered a control request with: the same code,
 * message and details as the command would have given offline, so the CLI
 * reports it (and exits) the same way.
 */
export class ServedVolumeError extends CowvolError {
  constructor(code: ErrorCode, message: string, details: Record<string, unknown> | undefined) {
    super(code, message, details ? { details } : undefined);
  }
}

/**
 * Sends one request to the server of `volumePath` and resolves with its
 * result (docs/FORMAT.md §11). One connection per request.
 * @throws NOT_SERVED when nothing answers on the control socket (no socket,
 *   or a stale one); the error the server answered with (ServedVolumeError,
 *   its code); IO_ERROR when the connection breaks before the response or
 *   the response is not one of the protocol
 */
export function controlRequest(volumePath: string, method: string, params: Record<string, unknown> = {}): Promise<unknown> {
  const path = controlSocketPath(volumePath);
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    let connected = false;
    let pending: Buffer = Buffer.alloc(0);
    const fail = (err: CowvolError): void => {
      socket.destroy();
      reject(err);
    };
    socket.once('connect', () => {
      connected = true;
      socket.write(encodeControlRequest({ id: 1, method, params }));
    });
    socket.on('data', (chunk: Buffer) => {
      const taken = takeLines(pending, chunk, MAX_CONTROL_RESPONSE_BYTES);
      pending = taken.rest;
      const line = taken.lines[0];
      if (line === undefined) return;
      socket.destroy();
      const response = parseControlResponse(line);
      if (response === undefined) reject(new IoError(`the server of ${volumePath} answered with something that is not a control response`));
      else if ('error' in response) reject(new ServedVolumeError(response.error.code, response.error.message, response.error.details));
      else resolve(response.result);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (!connected) fail(new NotServedError(volumePath, { cause: err }));
      else fail(new IoError(`the control connection to the server of ${volumePath} failed: ${err.message}`, { cause: err }));
    });
    socket.once('close', () => fail(new IoError(`the server of ${volumePath} closed the control connection without answering`)));
  });
}
