// A DeviceOpener that counts, per file role (volume / store / journal), the
// I/O cowvol issues through its BlockDevice seam: calls, bytes, fdatasyncs.
// LevelDB's own file I/O does not go through this seam; /proc/self/io
// (see common.mjs) covers it in aggregate.
import { FileBlockDevice } from '@cowvol/base';

export function roleOf(path) {
  if (/\.cowvol[\\/]store$/.test(path)) return 'store';
  if (/\.cowvol[\\/]journal$/.test(path)) return 'journal';
  return 'volume';
}

export function newCounters() {
  const c = {};
  for (const role of ['volume', 'store', 'journal']) c[role] = { reads: 0, readBytes: 0, writes: 0, writeBytes: 0, syncs: 0, truncates: 0 };
  return c;
}

export function countingOpener(counters) {
  return {
    async open(path, options) {
      const dev = await FileBlockDevice.open(path, options);
      const c = counters[roleOf(path)];
      return {
        name: dev.name,
        async read(offsetBytes, lengthBytes) {
          c.reads += 1;
          c.readBytes += lengthBytes;
          return dev.read(offsetBytes, lengthBytes);
        },
        async readInto(offsetBytes, into) {
          c.reads += 1;
          c.readBytes += into.length;
          return dev.readInto(offsetBytes, into);
        },
        readIntoSync(offsetBytes, into) {
          c.reads += 1;
          c.readBytes += into.length;
          dev.readIntoSync(offsetBytes, into);
        },
        async write(offsetBytes, data) {
          c.writes += 1;
          c.writeBytes += data.length;
          return dev.write(offsetBytes, data);
        },
        writeSync(offsetBytes, data) {
          c.writes += 1;
          c.writeBytes += data.length;
          dev.writeSync(offsetBytes, data);
        },
        async sync() {
          c.syncs += 1;
          return dev.sync();
        },
        sizeBytes: () => dev.sizeBytes(),
        async truncate(sizeBytes) {
          c.truncates += 1;
          return dev.truncate(sizeBytes);
        },
        close: () => dev.close(),
      };
    },
  };
}
