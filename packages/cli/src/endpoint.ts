import { isIP } from 'node:net';
import { assert } from '@cowvol/base';
import { InvalidArgumentError } from '@cowvol/cow-core';

/**
 * Parses `--listen <host:port>` (`[v6 address]:port` for IPv6). Without
 * TLS (`tls` false) only loopback addresses are accepted: a client on
 * another machine would see every byte in clear and need no key (README
 * "Serving a volume").
 * @throws INVALID_ARGUMENT (malformed, bad port, or a non-loopback host without TLS)
 */
export function parseListen(value: string, tls = false): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value.trim());
  if (!match) throw new InvalidArgumentError(`--listen takes <host:port> (or [ipv6]:port), got ${JSON.stringify(value)}`);
  const host = match[1] ?? match[2];
  assert(host !== undefined, 'the pattern captures either a bracketed or a plain host');
  const port = Number(match[3]);
  if (port > 65535) throw new InvalidArgumentError(`--listen: port ${port} is above 65535`);
  if (!tls && !isLoopback(host)) {
    throw new InvalidArgumentError(`--listen ${value}: without --tls-psk only loopback addresses (127.0.0.0/8, ::1, localhost) are served: other hosts would reach every byte in clear, with no key`);
  }
  return { host, port };
}

/** `localhost`, 127.0.0.0/8, ::1, and 127.0.0.0/8 mapped into IPv6 (::ffff:127.x.x.x). */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) !== 6) return false;
  const canonical = new URL(`http://[${host}]/`).hostname; // compressed, lower case; mapped IPv4 in hex
  return canonical === '[::1]' || canonical.startsWith('[::ffff:7f');
}
