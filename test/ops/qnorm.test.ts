// qgroup_norm_act (native/cpu/qnorm.cpp): groupNorm [* (scale + 1) + shift]
// [+ SiLU] + quantization in one pass, and qconv2d reading its uint8 levels
// (opts.levels: the real zero point added back in the epilogue). At every CPU
// level against the separate ops (group_norm, mul, add, silu on the engine,
// then fake_quant's levels in JS: clamp(rne(fl(fl(v - z) / s)))):
// - the same levels bit for bit where every channel row is a multiple of 16
//   long (the silu op then takes its vector formula everywhere, as this op
//   does); otherwise at most 0.1 % of the levels one apart (the silu op's
//   scalar tail);
// - qconv2d on the levels gives bit for bit what qconv2d on the float
//   silu(groupNorm(x)) (quantized inside the op) gives.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { silu } from '../../src/tensor/ops/activation';
import { add, addScalar, mul } from '../../src/tensor/ops/elementwise';
import { groupNorm, groupNormSiLU } from '../../src/tensor/ops/norm';
import { type FusedActQuant, packQWeight, qconv2d, qgroupNormAct } from '../../src/tensor/ops/qlinear';
import { native } from '../../src/tensor/native';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { randomData } from '../helpers/assert';
import { atLevel, cpuLevels } from '../helpers/cpu_levels';
import { rne, SILU_MIN } from '../helpers/quant_ref';

const fr = Math.fround;

interface Case {
  name: string;
  x: [number, number, number, number];
  groups: number;
  signed: boolean;
  bits: number;
  z: number;
  ss: boolean;
  affine: boolean;
  steps: 'one' | 'sample' | 'table';
  /** every channel row a multiple of 16 long: exact levels expected */
  exact: boolean;
}

const CASES: Case[] = [
  { name: 'openai out_layers: scale/shift, SiLU zero point, TDQ table', x: [3, 32, 8, 8], groups: 8, signed: false, bits: 8, z: SILU_MIN, ss: true, affine: true, steps: 'table', exact: true },
  { name: 'in_layers: SiLU zero point, per-sample steps', x: [2, 16, 4, 4], groups: 4, signed: false, bits: 8, z: SILU_MIN, ss: false, affine: true, steps: 'sample', exact: true },
  { name: 'signed 8 bit, one step, no affine', x: [2, 12, 4, 8], groups: 3, signed: true, bits: 8, z: 0, ss: false, affine: false, steps: 'one', exact: true },
  { name: 'odd maps (3x5), no scale/shift: the fused GroupNorm + SiLU floats', x: [2, 8, 3, 5], groups: 4, signed: false, bits: 8, z: SILU_MIN, ss: false, affine: true, steps: 'sample', exact: true },
  { name: 'odd group size (3 channels of 5x5, 75 elements), no scale/shift', x: [2, 9, 5, 5], groups: 3, signed: false, bits: 8, z: SILU_MIN, ss: false, affine: true, steps: 'sample', exact: true },
  { name: 'odd maps (5x7), 4-bit, scale/shift', x: [2, 8, 5, 7], groups: 2, signed: false, bits: 4, z: SILU_MIN, ss: true, affine: true, steps: 'table', exact: false },
];

function stepsOf(c: Case): { tensor: () => Tensor; perSample: Float32Array; column?: number } {
  const N = c.x[0];
  const per = Float32Array.from({ length: N }, (_, i) => fr((c.bits === 4 ? 0.09 : 0.011) * (1 + 0.37 * i)));
  if (c.steps === 'one') return { tensor: () => fromArray([per[0]], [1]), perSample: Float32Array.from({ length: N }, () => per[0]) };
  if (c.steps === 'sample') return { tensor: () => fromArray(per, [N]), perSample: per };
  // (N, 3) table, this quantizer's steps in column 1
  const t = new Float32Array(N * 3);
  for (let i = 0; i < N; ++i) t[i * 3] = 0.5, t[i * 3 + 1] = per[i], t[i * 3 + 2] = 7;
  return { tensor: () => fromArray(t, [N, 3]), perSample: per, column: 1 };
}

