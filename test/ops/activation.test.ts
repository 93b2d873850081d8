import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { gelu, silu, softmax } from '../../src/tensor/ops/activation';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';
import { cpuLevels, atLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// float32 engine vs float64 PyTorch, relative error in the 2-norm.
const RTOL_ACT = 2e-6; // measured <= 4.5e-7 (gelu tanh gradient near the extremes)
const RTOL_SOFTMAX = 2e-6; // measured <= 6.1e-7 (near-saturated logits)


/** Extreme inputs, where naive formulas cancel (1 + erf, 1 + tanh) or overflow (exp(-x)). */
const EXTREMES = [-100, -30, -12, -8, -6, -3, -1, -0.1, 0, 0.1, 1, 3, 6, 8, 12, 30, 100];
// Elementwise bound for them: relative 1e-5, absolute 1e-30 (values below
// that are zero in float32 for all practical purposes).
function assertElementwise(actual: ArrayLike<number>, expected: ArrayLike<number>, xs: number[], what: string) {
  for (let i = 0; i < xs.length; ++i) {
    const err = Math.abs(actual[i] - expected[i]);
    assert.ok(err <= 1e-5 * Math.abs(expected[i]) + 1e-30, `${what} at x = ${xs[i]}: ${actual[i]} vs ${expected[i]}`);
  }
}

describe('silu / gelu against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const fns: [string, (x: Tensor) => Tensor, Record<string, unknown>][] = [
    ['silu', silu, {}],
    ['gelu', (x) => gelu(x), { approximate: 'none' }],
    ['gelu', (x) => gelu(x, 'tanh'), { approximate: 'tanh' }],
  ];
  const shapes: [number[], number][] = [
    [[7], 1],
    [[3, 5, 11], 3],
    [[2, 64, 17, 9], 2],
  ];
  for (const [name, fn, attrs] of fns)
    for (const [shape, scale] of shapes) {
      it(`${name}${attrs.approximate ? `(${attrs.approximate})` : ''} on ${JSON.stringify(shape)}, scale ${scale}, every CPU level`, async () => {
        const x = randomTensor(shape, 41, scale);
        const gy = randomTensor(shape, 42);
        const ref = await oracle.call(name, { x: x.arr }, attrs, { wrt: ['x'], gradOutputs: [gy.arr] });
        for (const level of cpuLevels())
          await atLevel(level, async () => {
            x.t.grad?.dispose();
            x.t.grad = null;
            x.t.requiresGrad = true;
            const y = fn(x.t);
            assertShape(y, shape);
            backward(y, gy.t);
            assertClose(await y.float32(), ref.outputs[0].data as Float32Array, RTOL_ACT, `${level} forward`);
            assertClose(await x.t.grad!.float32(), ref.grads.x.data as Float32Array, RTOL_ACT, `${level} grad x`);
          });
      });
    }

  for (const [name, fn, attrs] of fns)
    it(`${name}${attrs.approximate ? `(${attrs.approximate})` : ''} at extreme inputs, every CPU level`, async () => {
      const x = { shape: [EXTREMES.length], data: Float32Array.from(EXTREMES) };
      const gy = { shape: [EXTREMES.length], data: new Float32Array(EXTREMES.length).fill(1) };
      // F.gelu itself loses all digits here even in float64 (see gelu_stable).
      const refOp = name === 'gelu' ? 'gelu_stable' : name;
      const ref = await oracle.call(refOp, { x }, attrs, { wrt: ['x'], gradOutputs: [gy] });
      for (const level of cpuLevels())
        await atLevel(level, async () => {
          const xt = fromArray(x.data, x.shape);
          xt.requiresGrad = true;
          const y = fn(xt);
          backward(y, fromArray(gy.data, gy.shape));
          assertElementwise(await y.float32(), ref.outputs[0].data, EXTREMES, `${level} forward`);
          assertElementwise(await xt.grad!.float32(), ref.grads.x.data, EXTREMES, `${level} grad`);
        });
    });

  it('gelu tanh and erf forms differ (the attribute reaches the kernel)', async () => {
    const x = fromArray([-2, -1, 0.5, 1.5], [4]);
    const a = await gelu(x, 'none').float32(), b = await gelu(x, 'tanh').float32();
    assert.ok(a.some((v, i) => Math.abs(v - b[i]) > 1e-5));
  });
});

