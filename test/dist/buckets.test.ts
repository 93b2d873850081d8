// Gradient buckets overlapped with the backward pass (src/dist/buckets.ts):
// autograd reports a leaf once its gradient is final (after its last use: a
// parameter used twice is final after the second addition), buckets start in
// index order as soon as their gradients are final, and under MPI the bucketed
// allreduce gives bit for bit the gradients of the one blocking allreduce, also
// with gradient accumulation over micro-batches.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';

import { GradBuckets } from '../../src/dist/buckets';
import type { Communicator, PendingAllreduce } from '../../src/dist/communicator';
import { backward } from '../../src/tensor/autograd';
import { mean, mul } from '../../src/tensor/ops';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { mpiSkip } from '../helpers/mpi';
import { lossOf, makeInput, makeParams, zeroGrads } from './buckets_graph';

/** Records what each started allreduce was given (the tensors themselves) and when it was waited for. */
class RecordingComm implements Communicator {
  readonly rank = 0;
  readonly size = 2;
  readonly backend = 'local' as const;
  readonly started: { tensors: Tensor[]; waited: boolean }[] = [];
  allreduceMean(): void {
    throw new Error('not used');
  }
  startAllreduceMean(tensors: readonly Tensor[]): PendingAllreduce {
    const rec = { tensors: [...tensors], waited: false };
    this.started.push(rec);
    return { wait: () => void (rec.waited = true) };
  }
  broadcast(): void {}
  allgather(x: Tensor): Tensor {
    return x;
  }
  async barrier(): Promise<void> {}
}

describe('autograd: onGradReady', () => {
  it('reports each leaf once, after the last addition to its gradient (w3 is used twice)', () => {
    const ps = makeParams();
    const seen: { leaf: Tensor; grad: Tensor | null }[] = [];
    backward(lossOf(ps, makeInput(3, 0)), undefined, { onGradReady: (leaf) => seen.push({ leaf, grad: leaf.grad }) });
    assert.deepEqual(seen.map((s) => ps.indexOf(s.leaf)).sort(), [0, 1, 2]);
    // The gradient at the report is the final one: no later addition replaced it.
    for (const s of seen) assert.ok(s.grad !== null && s.grad === s.leaf.grad, `w${ps.indexOf(s.leaf) + 1} was reported before its last gradient`);
    zeroGrads(ps);
  });

  it('a leaf used twice by one op is reported once, with both parts', async () => {
    const p = fromArray([1, 2, 3], [3]);
    p.requiresGrad = true;
    const calls: (Tensor | null)[] = [];
    backward(mean(mul(p, p)), undefined, { onGradReady: (leaf) => calls.push(leaf.grad) });
    assert.equal(calls.length, 1);
    assert.equal(calls[0], p.grad);
    assert.deepEqual(Array.from((await p.grad!.data()) as Float32Array).map((v) => +v.toFixed(5)), [0.66667, 1.33333, 2]);
  });
});

