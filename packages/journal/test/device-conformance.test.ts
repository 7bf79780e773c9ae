import { blockDeviceSuite } from '@cowvol/base/conformance';
import { MemoryDevice } from './memory-device.js';

// The journal's in-memory test device keeps the same BlockDevice contract as
// production's FileBlockDevice (docs/ARCHITECTURE.md §1 "packages/base").
blockDeviceSuite('MemoryDevice', (initial) => Promise.resolve(new MemoryDevice('memory', initial)));
blockDeviceSuite('MemoryDevice after a crash', (initial) => Promise.resolve(new MemoryDevice('memory', initial).crash(() => 'apply')));
