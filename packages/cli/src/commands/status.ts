import { Args } from '../args.js';
import { assert, hasCode } from '@cowvol/base';
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
      status = await servedStatus(args.volume);
    } catch (err) {
      if (!hasCode(err, 'NOT_SERVED')) throw err;
      status = { served: false };
    }
    this.say(status.served ? servedLines(status).join('\n') : `served: no (no cowvol serve answers for ${args.volume})`);
    return status;
  }
}

/**
 * The server's `status`, its pages joined (docs/FORMAT.md §11.2 "Paged
 * lists": one export per snapshot; the pages follow `nextAfterId` as
 * `snapshot.list`'s do; an export listed twice, by a delete between two
 * pages, is kept once). A server that does not page sends no
 * `nextAfterId`: its one answer is the whole status.
 * @throws NOT_SERVED, and the server's errors
 */
async function servedStatus(volume: string): Promise<ServeStatus> {
  type Page = Extract<ServeStatus, { served: true }> & { nextAfterId?: number | null };
  const { nextAfterId: first, ...status } = (await askServer(volume, 'status')) as Page;
  let next = first;
  // Bounded: every page but the last holds at least one snapshot, and the ids only grow.
  while (typeof next === 'number') {
    const page = (await askServer(volume, 'status', { afterId: next })) as Page;
    assert(page.nextAfterId === null || page.nextAfterId === undefined || page.nextAfterId > next, 'status pages move forward');
    status.exports.push(...page.exports);
    next = page.nextAfterId;
  }
  // A snapshot deleted between two pages may be listed on its page and again among the last page's no-longer-listed exports: once.
  const seen = new Set<string>();
  status.exports = status.exports.filter((e) => !seen.has(e.name) && seen.add(e.name));
  return status;
}

function servedLines(status: Extract<ServeStatus, { served: true }>): string[] {
  return [
    `served:      yes, by process ${status.pid}${status.readOnly ? ' (read-only)' : ''}`,
    ...status.endpoints.map((uri) => `endpoint:    ${uri}`),
    `connections: ${status.connections}`,
    ...status.exports.map((e) => `export ${e.name}: ${e.connections} connected, ${e.requests} requests, ${human(e.readBytes)} read, ${human(e.writtenBytes)} written, ${e.errors} errors`),
  ];
}
