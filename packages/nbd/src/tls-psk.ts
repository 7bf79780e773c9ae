import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { TLSSocket, type TLSSocketOptions } from 'node:tls';
import { InvalidArgumentError } from '@cowvol/cow-core';

/**
 * TLS-PSK for NBD_OPT_STARTTLS (docs/ARCHITECTURE.md §14.6): the key file
 * and the upgrade of a connection's socket. The TLS itself is node:tls.
 */

/** Pre-shared keys by username (psktool's key file: one `username:hexkey` per line). */
export type PskKeys = ReadonlyMap<string, Buffer>;

/** Largest key file read: a psktool file holds a line of ~70 bytes per user. */
const MAX_KEY_FILE_BYTES = 1024 * 1024;

/**
 * TLS 1.2 PSK suites (OpenSSL names) that GnuTLS clients (libnbd, qemu)
 * can negotiate, forward-secret ones first. TLS 1.3, which they use by
 * default, has its own suites: a PSK from the callback goes with the
 * SHA-256 ones.
 */
const TLS12_PSK_CIPHERS = ['ECDHE-PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256', 'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256', 'PSK-CHACHA20-POLY1305'].join(
  ':',
);

/**
 * Parses psktool's key-file format (the one nbdkit `--tls-psk` and qemu
 * `tls-creds-psk` read): each line `username:hexkey`, the username
 * non-empty without `:`, the key an even number (≥ 2) of hex digits. Empty
 * lines are skipped. `source` names the file in messages; keys never appear.
 * @throws INVALID_ARGUMENT on a malformed line, a username given twice, or no key at all
 */
export function parsePskKeys(text: string, source: string): PskKeys {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line === '') return;
    const match = /^([^:]+):([0-9A-Fa-f]+)$/.exec(line);
    const username = match?.[1];
    const hexKey = match?.[2];
    if (username === undefined || hexKey === undefined || hexKey.length % 2 !== 0) {
      throw new InvalidArgumentError(`${source}: line ${i + 1} is not <username>:<hex key> (an even number of hex digits)`);
    }
    if (keys.has(username)) throw new InvalidArgumentError(`${source}: username ${JSON.stringify(username)} appears twice`);
    keys.set(username, Buffer.from(hexKey, 'hex'));
  });
  if (keys.size === 0) throw new InvalidArgumentError(`${source}: no key (make one with: psktool -u <username> -p ${source})`);
  return keys;
}

/**
 * Reads a psktool key file. It must be a regular file (not a symlink:
 * opened with O_NOFOLLOW) that neither group nor others can read or
 * write (mode & 0o077 = 0), as a private key should be.
 * @throws INVALID_ARGUMENT (missing, a symlink or not a regular file, readable or writable by group/other, over 1 MiB, malformed)
 */
export async function loadPskKeys(path: string): Promise<PskKeys> {
  const handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK).catch((err: unknown) => {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ELOOP' ? 'is a symbolic link' : err instanceof Error ? err.message : String(err);
    throw new InvalidArgumentError(`--tls-psk ${path}: ${why}`, { cause: err });
  });
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw new InvalidArgumentError(`--tls-psk ${path}: not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new InvalidArgumentError(`--tls-psk ${path}: mode ${(st.mode & 0o777).toString(8).padStart(4, '0')} lets group or others at the keys (chmod 600 it)`);
    }
    if (st.size > MAX_KEY_FILE_BYTES) throw new InvalidArgumentError(`--tls-psk ${path}: ${st.size} bytes, more than a key file holds`);
    return parsePskKeys(await handle.readFile('utf8'), path);
  } finally {
    await handle.close();
  }
}

/**
 * Starts the server side of a TLS-PSK session on `socket` (after the
 * NBD_REP_ACK to NBD_OPT_STARTTLS). TLS 1.2 or 1.3; the client's PSK
 * identity must be a username of `keys`, else the handshake fails (the
 * returned socket emits `error` and closes). No certificate is involved.
 */
export function startTlsPsk(socket: Socket, keys: PskKeys): TLSSocket {
  // node:tls takes `pskCallback` on a TLSSocket too (as on tls.createServer);
  // its TLSSocketOptions type does not list it.
  const options: TLSSocketOptions & { pskCallback: (tlsSocket: TLSSocket, identity: string) => Buffer | null } = {
    isServer: true,
    minVersion: 'TLSv1.2',
    ciphers: TLS12_PSK_CIPHERS,
    pskCallback: (_tlsSocket, identity) => keys.get(identity) ?? null,
  };
  return new TLSSocket(socket, options);
}
