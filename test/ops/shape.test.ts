import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { native } from '../../src/tensor/native';
import { cat, chunk, embedding, narrow, permute, transpose } from '../../src/tensor/ops/shape';
import { fromArray, runOp1, sync, type Tensor } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';

const skip = torchUnavailable();
// Copies are exact; only embedding_backward adds (float32 sums vs float64).
const EXACT = 0;
const RTOL_SUM = 1e-6;

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;

/** Forward y and backward with a random gy; returns gy's data. */
function runBackward(y: Tensor, seed: number) {
  const gy = randomTensor(y.shape, seed);
  backward(y, gy.t);
  return gy.arr;
}

describe('shape ops against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const catCases: [string, number[][], number][] = [
    ['dim 0', [[2, 3], [4, 3]], 0],
    ['dim 1 of three', [[2, 1, 4], [2, 3, 4], [2, 2, 4]], 1],
    ['last dim (negative)', [[3, 2, 5], [3, 2, 1]], -1],
    ['one input', [[2, 3]], 1],
    ['an empty input', [[2, 0, 3], [2, 4, 3]], 1],
    ['twenty inputs (grouped)', Array.from({ length: 20 }, (_, i) => [2, 1 + (i % 3), 3]), 1],
  ];
  for (const [name, shapes, dim] of catCases) {
    it(`cat (${name}) forward and backward`, async () => {
      const xs = shapes.map((s, i) => randomTensor(s, 10 + i));
      for (const x of xs) x.t.requiresGrad = true;
      const y = cat(xs.map((x) => x.t), dim);
      const gy = runBackward(y, 99);
      const inputs = Object.fromEntries(xs.map((x, i) => [`x${i}`, x.arr]));
      const ref = await oracle.call('cat', inputs, { dim }, { wrt: Object.keys(inputs), gradOutputs: [gy] });
      assertShape(y, ref.outputs[0].shape);
      assertClose(await f32(y), ref.outputs[0].data as Float32Array, EXACT, 'forward');
      for (let i = 0; i < xs.length; ++i)
        assertClose(await f32(xs[i].t.grad!), ref.grads[`x${i}`].data as Float32Array, EXACT, `grad x${i}`);
    });
  }

  const permCases: [number[], number[]][] = [
    [[2, 3, 4], [2, 0, 1]],
    [[2, 3, 4, 5], [0, 2, 3, 1]],
    [[2, 3, 4, 5], [3, 2, 1, 0]],
    [[2, 3, 4, 5], [0, 1, 3, 2]],
    [[3, 37, 45], [0, 2, 1]], // partial 32x32 tiles
    [[2, 1, 3, 1, 4], [4, 1, 0, 3, 2]], // size-1 dims
    [[4, 5, 6], [0, 1, 2]], // identity
    [[5, 6], [-1, -2]],
  ];
  for (const [shape, dims] of permCases) {
    it(`permute ${JSON.stringify(shape)} by ${JSON.stringify(dims)} forward and backward`, async () => {
      const x = randomTensor(shape, 3);
      x.t.requiresGrad = true;
      const y = permute(x.t, dims);
      const gy = runBackward(y, 4);
      const ref = await oracle.call('permute', { x: x.arr }, { dims }, { wrt: ['x'], gradOutputs: [gy] });
      assertShape(y, ref.outputs[0].shape);
      assertClose(await f32(y), ref.outputs[0].data as Float32Array, EXACT, 'forward');
      assertClose(await f32(x.t.grad!), ref.grads.x.data as Float32Array, EXACT, 'grad x');
    });
  }

  it('transpose(x, -1, -2) is permute with the last two dims swapped', async () => {
    const x = randomTensor([2, 3, 33, 17], 5);
    x.t.requiresGrad = true;
    const y = transpose(x.t, -1, -2);
    const gy = runBackward(y, 6);
    const ref = await oracle.call('permute', { x: x.arr }, { dims: [0, 1, 3, 2] }, { wrt: ['x'], gradOutputs: [gy] });
    assertShape(y, [2, 3, 17, 33]);
    assertClose(await f32(y), ref.outputs[0].data as Float32Array, EXACT, 'forward');
    assertClose(await f32(x.t.grad!), ref.grads.x.data as Float32Array, EXACT, 'grad x');
  });

  const narrowCases: [number[], number, number, number][] = [
    [[5, 4], 0, 1, 3],
    [[2, 7, 3], 1, 2, 4],
    [[2, 3, 8], -1, 5, 3],
    [[4, 6], 1, 0, 6],
    [[4, 6], 1, 3, 0],
  ];
  for (const [shape, dim, start, length] of narrowCases) {
    it(`narrow ${JSON.stringify(shape)} dim ${dim} [${start}, +${length}) forward and backward`, async () => {
      const x = randomTensor(shape, 7);
      x.t.requiresGrad = true;
      const y = narrow(x.t, dim, start, length);
      const gy = runBackward(y, 8);
      const ref = await oracle.call('narrow', { x: x.arr }, { dim, start, length }, { wrt: ['x'], gradOutputs: [gy] });
      assertShape(y, ref.outputs[0].shape);
      assertClose(await f32(y), ref.outputs[0].data as Float32Array, EXACT, 'forward');
      assertClose(await f32(x.t.grad!), ref.grads.x.data as Float32Array, EXACT, 'grad x');
    });
  }

  it('embedding forward and backward (repeated indices accumulate)', async () => {
    const V = 7, D = 6;
    const idx = Int32Array.from({ length: 15 }, (_, i) => (i * 5 + (i % 3)) % V);
    idx[14] = idx[0]; // some rows are hit several times, row V-1 maybe never
    const w = randomTensor([V, D], 11);
    w.t.requiresGrad = true;
    const y = embedding(fromArray(idx, [3, 5], 'int32'), w.t);
    const gy = runBackward(y, 12);
    const ref = await oracle.call('embedding', { indices: { shape: [3, 5], data: idx }, weight: w.arr }, {}, { wrt: ['weight'], gradOutputs: [gy] });
    assertShape(y, [3, 5, D]);
    assertClose(await f32(y), ref.outputs[0].data as Float32Array, EXACT, 'forward');
    assertClose(await f32(w.t.grad!), ref.grads.weight.data as Float32Array, RTOL_SUM, 'grad weight');
  });
});

