import type { BlockDevice } from '@cowvol/base';
import { TARGET_VOLUME } from './layout.js';
import { SYNC_MAX_BYTES, SyncIoPolicy } from './sync-io-policy.js';
import type { VolumeParts } from './volume-context.js';

/**
 * Reads and writes of the journal targets' home files — the live volume
 * file and the snapshot store — as an open volume does them
 * (docs/ARCHITECTURE.md §4.14): in `journal` mode the journal's cached
 * images not yet checkpointed are laid over what a home read returns; small
 * live reads and writes are synchronous while their {@link SyncIoPolicy}
 * allows it. One per open volume (`VolumeContext.home`).
 */
export class HomeIo {
  /**
   * When small reads of the live volume file (`readLive`: live reads, the
   * COW's read of the old block) are done synchronously (§4.14); one policy
   * for the file, across requests.
   */
  readonly liveReads = new SyncIoPolicy();
  /** The same for small writes of the live volume file (`writeLive`: overwrites, write-back entries landing). */
  readonly liveWrites = new SyncIoPolicy();
  /** The volume file's synchronous read, when its device offers one (`BlockDevice.readIntoSync`). */
  private readonly volumeSync: { readIntoSync(offsetBytes: number, into: Uint8Array): void } | undefined;

  constructor(private readonly parts: Pick<VolumeParts, 'volume' | 'journal' | 'meta'>) {
    const { volume } = parts;
    this.volumeSync = volume.readIntoSync === undefined ? undefined : { readIntoSync: (offsetBytes, into) => volume.readIntoSync?.(offsetBytes, into) };
  }

  private get blockSizeBytes(): number {
    return this.parts.meta.sb.blockSizeBytes;
  }

  private get journaled(): boolean {
    return this.parts.meta.sb.dataMode === 'journal';
  }

  /**
   * Live data: the newest journaled image of a block if not yet checkpointed
   * (journal mode), else the volume file. A read of at most `SYNC_MAX_BYTES`
   * is done synchronously while {@link liveReads} allows it and the device
   * offers it (§4.14), else through the thread pool; either way a failure
   * rejects with the device's error (`IO_ERROR`, its range in `details`).
   */
  async readLive(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const data = Buffer.allocUnsafe(lengthBytes); // the device fills every byte (zeros past the end of the file)
    await this.readLiveInto(offsetBytes, data);
    return data;
  }

  /** {@link readLive} into a buffer of the caller's (a COW's pooled copy buffer, §3.4); same policy, same errors. */
  async readLiveInto(offsetBytes: number, into: Buffer): Promise<void> {
    const lengthBytes = into.length;
    if (lengthBytes > 0 && lengthBytes <= SYNC_MAX_BYTES && this.volumeSync !== undefined) {
      if (this.liveReads.trySync()) {
        const device = this.volumeSync;
        this.liveReads.run(() => {
          this.readHomeIntoSync(TARGET_VOLUME, device, offsetBytes, into);
        });
        return;
      }
      this.liveReads.noteAsync();
    }
    await this.readHomeInto(TARGET_VOLUME, this.parts.volume, offsetBytes, into);
  }

  /**
   * Writes `data` at `offsetBytes` of the live volume file: synchronously
   * when it is at most `SYNC_MAX_BYTES`, the device offers `writeSync` and
   * {@link liveWrites} allows it (§4.14) — then the write has happened when
   * this returns —, else through the thread pool (`BlockDevice.write`).
   * Either way a failure rejects with the device's error (`IO_ERROR`,
   * `NO_SPACE`, its range in `details`). Not durable until the volume syncs.
   */
  async writeLive(offsetBytes: number, data: Uint8Array): Promise<void> {
    const { volume } = this.parts;
    if (data.length > 0 && data.length <= SYNC_MAX_BYTES && volume.writeSync !== undefined) {
      if (this.liveWrites.trySync()) {
        this.liveWrites.run(() => volume.writeSync?.(offsetBytes, data)); // a throw rejects this call's promise
        return;
      }
      this.liveWrites.noteAsync();
    }
    return volume.write(offsetBytes, data);
  }

  /**
   * `into.length` bytes of a journal target's home file at `offsetBytes`,
   * overlaid in journal mode with the journal's image cache. The cache is
   * looked at first, then home is read: an image checkpointed in between is
   * home already, so neither order of events reads stale data.
   */
  readHomeInto(target: number, device: Pick<BlockDevice, 'readInto'>, offsetBytes: number, into: Buffer): Promise<void> {
    if (!this.journaled || into.length === 0) return device.readInto(offsetBytes, into);
    const images = this.imagesOver(target, offsetBytes, into.length);
    return device.readInto(offsetBytes, into).then(() => this.layOver(images, offsetBytes, into));
  }

  /** {@link readHomeInto}, synchronously (`device.readIntoSync`; the snapshot reader's store reads, docs/ARCHITECTURE.md §4.3; small live reads, §4.14). @throws IO_ERROR */
  readHomeIntoSync(target: number, device: { readIntoSync(offsetBytes: number, into: Uint8Array): void }, offsetBytes: number, into: Buffer): void {
    if (!this.journaled || into.length === 0) {
      device.readIntoSync(offsetBytes, into);
      return;
    }
    const images = this.imagesOver(target, offsetBytes, into.length);
    device.readIntoSync(offsetBytes, into);
    this.layOver(images, offsetBytes, into);
  }

  /** The journal's cached images of the blocks of [offsetBytes, offsetBytes + lengthBytes) of `target`, looked up before home is read. */
  private imagesOver(target: number, offsetBytes: number, lengthBytes: number): Array<[number, Buffer]> {
    const bs = this.blockSizeBytes;
    const first = Math.floor(offsetBytes / bs);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / bs);
    const images: Array<[number, Buffer]> = [];
    for (let b = first; b <= last; b++) {
      const img = this.parts.journal.readImage(target, b);
      if (img) images.push([b, img]);
    }
    return images;
  }

  /** Copies `images` over the home bytes read into `into` (which starts at `offsetBytes`). */
  private layOver(images: ReadonlyArray<[number, Buffer]>, offsetBytes: number, into: Buffer): void {
    const bs = this.blockSizeBytes;
    for (const [b, img] of images) {
      const from = Math.max(offsetBytes, b * bs);
      const to = Math.min(offsetBytes + into.length, (b + 1) * bs);
      img.copy(into, from - offsetBytes, from - b * bs, to - b * bs);
    }
  }
}
