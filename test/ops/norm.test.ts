import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { groupNorm, groupNormSiLU, layerNorm } from '../../src/tensor/ops/norm';
import { fromArray, runOp } from '../../src/tensor/tensor';
import { assertClose, assertShape, randomTensor } from '../helpers/assert';
import { atLevel, cpuLevels } from '../helpers/cpu_levels';
import { Oracle, torchUnavailable, type Arr } from '../helpers/oracle';

const skip = torchUnavailable();
// float32 engine vs float64 PyTorch, relative error in the 2-norm.
const RTOL_FWD = 1e-6; // measured <= 7e-8
const RTOL_GRAD = 1e-6; // measured <= 1e-7

type Affine = 'both' | 'weight' | 'none';

// The vectorised GroupNorm (AVX2 / AVX-512) and the fused GroupNorm + SiLU,
// at every CPU level, against PyTorch: sizes that leave a tail after the last
// full vector, groups of 4 elements, a large common offset, a first element
// far from the rest (offset < 0: x[0] of each group moved by -offset: the
// one-pass statistics' second pass, group_norm.h gn_moments).
describe('groupNorm and groupNormSiLU at every CPU level, against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());
  const cases: [number[], number, Affine, number, number][] = [
    [[2, 6, 5, 7], 3, 'both', 1, 0],
    [[2, 64, 8, 8], 32, 'both', 2, 0.5],
    [[3, 32, 2, 2], 32, 'both', 1, 0],
    [[1, 8, 13], 2, 'none', 1, 0],
    [[2, 12, 9, 11], 4, 'weight', 3, 0],
    [[2, 4, 6, 6], 2, 'both', 1, 1000],
    [[2, 2, 40, 40], 1, 'both', 1, -1e4],
  ];
  for (const level of cpuLevels())
    for (const fused of [false, true])
      for (const [shape, groups, affine, scale, offset] of cases) {
        it(`${level}: ${fused ? 'groupNormSiLU' : 'groupNorm'} x ${JSON.stringify(shape)}, ${groups} groups, affine=${affine}, offset ${offset}`, async () => {
          await atLevel(level, async () => {
            const C = shape[1];
            const x = randomTensor(shape, 31, scale);
            if (offset) {
              const m = x.arr.data.length / shape[0] / groups;
              x.arr.data.forEach((v, i) => (x.arr.data[i] = offset > 0 ? v + offset : i % m === 0 ? v - offset : v));
              x.t.dispose();
              x.t = fromArray(x.arr.data, shape);
            }
            const w = affine !== 'none' ? randomTensor([C], 32) : null;
            const b = affine === 'both' ? randomTensor([C], 33) : null;
            for (const t of [x.t, w?.t, b?.t]) if (t) t.requiresGrad = true;
            const fn = fused ? groupNormSiLU : groupNorm;
            const y = fn(x.t, groups, w?.t ?? null, b?.t ?? null, 1e-5);
            assertShape(y, shape);
            const gy = randomTensor(shape, 34);
            backward(y, gy.t);
            const wrt = ['x', ...(w ? ['weight'] : []), ...(b ? ['bias'] : [])];
            const ref = await oracle.call(fused ? 'group_norm_silu' : 'group_norm', { x: x.arr, weight: w?.arr ?? null, bias: b?.arr ?? null },
              { num_groups: groups, eps: 1e-5 }, { wrt, gradOutputs: [gy.arr] });
            // silu's exp: about one float ulp, then a sum over the group in the backward
            const tol = fused ? 1e-5 : RTOL_GRAD;
            assertClose(await y.float32(), ref.outputs[0].data as Float32Array, fused ? 1e-6 : RTOL_FWD, 'forward');
            assertClose(await x.t.grad!.float32(), ref.grads.x.data as Float32Array, tol, 'grad x');
            if (w) assertClose(await w.t.grad!.float32(), ref.grads.weight.data as Float32Array, tol, 'grad weight');
            if (b) assertClose(await b.t.grad!.float32(), ref.grads.bias.data as Float32Array, tol, 'grad bias');
          });
        });
      }
});

