import { assert } from '@cowvol/base';

/**
 * A pending COW (Next3's pending-COW marker; docs/ARCHITECTURE.md §7.2): a
 * volume block whose copy into the active snapshot one task is making.
 * Waiters await `done`, which settles (never rejects) when the COW commits
 * or is cancelled.
 */
export interface PendingCow {
  readonly done: Promise<void>;
  readonly end: () => void;
}

/** A COW batch started by one task (cow.ts `cowRange`). */
export interface CowTicket {
  /** The volume blocks it claimed. */
  readonly blocks: number[];
  /** Settles once the mappings are committed and published; rejects when the COW was cancelled. */
  readonly published: Promise<void>;
  /** Ends the pending markers (call once, after `published` settled and the overwrite landed). */
  readonly end: () => void;
}

/**
 * The pending-COW markers of a volume, by volume block: who is copying
 * which block into the active snapshot right now.
 */
export class PendingCows {
  private readonly byBlock = new Map<number, PendingCow>();

  get size(): number {
    return this.byBlock.size;
  }

  has(block: number): boolean {
    return this.byBlock.has(block);
  }

  /** The marker of `block`, or undefined when nobody is copying it. */
  get(block: number): PendingCow | undefined {
    return this.byBlock.get(block);
  }

  /**
   * Claims `blocks` (none may be claimed already) and returns the function
   * that ends the claim: it removes the markers and wakes their waiters;
   * called twice, it is an assertion failure.
   */
  claim(blocks: number[]): () => void {
    // One marker for the whole claim: its blocks end together, so waiters on
    // any of them wake at the same moment (one promise per batch, not per block).
    const marker = pendingCow();
    for (const b of blocks) {
      assert(!this.byBlock.has(b), `block ${b} claimed twice`);
      this.byBlock.set(b, marker);
    }
    let ended = false;
    return () => {
      assert(!ended, 'COW ticket ended twice');
      ended = true;
      for (const b of blocks) {
        assert(this.byBlock.get(b) === marker, `block ${b}: its marker changed while claimed`);
        this.byBlock.delete(b);
      }
      marker.end();
    };
  }
}

/** Ends `tickets` once each has settled (a COW whose caller gave up: nobody waits forever on its markers). */
export function endWhenSettled(tickets: readonly CowTicket[]): void {
  for (const t of tickets) void t.published.catch(() => undefined).finally(() => t.end());
}

function pendingCow(): PendingCow {
  let end: () => void = () => undefined;
  const done = new Promise<void>((resolve) => {
    end = resolve;
  });
  return { done, end };
}