describe('gradient buckets', () => {
  it('reverse registration order; a bucket starts once all its gradients are final, in index order, during the backward pass', () => {
    const ps = makeParams();
    const comm = new RecordingComm();
    const b = new GradBuckets(comm, ps, 1); // one parameter per bucket
    assert.deepEqual(b.buckets.map((ts) => ts.map((p) => ps.indexOf(p))), [[2], [1], [0]]);
    backward(lossOf(ps, makeInput(3, 0)), undefined, b.hooks());
    // w2 (bucket 1) is final first, but waits for w3 (bucket 0), final only near the input.
    assert.deepEqual(b.trace.map((t) => t.bucket), [0, 1, 2]);
    assert.equal(b.trace[0].unfinishedParams, 1, 'bucket 0 started while w1 was still being computed (overlap)');
    assert.equal(comm.started.length, 3);
    b.finish();
    comm.started.forEach((s, i) => {
      assert.equal(s.tensors.length, 1);
      assert.equal(s.tensors[0], ps[2 - i].grad, `bucket ${i} was given a gradient that a later addition replaced`);
      assert.ok(s.waited);
    });
    zeroGrads(ps);
  });

  it('one big bucket starts with the last final gradient; parameters the graph does not use start in finish()', () => {
    const ps = makeParams();
    const unused = fromArray([0, 0], [2]);
    unused.requiresGrad = true;
    const comm = new RecordingComm();
    const b = new GradBuckets(comm, [...ps, unused], 25 * 2 ** 20);
    assert.equal(b.buckets.length, 1);
    backward(lossOf(ps, makeInput(2, 1)), undefined, b.hooks());
    assert.equal(comm.started.length, 0, 'the unused parameter holds the bucket back');
    b.finish();
    assert.equal(comm.started.length, 1);
    assert.deepEqual(comm.started[0].tensors, [ps[2].grad, ps[1].grad, ps[0].grad]);
    const c2 = new RecordingComm();
    const b2 = new GradBuckets(c2, [unused, ...ps], 4 * (24 + 36 + 6)); // w3, w2, w1 fill bucket 0; the unused one is bucket 1
    assert.equal(b2.buckets.length, 2);
    backward(lossOf(ps, makeInput(2, 1)), undefined, b2.hooks());
    assert.equal(c2.started.length, 1, 'started during the backward pass');
    assert.equal(b2.trace[0].unfinishedParams, 1); // the unused one
    b2.finish();
    assert.deepEqual(b2.trace.map((t) => t.bucket), [0, 1]);
    assert.deepEqual(c2.started[1].tensors, [], 'no gradient, no values');
    zeroGrads(ps);
  });

  it('the first bucket holds at most 1 MiB (as DDP), the others the cap', () => {
    const big = (n: number) => {
      const t = fromArray(new Float32Array(n), [n]);
      t.requiresGrad = true;
      return t;
    };
    const ps = [big(300_000), big(300_000), big(150_000), big(100_000)]; // 1.2, 1.2, 0.6, 0.4 MB
    const b = new GradBuckets(new RecordingComm(), ps, 25 * 2 ** 20);
    assert.deepEqual(b.buckets.map((ts) => ts.map((p) => ps.indexOf(p))), [[3, 2], [1, 0]]);
    assert.deepEqual(new GradBuckets(new RecordingComm(), ps, 2 ** 20 / 2).buckets.map((ts) => ts.length), [1, 1, 1, 1]);
    for (const p of ps) p.dispose();
  });

  it('rejects a bucket size <= 0 and finish() without hooks()', () => {
    assert.throws(() => new GradBuckets(new RecordingComm(), makeParams(), 0), /bucket size must be > 0 bytes, got 0/);
    assert.throws(() => new GradBuckets(new RecordingComm(), makeParams(), 1).finish(), /no backward pass was armed/);
  });
});

describe('gradient buckets under MPI', { skip: mpiSkip() }, () => {
  const ranks = (np: number, hidden: number, env: Record<string, string> = {}) => {
    const script = path.join(__dirname, 'buckets_rank.js');
    const r = spawnSync('mpirun', ['--oversubscribe', ...(process.getuid?.() === 0 ? ['--allow-run-as-root'] : []), '-np', String(np), '-x', 'TDQ_NUM_THREADS=1', process.execPath, script, String(hidden)], {
      encoding: 'utf8', timeout: 120_000, env: { ...process.env, ...env },
    });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    const lines = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { rank: number; same: boolean; differs: string[]; ranksAgree: boolean; reduced: boolean });
    assert.equal(lines.length, np, r.stdout);
    for (const l of lines) assert.ok(l.ranksAgree && l.reduced, JSON.stringify(l));
    return lines;
  };
  const same = (lines: ReturnType<typeof ranks>) => {
    for (const l of lines) assert.deepEqual(l.differs, [], `rank ${l.rank}: bucketed gradients differ from the blocking allreduce's`);
  };

  it('2 ranks: bucketed (overlapped) allreduce = the blocking one, bit for bit, with 2 micro-batches', () => same(ranks(2, 6)));

  it('3 ranks, 360 KB of gradients: still bit for bit (a reduction order that does not depend on the message)', () => {
    same(ranks(3, 300));
    // Open MPI's own choice for these sizes (a ring) sums w1 in another order as part of a bigger message.
    const ring = ranks(3, 300, { OMPI_MCA_coll_tuned_use_dynamic_rules: '1', OMPI_MCA_coll_tuned_allreduce_algorithm: '4' });
    assert.ok(ring.every((l) => l.differs.length > 0), `the ring algorithm was expected to differ: ${JSON.stringify(ring)}`);
  });
});
