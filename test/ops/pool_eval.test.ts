import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { avgPool2dPadded, globalAvgPool2d, maxPool2d, resizeBilinear, type ResizeMode } from '../../src/tensor/ops/pool';
import { fromArray, runOp1, type Tensor } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';
import { atEveryLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// Max pooling copies values (exact) and adds gradients where windows overlap,
// in float32.
const MAX_RTOL = 1e-6;
// Averages of at most kernel^2 float32 terms vs float64.
const RTOL = 1e-6;
// Bilinear sample positions are computed in float32, as torch computes them
// for float32 images: vs torch in float32 the forward agrees to rounding;
// vs float64 positions (up to ~1e-7 * size apart) to a few 1e-6.
const RESIZE_F32_RTOL = 3e-7;
const RESIZE_F64_RTOL = 5e-6;

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;


describe('padded pooling and bilinear resize against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const maxCases: [number[], number, number, number][] = [
    [[2, 3, 9, 9], 3, 2, 0], // Inception's stem and reduction blocks
    [[1, 2, 8, 8], 3, 1, 1], // Inception's Mixed_7c branch: same size out
    [[2, 2, 7, 6], 2, 2, 1],
    [[1, 1, 5, 7], 3, 3, 1],
    [[1, 3, 4, 4], 4, 1, 2],
  ];
  for (const [shape, kernel, stride, padding] of maxCases) {
    it(`maxPool2d ${JSON.stringify(shape)} k${kernel} s${stride} p${padding} forward and backward`, async () => {
      await atEveryLevel(async (level) => {
        const x = randomTensor(shape, 11);
        x.t.requiresGrad = true;
        const y = maxPool2d(x.t, kernel, { stride, padding });
        const gy = randomTensor(y.shape, 12);
        backward(y, gy.t);
        const ref = await oracle.call('max_pool2d', { x: x.arr }, { kernel, stride, padding }, { wrt: ['x'], gradOutputs: [gy.arr] });
        assertShape(y, ref.outputs[0].shape);
        assertClose(await f32(y), ref.outputs[0].data as Float32Array, 0, `${level} forward`);
        assertClose(await f32(x.t.grad!), ref.grads.x.data as Float32Array, MAX_RTOL, `${level} grad x`);
      });
    });
  }

  const avgCases: [number[], number, number, number][] = [
    [[2, 3, 8, 8], 3, 1, 1], // every Inception A/C/E pool branch
    [[1, 2, 9, 7], 3, 2, 1],
    [[2, 2, 6, 5], 2, 2, 1],
    [[1, 1, 5, 5], 5, 3, 2],
    [[1, 2, 7, 7], 3, 2, 0],
  ];
  for (const [shape, kernel, stride, padding] of avgCases) {
    for (const countIncludePad of [false, true]) {
      it(`avgPool2dPadded ${JSON.stringify(shape)} k${kernel} s${stride} p${padding} countIncludePad=${countIncludePad}`, async () => {
        await atEveryLevel(async (level) => {
          const x = randomTensor(shape, 13);
          x.t.requiresGrad = true;
          const y = avgPool2dPadded(x.t, kernel, { stride, padding, countIncludePad });
          const gy = randomTensor(y.shape, 14);
          backward(y, gy.t);
          const ref = await oracle.call(
            'avg_pool2d_padded',
            { x: x.arr },
            { kernel, stride, padding, count_include_pad: countIncludePad },
            { wrt: ['x'], gradOutputs: [gy.arr] },
          );
          assertShape(y, ref.outputs[0].shape);
          assertClose(await f32(y), ref.outputs[0].data as Float32Array, RTOL, `${level} forward`);
          assertClose(await f32(x.t.grad!), ref.grads.x.data as Float32Array, RTOL, `${level} grad x`);
        });
      });
    }
  }

  const resizeCases: [number[], [number, number]][] = [
    [[1, 3, 28, 28], [299, 299]], // Fashion-MNIST into Inception
    [[2, 3, 32, 32], [299, 299]], // CIFAR-10 into Inception
    [[1, 2, 64, 48], [29, 31]], // shrinking, unequal axes
    [[1, 1, 5, 7], [5, 7]], // identity size
    [[2, 1, 1, 3], [4, 1]], // single pixel rows, single output column
  ];
  for (const [shape, size] of resizeCases) {
    for (const mode of ['half_pixel', 'align_corners', 'asymmetric'] as ResizeMode[]) {
      it(`resizeBilinear ${JSON.stringify(shape)} -> ${JSON.stringify(size)} ${mode}`, async () => {
        await atEveryLevel(async (level) => {
          const x = randomTensor(shape, 15);
          x.t.requiresGrad = true;
          const y = resizeBilinear(x.t, size, mode);
          const gy = randomTensor(y.shape, 16);
          backward(y, gy.t);
          const ref = await oracle.call('resize_bilinear', { x: x.arr }, { size, mode }, { wrt: ['x'], gradOutputs: [gy.arr] });
          const ref32 = await oracle.call('resize_bilinear', { x: x.arr }, { size, mode, _float32: true });
          assertShape(y, ref.outputs[0].shape);
          assertClose(await f32(y), ref32.outputs[0].data as Float32Array, RESIZE_F32_RTOL, `${level} forward vs float32 torch`);
          assertClose(await f32(y), ref.outputs[0].data as Float32Array, RESIZE_F64_RTOL, `${level} forward vs float64`);
          // Backward sums up to (output/input)^2 products per input pixel in float32.
          assertClose(await f32(x.t.grad!), ref.grads.x.data as Float32Array, 2e-5, `${level} grad x`);
        });
      });
    }
  }
});

