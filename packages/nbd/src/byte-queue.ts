import { assert } from '@cowvol/base';

/**
 * A FIFO of received bytes: chunks as they came off the socket, consumed
 * from the front. Only whole messages are taken out, so a parser looks at
 * `length` first and takes once the message is complete (docs/ARCHITECTURE.md
 * §14.2). Bounded by its user: the parsers refuse a message longer than their
 * limit before waiting for it.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // bytes of chunks[0] already consumed
  private total = 0;

  /** Bytes held. */
  get length(): number {
    return this.total;
  }

  /** Appends a received chunk (kept, not copied). */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** The first `n` bytes without consuming them; `n` must be ≤ `length` (else `ASSERTION_FAILED`: a framing bug). */
  peek(n: number): Buffer {
    assert(n <= this.total, `peek(${n}) of ${this.total} bytes`);
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.head >= n) return first.subarray(this.head, this.head + n);
    const out = Buffer.allocUnsafe(n);
    let copied = 0;
    for (let i = 0; copied < n; i++) {
      const c = this.chunks[i]!;
      const from = i === 0 ? this.head : 0;
      copied += c.copy(out, copied, from, Math.min(c.length, from + n - copied));
    }
    return out;
  }

  /** Removes and returns the first `n` bytes; `n` must be ≤ `length` (else `ASSERTION_FAILED`: a framing bug). */
  take(n: number): Buffer {
    const out = this.peek(n);
    this.skip(n);
    // A view into a received chunk stays valid: chunks are never reused.
    return out;
  }

  /** Drops the first `n` bytes; `n` must be ≤ `length` (else `ASSERTION_FAILED`: a framing bug). */
  skip(n: number): void {
    assert(n <= this.total, `skip(${n}) of ${this.total} bytes`);
    this.total -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      const left = c.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** Drops everything. */
  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.total = 0;
  }
}
