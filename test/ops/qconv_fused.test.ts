// qconv2d / qlinear on float32 x: the op quantizes x itself (native/cpu/qgemm.h,
// QActSpec) with a real zero point ('offset', folded into the epilogue), a
// step floor, and the step read from a (N, Q) table by column, the one kernel
// path of static and TDQ integer execution. At every CPU level against a
// plain JS reference of the documented arithmetic, bit for bit:
//   level = clamp(rne(fl(fl(x - z) / s)), qmin, qmax),  s = max(step, floor)
//   y = fl(fl(fl(acc) * fl(s * wstep)) + bias'),  bias' = fl(bias + fl(fl(z * wstep) * rowsum))
//   border pixels (taps on the padding): y = fl(y + fl(fl(z * wstep) * (valid sum - rowsum)))
// and against the fake-quantized float conv (fakeQuantize(x - z) + z, conv2d)
// within a relative 2-norm error of 1e-6.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { conv2d } from '../../src/tensor/ops/conv';
import { add, addScalar, reshape } from '../../src/tensor/ops/elementwise';
import { native } from '../../src/tensor/native';
import { linear } from '../../src/tensor/ops/linalg';
import { fakeQuantize } from '../../src/tensor/ops/quant';
import { type FusedActQuant, packQWeight, qconv2d, qlinear } from '../../src/tensor/ops/qlinear';
import { Generator } from '../../src/tensor/random';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { assertClose, randomData } from '../helpers/assert';
import { atLevel, cpuLevels } from '../helpers/cpu_levels';
import { rne, SILU_MIN } from '../helpers/quant_ref';

const fr = Math.fround;
const f32 = async (t: Tensor) => (await t.data()) as Float32Array;
const RTOL = 1e-6;

function levelRef(x: number, z: number, shifted: boolean, s: number, lo: number, hi: number): number {
  const v = fr(fr(shifted ? x : x - z) / s);
  if (Number.isNaN(v)) return 0;
  return Math.min(Math.max(rne(v), lo), hi);
}

function weightLevels(w: Float32Array, steps: Float32Array, bits: number): Int8Array {
  const O = steps.length, K = w.length / O, lo = -(2 ** (bits - 1)), hi = 2 ** (bits - 1) - 1;
  return Int8Array.from(w, (v, i) => {
    const r = rne(fr(v / steps[Math.floor(i / K)]));
    return Math.min(Math.max(r, lo), hi);
  });
}

interface Case {
  x: [number, number, number, number];
  O: number; k: number; stride: number; padding: number;
  signed: boolean; bits: number; z: number; shifted: boolean;
  table: boolean; perSample: boolean; bias: boolean; floor: number;
}

/** Per-sample steps as the kernel takes them, and the step tensor / column to pass. */
function stepInputs(c: Case, g: Generator): { steps: Float32Array; tensor: () => Tensor; column: number } {
  const N = c.x[0];
  const raw = Float32Array.from({ length: N }, () => fr(0.015 + g.randint(30) / 1000));
  if (c.table) {
    const Q = 1 + g.randint(5), column = g.randint(Q), rows = c.perSample ? N : 1;
    const t = randomData([rows, Q], 7 + N + Q, 1).map((v) => fr(Math.abs(v) * 0.05 + 0.01));
    for (let r = 0; r < rows; ++r) t[r * Q + column] = raw[r];
    const steps = Float32Array.from({ length: N }, (_, n) => Math.max(t[(rows === 1 ? 0 : n) * Q + column], c.floor));
    return { steps, tensor: () => fromArray(t, [rows, Q]), column };
  }
  const st = c.perSample ? raw : raw.slice(0, 1);
  return { steps: Float32Array.from({ length: N }, (_, n) => Math.max(st[c.perSample ? n : 0], c.floor)), tensor: () => fromArray(st, c.perSample ? [N] : [1]), column: -1 };
}

