import { join } from 'node:path';
import { Flags } from '@oclif/core';
import { Args } from '../args.js';
import { volumeLayout } from '@cowvol/cow-core';
import type { ControlServer } from '@cowvol/nbd';
import { CowvolCommand } from '../base-command.js';
import { parseListen } from '../endpoint.js';
import { exitCodeFor } from '../exit-codes.js';
import { isCowvolError } from '@cowvol/base';

/** Log lines held while stderr cannot be written (a full disk), at most: beyond, lines are dropped. */
const LOG_BACKLOG_BYTES = 1024 * 1024;

export default class Serve extends CowvolCommand {
  /** SIGINT/SIGTERM stop the server cleanly (exit 0), not the generic interrupt (exit 130/143). */
  protected override readonly handlesOwnSignals = true;

  static override summary = 'Serve the live volume and its snapshots over NBD until SIGINT or SIGTERM';
  static override description =
    'Exports `live` (also the default, empty name) read-write and `snapshot/<name>` read-only. Prints the NBD URI on stdout once ready; logs JSON lines on stderr. The volume stays locked while served: `status`, `stop`, `info`, `check` (`--repair` too), every `snapshot` command, `import` and `accept-changes` go through its control socket (<volume>.cowvol/control.sock), `read`, `write`, `snapshot read` and `snapshot export` through its NBD socket; `snapshot restore` and `import` refuse (EXPORT_IN_USE) while a client is attached to `live`. `backup push` and `backup restore --into` go through both. With --tls-psk every client must start TLS (NBD_OPT_STARTTLS) with a key of the file, on every endpoint.';
  static override examples = [
    '<%= config.bin %> serve vol.img',
    'qemu-img convert -O raw "nbd+unix:///snapshot/nightly?socket=$PWD/vol.img.cowvol/nbd.sock" copy.img',
    '<%= config.bin %> serve vol.img --listen 127.0.0.1:10809 --read-only',
    'psktool -u alice -p keys.psk && <%= config.bin %> serve vol.img --tls-psk keys.psk --listen 0.0.0.0:10809',
    'nbdinfo --list "nbds://alice@server:10809/?tls-psk-file=keys.psk"',
  ];
  static override enableJsonFlag = false;
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };
  static override flags = {
    socket: Flags.string({ description: 'unix socket to listen on, created with mode 0600 (default: <volume>.cowvol/nbd.sock)', helpValue: '<path>' }),
    listen: Flags.string({ description: 'also listen on TCP; a non-loopback address needs --tls-psk', helpValue: '<host:port>' }),
    'tls-psk': Flags.string({ description: 'require TLS with the pre-shared keys of this psktool file (username:hexkey lines; a regular file of mode 0600 or stricter)', helpValue: '<file>' }),
    'handshake-timeout': Flags.integer({
      description: 'seconds a client may take from connecting to its first request (TLS handshake included); then it is disconnected',
      min: 1,
      max: 86_400,
      default: 30,
      helpValue: '<seconds>',
    }),
    'read-only': Flags.boolean({ description: 'serve `live` read-only too', default: false }),
    'max-connections': Flags.integer({ description: 'connections served at once', min: 1, max: Number.MAX_SAFE_INTEGER, default: 16, helpValue: '<n>' }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Serve);
    const tcp = flags.listen === undefined ? undefined : parseListen(flags.listen, flags['tls-psk'] !== undefined);
    // Loaded here, not at the top: every command module is loaded at start
    // (the bundle's COMMANDS), and no other command should pay for the server
    // or the logger. pino is CommonJS: its default export is the one both
    // Node and the bundle's chunk give (the bundle has no named exports for it).
    const [{ NbdServer, VolumeExports, ControlServer, controlSocketPath, volumeMethods, loadPskKeys }, { default: pino }] = await Promise.all([import('@cowvol/nbd'), import('pino')]);
    const tlsPsk = flags['tls-psk'] === undefined ? undefined : await loadPskKeys(flags['tls-psk']);
    // A log that cannot be written (stderr a file on a full disk) must not stop the server and drop every client: its lines wait, at
    // most LOG_BACKLOG_BYTES of them (written once it can write again), and those beyond are dropped.
    const logDestination = pino.destination({ dest: 2, sync: true, maxLength: LOG_BACKLOG_BYTES });
    logDestination.on('error', () => undefined);
    const log = pino({ base: { pid: process.pid } }, logDestination);
    // The first signal (or `cowvol stop`) stops cleanly; later signals are
    // logged and ignored until the volume is closed, so a stop in progress
    // is never cut short.
    let signals = 0;
    let requestStop: (why: string) => void = () => undefined;
    const stopped = new Promise<string>((resolve) => (requestStop = resolve));
    const onSignal = (signal: NodeJS.Signals): void => {
      if (signals++ === 0) requestStop(signal);
      else log.warn({ signal }, 'already stopping: finishing requests in flight');
    };
    let markReleased: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (markReleased = resolve));
    let control: ControlServer | undefined;
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    // A volume that fails (a metadata commit failed: a full disk, an I/O error; the journal aborted) refuses every call until it
    // is reopened: the server stops rather than stay up serving nothing, and exits with the failure's code (docs/ARCHITECTURE.md §14.8).
    let failure: unknown;
    try {
      await this.withVolume(args.volume, async (volume) => {
        volume.onFailure((err) => {
          failure = err;
          log.error({ err: err instanceof Error ? err.message : String(err) }, 'the volume failed: stopping (restart the server once the cause is fixed; the next open recovers the journal)');
          requestStop('volume failure');
        });
        const exports = new VolumeExports(volume, { readOnly: flags['read-only'] });
        const server = new NbdServer({
          catalog: exports,
          logger: log,
          maxConnections: flags['max-connections'],
          handshakeTimeoutMs: flags['handshake-timeout'] * 1000,
          ...(tlsPsk ? { tlsPsk } : {}),
        });
        try {
          const uri = await server.listen({ socketPath: flags.socket ?? join(volumeLayout(args.volume).sidecarPath, 'nbd.sock') });
          const tcpUri = tcp ? await server.listen(tcp) : undefined;
          const stop = (): Promise<void> => {
            requestStop('cowvol stop');
            return released;
          };
          const serveControl = { volumePath: args.volume, readOnly: flags['read-only'], exports, stop };
          control = await ControlServer.listen(controlSocketPath(args.volume), volumeMethods(volume, server, serveControl), args.volume, log);
          log.info({ volume: args.volume, uri, tcpUri, control: controlSocketPath(args.volume), readOnly: flags['read-only'], tls: tlsPsk ? 'psk' : 'off' }, 'serving');
          process.stdout.write(`${uri}\n`);
          const by = await stopped;
          log.info(by === 'cowvol stop' || by === 'volume failure' ? { by } : { signal: by }, 'stopping: finishing requests in flight');
        } finally {
          await control?.drain(['stop']);
          await server.stop();
        }
        log.info({}, 'stopped; closing the volume');
      });
    } finally {
      markReleased(); // the owner lock is released: `stop` requests are answered
      await control?.drain();
      await control?.close();
      // The handlers stay until the process exits: removed, a SIGTERM in the
      // exit window after `cowvol stop` returned would kill the process by
      // signal instead of exit 0 (docs/ARCHITECTURE.md §14.8). Signal
      // handlers do not keep the event loop alive.
    }
    // Exit here rather than let the event loop drain: on a natural exit Node
    // closes its signal handles during teardown, restoring the default
    // action, and a SIGTERM in that window kills the process by signal
    // (measured: 200 of 200 times under a SIGTERM loop; 0 of 200 with
    // process.exit). The URI line was written long before; the log's
    // destination is synchronous (what it could not write is dropped).
    process.exit(failure === undefined ? 0 : exitCodeFor(isCowvolError(failure) ? failure.code : 'JOURNAL_ABORTED'));
  }
}