describe('shape ops: semantics, determinism, errors', () => {
  it('cat works on int32 tensors (byte copies)', async () => {
    const a = fromArray([1, 2, 3, 4], [2, 2], 'int32');
    const b = fromArray([5, 6], [2, 1], 'int32');
    const y = cat([a, b], 1);
    assert.deepEqual(Array.from(await y.data()), [1, 2, 5, 3, 4, 6]);
  });

  it('chunk splits as torch.chunk and cat(chunk(x)) gives back x and its gradient', async () => {
    const x = randomTensor([7, 3], 1);
    x.t.requiresGrad = true;
    const parts = chunk(x.t, 3, 0);
    assert.deepEqual(parts.map((p) => p.shape[0]), [3, 3, 1]);
    assert.deepEqual(chunk(x.t, 4, -1).map((p) => p.shape[1]), [1, 1, 1]);
    assert.deepEqual(chunk(fromArray([], [0, 2]), 3).map((p) => [...p.shape]), [[0, 2], [0, 2], [0, 2]]);
    const y = cat(parts, 0);
    assert.deepEqual(Array.from(await f32(y)), Array.from(x.arr.data));
    const gy = runBackward(y, 2);
    assert.deepEqual(Array.from(await f32(x.t.grad!)), Array.from(gy.data));
  });

  it('embedding_backward does not depend on the thread count', async () => {
    const V = 50, D = 33, n = 20000;
    const idx = Int32Array.from({ length: n }, (_, i) => (i * 7919) % V);
    const gy = randomTensor([n, D], 3).t;
    const indices = fromArray(idx, [n], 'int32');
    const b = native();
    const threads = b.info().threads;
    const results: Float32Array[] = [];
    try {
      for (const t of [1, 2, 3]) {
        b.setThreads(t);
        results.push(await f32(runOp1('embedding_backward', [gy, indices], { num_embeddings: V })));
      }
    } finally {
      b.setThreads(threads);
    }
    assert.deepEqual(results[1], results[0]);
    assert.deepEqual(results[2], results[0]);
  });

  it('an out-of-range index rejects data() with the index and vocabulary size, and the engine carries on', async () => {
    const w = randomTensor([10, 4], 1).t;
    const y = embedding(fromArray([3, 12, 0], [3], 'int32'), w);
    await assert.rejects(y.data(), (e: Error) => /embedding: index 12 at position 1/.test(e.message) && /vocabulary of size 10/.test(e.message));
    const neg = embedding(fromArray([-1], [1], 'int32'), w);
    await sync(); // an op's error belongs to its outputs: sync() resolves
    await assert.rejects(neg.data(), /index -1 .*vocabulary of size 10/);
    assert.equal(neg.shape[1], 4);
    // The backward op flags bad indices the same way.
    const gw = runOp1('embedding_backward', [fromArray([1, 1], [1, 2]), fromArray([5], [1], 'int32')], { num_embeddings: 3 });
    await assert.rejects(gw.data(), /embedding_backward: index 5 .*vocabulary of size 3/);
    // Later work is unaffected.
    const ok = embedding(fromArray([9], [1], 'int32'), w);
    assert.equal((await f32(ok)).length, 4);
  });

  it('bad inputs throw the right error class naming the argument', () => {
    const a = fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
    const b = fromArray([1, 2, 3, 4], [2, 2]);
    const i32 = fromArray([1, 2, 3, 4, 5, 6], [2, 3], 'int32');
    const throwsWith = (fn: () => unknown, cls: typeof TypeError | typeof RangeError, re: RegExp) =>
      assert.throws(fn, (e: Error) => e instanceof cls && re.test(e.message), `${cls.name} matching ${re}`);

    throwsWith(() => cat([], 0), RangeError, /'xs'/);
    throwsWith(() => cat([a, b], 0), RangeError, /'xs\[1\]'.*\[2, 2\]/);
    throwsWith(() => cat([a, i32], 0), TypeError, /'xs\[1\]' is int32/);
    throwsWith(() => cat([a, a], 2), RangeError, /'dim' = 2/);
    throwsWith(() => cat([a, fromArray([1, 2, 3], [3])], 0), RangeError, /'xs\[1\]'/);
    throwsWith(() => cat([...Array(16).fill(a), b], 0), RangeError, /'xs\[16\]'/);
    throwsWith(() => cat([fromArray([1], [])], 0), RangeError, /'xs\[0\]' must have at least 1 dimension/);

    throwsWith(() => permute(a, [0]), RangeError, /'dims' has 1 entries/);
    throwsWith(() => permute(a, [0, 0]), RangeError, /'dims' repeats/);
    throwsWith(() => permute(a, [0, 2]), RangeError, /'dims' entry 2/);
    throwsWith(() => transpose(a, 0, 2), RangeError, /'d1' = 2/);

    throwsWith(() => narrow(a, 1, 4, 0), RangeError, /'start' = 4/);
    throwsWith(() => narrow(a, 1, 1, 3), RangeError, /'length' = 3/);
    throwsWith(() => narrow(a, -3, 0, 1), RangeError, /'dim' = -3/);
    throwsWith(() => runOp1('narrow_backward', [b], { dim: 1, start: 0, length: 3, shape: [2, 3] }), RangeError, /'gy' must have shape \[2, 3\]/);
    throwsWith(() => chunk(a, 0), RangeError, /'chunks'/);
    throwsWith(() => chunk(a, 2, 5), RangeError, /'dim' = 5/);

    throwsWith(() => embedding(a, b), TypeError, /'indices' must be int32/);
    throwsWith(() => embedding(i32, i32), TypeError, /'weight' must be float32/);
    throwsWith(() => embedding(i32, fromArray([1, 2], [2])), RangeError, /'weight' must have 2 dimensions/);
    throwsWith(() => runOp1('embedding_backward', [b, i32], { num_embeddings: 4 }), RangeError, /'gy'/);
    throwsWith(() => runOp1('embedding_backward', [fromArray([1, 2], [1, 2]), fromArray([0], [1], 'int32')], { num_embeddings: 0 }), RangeError, /'num_embeddings'/);
  });
});