function qconvRef(c: Case, x: Float32Array, steps: Float32Array, wl: Int8Array, wstep: Float32Array, bias: Float32Array | null): Float32Array {
  const [N, C, H, W] = c.x, O = c.O, k = c.k;
  const Ho = Math.floor((H + 2 * c.padding - k) / c.stride) + 1, Wo = Math.floor((W + 2 * c.padding - k) / c.stride) + 1;
  const lo = c.signed ? -(2 ** (c.bits - 1)) : 0, hi = c.signed ? 2 ** (c.bits - 1) - 1 : 2 ** c.bits - 1;
  const q = Float64Array.from(x, (v, i) => levelRef(v, c.z, c.shifted, steps[Math.floor(i / (C * H * W))], lo, hi));
  const rowsum = new Float64Array(O);
  for (let i = 0; i < wl.length; ++i) rowsum[Math.floor(i / (C * k * k))] += wl[i];
  const y = new Float32Array(N * O * Ho * Wo);
  for (let n = 0; n < N; ++n)
    for (let o = 0; o < O; ++o) {
      const S = fr(steps[n] * wstep[o]), zw = fr(c.z * wstep[o]);
      const b2 = c.z !== 0 ? (bias ? fr(bias[o] + fr(zw * rowsum[o])) : fr(zw * rowsum[o])) : bias ? bias[o] : 0;
      for (let oh = 0; oh < Ho; ++oh)
        for (let ow = 0; ow < Wo; ++ow) {
          let acc = 0, valid = 0, border = false;
          for (let ci = 0; ci < C; ++ci)
            for (let i = 0; i < k; ++i)
              for (let j = 0; j < k; ++j) {
                const ih = oh * c.stride - c.padding + i, iw = ow * c.stride - c.padding + j;
                const wv = wl[((o * C + ci) * k + i) * k + j];
                if (ih >= 0 && ih < H && iw >= 0 && iw < W) {
                  acc += q[((n * C + ci) * H + ih) * W + iw] * wv;
                  valid += wv;
                } else border = true;
              }
          let v = fr(fr(fr(acc) * S) + b2);
          if (c.z !== 0 && border) v = fr(v + fr(zw * (valid - rowsum[o])));
          y[((n * O + o) * Ho + oh) * Wo + ow] = v;
        }
    }
  return y;
}

function randomCase(g: Generator): Case | null {
  const k = [1, 3, 3, 2][g.randint(4)], stride = 1 + g.randint(2), padding = g.randint(3);
  const signed = g.randint(3) === 0;
  const c: Case = {
    x: [1 + g.randint(4), 1 + g.randint(20), 1 + g.randint(12), 1 + g.randint(12)],
    O: 1 + g.randint(40), k, stride, padding, signed, bits: [8, 8, 6, 4][g.randint(4)],
    z: signed ? 0 : [0, SILU_MIN, SILU_MIN][g.randint(3)], shifted: g.randint(4) === 0,
    table: g.randint(2) === 1, perSample: g.randint(3) !== 0, bias: g.randint(2) === 1, floor: [0, 1e-8, 0.03][g.randint(3)],
  };
  if (c.x[2] + 2 * padding < k || c.x[3] + 2 * padding < k) return null;
  return c;
}

