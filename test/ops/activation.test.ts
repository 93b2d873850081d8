import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { gelu, silu, softmax } from '../../src/tensor/ops/activation';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';

const skip = torchUnavailable();
// float32 engine vs float64 PyTorch, relative error in the 2-norm.
const RTOL_ACT = 2e-6; // measured <= 4.5e-7 (gelu tanh gradient near the extremes)
const RTOL_SOFTMAX = 2e-6; // measured <= 6.1e-7 (near-saturated logits)

/** Random data with a tail of extreme values, where naive formulas cancel or overflow. */
function inputWithExtremes(shape: number[], seed: number, scale: number) {
  const x = randomTensor(shape, seed, scale);
  const extremes = [-100, -30, -12, -6, -3, 0, 3, 6, 12, 30, 100];
  extremes.forEach((v, i) => {
    if (i < x.arr.data.length) x.arr.data[i] = v;
  });
  x.t.dispose();
  x.t = fromArray(x.arr.data, shape);
  return x;
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
      it(`${name}${attrs.approximate ? `(${attrs.approximate})` : ''} on ${JSON.stringify(shape)}, scale ${scale}`, async () => {
        const x = inputWithExtremes(shape, 41, scale);
        x.t.requiresGrad = true;
        const y = fn(x.t);
        assertShape(y, shape);
        const gy = randomTensor(shape, 42);
        backward(y, gy.t);
        const ref = await oracle.call(name, { x: x.arr }, attrs, { wrt: ['x'], gradOutputs: [gy.arr] });
        assertClose(await y.float32(), ref.outputs[0].data as Float32Array, RTOL_ACT, 'forward');
        assertClose(await x.t.grad!.float32(), ref.grads.x.data as Float32Array, RTOL_ACT, 'grad x');
      });
    }

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
    it(`x ${JSON.stringify(shape)}, dim ${dim}, scale ${scale}`, async () => {
      const x = randomTensor(shape, 51, scale);
      x.t.requiresGrad = true;
      const y = softmax(x.t, dim);
      assertShape(y, shape);
      const gy = randomTensor(shape, 52);
      backward(y, gy.t);
      const ref = await oracle.call('softmax', { x: x.arr }, { dim }, { wrt: ['x'], gradOutputs: [gy.arr] });
      assertClose(await y.float32(), ref.outputs[0].data as Float32Array, RTOL_SOFTMAX, 'forward');
      assertClose(await x.t.grad!.float32(), ref.grads.x.data as Float32Array, RTOL_SOFTMAX, 'grad x');
    });
  }

  it('saturated logits (|x| up to 1000) give a finite one-hot forward', async () => {
    const x = { shape: [2, 4], data: new Float32Array([1000, 0, -1000, 999, -1000, -1000, -999, -1000]) };
    const y = softmax(fromArray(x.data, x.shape), 1);
    const ref = await oracle.call('softmax', { x }, { dim: 1 });
    const got = await y.float32();
    assert.ok(got.every(Number.isFinite));
    assertClose(got, ref.outputs[0].data as Float32Array, RTOL_SOFTMAX, 'forward');
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