describe('qgroup_norm_act', () => {
  for (const c of CASES) {
    it(`${c.name}: the separate ops' levels ${c.exact ? 'bit for bit' : '(up to rare one-level flips)'}, and qconv2d on them equals qconv2d on the float input, every CPU level`, async () => {
      const [N, C, H, W] = c.x, n = N * C * H * W, HW = H * W;
      const x = randomData(c.x, 11 + C, 1.5).map((v, i) => fr(v + (i % 3) * 0.25));
      const gamma = c.affine ? randomData([C], 2, 0.6).map((v) => fr(1 + v)) : null;
      const beta = c.affine ? randomData([C], 3, 0.3) : null;
      const scale = randomData([N, C, 1, 1], 4, 0.3), shift = randomData([N, C, 1, 1], 5, 0.2);
      const st = stepsOf(c);
      const half = 2 ** (c.bits - 1);
      const [lo, hi] = c.signed ? [-half, half - 1] : [0, 2 * half - 1];
      const act: FusedActQuant = { bits: c.bits, signed: c.signed, offset: c.z, stepFloor: 1e-6, column: st.column };
      const O = 10, wshape = [O, C, 3, 3];
      const wstep = Float32Array.from({ length: O }, (_, i) => fr(0.004 + 0.001 * i));
      const pk = () => packQWeight(fromArray(randomData(wshape, 9, 0.05), wshape), fromArray(wstep, [O]), 8);
      const bias = randomData([O], 10, 0.1);
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          const t = (a: Float32Array | null, s: number[]) => (a ? fromArray(a, s) : null);
          const ss = c.ss ? { scale: fromArray(scale, [N, C, 1, 1]), shift: fromArray(shift, [N, C, 1, 1]) } : undefined;
          const lv = qgroupNormAct(fromArray(x, c.x), t(gamma, [C]), t(beta, [C]), st.tensor(), { numGroups: c.groups, eps: 1e-6, scaleShift: ss, act });
          assert.equal(lv.dtype, 'uint8');
          const got = (await lv.data()) as Uint8Array;
          // the separate ops, as the model runs them in fake-quantized execution
          // (without scale/shift the fused GroupNorm + SiLU op, with it GroupNorm, mul, add, silu)
          const vf = ss
            ? silu(add(mul(groupNorm(fromArray(x, c.x), c.groups, t(gamma, [C]), t(beta, [C]), 1e-6), addScalar(ss.scale, 1)), ss.shift))
            : groupNormSiLU(fromArray(x, c.x), c.groups, t(gamma, [C]), t(beta, [C]), 1e-6);
          const f = (await vf.data()) as Float32Array;
          let off = 0;
          for (let i = 0; i < n; ++i) {
            const s = st.perSample[Math.floor(i / (C * HW))];
            let q = fr(fr(f[i] - c.z) / s);
            if (Number.isNaN(q)) q = 0;
            const want = Math.min(Math.max(rne(q), lo), hi) + (c.signed ? 128 : 0);
            if (got[i] !== want) {
              assert.ok(!c.exact, `${level}: element ${i}: level byte ${got[i]} != ${want} (value ${f[i]})`);
              assert.equal(Math.abs(got[i] - want), 1, `${level}: element ${i}: ${got[i]} vs ${want}`);
              off++;
            }
          }
          assert.ok(off <= 0.001 * n, `${level}: ${off} of ${n} levels differ`);
          // the conv on the levels vs the conv quantizing the float input itself
          const y = (await qconv2d(lv, st.tensor(), pk(), fromArray(bias, [O]), { padding: 1, zeroPoint: c.signed ? 128 : 0, levels: { offset: c.z, stepFloor: 1e-6, column: st.column } }).data()) as Float32Array;
          const yf = (await qconv2d(vf, st.tensor(), pk(), fromArray(bias, [O]), { padding: 1, act }).data()) as Float32Array;
          if (off === 0) for (let i = 0; i < y.length; ++i) if (y[i] !== yf[i]) assert.fail(`${level}: conv element ${i}: ${y[i]} != ${yf[i]}`);
        });
      }
    });
  }

  it('the same levels on 1 and 2 engine threads, every CPU level (odd group size, scale/shift and without)', async () => {
    const shape: [number, number, number, number] = [3, 30, 7, 9];
    const x = fromArray(randomData(shape, 21, 2).map((v, i) => fr(v + (i % 5) * 0.1)), shape);
    const ss = { scale: fromArray(randomData([3, 30, 1, 1], 22, 0.3), [3, 30, 1, 1]), shift: fromArray(randomData([3, 30, 1, 1], 23, 0.2), [3, 30, 1, 1]) };
    const act: FusedActQuant = { bits: 8, signed: false, offset: SILU_MIN, stepFloor: 1e-6 };
    const steps = fromArray([0.011, 0.013, 0.017], [3]);
    const threads = native().info().threads;
    try {
      for (const level of cpuLevels())
        await atLevel(level, async () => {
          for (const scaleShift of [undefined, ss]) {
            const run = async (n: number) => {
              native().setThreads(n);
              return (await qgroupNormAct(x, null, null, steps, { numGroups: 10, scaleShift, act }).data()) as Uint8Array;
            };
            const a = await run(1), b = await run(2);
            assert.deepEqual(b, a, `${level}, scale/shift ${!!scaleShift}`);
          }
        });
    } finally {
      native().setThreads(threads);
    }
  });

  it('rejects bad arguments with typed errors naming them', () => {
    const x = fromArray(randomData([2, 6, 3, 3], 1), [2, 6, 3, 3]);
    const s = fromArray([0.1], [1]);
    const act = { bits: 8, signed: false };
    assert.throws(() => qgroupNormAct(x, null, null, s, { numGroups: 4, act }), (e: Error) => e instanceof RangeError && /num_groups/.test(e.message));
    assert.throws(() => qgroupNormAct(x, fromArray([1, 1], [2]), null, s, { numGroups: 3, act }), (e: Error) => e instanceof RangeError && /'weight' must have shape \[6\]/.test(e.message));
    assert.throws(() => qgroupNormAct(x, null, null, s, { numGroups: 3, act, scaleShift: { scale: fromArray(new Float32Array(6), [1, 6, 1, 1]), shift: fromArray(new Float32Array(6), [1, 6, 1, 1]) } }), (e: Error) => e instanceof RangeError && /'scale' must have shape/.test(e.message));
    assert.throws(() => qgroupNormAct(x, null, null, fromArray([0.1, 0.2, 0.3], [3]), { numGroups: 3, act }), (e: Error) => e instanceof RangeError && /act_step/.test(e.message));
    assert.throws(() => qgroupNormAct(x, null, null, s, { numGroups: 3, act: { bits: 9, signed: false } }), (e: Error) => e instanceof RangeError && /bits/.test(e.message));
    assert.throws(() => qgroupNormAct(x, null, null, s, { numGroups: 3, act: { ...act, inputShifted: true } }), (e: Error) => e instanceof RangeError && /inputShifted/.test(e.message));
    const pk = packQWeight(fromArray(randomData([4, 6, 3, 3], 1), [4, 6, 3, 3]), fromArray([1, 1, 1, 1], [4]), 8);
    assert.throws(() => qconv2d(x, s, pk, null, { act, levels: { offset: 1 } }), (e: Error) => e instanceof TypeError && /opts.levels is for uint8/.test(e.message));
  });
});