describe('qconv2d on float32 x (quantization, zero point, step floor and table column inside the op)', () => {
  it('random shapes (seeded): bit for bit vs the JS reference at every CPU level, and to 1e-6 vs the fake-quantized conv', async () => {
    const g = new Generator(77);
    let done = 0;
    while (done < 24) {
      const c = randomCase(g);
      if (!c) continue;
      if (done < 4) Object.assign(c, { z: SILU_MIN, signed: false, padding: Math.max(c.padding, 1), k: 3 });  // borders corrected
      // 1x1, stride 1, no padding: quantized straight into the panels (no im2col), panels spanning samples
      if (done === 4 || done === 5) Object.assign(c, { k: 1, stride: 1, padding: 0, x: [3, 6 + done, 5, 7], z: done === 4 ? SILU_MIN : 0, signed: done === 5 });
      if (c.x[2] + 2 * c.padding < c.k || c.x[3] + 2 * c.padding < c.k) continue;
      ++done;
      const [N, C] = c.x, wshape = [c.O, C, c.k, c.k];
      const { steps, tensor, column } = stepInputs(c, g);
      // activations with a SiLU-like lower bound (unsigned) or symmetric, ties and clamped values
      const x = randomData(c.x, done, 2).map((v, i) => (i % 7 === 0 ? fr(c.z + steps[0] * (3 + 0.5)) : c.signed ? v : fr(Math.max(v, c.z))));
      if (c.shifted) for (let i = 0; i < x.length; ++i) x[i] = fr(x[i] - c.z);
      const w = randomData(wshape, done + 100, 0.5);
      const wstep = Float32Array.from({ length: c.O }, (_, i) => fr(0.004 + 0.0003 * ((i * 37) % 11)));
      const bias = c.bias ? randomData([c.O], done + 300) : null;
      const act: FusedActQuant = { bits: c.bits, signed: c.signed, offset: c.z, inputShifted: c.shifted, stepFloor: c.floor, column };
      const expected = qconvRef(c, x, steps, weightLevels(w, wstep, 8), wstep, bias);
      const what = `x ${c.x.join('x')} O ${c.O} k ${c.k} s ${c.stride} p ${c.padding} ${c.signed ? 'signed' : 'unsigned'} a${c.bits} z ${c.z} shifted ${c.shifted} table ${c.table} perSample ${c.perSample} floor ${c.floor}`;
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          const pk = packQWeight(fromArray(w, wshape), fromArray(wstep, [c.O]), 8);
          const y = await f32(qconv2d(fromArray(x, c.x), tensor(), pk, bias ? fromArray(bias, [c.O]) : null, { stride: c.stride, padding: c.padding, act }));
          assert.equal(y.length, expected.length);
          for (let i = 0; i < y.length; ++i) if (y[i] !== expected[i]) assert.fail(`${what} ${level}: element ${i} ${y[i]} != ${expected[i]}`);
        });
      }
      // the fake-quantized layer: fakeQuantize(x - z, s) + z through the float conv
      const sT = fromArray(steps, [N]);
      const xs = c.shifted ? fromArray(x, c.x) : addScalar(fromArray(x, c.x), -c.z);
      const fx = addScalar(fakeQuantize(xs, sT, { bits: c.bits, signed: c.signed, granularity: 'sample', axis: 0 }), c.z);
      const fw = fakeQuantize(fromArray(w, wshape), fromArray(wstep, [c.O]), { bits: 8, signed: true, granularity: 'channel' });
      const yf = await f32(conv2d(fx, fw, bias ? fromArray(bias, [c.O]) : null, { stride: c.stride, padding: c.padding }));
      assertClose(expected, yf, RTOL, `${what}: vs fake-quant conv`);
    }
  });

  it('rejects bad quantization arguments with typed errors', () => {
    const pk = packQWeight(fromArray(randomData([4, 2, 3, 3], 1), [4, 2, 3, 3]), fromArray([1, 1, 1, 1], [4]), 8);
    const x = fromArray(randomData([2, 2, 5, 5], 2), [2, 2, 5, 5]);
    const act = { bits: 8, signed: false };
    const q = (s: Tensor, a: FusedActQuant) => qconv2d(x, s, pk, null, { act: a });
    assert.throws(() => q(fromArray([0.1, 0.2, 0.3], [1, 3]), { ...act, column: 3 }), (e: Error) => e instanceof RangeError && /act_step.*column 3/.test(e.message));
    assert.throws(() => q(fromArray([0.1, 0.2, 0.3], [3, 1]), { ...act, column: 0 }), (e: Error) => e instanceof RangeError && /act_step/.test(e.message));
    assert.throws(() => q(fromArray([0.1], [1]), { ...act, bits: 9 }), (e: Error) => e instanceof RangeError && /bits/.test(e.message));
    assert.throws(() => q(fromArray([0.1], [1]), { ...act, offset: Infinity }), (e: Error) => e instanceof RangeError && /offset/.test(e.message));
    assert.throws(() => q(fromArray([0.1], [1]), { ...act, stepFloor: -1 }), (e: Error) => e instanceof RangeError && /step_floor/.test(e.message));
    assert.throws(() => qconv2d(fromArray(new Uint8Array(100), [2, 2, 5, 5], 'uint8'), fromArray([0.1], [1]), pk, null, { act }), (e: Error) => e instanceof TypeError && /opts.act is for float32 x/.test(e.message));
  });

  it('a step that is not positive after the floor is a RangeError naming the sample', async () => {
    const pk = packQWeight(fromArray(randomData([4, 2, 3, 3], 1), [4, 2, 3, 3]), fromArray([1, 1, 1, 1], [4]), 8);
    const x = fromArray(randomData([2, 2, 5, 5], 2), [2, 2, 5, 5]);
    await assert.rejects(qconv2d(x, fromArray([0.1, 0, 0.2, 0.3], [2, 2]), pk, null, { act: { bits: 8, signed: false, column: 1 } }).data(), /sample 0 = 0 must be positive/);
    // with a floor the same table is fine
    assert.equal((await qconv2d(x, fromArray([0.1, 0, 0.2, 0.3], [2, 2]), pk, null, { act: { bits: 8, signed: false, column: 1, stepFloor: 1e-8 } }).data()).length, 2 * 4 * 3 * 3);
  });
});