describe('groupNorm against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const cases: [number[], number, Affine, number, number][] = [
    // shape, groups, affine, input scale, input offset
    [[2, 6, 5, 7], 3, 'both', 1, 0],
    [[3, 32, 4, 4], 32, 'both', 2, 0.5],
    [[2, 64, 8, 8], 32, 'weight', 1, 0],
    [[1, 8, 13], 2, 'none', 1, 0],
    [[4, 12], 3, 'both', 1, 0],
    [[2, 12, 9, 11], 4, 'both', 0.01, 0],
    [[2, 4, 6, 6], 2, 'both', 1, 1000], // |mean| >> std: the shifted one-pass statistics
  ];
  for (const [shape, groups, affine, scale, offset] of cases) {
    it(`x ${JSON.stringify(shape)}, ${groups} groups, affine=${affine}, scale ${scale}, offset ${offset}`, async () => {
      const C = shape[1];
      const x = randomTensor(shape, 11, scale);
      if (offset) {
        x.arr.data.forEach((v, i) => (x.arr.data[i] = v + offset));
        x.t.dispose();
        x.t = fromArray(x.arr.data, shape);
      }
      const w = affine !== 'none' ? randomTensor([C], 12) : null;
      const b = affine === 'both' ? randomTensor([C], 13) : null;
      for (const t of [x.t, w?.t, b?.t]) if (t) t.requiresGrad = true;
      const y = groupNorm(x.t, groups, w?.t ?? null, b?.t ?? null, 1e-5);
      assertShape(y, shape);
      const gy = randomTensor(shape, 14);
      backward(y, gy.t);
      const wrt = ['x', ...(w ? ['weight'] : []), ...(b ? ['bias'] : [])];
      const ref = await oracle.call('group_norm', { x: x.arr, weight: w?.arr ?? null, bias: b?.arr ?? null },
        { num_groups: groups, eps: 1e-5 }, { wrt, gradOutputs: [gy.arr] });
      assertClose(await y.float32(), ref.outputs[0].data as Float32Array, RTOL_FWD, 'forward');
      assertClose(await x.t.grad!.float32(), ref.grads.x.data as Float32Array, RTOL_GRAD, 'grad x');
      if (w) assertClose(await w.t.grad!.float32(), ref.grads.weight.data as Float32Array, RTOL_GRAD, 'grad weight');
      if (b) assertClose(await b.t.grad!.float32(), ref.grads.bias.data as Float32Array, RTOL_GRAD, 'grad bias');
    });
  }

  it('saves the biased mean and 1/sqrt(var + eps) per (n, g)', async () => {
    const x = randomTensor([2, 4, 3, 3], 21, 3);
    const [y, mean, rstd] = runOp('group_norm_forward', [x.t, null, null], { num_groups: 2, eps: 0.1 });
    assertShape(mean, [2, 2]);
    const m = await mean.float32(), r = await rstd.float32();
    for (let ng = 0; ng < 4; ++ng) {
      const seg = Array.from(x.arr.data.subarray(ng * 18, (ng + 1) * 18));
      const mu = seg.reduce((s, v) => s + v, 0) / 18;
      const varB = seg.reduce((s, v) => s + (v - mu) ** 2, 0) / 18;
      assertClose([m[ng], r[ng]], [mu, 1 / Math.sqrt(varB + 0.1)], 1e-6, `stats of group ${ng}`);
    }
    y.dispose();
  });
});

