import type { SnapshotMap } from '../src/snapshot-map.js';

/** One block's mapping in `map` — `[storeBlock, crc]`, or undefined — read through the map's range query. */
export function mappingOf(map: SnapshotMap, block: number): [storeBlock: number, crc: number] | undefined {
  let found: [number, number] | undefined;
  map.forEachInRange(block, block, (_, storeBlock, crc) => (found = [storeBlock, crc]));
  return found;
}
