import { HoldCommand } from '../../hold-command.js';

export default class SnapshotHold extends HoldCommand {
  static override summary = 'Hold snapshots: a held snapshot cannot be deleted (SNAPSHOT_HELD) until released';
  static override examples = ['<%= config.bin %> snapshot hold vol.img nightly-2026-11-21'];
  protected readonly held = true;
}
