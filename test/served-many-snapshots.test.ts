/**
 * A served `snapshot list`, `info` and `status` of more snapshots than one control
 * response carries (docs/FORMAT.md §11.2, `snapshot.list` paged by
 * `afterId`): the CLI asks every page and prints what it prints offline,
 * byte for byte (`--json` and the table); each page stays under its bound
 * (MAX_LIST_PAGE_BYTES of snapshot JSON, by `snapshotJsonBytesBound`, an
 * upper bound checked here against the JSON sent) whatever the labels;
 * small pages (`maxSnapshots`) walk the same list; a bad `afterId` is
 * INVALID_ARGUMENT. The snapshots carry the longest labels there are (32 of
 * 256 characters, non-ASCII and escaped ones), so a few hundred of them fill
 * several pages; some are deleted, so ids have gaps. `COWVOL_MANY_SNAPSHOTS`
 * sets how many (default 420).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_LABELS, MAX_LABEL_VALUE_CHARS, Volume, type SnapshotInfo, type SpaceReport } from '@cowvol/cow-core';
import { MAX_CONTROL_RESPONSE_BYTES, MAX_LIST_PAGE_BYTES, controlRequest, snapshotJsonBytesBound } from '@cowvol/nbd';
import { cowvol, cowvolOk, jsonOf, tempDir } from './helpers.js';
import { startServe } from './nbd-peers.js';

const COUNT = Number(process.env.COWVOL_MANY_SNAPSHOTS ?? 420);
const BS = 65536;
let dir: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('cowvol-many-snapshots-'));
});
afterAll(async () => {
  await cleanup();
});

/** The longest labels one snapshot may carry: keys of 64 characters, values of 256 mixing 3-byte UTF-8 and characters JSON escapes. */
function longestLabels(i: number): Record<string, string> {
  const labels: Record<string, string> = {};
  for (let k = 0; k < MAX_LABELS; k++) labels[`${String(k).padStart(2, '0')}-${'k'.repeat(61)}`] = `€"\\${i}`.repeat(MAX_LABEL_VALUE_CHARS).slice(0, MAX_LABEL_VALUE_CHARS);
  return labels;
}

interface Page {
  snapshots: SnapshotInfo[];
  space: SpaceReport;
  nextAfterId: number | null;
}

describe('served snapshot list of many pages', () => {
  it(`lists ${COUNT} labelled snapshots in pages, as offline`, async () => {
    const vol = join(dir, 'v.img');
    // 64 KiB blocks: a journal record must fit one journal block, and the longest labels take about 14 KiB.
    const v = await Volume.create(vol, { sizeBytes: 64 * BS, blockSizeBytes: BS });
    try {
      for (let i = 0; i < COUNT; i++) {
        await v.createSnapshot(`snap-${i}`, i % 5 === 4 ? {} : { labels: longestLabels(i) });
        if (i % 50 === 0) await v.write((i % 64) * BS, Buffer.alloc(BS, i % 251));
      }
      await v.deleteSnapshots(['snap-0', 'snap-17', `snap-${COUNT - 1}`]);
    } finally {
      await v.close();
    }
    const offline = { list: await cowvolOk(['snapshot', 'list', vol, '--json']), table: await cowvolOk(['snapshot', 'list', vol]), info: await cowvolOk(['info', vol, '--json']) };

    const s = await startServe(vol);
    try {
      const list = await cowvol(['snapshot', 'list', vol, '--json']);
      expect(list.stderr).toBe('');
      expect(list.stdout.equals(offline.list.stdout), 'served --json equals offline').toBe(true);
      expect(jsonOf<{ snapshots: unknown[] }>(list).snapshots).toHaveLength(COUNT - 3);
      expect((await cowvolOk(['snapshot', 'list', vol])).stdout.equals(offline.table.stdout), 'served table equals offline').toBe(true);
      const info = jsonOf<{ snapshots: unknown[] }>(await cowvolOk(['info', vol, '--json']));
      expect(info.snapshots).toEqual(jsonOf<{ snapshots: unknown[] }>(offline.info).snapshots);

      // The pages themselves: bounded, forward, together the whole list.
      const ids: number[] = [];
      let pages = 0;
      for (let after: number | null = 0; after !== null; pages++) {
        const page = (await controlRequest(vol, 'snapshot.list', { afterId: after })) as Page;
        const sent = Buffer.byteLength(JSON.stringify(page));
        expect(sent).toBeLessThan(MAX_CONTROL_RESPONSE_BYTES / 2);
        let bound = 0;
        page.snapshots.forEach((snap, i) => {
          const actual = Buffer.byteLength(JSON.stringify(snap)) + Buffer.byteLength(JSON.stringify(page.space.snapshots[i]));
          expect(snapshotJsonBytesBound(snap), `bound of ${snap.name}`).toBeGreaterThanOrEqual(actual);
          bound += snapshotJsonBytesBound(snap);
        });
        expect(bound).toBeLessThanOrEqual(MAX_LIST_PAGE_BYTES);
        for (const snap of page.snapshots) ids.push(snap.id);
        after = page.nextAfterId;
      }
      expect(pages, 'the labels fill more than one page').toBeGreaterThan(1);
      const all = jsonOf<{ snapshots: Array<{ id: number }> }>(offline.list).snapshots.map((x) => x.id);
      expect(ids).toEqual(all);

      const small: number[] = [];
      for (let after: number | null = 0; after !== null;) {
        const page = (await controlRequest(vol, 'snapshot.list', { afterId: after, maxSnapshots: 7 })) as Page;
        expect(page.snapshots.length).toBeLessThanOrEqual(7);
        for (const snap of page.snapshots) small.push(snap.id);
        after = page.nextAfterId;
      }
      expect(small).toEqual(all);
      // `status` lists an export per snapshot: paged the same way, joined by the CLI.
      const names = jsonOf<{ snapshots: Array<{ name: string }> }>(offline.list).snapshots.map((x) => `snapshot/${x.name}`);
      const status = jsonOf<{ exports: Array<{ name: string }>; nextAfterId?: unknown }>(await cowvolOk(['status', vol, '--json']));
      expect(status.exports.map((e) => e.name)).toEqual(['live', ...names]);
      expect(status).not.toHaveProperty('nextAfterId');
      const statusPages: string[] = [];
      let statusPageCount = 0;
      for (let after: number | null = 0; after !== null; statusPageCount++) {
        const page = (await controlRequest(vol, 'status', { afterId: after, maxSnapshots: 7 })) as { exports: Array<{ name: string }>; nextAfterId: number | null };
        expect(page.exports.length).toBeLessThanOrEqual(after === 0 ? 8 : 7);
        statusPages.push(...page.exports.map((e) => e.name));
        after = page.nextAfterId;
      }
      expect(statusPageCount).toBeGreaterThan(1);
      expect(statusPages).toEqual(['live', ...names]);
      await expect(controlRequest(vol, 'snapshot.list', { afterId: -1 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(controlRequest(vol, 'snapshot.list', { maxSnapshots: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await cowvolOk(['stop', vol]);
      expect(await s.exited).toBe(0);
    } finally {
      s.child.kill('SIGKILL');
    }
  }, 600_000);
});