describe('padded pooling and resize: known values and errors', () => {
  it('maxPool2d with padding never picks the padding, and NaN propagates', async () => {
    const x = fromArray([-5, -6, -7, -8], [1, 1, 2, 2]);
    assert.deepEqual(Array.from(await f32(maxPool2d(x, 2, { stride: 1, padding: 1 }))), [-5, -5, -6, -5, -5, -6, -7, -7, -8]);
    const n = fromArray([1, NaN, 3, 4], [1, 1, 2, 2]);
    assert.ok(Number.isNaN((await f32(maxPool2d(n, 2)))[0]));
  });

  it('avgPool2dPadded divides by the real pixels only without countIncludePad', async () => {
    const x = fromArray([1, 2, 3, 4], [1, 1, 2, 2]);
    // 3x3 windows centred on each pixel cover all four pixels: the mean 2.5 everywhere.
    assert.deepEqual(Array.from(await f32(avgPool2dPadded(x, 3, { stride: 1, padding: 1, countIncludePad: false }))), [2.5, 2.5, 2.5, 2.5]);
    assert.deepEqual(Array.from(await f32(avgPool2dPadded(x, 3, { stride: 1, padding: 1, countIncludePad: true }))), [10 / 9, 10 / 9, 10 / 9, 10 / 9].map(Math.fround));
  });

  it('globalAvgPool2d is the mean of each plane', async () => {
    const x = fromArray([1, 2, 3, 4, 10, 20, 30, 40], [1, 2, 2, 2]);
    const y = globalAvgPool2d(x);
    assertShape(y, [1, 2, 1, 1]);
    assert.deepEqual(Array.from(await f32(y)), [2.5, 25]);
  });

  it('resizeBilinear to the same size is the identity in half_pixel and align_corners modes', async () => {
    const x = randomTensor([1, 2, 6, 5], 3);
    for (const mode of ['half_pixel', 'align_corners', 'asymmetric'] as ResizeMode[])
      assert.deepEqual(Array.from(await f32(resizeBilinear(x.t, [6, 5], mode))), Array.from(x.arr.data), mode);
  });

  it('bad inputs throw the right error class naming the argument', () => {
    const x3 = fromArray([1, 2, 3, 4], [1, 2, 2]);
    const x4 = fromArray([1, 2, 3, 4], [1, 1, 2, 2]);
    const i4 = fromArray([1, 2, 3, 4], [1, 1, 2, 2], 'int32');
    const throwsWith = (fn: () => unknown, cls: typeof TypeError | typeof RangeError, re: RegExp) =>
      assert.throws(fn, (e: Error) => e instanceof cls && re.test(e.message), `${cls.name} matching ${re}`);
    throwsWith(() => maxPool2d(x3, 2), RangeError, /max_pool2d: argument 'x' must have 4 dimensions/);
    throwsWith(() => maxPool2d(i4, 2), TypeError, /max_pool2d: argument 'x' must be float32/);
    throwsWith(() => maxPool2d(x4, 0), RangeError, /'kernel' must be at least 1/);
    throwsWith(() => maxPool2d(x4, 2, { stride: 0 }), RangeError, /'stride' must be at least 1/);
    throwsWith(() => maxPool2d(x4, 3, { padding: 2 }), RangeError, /'padding' must be in \[0, kernel \/ 2\]/);
    throwsWith(() => maxPool2d(x4, 5, { padding: 1 }), RangeError, /'x' of shape \[1, 1, 2, 2\] \(padded by 1\) is smaller than the kernel 5x5/);
    throwsWith(() => runOp1('max_pool2d_backward', [x4, x4], { kernel: 2, stride: 2 }), RangeError, /'gy' must have shape \[1, 1, 1, 1\]/);
    throwsWith(() => avgPool2dPadded(x3, 2), RangeError, /avg_pool2d_padded: argument 'x' must have 4 dimensions/);
    throwsWith(() => avgPool2dPadded(i4, 2), TypeError, /'x' must be float32/);
    throwsWith(() => avgPool2dPadded(x4, 2, { padding: -1 }), RangeError, /'padding' must be in/);
    throwsWith(() => runOp1('avg_pool2d_padded_backward', [x4], { kernel: 2, shape: [1, 1, 2] }), RangeError, /'shape' .* must have 4 dimensions/);
    throwsWith(() => globalAvgPool2d(x3), RangeError, /globalAvgPool2d: argument 'x' must have 4 dimensions/);
    throwsWith(() => resizeBilinear(x3, [4, 4]), RangeError, /resize_bilinear: argument 'x' must have 4 dimensions/);
    throwsWith(() => resizeBilinear(i4, [4, 4]), TypeError, /resize_bilinear: argument 'x' must be float32/);
    throwsWith(() => resizeBilinear(x4, [0, 4]), RangeError, /'size' must be positive/);
    throwsWith(() => resizeBilinear(x4, [4, 4], 'nearest' as ResizeMode), RangeError, /'mode' must be 'half_pixel', 'align_corners' or 'asymmetric', got 'nearest'/);
    throwsWith(() => resizeBilinear(fromArray([], [1, 1, 0, 3]), [4, 4]), RangeError, /'x' of shape \[1, 1, 0, 3\] has an empty image/);
    throwsWith(() => runOp1('resize_bilinear_backward', [x4], { size: [3, 3], shape: [1, 1, 2, 2] }), RangeError, /'gy' must have shape \[1, 1, 3, 3\]/);
  });
});