describe('qconv2d with addChannel and residual in its output pass', () => {
  it('equals qconv2d followed by add(y, c[:, :, None, None]) and add(residual, y) bit for bit (float32 x with border fix-up, uint8 levels; batch 1 split over threads and batch 8 in chunks; every CPU level)', async () => {
    const prev = native().info().threads as number;
    const cases: { x: [number, number, number, number]; O: number; k: number; padding: number; stride: number; z: number; levels: boolean; c: boolean; r: boolean }[] = [
      { x: [1, 24, 4, 4], O: 72, k: 3, padding: 1, stride: 1, z: SILU_MIN, levels: false, c: true, r: true },
      { x: [8, 12, 6, 6], O: 20, k: 3, padding: 1, stride: 1, z: SILU_MIN, levels: false, c: true, r: false },
      { x: [3, 8, 5, 7], O: 16, k: 1, padding: 0, stride: 1, z: 0, levels: false, c: false, r: true },
      { x: [2, 16, 9, 9], O: 24, k: 3, padding: 1, stride: 2, z: SILU_MIN, levels: true, c: true, r: true },
    ];
    try {
      for (const [i, c] of cases.entries()) {
        const [N, C, H, W] = c.x;
        const Ho = Math.floor((H + 2 * c.padding - c.k) / c.stride) + 1, Wo = Math.floor((W + 2 * c.padding - c.k) / c.stride) + 1;
        const wshape = [c.O, C, c.k, c.k];
        const w = randomData(wshape, 500 + i, 0.5);
        const wstep = Float32Array.from({ length: c.O }, (_, o) => fr(0.004 + 0.0003 * ((o * 37) % 11)));
        const bias = randomData([c.O], 600 + i);
        const steps = Float32Array.from({ length: N }, (_, n) => fr(0.02 + n / 1000));
        const x = randomData(c.x, 700 + i, 2).map((v) => fr(Math.max(v, c.z)));
        const addc = randomData([N, c.O], 800 + i, 3), res = randomData([N, c.O, Ho, Wo], 900 + i, 3);
        const act: FusedActQuant = { bits: 8, signed: false, offset: c.z, stepFloor: 1e-8 };
        // levels made outside (as qgroup_norm_act makes them): bytes of round((x - z) / s)
        const lv = Uint8Array.from(x, (v, j) => levelRef(v, c.z, false, steps[Math.floor(j / (C * H * W))], 0, 255));
        for (const threads of [1, 2, 3]) {
          native().setThreads(threads);
          for (const level of cpuLevels()) {
            await atLevel(level, async () => {
              const pk = packQWeight(fromArray(w, wshape), fromArray(wstep, [c.O]), 8);
              const xin = () => (c.levels ? fromArray(lv, c.x, 'uint8') : fromArray(x, c.x));
              const opts = { stride: c.stride, padding: c.padding, ...(c.levels ? { levels: { offset: c.z, stepFloor: 1e-8 } } : { act }) };
              const ac = c.c ? fromArray(addc, [N, c.O]) : null, rr = c.r ? fromArray(res, [N, c.O, Ho, Wo]) : null;
              let ref = qconv2d(xin(), fromArray(steps, [N]), pk, fromArray(bias, [c.O]), opts);
              if (ac) ref = add(ref, reshape(ac, [N, c.O, 1, 1]));
              if (rr) ref = add(rr, ref);
              const expected = await f32(ref);
              const y = await f32(qconv2d(xin(), fromArray(steps, [N]), pk, fromArray(bias, [c.O]), { ...opts, addChannel: ac, residual: rr }));
              assert.equal(y.length, N * c.O * Ho * Wo);
              for (let j = 0; j < y.length; ++j) if (y[j] !== expected[j]) assert.fail(`case ${i} ${threads} threads ${level}: element ${j} ${y[j]} != ${expected[j]}`);
            });
          }
        }
      }
    } finally {
      native().setThreads(prev);
    }
  });

  it('rejects adds of the wrong shape or dtype with typed errors naming them', () => {
    const pk = packQWeight(fromArray(randomData([4, 2, 3, 3], 1), [4, 2, 3, 3]), fromArray([1, 1, 1, 1], [4]), 8);
    const x = fromArray(randomData([2, 2, 5, 5], 2), [2, 2, 5, 5]);
    const act = { bits: 8, signed: false };
    const q = (o: { addChannel?: Tensor; residual?: Tensor }) => qconv2d(x, fromArray([0.1], [1]), pk, null, { act, ...o });
    assert.throws(() => q({ addChannel: fromArray(new Float32Array(4), [1, 4]) }), (e: Error) => e instanceof RangeError && /add_channel/.test(e.message));
    assert.throws(() => q({ residual: fromArray(new Float32Array(2 * 4 * 5 * 5), [2, 4, 5, 5]) }), (e: Error) => e instanceof RangeError && /residual/.test(e.message));
    assert.throws(() => q({ residual: fromArray(new Int32Array(2 * 4 * 3 * 3), [2, 4, 3, 3], 'int32') }), (e: Error) => e instanceof TypeError && /residual/.test(e.message));
  });
});

