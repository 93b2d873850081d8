// matmul / linear / gemm against PyTorch (float64), forward and gradients, at
// every CPU level this machine has. Shapes cover the GEMM's edge tails (sizes
// 1, 7, 33, 129... that are not multiples of any register tile), both
// transposes, batches with and without broadcasting, and the parallel path.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { native } from '../../src/tensor/native';
import { linear, matmul } from '../../src/tensor/ops/linalg';
import { fromArray, runOp1, type Tensor } from '../../src/tensor/tensor';
import { assertClose, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';
import { CHILD_THREADS, rerunWithThreadCounts } from '../helpers/threads';
import { cpuLevels, type CpuLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// float32 engine vs float64 PyTorch, relative 2-norm error. With K up to ~300
// the float32 rounding error is ~1e-7; 1e-5 leaves room without hiding a
// wrong element (one wrong entry out of thousands is > 1e-3).
const RTOL = 1e-5;


async function data(t: Tensor): Promise<Float32Array> {
  return (await t.data()) as Float32Array;
}

describe('matmul, linear and gemm against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  const initial = native().info().cpuLevel;
  before(async () => (oracle = await Oracle.start()));
  after(() => {
    native().setCpuLevel(initial);
    oracle.close();
  });

  // [M, N, K]: tails against 4x8, 6x16 and 12x32 tiles; the last ones are
  // large enough to be split over threads.
  const sizes: [number, number, number][] = [
    [1, 1, 1],
    [1, 33, 7],
    [7, 1, 33],
    [7, 33, 129],
    [33, 129, 7],
    [129, 7, 33],
    [13, 70, 300],
    [150, 97, 129],
    // at most 8 rows: the unpacked path (dot products / row updates), with
    // K and N tails past the 16-lane vectors and N split over threads
    [8, 300, 520],
    [3, 257, 1030],
  ];
  // [name, batch of a (0: 2-D), batch of b (0: 2-D), M, N, K]
  const batched: [string, number, number, number, number, number][] = [
    ['both batched', 3, 3, 7, 33, 17],
    ['b shared over the batch', 4, 0, 13, 9, 33],
    ['a shared over the batch', 0, 2, 12, 33, 5],
    ['large batch of small products', 40, 40, 16, 16, 8],
    ['batch of one', 1, 1, 70, 65, 33],
  ];
  const transposes: [boolean, boolean][] = [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ];

  let seed = 100;
  async function checkMatmul(ba: number, bb: number, M: number, N: number, K: number, tA: boolean, tB: boolean) {
    const sa = tA ? [K, M] : [M, K], sb = tB ? [N, K] : [K, N];
    const a = randomTensor(ba ? [ba, ...sa] : sa, seed++);
    const b = randomTensor(bb ? [bb, ...sb] : sb, seed++);
    a.t.requiresGrad = true;
    b.t.requiresGrad = true;
    const y = matmul(a.t, b.t, { transA: tA, transB: tB });
    const gy = randomTensor(y.shape, seed++);
    backward(y, gy.t);
    const ref = await oracle.call('matmul', { a: a.arr, b: b.arr }, { transA: tA, transB: tB }, { wrt: ['a', 'b'], gradOutputs: [gy.arr] });
    assert.deepEqual([...y.shape], ref.outputs[0].shape, 'output shape');
    assertClose(await data(y), ref.outputs[0].data as Float32Array, RTOL, 'forward');
    assertClose(await data(a.t.grad!), ref.grads.a.data as Float32Array, RTOL, 'grad a');
    assertClose(await data(b.t.grad!), ref.grads.b.data as Float32Array, RTOL, 'grad b');
  }

  // Every level this machine has; in the child runs below (other thread
  // counts), the best level only.
  const levels = CHILD_THREADS ? cpuLevels().slice(-1) : cpuLevels();
  for (const level of levels) {
    describe(`at CPU level ${level}${CHILD_THREADS ? `, ${native().info().threads} thread(s)` : ''}`, () => {
      before(() => native().setCpuLevel(level));

      it('2-D matmul, every transpose, edge sizes', async () => {
        for (const [M, N, K] of sizes) for (const [tA, tB] of transposes) await checkMatmul(0, 0, M, N, K, tA, tB);
      });

      it('batched matmul, shared operands, every transpose', async () => {
        for (const [, ba, bb, M, N, K] of batched) for (const [tA, tB] of transposes) await checkMatmul(ba, bb, M, N, K, tA, tB);
      });

      it('gemm: alpha, beta, C, fast kernel and reference kernel', async () => {
        for (const [M, N, K] of [[7, 33, 129], [129, 70, 33], [1, 5, 1], [5, 300, 40]] as const) {
          for (const [tA, tB] of transposes) {
            const a = randomTensor(tA ? [K, M] : [M, K], seed++);
            const b = randomTensor(tB ? [N, K] : [K, N], seed++);
            const c = randomTensor([M, N], seed++);
            const attrs = { transA: tA, transB: tB, alpha: 0.75, beta: -1.5 };
            const ref = await oracle.call('gemm', { a: a.arr, b: b.arr, c: c.arr }, attrs);
            for (const reference of [false, true]) {
              const y = runOp1('gemm', [a.t, b.t, c.t], { ...attrs, reference });
              assertClose(await data(y), ref.outputs[0].data as Float32Array, RTOL, `gemm ${M}x${N}x${K} reference=${reference}`);
            }
            // Without C, beta is ignored and the output is alpha * op(a) op(b) alone.
            const y0 = runOp1('gemm', [a.t, b.t], { transA: tA, transB: tB, alpha: 2 });
            const ref0 = await oracle.call('gemm', { a: a.arr, b: b.arr }, { transA: tA, transB: tB, alpha: 2 });
            assertClose(await data(y0), ref0.outputs[0].data as Float32Array, RTOL, 'gemm without c');
          }
        }
      });

      it('linear with and without bias, 1-D to 3-D inputs', async () => {
        const cases: [number[], number, boolean][] = [
          [[5, 7], 3, true],
          [[2, 3, 33], 17, true],
          [[129, 65], 40, false],
          [[9], 4, true],
        ];
        for (const [xs, outF, withBias] of cases) {
          const inF = xs[xs.length - 1];
          const x = randomTensor(xs, seed++);
          const w = randomTensor([outF, inF], seed++, 0.3);
          const b = withBias ? randomTensor([outF], seed++) : null;
          x.t.requiresGrad = true;
          w.t.requiresGrad = true;
          if (b) b.t.requiresGrad = true;
          const y = linear(x.t, w.t, b ? b.t : null);
          const gy = randomTensor(y.shape, seed++);
          backward(y, gy.t);
          const wrt = b ? ['x', 'weight', 'bias'] : ['x', 'weight'];
          const ref = await oracle.call('linear', { x: x.arr, weight: w.arr, bias: b ? b.arr : null }, {}, { wrt, gradOutputs: [gy.arr] });
          assert.deepEqual([...y.shape], [...xs.slice(0, -1), outF]);
          assertClose(await data(y), ref.outputs[0].data as Float32Array, RTOL, 'linear forward');
          assertClose(await data(x.t.grad!), ref.grads.x.data as Float32Array, RTOL, 'grad x');
          assertClose(await data(w.t.grad!), ref.grads.weight.data as Float32Array, RTOL, 'grad weight');
          if (b) assertClose(await data(b.t.grad!), ref.grads.bias.data as Float32Array, RTOL, 'grad bias');
        }
      });
    });
  }
});

describe('matmul / linear edge cases and bad inputs', () => {
  it('a product over K = 0 is all zeros (plus the bias)', async () => {
    const a = fromArray([], [3, 0]);
    const b = fromArray([], [0, 2]);
    assert.deepEqual(Array.from(await data(matmul(a, b))), [0, 0, 0, 0, 0, 0]);
    const y = linear(fromArray([], [2, 0]), fromArray([], [3, 0]), fromArray([1, 2, 3], [3]));
    assert.deepEqual(Array.from(await data(y)), [1, 2, 3, 1, 2, 3]);
  });

  it('only the inputs that need a gradient get one', async () => {
    const a = randomTensor([4, 3], 1).t;
    const b = randomTensor([3, 5], 2).t;
    b.requiresGrad = true;
    backward(matmul(a, b), randomTensor([4, 5], 3).t);
    assert.equal(a.grad, null);
    assert.deepEqual([...b.grad!.shape], [3, 5]);
  });

  const isRange = (re: RegExp) => (e: Error) => e instanceof RangeError && re.test(e.message);
  const isType = (re: RegExp) => (e: Error) => e instanceof TypeError && re.test(e.message);

  it('matmul rejects mismatched shapes, ranks and dtypes, naming the argument', () => {
    const a = fromArray(new Float32Array(6), [2, 3]);
    assert.throws(() => matmul(a, fromArray(new Float32Array(8), [4, 2])), isRange(/'a'.*K=3.*'b'.*K=4/));
    assert.throws(() => matmul(a, fromArray(new Float32Array(6), [2, 3]), { transB: false }), isRange(/inner dimensions/));
    assert.throws(() => matmul(fromArray(new Float32Array(6), [1, 1, 2, 3]), a), isRange(/argument 'a' must have 2 or 3 dimensions/));
    assert.throws(() => matmul(a, fromArray(new Float32Array(3), [3])), isRange(/argument 'b' must have 2 or 3 dimensions/));
    assert.throws(
      () => matmul(fromArray(new Float32Array(12), [2, 2, 3]), fromArray(new Float32Array(18), [3, 3, 2])),
      isRange(/batch sizes differ.*'a'.*'b'/),
    );
    assert.throws(() => matmul(fromArray(new Int32Array(6), [2, 3], 'int32'), a), isType(/argument 'a' must be float32/));
  });

  it('linear rejects a weight or bias that does not fit, naming the argument', () => {
    const x = fromArray(new Float32Array(6), [2, 3]);
    assert.throws(() => linear(x, fromArray(new Float32Array(8), [2, 4]), null), isRange(/'weight'.*4 input features.*'x'.*3/));
    assert.throws(() => linear(x, fromArray(new Float32Array(6), [2, 3]), fromArray(new Float32Array(3), [3])), isRange(/argument 'bias' must have shape \[2\]/));
    assert.throws(() => linear(x, fromArray(new Float32Array(3), [3]), null), isRange(/argument 'weight' must have 2 dimensions/));
  });
});

rerunWithThreadCounts('matmul', __filename, skip ?? false);
