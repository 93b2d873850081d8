// A bounded work queue: at most `concurrency` jobs run, at most `maxWaiting`
// wait; beyond that acquire() refuses at once, so the caller can answer 503.
// A waiting job whose signal aborts leaves the queue (its client is gone).

export class QueueClosedError extends Error {
  constructor() {
    super('the service is shutting down');
    this.name = 'QueueClosedError';
  }
}

interface Waiter {
  grant: () => void;
  fail: (e: Error) => void;
}

export class WorkQueue {
  private active = 0;
  private readonly waiting: Waiter[] = [];
  private closed = false;

  constructor(
    readonly concurrency: number,
    readonly maxWaiting: number,
  ) {
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`WorkQueue: concurrency must be a positive integer, got ${concurrency}`);
    if (!Number.isInteger(maxWaiting) || maxWaiting < 0) throw new RangeError(`WorkQueue: maxWaiting must be a non-negative integer, got ${maxWaiting}`);
  }

  get running(): number {
    return this.active;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /**
   * A slot, as a promise of its release function; null when the queue is full
   * (or closed). The promise rejects with the signal's reason if it aborts
   * while waiting, and with QueueClosedError if close() comes first.
   */
  acquire(signal: AbortSignal): Promise<() => void> | null {
    if (this.closed) return null;
    if (this.active < this.concurrency) {
      ++this.active;
      return Promise.resolve(this.releaser());
    }
    if (this.waiting.length >= this.maxWaiting) return null;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(w);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal.reason);
      };
      const w: Waiter = {
        grant: () => {
          signal.removeEventListener('abort', onAbort);
          ++this.active;
          resolve(this.releaser());
        },
        fail: (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      if (signal.aborted) return reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(w);
    });
  }

  /** Refuses new work and fails every waiting job with QueueClosedError; running jobs go on. */
  close(): void {
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.fail(new QueueClosedError());
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      --this.active;
      const next = this.waiting.shift();
      if (next) next.grant();
    };
  }
}
