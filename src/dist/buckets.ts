// Gradient buckets of data-parallel training, as PyTorch's DDP makes them:
// the parameters in reverse registration order (about the order in which the
// backward pass finishes their gradients), grouped into buckets of about
// `capBytes`. A bucket's allreduce starts as soon as the last of its gradients
// is final in the backward pass (autograd's onGradReady), so it runs on the
// communication thread while the stream computes the rest of the backward
// pass; finish() starts what is left and queues the waits, before clipping and
// the optimizer step.
//
// Buckets start in index order on every rank: one whose gradients are ready
// before those of an earlier bucket waits for it, so every rank issues the
// same collectives in the same order whatever order its graph finishes them
// in. Each bucket is one MPI_Allreduce of its gradients, the call the blocking
// path makes over all of them at once, with a reduction order that does not
// depend on the message (deterministicAllreduce in communicator.ts): each
// element is summed over the ranks in the same order, so the gradients are bit
// for bit the blocking path's (test/dist/buckets.test.ts: 2 and 3 ranks).
import type { BackwardHooks } from '../tensor/autograd';
import type { Tensor } from '../tensor/tensor';
import type { Communicator, PendingAllreduce } from './communicator';

/** PyTorch DDP's default bucket_cap_mb. */
export const DEFAULT_BUCKET_MB = 25;
/** PyTorch DDP's first bucket (dist._DEFAULT_FIRST_BUCKET_BYTES). */
export const FIRST_BUCKET_BYTES = 2 ** 20;

export class GradBuckets {
  /** The parameters of each bucket, bucket 0 first (the last registered parameters). */
  readonly buckets: readonly (readonly Tensor[])[];
  private readonly bucketOf = new Map<Tensor, number>();
  private left: number[] = [];
  private seen = new Set<Tensor>();
  private next = 0;
  private pending: PendingAllreduce[] = [];
  private armed = false;
  /** The order in which buckets started in the last pass, with the gradients still unfinished then (for tests). */
  readonly trace: { bucket: number; unfinishedParams: number }[] = [];

  constructor(private readonly comm: Communicator, params: readonly Tensor[], capBytes: number, firstCapBytes = Math.min(capBytes, FIRST_BUCKET_BYTES)) {
    if (!(capBytes > 0)) throw new RangeError(`GradBuckets: the bucket size must be > 0 bytes, got ${capBytes}`);
    const buckets: Tensor[][] = [];
    let cur: Tensor[] = [], bytes = 0;
    for (let i = params.length - 1; i >= 0; --i) {
      const p = params[i];
      if (this.bucketOf.has(p)) continue;
      if (cur.length && bytes + 4 * p.size > (buckets.length ? capBytes : firstCapBytes)) {
        buckets.push(cur);
        cur = [];
        bytes = 0;
      }
      this.bucketOf.set(p, buckets.length);
      cur.push(p);
      bytes += 4 * p.size;
    }
    if (cur.length) buckets.push(cur);
    this.buckets = buckets;
  }

  /**
   * The hooks of the backward pass that makes the gradients final (the last
   * micro-batch's): buckets start as their gradients are ready.
   */
  hooks(): BackwardHooks {
    this.left = this.buckets.map((b) => b.length);
    this.seen = new Set();
    this.next = 0;
    this.pending = [];
    this.trace.length = 0;
    this.armed = true;
    return { onGradReady: (leaf) => this.ready(leaf) };
  }

  private ready(p: Tensor): void {
    const b = this.bucketOf.get(p);
    if (b === undefined || this.seen.has(p) || !this.armed) return;
    this.seen.add(p);
    this.left[b] -= 1;
    while (this.next < this.buckets.length && this.left[this.next] === 0) this.start(this.next);
  }

  private start(b: number): void {
    const unfinishedParams = this.buckets.reduce((n, ps) => n + ps.filter((p) => !this.seen.has(p)).length, 0);
    this.trace.push({ bucket: b, unfinishedParams });
    this.pending.push(this.comm.startAllreduceMean(this.buckets[b].flatMap((p) => (p.grad ? [p.grad] : []))));
    this.next = b + 1;
  }

  /**
   * After the backward pass: starts the buckets not started yet (parameters the
   * graph did not use), in order, and queues the waits; the gradients are then
   * the mean over ranks for every op queued after this.
   */
  finish(): void {
    if (!this.armed) throw new Error('GradBuckets.finish(): no backward pass was armed with hooks()');
    while (this.next < this.buckets.length) this.start(this.next);
    for (const p of this.pending) p.wait();
    this.pending = [];
    this.armed = false;
  }
}
