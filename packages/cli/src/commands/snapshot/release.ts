import { HoldCommand } from '../../hold-command.js';

export default class SnapshotRelease extends HoldCommand {
  static override summary = 'Release held snapshots so they can be deleted again';
  static override examples = ['<%= config.bin %> snapshot release vol.img nightly-2026-11-21'];
  protected readonly held = false;
}