describe('layerNorm against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const cases: [number[], Affine, number, number][] = [
    [[5, 7], 'both', 1, 0],
    [[2, 3, 33], 'both', 3, 0],
    [[1, 64], 'weight', 1, 0],
    [[3, 1, 129], 'none', 1, 0],
    [[300, 16], 'both', 1, 0], // many rows: several blocks of weight-gradient partial sums
    [[4, 40], 'both', 1, -500],
  ];
  for (const [shape, affine, scale, offset] of cases) {
    it(`x ${JSON.stringify(shape)}, affine=${affine}, scale ${scale}, offset ${offset}`, async () => {
      const D = shape[shape.length - 1];
      const x = randomTensor(shape, 31, scale);
      if (offset) {
        x.arr.data.forEach((v, i) => (x.arr.data[i] = v + offset));
        x.t.dispose();
        x.t = fromArray(x.arr.data, shape);
      }
      const w = affine !== 'none' ? randomTensor([D], 32) : null;
      const b = affine === 'both' ? randomTensor([D], 33) : null;
      for (const t of [x.t, w?.t, b?.t]) if (t) t.requiresGrad = true;
      const y = layerNorm(x.t, w?.t ?? null, b?.t ?? null, 1e-5);
      assertShape(y, shape);
      const gy = randomTensor(shape, 34);
      backward(y, gy.t);
      const wrt = ['x', ...(w ? ['weight'] : []), ...(b ? ['bias'] : [])];
      const ref = await oracle.call('layer_norm', { x: x.arr, weight: w?.arr ?? null, bias: b?.arr ?? null },
        { eps: 1e-5 }, { wrt, gradOutputs: [gy.arr] });
      assertClose(await y.float32(), ref.outputs[0].data as Float32Array, RTOL_FWD, 'forward');
      assertClose(await x.t.grad!.float32(), ref.grads.x.data as Float32Array, RTOL_GRAD, 'grad x');
      if (w) assertClose(await w.t.grad!.float32(), ref.grads.weight.data as Float32Array, RTOL_GRAD, 'grad weight');
      if (b) assertClose(await b.t.grad!.float32(), ref.grads.bias.data as Float32Array, RTOL_GRAD, 'grad bias');
    });
  }
});

describe('norm argument checks', () => {
  const x = () => randomTensor([2, 6, 3, 3], 1).t;
  const rangeNaming = (arg: string) => (e: unknown) => e instanceof RangeError && e.message.includes(`'${arg}'`);
  const typeNaming = (arg: string) => (e: unknown) => e instanceof TypeError && e.message.includes(`'${arg}'`);

  it('groupNorm: weight / bias with the wrong channel count', () => {
    assert.throws(() => groupNorm(x(), 3, randomTensor([5], 2).t, null), rangeNaming('weight'));
    assert.throws(() => groupNorm(x(), 3, null, randomTensor([6, 1], 2).t), rangeNaming('bias'));
  });
  it('groupNorm: C not divisible by num_groups, or num_groups < 1', () => {
    assert.throws(() => groupNorm(x(), 4, null, null), (e: unknown) => rangeNaming('num_groups')(e) && /C = 6/.test((e as Error).message));
    assert.throws(() => groupNorm(x(), 0, null, null), rangeNaming('num_groups'));
  });
  it('groupNorm: x of rank 1, a non-float32 x, a negative eps', () => {
    assert.throws(() => groupNorm(randomTensor([6], 3).t, 3, null, null), rangeNaming('x'));
    assert.throws(() => groupNorm(fromArray(new Int32Array(12), [2, 6], 'int32'), 3, null, null), typeNaming('x'));
    assert.throws(() => groupNorm(x(), 3, null, null, -1), rangeNaming('eps'));
  });
  it('layerNorm: weight / bias not matching the last dimension', () => {
    assert.throws(() => layerNorm(randomTensor([4, 5], 4).t, randomTensor([4], 5).t, null), rangeNaming('weight'));
    assert.throws(() => layerNorm(randomTensor([4, 5], 4).t, null, randomTensor([6], 5).t), rangeNaming('bias'));
    assert.throws(() => layerNorm(randomTensor([4, 5], 4).t, fromArray(new Int32Array(5), [5], 'int32'), null), typeNaming('weight'));
  });
  it('group_norm_backward: mean / rstd of the wrong shape', () => {
    const t = x();
    const bad: Arr = { shape: [2, 2], data: new Float32Array(4) };
    const m = fromArray(bad.data, bad.shape);
    assert.throws(() => runOp('group_norm_backward', [t, t, m, m, null], { num_groups: 3 }), rangeNaming('mean'));
  });
});