describe('qlinear on float32 x', () => {
  it('bit for bit vs the JS reference at every CPU level (zero point, table column, floor, K % 4 != 0), and to 1e-6 vs fake-quant linear', async () => {
    for (const [signed, z, K, rows, N] of [[true, 0, 70, 6, 3], [false, SILU_MIN, 33, 77, 7], [false, 0, 8, 5, 5]] as [boolean, number, number, number, number][]) {
      const O = 19, Q = 3, column = 1, floor = 0.03;
      const xshape = [N, rows / N, K], n0 = N, per = rows / N;  // one step per index of axis 0
      const x = randomData([rows * K], K, 2).map((v) => (signed ? v : fr(Math.max(v, z))));
      const w = randomData([O, K], K + 1);
      const wstep = Float32Array.from({ length: O }, (_, i) => fr(0.004 + 0.0003 * ((i * 37) % 11)));
      const bias = randomData([O], K + 3);
      const table = Float32Array.from({ length: n0 * Q }, (_, i) => fr(0.02 + 0.002 * i));
      const steps = Float32Array.from({ length: n0 }, (_, n) => Math.max(table[n * Q + column], floor));
      const wl = weightLevels(w, wstep, 8);
      const lo = signed ? -128 : 0, hi = signed ? 127 : 255;
      const expected = new Float32Array(rows * O);
      for (let r = 0; r < rows; ++r)
        for (let o = 0; o < O; ++o) {
          const s = steps[Math.floor(r / per)];
          let acc = 0, rs = 0;
          for (let k = 0; k < K; ++k) {
            acc += levelRef(x[r * K + k], z, false, s, lo, hi) * wl[o * K + k];
            rs += wl[o * K + k];
          }
          const b2 = z !== 0 ? fr(bias[o] + fr(fr(z * wstep[o]) * rs)) : bias[o];
          expected[r * O + o] = fr(fr(fr(acc) * fr(s * wstep[o])) + b2);
        }
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          const pk = packQWeight(fromArray(w, [O, K]), fromArray(wstep, [O]), 8);
          const y = await f32(qlinear(fromArray(x, xshape), fromArray(table, [n0, Q]), pk, fromArray(bias, [O]), { act: { bits: 8, signed, offset: z, stepFloor: floor, column } }));
          for (let i = 0; i < y.length; ++i) if (y[i] !== expected[i]) assert.fail(`${level} signed ${signed} z ${z}: element ${i} ${y[i]} != ${expected[i]}`);
        });
      }
      const sT = fromArray(steps, [n0]);
      const fx = addScalar(fakeQuantize(addScalar(fromArray(x, xshape), -z), sT, { bits: 8, signed, granularity: 'sample', axis: 0 }), z);
      const fw = fakeQuantize(fromArray(w, [O, K]), fromArray(wstep, [O]), { bits: 8, signed: true, granularity: 'channel' });
      assertClose(expected, await f32(linear(fx, fw, fromArray(bias, [O]))), RTOL, `signed ${signed} z ${z}: vs fake-quant linear`);
    }
  });
});
