import type { Socket } from 'node:net';

/**
 * Most buffers one batch hands to the socket: a batch is one `writev(2)`,
 * and Linux takes at most IOV_MAX (1024) buffers per call. A full batch is
 * written at once instead of waiting for the end of the turn.
 */
export const MAX_BATCH_BUFFERS = 512;

/**
 * Gathers the replies that become ready in one event-loop turn into one
 * socket write (docs/ARCHITECTURE.md §14.2): the first reply of a turn
 * schedules a `setImmediate`, the replies of every request that completes
 * before it (the completions libuv delivers in the same poll phase) join
 * the batch, and the batch leaves corked — one `writev` for all of them
 * instead of one system call per reply. A reply alone in its turn (queue
 * depth 1) leaves in the check phase of that same turn: no timer, no added
 * wait.
 *
 * Bounded: a batch holds at most MAX_BATCH_BUFFERS buffers, and every reply
 * in it still counts against its connection's in-flight limits until its
 * `written` callback ran (ConnectionLimits), so batching adds no memory the
 * limits do not already cover.
 */
export class ReplyWriter {
  private buffers: Buffer[] = [];
  private callbacks: Array<() => void> = [];
  private scheduled: NodeJS.Immediate | undefined;
  private readonly flushNow = (): void => this.flush();

  /** @param socketOf the socket replies go to now (a connection's socket changes at STARTTLS) */
  constructor(private readonly socketOf: () => Socket) {}

  /** Replies queued and not yet handed to the socket. */
  get queuedReplies(): number {
    return this.callbacks.length;
  }

  /**
   * Queues one reply (`buffers`, in order, never interleaved with another
   * reply's); `written` runs once they left the process, or can no longer
   * leave it (socket destroyed).
   */
  queue(buffers: readonly Buffer[], written: () => void): void {
    for (const b of buffers) this.buffers.push(b);
    this.callbacks.push(written);
    if (this.buffers.length >= MAX_BATCH_BUFFERS) this.flush();
    else this.scheduled ??= setImmediate(this.flushNow);
  }

  /** Hands the batch to the socket now (one corked write). */
  flush(): void {
    if (this.scheduled !== undefined) clearImmediate(this.scheduled);
    this.scheduled = undefined;
    const buffers = this.buffers;
    const callbacks = this.callbacks;
    if (callbacks.length === 0) return;
    this.buffers = [];
    this.callbacks = [];
    const socket = this.socketOf();
    const done = (): void => {
      for (const written of callbacks) written();
    };
    if (socket.destroyed || !socket.writable || buffers.length === 0) {
      done();
      return;
    }
    socket.cork();
    const last = buffers.length - 1;
    for (let i = 0; i < last; i++) socket.write(buffers[i]!);
    socket.write(buffers[last]!, done);
    socket.uncork();
  }
}