describe('softmax against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const cases: [number[], number, number][] = [
    [[3, 5, 7], -1, 1],
    [[3, 5, 7], 0, 1],
    [[3, 5, 7], 1, 1],
    [[3, 5, 7], 2, 1],
    [[2, 1000], 1, 4],
    [[2, 5, 130], 1, 2], // inner 130: two full column blocks and a partial one
    [[4, 33, 5], -2, 30], // large logits: exp would overflow without the max shift
    [[2, 3, 1], -1, 1], // a softmax over one element
  ];
  for (const [shape, dim, scale] of cases) {
    it(`x ${JSON.stringify(shape)}, dim ${dim}, scale ${scale}, every CPU level`, async () => {
      const x = randomTensor(shape, 51, scale);
      const gy = randomTensor(shape, 52);
      const ref = await oracle.call('softmax', { x: x.arr }, { dim }, { wrt: ['x'], gradOutputs: [gy.arr] });
      for (const level of cpuLevels())
        await atLevel(level, async () => {
          x.t.grad?.dispose();
          x.t.grad = null;
          x.t.requiresGrad = true;
          const y = softmax(x.t, dim);
          assertShape(y, shape);
          backward(y, gy.t);
          assertClose(await y.float32(), ref.outputs[0].data as Float32Array, RTOL_SOFTMAX, `${level} forward`);
          assertClose(await x.t.grad!.float32(), ref.grads.x.data as Float32Array, RTOL_SOFTMAX, `${level} grad x`);
        });
    });
  }

  it('saturated logits (|x| up to 1000) give a finite one-hot forward', async () => {
    const x = { shape: [2, 4], data: new Float32Array([1000, 0, -1000, 999, -1000, -1000, -999, -1000]) };
    const ref = await oracle.call('softmax', { x }, { dim: 1 });
    for (const level of cpuLevels())
      await atLevel(level, async () => {
        const got = await softmax(fromArray(x.data, x.shape), 1).float32();
        assert.ok(got.every(Number.isFinite));
        assertClose(got, ref.outputs[0].data as Float32Array, RTOL_SOFTMAX, `${level} forward`);
      });
  });

  it('defaults to the last dimension', async () => {
    const x = fromArray([1, 2, 3, 4, 5, 6], [2, 3]);
    const y = await softmax(x).float32();
    const e = [Math.exp(-2), Math.exp(-1), 1];
    const s = e[0] + e[1] + e[2];
    assertClose(y, [...e, ...e].map((v) => v / s), 1e-6, 'softmax rows');
  });
});

describe('activation argument checks', () => {
  const rangeNaming = (arg: string) => (e: unknown) => e instanceof RangeError && e.message.includes(`'${arg}'`);
  const typeNaming = (arg: string) => (e: unknown) => e instanceof TypeError && e.message.includes(`'${arg}'`);
  const ints = () => fromArray(new Int32Array(4), [4], 'int32');

  it('non-float32 inputs', () => {
    assert.throws(() => silu(ints()), typeNaming('x'));
    assert.throws(() => gelu(ints()), typeNaming('x'));
    assert.throws(() => softmax(ints()), typeNaming('x'));
  });
  it('gelu: unknown approximation', () => {
    const x = randomTensor([3], 1).t;
    assert.throws(() => gelu(x, 'fast' as 'tanh'), rangeNaming('approximate'));
  });
  it('softmax: dim out of range', () => {
    const x = randomTensor([2, 3], 1).t;
    assert.throws(() => softmax(x, 2), rangeNaming('dim'));
    assert.throws(() => softmax(x, -3), rangeNaming('dim'));
  });
});
