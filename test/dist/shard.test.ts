// The pieces of data parallelism that need no MPI: the sharded loader (a
// distributed sampler), the sliced noise, the launcher's flags, the
// agreement check's difference finder.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { requestedProcs, withoutLaunchFlags } from '../../src/cli/launch';
import { DataLoader, SyntheticDataset } from '../../src/data';
import { Generator } from '../../src/tensor/random';
import { firstDifference } from '../../src/train/distributed';

const ds = () => new SyntheticDataset({ count: 24, kind: 'blobs', seed: 1, channels: 1, size: 8 });

describe('sharded loader', () => {
  it("the ranks' slices put together are the one-process batches, every sample once per epoch, flips included", () => {
    const whole = new DataLoader(ds(), { batchSize: 6, seed: 4, hflip: true });
    const ranks = [0, 1, 2].map((rank) => new DataLoader(ds(), { batchSize: 6, seed: 4, hflip: true, shard: { rank, size: 3 } }));
    for (let step = 0; step < 9; ++step) {
      const w = whole.nextArrays();
      const parts = ranks.map((l) => l.nextArrays());
      parts.forEach((p, r) => assert.deepEqual([p.start, p.total, p.shape[0]], [2 * r, 6, 2]));
      assert.deepEqual(parts.flatMap((p) => Array.from(p.indices)), Array.from(w.indices));
      assert.deepEqual(parts.flatMap((p) => Array.from(p.data)), Array.from(w.data));
      assert.deepEqual(ranks.map((l) => l.state()), ranks.map(() => whole.state()), 'the state is global: a resume works on any rank count');
    }
    assert.throws(() => new DataLoader(ds(), { batchSize: 6, shard: { rank: 0, size: 4 } }), /global batch size 6 must be divisible by the 4 ranks/);
    assert.throws(() => new DataLoader(ds(), { batchSize: 6, shard: { rank: 2, size: 2 } }), /0 <= rank < size/);
  });

  it("randnSlice is rows [start, start + n) of the whole batch's noise, and advances past all of it", async () => {
    const a = new Generator(9), b = new Generator(9);
    const whole = (await a.randn([6, 2, 3]).data()) as Float32Array;
    const part = (await b.randnSlice([2, 2, 3], 3, 6).data()) as Float32Array;
    assert.deepEqual(Array.from(part), Array.from(whole.subarray(18, 30)));
    assert.deepEqual(b.state(), a.state());
    assert.throws(() => b.randnSlice([2, 2, 3], 5, 6), /do not fit 6/);
  });
});

describe('launch flags', () => {
  it('--nproc, and the seed\'s --gpus/--accelerator ddp', () => {
    assert.equal(requestedProcs({}), 1);
    assert.equal(requestedProcs({ nproc: 4 }), 4);
    assert.equal(requestedProcs({ gpus: '0,1,2,3', accelerator: 'ddp' }), 4);
    assert.equal(requestedProcs({ gpus: '0,' }), 1);
    assert.throws(() => requestedProcs({ gpus: 'a,b' }), /comma-separated list of device ids/);
    assert.throws(() => requestedProcs({ nproc: 2, gpus: '0,1,2' }), /disagree/);
    assert.throws(() => requestedProcs({ nproc: 0 }), /--nproc must be an integer from 1/);
    assert.throws(() => requestedProcs({ accelerator: 'dp' }), /only ddp/);
    assert.deepEqual(withoutLaunchFlags(['train', '--nproc', '2', '--base', 'x.yaml', '--gpus=0,1', '--accelerator', 'ddp', '--seed', '3']), ['train', '--base', 'x.yaml', '--seed', '3']);
  });

  it('the agreement check names the first difference', () => {
    assert.equal(firstDifference({ a: { b: [1, 2] }, c: 1 }, { a: { b: [1, 2] }, c: 1 }), null);
    assert.equal(firstDifference({ config: { training: { seed: 11 } } }, { config: { training: { seed: 12 } } }), 'config.training.seed: 11 vs 12');
    assert.equal(firstDifference({ resume: null }, { resume: '/x' }), 'resume: null vs "/x"');
  });
});
