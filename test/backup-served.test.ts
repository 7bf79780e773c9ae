import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cowvol, cowvolOk, jsonOf, sha256, tempDir } from './helpers.js';
import { startServe, type ServeProcess } from './nbd-peers.js';

/**
 * `backup push` of a served volume (README "Backups", "Serving a volume";
 * docs/ARCHITECTURE.md §14.10): the push reads the snapshot through the
 * server's NBD export `snapshot/<name>` and its changed blocks and
 * identities through the control channel, while the server keeps serving
 * and `live` is written between pushes. The full and the incremental push
 * restore (after the server stopped) to exactly what `snapshot read` gives
 * offline, and the incremental one reads only the chunks changed since the
 * first. A snapshot the volume does not have fails as offline. Then
 * `backup restore --into` a served copy holding the base: the server applies
 * the stream and `--verify` reads it back through the export.
 */
const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
let server: ServeProcess | undefined;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-backup-served-'));
});
afterAll(async () => {
  server?.child.kill('SIGKILL');
  await cleanup();
});

interface PushJson {
  parent: string | null;
  volumeUuid: string;
  chunksRead: number;
  chunksTotal: number;
}

describe('backup push on a served volume', () => {
  it('a full and an incremental push through the server restore to the snapshots as read offline; the incremental reads only the changed chunks', async () => {
    const vol = join(dir, 'vol.img');
    const repo = `file://${join(dir, 'repo')}`;
    const key = join(dir, 'key');
    await cowvolOk(['create', vol, '--size', '8M']);
    await cowvolOk(['write', vol, '--offset', '0'], randomBytes(8 * MiB));
    await cowvolOk(['snapshot', 'create', vol, 's1']);
    await cowvolOk(['write', vol, '--offset', String(2 * MiB)], randomBytes(MiB));
    await cowvolOk(['snapshot', 'create', vol, 's2']);
    await cowvolOk(['backup', 'key-gen', key]);
    const common = ['--key-file', key];
    await cowvolOk(['backup', 'init', repo, '--chunk-size', '64K', ...common]);

    server = await startServe(vol);
    const missingPush = await cowvol(['backup', 'push', vol, 'nope', '--to', repo, ...common]);
    expect([missingPush.code, missingPush.stderr]).toEqual([3, expect.stringContaining('[SNAPSHOT_NOT_FOUND]')]);
    const full = jsonOf<PushJson>(await cowvolOk(['backup', 'push', vol, 's1', '--to', repo, ...common, '--json']));
    expect(full.parent).toBeNull();
    await cowvolOk(['write', vol, '--offset', String(5 * MiB)], randomBytes(MiB)); // live moves on, through the server
    const incremental = jsonOf<PushJson>(await cowvolOk(['backup', 'push', vol, 's2', '--to', repo, ...common, '--json']));
    expect(incremental.parent).toMatch(/\/s1$/);
    expect(incremental.chunksRead, 'the 1 MiB written between s1 and s2, in 64 KiB chunks').toBe(MiB / CHUNK);
    await cowvolOk(['stop', vol]);
    expect(await server.exited).toBe(0);
    server = undefined;

    for (const name of ['s1', 's2']) {
      const target = join(dir, `restored-${name}.img`);
      await cowvolOk(['backup', 'restore', `${repo}/${full.volumeUuid}/${name}`, target, ...common]);
      const [restored, offline] = await Promise.all([cowvolOk(['read', target]), cowvolOk(['snapshot', 'read', vol, name])]);
      expect(sha256(restored.stdout), `${name} restored from a push made while served`).toBe(sha256(offline.stdout));
    }

    // restore --into a served volume holding the base: the server applies the stream, and --verify reads it back through the export.
    const copy = join(dir, 'restored-s1.img');
    server = await startServe(copy);
    const into = await cowvol(['backup', 'restore', `${repo}/${full.volumeUuid}/s2`, copy, '--into', '--verify', ...common, '--json']);
    expect(into.code, into.stderr).toBe(0);
    expect(jsonOf<{ base: string | null; verified: boolean }>(into)).toMatchObject({ base: expect.stringMatching(/\/s1$/) as unknown, verified: true });
    const [servedRead, offlineRead] = await Promise.all([cowvolOk(['snapshot', 'read', copy, 's2']), cowvolOk(['snapshot', 'read', vol, 's2'])]);
    expect(sha256(servedRead.stdout), 's2 restored --into the served copy').toBe(sha256(offlineRead.stdout));
    await cowvolOk(['stop', copy]);
    expect(await server.exited).toBe(0);
    server = undefined;
  }, 600_000);
});
