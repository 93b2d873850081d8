import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { avgPool2d, upsampleNearest2x } from '../../src/tensor/ops/pool';
import { fromArray, runOp1, type Tensor } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';

const skip = torchUnavailable();
const EXACT = 0; // upsampling copies
const RTOL = 1e-6; // sums of up to kernel^2 float32 terms vs float64

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;

describe('pooling and upsampling against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  for (const shape of [[2, 3, 4, 5], [1, 1, 1, 1], [1, 2, 7, 33]]) {
    it(`upsampleNearest2x ${JSON.stringify(shape)} forward and backward`, async () => {
      const x = randomTensor(shape, 1);
      x.t.requiresGrad = true;
      const y = upsampleNearest2x(x.t);
      const gy = randomTensor(y.shape, 2);
      backward(y, gy.t);
      const ref = await oracle.call('upsample_nearest2x', { x: x.arr }, {}, { wrt: ['x'], gradOutputs: [gy.arr] });
      assertShape(y, ref.outputs[0].shape);
      assertClose(await f32(y), ref.outputs[0].data as Float32Array, EXACT, 'forward');
      assertClose(await f32(x.t.grad!), ref.grads.x.data as Float32Array, RTOL, 'grad x');
    });
  }

  const poolCases: [number[], number, number][] = [
    [[2, 3, 8, 8], 2, 2],
    [[1, 2, 9, 7], 3, 2], // overlapping windows, leftover rows/cols
    [[2, 2, 6, 5], 3, 1],
    [[1, 3, 8, 9], 2, 3], // gaps between windows
    [[1, 1, 5, 5], 5, 5],
  ];
  for (const [shape, kernel, stride] of poolCases) {
    it(`avgPool2d ${JSON.stringify(shape)} kernel ${kernel} stride ${stride} forward and backward`, async () => {
      const x = randomTensor(shape, 3);
      x.t.requiresGrad = true;
      const y = avgPool2d(x.t, kernel, stride);
      const gy = randomTensor(y.shape, 4);
      backward(y, gy.t);
      const ref = await oracle.call('avg_pool2d', { x: x.arr }, { kernel, stride }, { wrt: ['x'], gradOutputs: [gy.arr] });
      assertShape(y, ref.outputs[0].shape);
      assertClose(await f32(y), ref.outputs[0].data as Float32Array, RTOL, 'forward');
      assertClose(await f32(x.t.grad!), ref.grads.x.data as Float32Array, RTOL, 'grad x');
    });
  }
});

describe('pooling: defaults and errors', () => {
  it('avgPool2d defaults to kernel 2, stride = kernel', async () => {
    const x = fromArray([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [1, 1, 4, 4]);
    assert.deepEqual(Array.from(await f32(avgPool2d(x))), [3.5, 5.5, 11.5, 13.5]);
    assert.deepEqual([...avgPool2d(x, 3).shape], [1, 1, 1, 1]);
  });

  it('bad inputs throw the right error class naming the argument', () => {
    const x3 = fromArray([1, 2, 3, 4], [1, 2, 2]);
    const x4 = fromArray([1, 2, 3, 4], [1, 1, 2, 2]);
    const i4 = fromArray([1, 2, 3, 4], [1, 1, 2, 2], 'int32');
    const throwsWith = (fn: () => unknown, cls: typeof TypeError | typeof RangeError, re: RegExp) =>
      assert.throws(fn, (e: Error) => e instanceof cls && re.test(e.message), `${cls.name} matching ${re}`);
    throwsWith(() => upsampleNearest2x(x3), RangeError, /'x' must have 4 dimensions/);
    throwsWith(() => upsampleNearest2x(i4), TypeError, /'x' must be float32/);
    throwsWith(() => runOp1('upsample_nearest2x_backward', [fromArray([1, 2, 3], [1, 1, 1, 3])]), RangeError, /'gy' must have even/);
    throwsWith(() => avgPool2d(x3), RangeError, /'x' must have 4 dimensions/);
    throwsWith(() => avgPool2d(i4), TypeError, /'x' must be float32/);
    throwsWith(() => avgPool2d(x4, 0), RangeError, /'kernel' must be at least 1/);
    throwsWith(() => avgPool2d(x4, 2, 0), RangeError, /'stride' must be at least 1/);
    throwsWith(() => avgPool2d(x4, 3), RangeError, /'x' of shape \[1, 1, 2, 2\] is smaller than the kernel 3x3/);
    throwsWith(() => avgPool2d(x4, 1.5), TypeError, /'kernel' must be an integer/);
    throwsWith(() => runOp1('avg_pool2d_backward', [x4], { kernel: 2, stride: 2, shape: [1, 1, 2, 2] }), RangeError, /'gy' must have shape \[1, 1, 1, 1\]/);
  });
});
