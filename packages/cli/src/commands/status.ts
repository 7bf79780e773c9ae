import { Args } from '@oclif/core';
import { hasCode } from '@cowvol/base';
import { CowvolCommand } from '../base-command.js';
import { human } from '../format.js';
import { askServer, assertVolumeExists } from '../served.js';

/** One export in `cowvol status`: connections attached now; requests, bytes and errors since the server started. */
export interface ServedExport {
  name: string;
  connections: number;
  requests: number;
  readBytes: number;
  writtenBytes: number;
  errors: number;
}

/** `cowvol status --json`: `served: false` alone when no server answers. */
export type ServeStatus = { served: false } | { served: true; pid: number; volume: string; readOnly: boolean; endpoints: string[]; connections: number; exports: ServedExport[] };

export default class Status extends CowvolCommand {
  static override summary = 'Say whether the volume is served (cowvol serve): pid, endpoints, exports, connections, requests and bytes per export';
  static override description =
    'Asks the server over its control socket (<volume>.cowvol/control.sock). Exit 0 whether served or not; `served: false` when no server answers. Counters run from the start of the server.';
  static override examples = ['<%= config.bin %> status vol.img', '<%= config.bin %> status vol.img --json'];
  static override args = { volume: Args.string({ description: 'path of the volume file', required: true }) };

  async run(): Promise<ServeStatus> {
    const { args } = await this.parse(Status);
    await assertVolumeExists(args.volume);
    let status: ServeStatus;
    try {
      status = (await askServer(args.volume, 'status')) as ServeStatus;
    } catch (err) {
      if (!hasCode(err, 'NOT_SERVED')) throw err;
      status = { served: false };
    }
    this.say(status.served ? servedLines(status).join('\n') : `served: no (no cowvol serve answers for ${args.volume})`);
    return status;
  }
}

function servedLines(status: Extract<ServeStatus, { served: true }>): string[] {
  return [
    `served:      yes, by process ${status.pid}${status.readOnly ? ' (read-only)' : ''}`,
    ...status.endpoints.map((uri) => `endpoint:    ${uri}`),
    `connections: ${status.connections}`,
    ...status.exports.map((e) => `export ${e.name}: ${e.connections} connected, ${e.requests} requests, ${human(e.readBytes)} read, ${human(e.writtenBytes)} written, ${e.errors} errors`),
  ];
}
