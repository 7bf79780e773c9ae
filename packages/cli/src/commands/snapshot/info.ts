import { Args } from '../../args.js';
import { assert } from '@cowvol/base';
import { type SnapshotIdentity, type SnapshotInfo, type SpaceReport } from '@cowvol/cow-core';
import { CowvolCommand } from '../../base-command.js';
import { SUSPECT_NOTE, formatLabels, human, withSpace, type SnapshotWithSpace } from '../../format.js';

export default class SnapshotInfoCommand extends CowvolCommand {
  static override summary = 'Show one snapshot: identity, labels, hold, store space owned and what deleting it would free';
  static override examples = ['<%= config.bin %> snapshot info vol.img nightly --json'];
  static override args = {
    volume: Args.string({ description: 'path of the volume file', required: true }),
    name: Args.string({ description: 'snapshot name', required: true }),
  };

  async run(): Promise<SnapshotWithSpace & { identity: SnapshotIdentity }> {
    const { args } = await this.parse(SnapshotInfoCommand);
    const { snapshot, space, identity } = await this.withServedVolume<{ snapshot: SnapshotInfo; space: SpaceReport; identity: SnapshotIdentity }>(
      args.volume,
      'snapshot.info',
      { name: args.name },
      async (v) => ({ ...(await v.snapshotInfo(args.name)), identity: await v.snapshotIdentity(args.name) }),
      { readOnly: true },
    );
    const [row] = withSpace([snapshot], space);
    assert(row !== undefined, 'withSpace gives one row per snapshot');
    const result = { ...row, identity };
    this.say(
      [
        `name:        ${result.name}`,
        `id:          ${result.id}`,
        `created:     ${result.createdAt}`,
        `identity:    volume ${result.identity.volumeUuid}, snapshot ${result.identity.snapshotId}${result.origin ? ` (imported from ${result.origin.name})` : ''}`,
        `owned:       ${human(result.ownedBytes)} (${result.ownedBlocks} blocks)`,
        `delete frees: ${human(result.freeableBytes)} (${result.freeableBlocks} blocks)`,
        `held:        ${result.held ? 'yes' : 'no'}`,
        `active:      ${result.active ? 'yes' : 'no'}`,
        `suspect:     ${result.suspect ? `yes (${SUSPECT_NOTE.slice('suspect: '.length)})` : 'no'}`,
        `labels:      ${formatLabels(result.labels) || '(none)'}`,
      ].join('\n'),
    );
    return result;
  }
}
