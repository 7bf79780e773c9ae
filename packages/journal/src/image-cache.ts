import { revokeKey, type BlockImage, type Revocation } from './format.js';

/** One cached image: the newest committed image of its home block, and the transaction that logged it. */
export interface CachedImage extends BlockImage {
  sequence: number;
}

/**
 * The journal's image cache (docs/ARCHITECTURE.md §5.2, frozen copies): the
 * newest committed image of each home block not yet checkpointed. Entries
 * are replaced, never mutated, so a checkpoint writes home exactly the
 * buffers it captured while newer commits go on.
 */
export class ImageCache {
  private readonly entries = new Map<string, CachedImage>();

  /** The newest committed image of a home block, or undefined (read it from home). */
  get(target: number, homeBlock: number): Buffer | undefined {
    return this.entries.get(revokeKey(target, homeBlock))?.data;
  }

  /** Publishes a committed transaction: its revokes drop older images, then its images become the newest. */
  publish(sequence: number, images: readonly BlockImage[], revokes: readonly Revocation[]): void {
    for (const r of revokes) {
      const k = revokeKey(r.target, r.homeBlock);
      const e = this.entries.get(k);
      if (e && e.sequence <= sequence) this.entries.delete(k);
    }
    for (const img of images) this.entries.set(revokeKey(img.target, img.homeBlock), { ...img, sequence });
  }

  /** The entries of transactions ≤ `sequence`, by target then home block: what a checkpoint writes home. */
  capture(sequence: number): CachedImage[] {
    const captured = [...this.entries.values()].filter((e) => e.sequence <= sequence);
    return captured.sort((a, b) => a.target - b.target || a.homeBlock - b.homeBlock);
  }

  /**
   * True while `captured` is still the newest image of its home block: not
   * revoked and not replaced since it was captured (jbd2: the buffer is
   * still on the checkpoint list). docs/ARCHITECTURE.md §5.3.
   */
  holds(captured: CachedImage): boolean {
    return this.entries.get(revokeKey(captured.target, captured.homeBlock)) === captured;
  }

  /** Drops captured entries that are home now, unless a newer image replaced them meanwhile. */
  forget(captured: readonly CachedImage[]): void {
    for (const e of captured) {
      const k = revokeKey(e.target, e.homeBlock);
      if (this.entries.get(k) === e) this.entries.delete(k);
    }
  }
}
