// Integer kernels (native/cpu/qgemm*.cpp, qconv2d.cpp) against plain JS
// references at every CPU level:
// - quantize_act gives fake_quant's levels bit for bit;
// - qweight_pack gives fake_quant's per-channel weight levels, zero-padded rows, row sums;
// - qconv2d / qlinear equal an exact integer reference followed by the
//   documented epilogue y = fl(fl(fl(acc - zc) * fl(a_step * w_step)) + bias)
//   bit for bit, and conv2d(fake_quant(x), fake_quant(w)) within a relative
//   2-norm error of 1e-6 (float conv rounds once per term; measured ~1e-7).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { native } from '../../src/tensor/native';
import { conv2d } from '../../src/tensor/ops/conv';
import { fakeQuantize } from '../../src/tensor/ops/quant';
import { packInt4, packQWeight, qconv2d, qlinear, quantizeActivation, unpackInt4 } from '../../src/tensor/ops/qlinear';
import { Generator } from '../../src/tensor/random';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { assertClose, randomData } from '../helpers/assert';
import { atLevel, cpuLevels } from '../helpers/cpu_levels';
import { rne } from '../helpers/quant_ref';

// conv2d(fake_quant(x), fake_quant(w)) rounds each of its K products and sums;
// the integer path rounds 3 times at the end. Relative 2-norm bound:
const RTOL_VS_FAKEQUANT = 1e-6;

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;
const fr = Math.fround;

/** round half to even of a float32 value (torch.round, nearbyint). */
function quantRef(x: number, s: number, lo: number, hi: number, zp: number): number {
  const v = fr(x / s);
  if (Number.isNaN(v)) return zp;
  return Math.min(Math.max(rne(v) + zp, lo), hi);
}

/** Data with exact rounding ties and values past both clamp limits mixed in. */
function activationData(n: number, step: number, seed: number, levels: number): Float32Array {
  const g = new Generator(seed);
  const r = randomData([n], seed + 1, 0.3 * levels * step);
  for (let i = 0; i < n; i += 7) r[i] = fr(step * (g.randint(levels * 2) - levels + 0.5));  // ties
  for (let i = 3; i < n; i += 29) r[i] = (g.randint(2) ? 1 : -1) * step * levels * 3;      // clamped
  return r;
}

describe('quantize_act', () => {
  for (const signed of [false, true]) {
    for (const bits of [8, 4]) {
      it(`gives fake_quant's levels (${signed ? 'int8' : 'uint8'}, ${bits} bits, per-tensor and per-sample steps) at every CPU level`, async () => {
        const shape = [3, 5, 7, 11];
        const levels = signed ? 2 ** (bits - 1) : 2 ** bits;
        for (const per of ['tensor', 'sample'] as const) {
          const steps = per === 'tensor' ? Float32Array.of(0.037) : Float32Array.of(0.02, 0.031, 0.05);
          const x = activationData(3 * 5 * 7 * 11, 0.031, bits + (signed ? 1 : 0), levels);
          for (const level of cpuLevels()) {
            await atLevel(level, async () => {
              const xt = fromArray(x, shape), st = fromArray(steps, per === 'tensor' ? [] : [3]);
              const q = await quantizeActivation(xt, st, { bits, signed }).data();
              assert.ok(signed ? q instanceof Int8Array : q instanceof Uint8Array);
              const fq = await f32(fakeQuantize(xt, st, { bits, signed, granularity: per === 'tensor' ? 'tensor' : 'sample' }));
              const per1 = x.length / 3;
              for (let i = 0; i < x.length; ++i) {
                const s = steps[per === 'tensor' ? 0 : Math.floor(i / per1)];
                // === : fake_quant keeps the sign of a value that rounds to zero (-0); a level cannot.
                assert.ok(fr(q[i] * s) === fq[i], `${level} ${per} element ${i}: level ${q[i]} * step != fake_quant ${fq[i]} (x ${x[i]})`);
              }
            });
          }
        }
      });
    }
  }

  it('applies a zero point (uint8), maps NaN to the zero point, and equals the JS reference at every level', async () => {
    const x = activationData(1000, 0.02, 7, 256);
    x[5] = NaN;
    for (const level of cpuLevels()) {
      const q = await atLevel(level, () => quantizeActivation(fromArray(x, [1000]), fromArray([0.02], [1]), { bits: 8, signed: false, zeroPoint: 100 }).data());
      for (let i = 0; i < x.length; ++i) assert.equal(q[i], quantRef(x[i], fr(0.02), 0, 255, 100), `${level} element ${i}`);
      assert.equal(q[5], 100);
    }
  });

  it('rejects bad arguments with typed errors', async () => {
    const x = fromArray([1, 2, 3, 4], [2, 2]);
    assert.throws(() => quantizeActivation(x, fromArray([1, 1, 1], [3]), { bits: 8, signed: false }), (e: Error) => e instanceof RangeError && /act_step/.test(e.message));
    assert.throws(() => quantizeActivation(x, fromArray([1], [1]), { bits: 9, signed: false }), (e: Error) => e instanceof RangeError && /bits/.test(e.message));
    assert.throws(() => quantizeActivation(x, fromArray([1], [1]), { bits: 8, signed: true, zeroPoint: 3 }), (e: Error) => e instanceof RangeError && /zero_point/.test(e.message));
    assert.throws(() => quantizeActivation(x, fromArray([1], [1]), { bits: 4, signed: false, zeroPoint: 16 }), (e: Error) => e instanceof RangeError && /zero_point/.test(e.message));
    await assert.rejects(quantizeActivation(x, fromArray([0], [1]), { bits: 8, signed: false }).data(), /positive and finite/);
  });
});

/** Weight levels as fake_quant 'channel' (signed) would give them. */
function weightLevelsRef(w: Float32Array, steps: Float32Array, bits: number): Int8Array {
  const O = steps.length, K = w.length / O, lo = -(2 ** (bits - 1)), hi = 2 ** (bits - 1) - 1;
  return Int8Array.from(w, (v, i) => quantRef(v, steps[Math.floor(i / K)], lo, hi, 0));
}

function weightSteps(O: number, bits: number, seed: number): Float32Array {
  const g = new Generator(seed);
  return Float32Array.from({ length: O }, () => fr((2.5 / 2 ** (bits - 1)) * (0.5 + g.randint(1000) / 1000)));
}

describe('qweight_pack and int4 storage', () => {
  it('quantizes per output channel like fake_quant; rows tap-major, channels padded to 4 (conv) or flat, padded to 4; sums rows', async () => {
    for (const bits of [8, 4, 3]) {
      for (const shape of [[5, 3, 3, 3], [6, 5, 1, 1], [4, 7], [3, 2, 5]]) {
        const O = shape[0], K = shape.slice(1).reduce((a, b) => a * b, 1);
        const conv = shape.length === 4;
        const taps = conv ? shape[2] * shape[3] : 1, Cp = conv ? Math.ceil(shape[1] / 4) * 4 : Math.ceil(K / 4) * 4;
        const Kp = taps * Cp;
        const w = randomData(shape, 40 + bits);
        const steps = weightSteps(O, bits, bits);
        const pk = packQWeight(fromArray(w, shape), fromArray(steps, [O]), bits);
        assert.deepEqual([...pk.packed.shape], [O, Kp]);
        const packed = (await pk.packed.data()) as Int8Array, sums = (await pk.rowSums.data()) as Int32Array;
        const ref = weightLevelsRef(w, steps, bits);
        const fq = await f32(fakeQuantize(fromArray(w, shape), fromArray(steps, [O]), { bits, signed: true, granularity: 'channel' }));
        for (let o = 0; o < O; ++o) {
          let sum = 0;
          const seen = new Set<number>();
          for (let k = 0; k < K; ++k) {
            const pos = o * Kp + (k % taps) * Cp + Math.floor(k / taps);  // k = (c, i, j) flattened, tap = i * kW + j
            seen.add(pos);
            assert.equal(packed[pos], ref[o * K + k], `bits ${bits} ${shape} [${o}, ${k}]`);
            assert.ok(fr(packed[pos] * steps[o]) === fq[o * K + k], `bits ${bits} ${shape} [${o}, ${k}] vs fake_quant`);  // -0 === 0
            sum += ref[o * K + k];
          }
          for (let i = o * Kp; i < (o + 1) * Kp; ++i) if (!seen.has(i)) assert.equal(packed[i], 0, `padding at ${i}`);
          assert.equal(sums[o], sum, `row sum ${o}`);
        }
      }
    }
  });

  it('4-bit levels survive int4_pack / int4_unpack (two per byte) and pack like the float weights', async () => {
    const shape = [4, 2, 3, 3];  // 72 levels; also an odd count below
    const w = randomData(shape, 3);
    const steps = weightSteps(4, 4, 9);
    const levels = weightLevelsRef(w, steps, 4);
    const p = packInt4(fromArray(levels, shape, 'int8'));
    assert.deepEqual([...p.shape], [36]);
    const back = (await unpackInt4(p, shape).data()) as Int8Array;
    assert.deepEqual([...back], [...levels]);
    const a = packQWeight(unpackInt4(p, shape), fromArray(steps, [4]), 4);
    const b = packQWeight(fromArray(w, shape), fromArray(steps, [4]), 4);
    assert.deepEqual([...(await a.packed.data())], [...(await b.packed.data())]);
    assert.deepEqual([...(await a.rowSums.data())], [...(await b.rowSums.data())]);
    const odd = Int8Array.of(-8, 7, 3);
    assert.deepEqual([...(await unpackInt4(packInt4(fromArray(odd, [3], 'int8')), [3]).data())], [-8, 7, 3]);
    assert.deepEqual([...(await packInt4(fromArray(odd, [3], 'int8')).data())], [0x78, 0x03]);
  });

  it('rejects out-of-range levels, bad shapes and steps', async () => {
    await assert.rejects(packInt4(fromArray([8], [1], 'int8')).data(), /element 0 = 8 is outside the 4-bit range/);
    await assert.rejects(packQWeight(fromArray([9, 0], [2, 1], 'int8'), fromArray([1, 1], [2]), 4).packed.data(), /element 0 = 9/);
    assert.throws(() => packQWeight(fromArray([1, 2], [2, 1]), fromArray([1], [1]), 8), (e: Error) => e instanceof RangeError && /step/.test(e.message));
    assert.throws(() => unpackInt4(fromArray([1, 2], [2], 'uint8'), [5]), (e: Error) => e instanceof RangeError && /packed/.test(e.message));
    await assert.rejects(packQWeight(fromArray([1, 2], [2, 1]), fromArray([1, -1], [2]), 8).packed.data(), /positive and finite/);
  });
});

interface ConvCase {
  name: string;
  x: [number, number, number, number];
  O: number;
  k: number;
  stride: number;
  padding: number;
  signed: boolean;
  bits: number;
  zeroPoint?: number;
  perSample?: boolean;
  bias?: boolean;
}

const CONV_CASES: ConvCase[] = [
  { name: '3x3 same, uint8', x: [2, 8, 9, 9], O: 12, k: 3, stride: 1, padding: 1, signed: false, bits: 8, bias: true },
  { name: '3x3 same, int8, per-sample steps', x: [3, 5, 6, 7], O: 9, k: 3, stride: 1, padding: 1, signed: true, bits: 8, perSample: true, bias: true },
  { name: '3x3 stride 2 (downsample), int8', x: [2, 6, 11, 10], O: 10, k: 3, stride: 2, padding: 1, signed: true, bits: 8 },
  { name: '1x1, uint8 with zero point', x: [4, 16, 5, 5], O: 17, k: 1, stride: 1, padding: 0, signed: false, bits: 8, zeroPoint: 37, bias: true },
  { name: '3x3 no padding, 4-bit activations, K = 27', x: [5, 3, 4, 4], O: 8, k: 3, stride: 1, padding: 0, signed: false, bits: 4, perSample: true },
  { name: '3x3, 4x4 maps (samples share panels), int8', x: [9, 7, 4, 4], O: 33, k: 3, stride: 1, padding: 1, signed: true, bits: 8, bias: true },
  { name: '3x3 padding 2, 2-row maps', x: [1, 4, 2, 40], O: 3, k: 3, stride: 1, padding: 2, signed: false, bits: 8, zeroPoint: 5 },
];

/** The exact integer conv and the documented epilogue, in JS. */
function qconvRef(c: ConvCase, xq: ArrayLike<number>, wl: Int8Array, astep: Float32Array, wstep: Float32Array, bias: Float32Array | null): Float32Array {
  const [N, C, H, W] = c.x, O = c.O, k = c.k;
  const Ho = Math.floor((H + 2 * c.padding - k) / c.stride) + 1, Wo = Math.floor((W + 2 * c.padding - k) / c.stride) + 1;
  const zp = c.signed ? 0 : c.zeroPoint ?? 0;
  const y = new Float32Array(N * O * Ho * Wo);
  for (let n = 0; n < N; ++n)
    for (let o = 0; o < O; ++o) {
      const s = fr(astep[astep.length === 1 ? 0 : n] * wstep[o]);
      for (let oh = 0; oh < Ho; ++oh)
        for (let ow = 0; ow < Wo; ++ow) {
          let acc = 0;
          for (let ci = 0; ci < C; ++ci)
            for (let i = 0; i < k; ++i)
              for (let j = 0; j < k; ++j) {
                const ih = oh * c.stride - c.padding + i, iw = ow * c.stride - c.padding + j;
                const v = ih >= 0 && ih < H && iw >= 0 && iw < W ? xq[((n * C + ci) * H + ih) * W + iw] - zp : 0;
                acc += v * wl[((o * C + ci) * k + i) * k + j];
              }
          y[((n * O + o) * Ho + oh) * Wo + ow] = fr(fr(fr(acc) * s) + (bias ? bias[o] : 0));
        }
    }
  return y;
}

describe('qconv2d', () => {
  for (const c of CONV_CASES) {
    it(`${c.name}: equals the integer reference bit for bit and conv2d(fake_quant x, fake_quant w) to ${RTOL_VS_FAKEQUANT}, every CPU level`, async () => {
      const [N, C] = c.x;
      const wshape = [c.O, C, c.k, c.k];
      const levels = c.signed ? 2 ** (c.bits - 1) : 2 ** c.bits;
      const astep = c.perSample ? Float32Array.from({ length: N }, (_, i) => fr(0.02 + 0.01 * i)) : Float32Array.of(0.03);
      const x = activationData(c.x.reduce((a, b) => a * b, 1), 0.03, c.O, levels);
      const w = randomData(wshape, c.O + 1, 0.5);
      const wstep = weightSteps(c.O, 8, c.O + 2);
      const bias = c.bias ? randomData([c.O], c.O + 3) : null;
      const wl = weightLevelsRef(w, wstep, 8);
      const stepT = () => fromArray(astep, c.perSample ? [N] : []);
      const qopts = { bits: c.bits, signed: c.signed, zeroPoint: c.zeroPoint };
      let expected: Float32Array | null = null;
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          const xq = quantizeActivation(fromArray(x, c.x), stepT(), qopts);
          const pk = packQWeight(fromArray(w, wshape), fromArray(wstep, [c.O]), 8);
          const y = await f32(qconv2d(xq, stepT(), pk, bias ? fromArray(bias, [c.O]) : null, { stride: c.stride, padding: c.padding, zeroPoint: c.zeroPoint }));
          expected ??= qconvRef(c, await xq.data(), wl, astep, wstep, bias);
          assert.equal(y.length, expected.length);
          for (let i = 0; i < y.length; ++i) assert.equal(y[i], expected[i], `${level}: element ${i}`);
          if (!c.zeroPoint) {
            // fake-quant execution: the same levels, dequantized, through the float conv
            const gran = c.perSample ? 'sample' : 'tensor';
            const fx = fakeQuantize(fromArray(x, c.x), stepT(), { bits: c.bits, signed: c.signed, granularity: gran });
            const fw = fakeQuantize(fromArray(w, wshape), fromArray(wstep, [c.O]), { bits: 8, signed: true, granularity: 'channel' });
            const yf = await f32(conv2d(fx, fw, bias ? fromArray(bias, [c.O]) : null, { stride: c.stride, padding: c.padding }));
            assertClose(y, yf, RTOL_VS_FAKEQUANT, `${level}: vs fake-quant conv`);
          }
        });
      }
    });
  }

  it('random shapes (seeded): bit for bit vs the integer reference and to 1e-6 vs fake-quant conv, every CPU level', async () => {
    const g = new Generator(2024);
    let done = 0;
    while (done < 16) {
      const k = [1, 3, 3, 2][g.randint(4)], stride = 1 + g.randint(2), padding = g.randint(3);
      const c: ConvCase = {
        name: 'random', x: [1 + g.randint(4), 1 + g.randint(20), 1 + g.randint(13), 1 + g.randint(13)],
        O: 1 + g.randint(40), k, stride, padding, signed: g.randint(2) === 1, bits: [8, 8, 6, 4][g.randint(4)],
        perSample: g.randint(2) === 1, bias: g.randint(2) === 1,
      };
      if (c.x[2] + 2 * padding < k || c.x[3] + 2 * padding < k) continue;
      if (!c.signed && g.randint(2)) c.zeroPoint = g.randint(2 ** c.bits);
      ++done;
      const [N, C] = c.x;
      const wshape = [c.O, C, k, k];
      const levels = c.signed ? 2 ** (c.bits - 1) : 2 ** c.bits;
      const astep = c.perSample ? Float32Array.from({ length: N }, (_, i) => fr(0.02 + 0.01 * i)) : Float32Array.of(0.03);
      const x = activationData(c.x.reduce((a, b) => a * b, 1), 0.03, done, levels);
      const w = randomData(wshape, done + 100, 0.5);
      const wbits = [8, 4][g.randint(2)];
      const wstep = weightSteps(c.O, wbits, done + 200);
      const bias = c.bias ? randomData([c.O], done + 300) : null;
      const wl = weightLevelsRef(w, wstep, wbits);
      const stepT = () => fromArray(astep, c.perSample ? [N] : []);
      const what = `x ${c.x.join('x')} O ${c.O} k ${k} s ${stride} p ${padding} ${c.signed ? 'int8' : `uint8 zp ${c.zeroPoint ?? 0}`} a${c.bits} w${wbits}`;
      let expected: Float32Array | null = null;
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          const xq = quantizeActivation(fromArray(x, c.x), stepT(), { bits: c.bits, signed: c.signed, zeroPoint: c.zeroPoint });
          const pk = packQWeight(fromArray(w, wshape), fromArray(wstep, [c.O]), wbits);
          const y = await f32(qconv2d(xq, stepT(), pk, bias ? fromArray(bias, [c.O]) : null, { stride, padding, zeroPoint: c.zeroPoint }));
          expected ??= qconvRef(c, await xq.data(), wl, astep, wstep, bias);
          for (let i = 0; i < y.length; ++i) if (y[i] !== expected[i]) assert.fail(`${what} ${level}: element ${i} ${y[i]} != ${expected[i]}`);
          if (!c.zeroPoint) {
            const fx = fakeQuantize(fromArray(x, c.x), stepT(), { bits: c.bits, signed: c.signed, granularity: c.perSample ? 'sample' : 'tensor' });
            const fw = fakeQuantize(fromArray(w, wshape), fromArray(wstep, [c.O]), { bits: wbits, signed: true, granularity: 'channel' });
            const yf = await f32(conv2d(fx, fw, bias ? fromArray(bias, [c.O]) : null, { stride, padding }));
            assertClose(y, yf, RTOL_VS_FAKEQUANT, `${what} ${level}: vs fake-quant conv`);
          }
        });
      }
    }
  });

  it('an empty batch gives an empty output', async () => {
    const pk = packQWeight(fromArray(randomData([4, 2, 3, 3], 1), [4, 2, 3, 3]), fromArray([1, 1, 1, 1], [4]), 8);
    const y = qconv2d(fromArray(new Uint8Array(0), [0, 2, 5, 5], 'uint8'), fromArray([0.1], []), pk, null, { padding: 1 });
    assert.deepEqual([...y.shape], [0, 4, 5, 5]);
    assert.equal((await y.data()).length, 0);
  });

  it('UNet-like 128ch 16x16 batch 4: all CPU levels agree bit for bit, and match fake-quant conv', async () => {
    const shape = [4, 128, 16, 16], wshape = [128, 128, 3, 3];
    const x = randomData(shape, 5, 1);
    const w = randomData(wshape, 6, 0.05);
    const wstep = weightSteps(128, 8, 7).map((s) => s * 0.05);
    const astep = fromArray([0.025], [1]);
    let first: Float32Array | null = null;
    for (const level of cpuLevels()) {
      await atLevel(level, async () => {
        const xq = quantizeActivation(fromArray(x, shape), astep, { bits: 8, signed: true });
        const y = await f32(qconv2d(xq, astep, packQWeight(fromArray(w, wshape), fromArray(wstep, [128]), 8), null, { padding: 1 }));
        if (!first) {
          first = y;
          const fx = fakeQuantize(fromArray(x, shape), astep, { bits: 8, signed: true, granularity: 'tensor' });
          const fw = fakeQuantize(fromArray(w, wshape), fromArray(wstep, [128]), { bits: 8, signed: true, granularity: 'channel' });
          assertClose(y, await f32(conv2d(fx, fw, null, { padding: 1 })), RTOL_VS_FAKEQUANT, 'vs fake-quant conv');
        } else {
          for (let i = 0; i < y.length; ++i) if (y[i] !== first[i]) assert.fail(`${level}: element ${i} ${y[i]} != scalar ${first[i]}`);
        }
      });
    }
  });

  it('batch 1 with fewer panels than threads (rows split over the threads): bit for bit vs the integer reference, every level and thread count', async () => {
    // 4x4 and 2x2 maps of one sample are one panel of 16 or 4 columns: the
    // GEMM splits the 200 output rows into blocks, each task packing its panel.
    const cases: ConvCase[] = [
      { name: 'b1 4x4', x: [1, 40, 4, 4], O: 200, k: 3, stride: 1, padding: 1, signed: false, bits: 8, zeroPoint: 3, bias: true },
      { name: 'b1 2x2', x: [1, 36, 2, 2], O: 130, k: 3, stride: 1, padding: 1, signed: true, bits: 8 },
      { name: 'b1 8x8 stride 2', x: [1, 24, 8, 8], O: 72, k: 3, stride: 2, padding: 1, signed: true, bits: 8, bias: true },
    ];
    const prev = native().info().threads as number;
    try {
      for (const c of cases) {
        const [N, C] = c.x;
        const wshape = [c.O, C, c.k, c.k];
        const levels = c.signed ? 2 ** (c.bits - 1) : 2 ** c.bits;
        const astep = Float32Array.of(0.03);
        const x = activationData(c.x.reduce((a, b) => a * b, 1), 0.03, c.O, levels);
        const w = randomData(wshape, c.O + 1, 0.5);
        const wstep = weightSteps(c.O, 8, c.O + 2);
        const bias = c.bias ? randomData([c.O], c.O + 3) : null;
        const wl = weightLevelsRef(w, wstep, 8);
        let expected: Float32Array | null = null;
        for (const threads of [1, 2, 3]) {
          native().setThreads(threads);
          for (const level of cpuLevels()) {
            await atLevel(level, async () => {
              const xq = quantizeActivation(fromArray(x, c.x), fromArray(astep, []), { bits: c.bits, signed: c.signed, zeroPoint: c.zeroPoint });
              const pk = packQWeight(fromArray(w, wshape), fromArray(wstep, [c.O]), 8);
              const y = await f32(qconv2d(xq, fromArray(astep, []), pk, bias ? fromArray(bias, [c.O]) : null, { stride: c.stride, padding: c.padding, zeroPoint: c.zeroPoint }));
              expected ??= qconvRef(c, await xq.data(), wl, astep, wstep, bias);
              assert.equal(y.length, expected.length);
              for (let i = 0; i < y.length; ++i) if (y[i] !== expected[i]) assert.fail(`${c.name} ${threads} threads ${level}: element ${i} ${y[i]} != ${expected[i]}`);
            });
          }
        }
        void N;
      }
    } finally {
      native().setThreads(prev);
    }
  });

  it('rejects bad arguments with typed errors naming them', () => {
    const pk = packQWeight(fromArray(randomData([4, 2, 3, 3], 1), [4, 2, 3, 3]), fromArray([1, 1, 1, 1], [4]), 8);
    const xq = fromArray(new Uint8Array(2 * 2 * 5 * 5), [2, 2, 5, 5], 'uint8');
    const s = fromArray([0.1], [1]);
    assert.throws(() => qconv2d(fromArray(randomData([2, 2, 5, 5], 1), [2, 2, 5, 5]), s, pk, null), (e: Error) => e instanceof TypeError && /float32 x needs opts.act/.test(e.message));
    assert.throws(() => qconv2d(fromArray(new Int32Array(100), [2, 2, 5, 5], 'int32'), s, pk, null), (e: Error) => e instanceof TypeError && /'x' must be uint8 or int8 .* or float32/.test(e.message));
    // channels are padded to 4 in the packed rows: the channel count is checked against the weight shape
    assert.throws(() => qconv2d(fromArray(new Uint8Array(2 * 3 * 25), [2, 3, 5, 5], 'uint8'), s, pk, null), (e: Error) => e instanceof RangeError && /expects 2 input channels/.test(e.message));
    assert.throws(() => qconv2d(xq, s, { ...pk, shape: [4, 2, 1, 1] }, null), (e: Error) => e instanceof RangeError && /'packed'/.test(e.message));
    assert.throws(() => qlinear(fromArray(new Uint8Array(10), [2, 5], 'uint8'), s, packQWeight(fromArray(randomData([3, 9], 1), [3, 9]), fromArray([1, 1, 1], [3]), 8), null), (e: Error) => e instanceof RangeError && /expects 9 input features/.test(e.message));
    assert.throws(() => qlinear(fromArray(new Uint8Array(12), [2, 6], 'uint8'), s, packQWeight(fromArray(randomData([3, 5], 1), [3, 5]), fromArray([1, 1, 1], [3]), 8), null), (e: Error) => e instanceof RangeError && /expects 5 input features/.test(e.message));
    assert.throws(() => qconv2d(xq, fromArray([1, 1, 1], [3]), pk, null), (e: Error) => e instanceof RangeError && /act_step/.test(e.message));
    assert.throws(() => qconv2d(xq, s, pk, fromArray([1, 2], [2])), (e: Error) => e instanceof RangeError && /bias/.test(e.message));
    assert.throws(() => qconv2d(fromArray(new Int8Array(100), [2, 2, 5, 5], 'int8'), s, pk, null, { zeroPoint: 4 }), (e: Error) => e instanceof RangeError && /zero_point/.test(e.message));
    assert.throws(() => qconv2d(xq, s, pk, null, { stride: 0 }), (e: Error) => e instanceof RangeError && /stride/.test(e.message));
    assert.throws(() => qconv2d(fromArray(new Uint8Array(8), [2, 2, 1, 2], 'uint8'), s, pk, null), (e: Error) => e instanceof RangeError && /larger than the padded input/.test(e.message));
  });
});

describe('qlinear', () => {
  it('equals the integer reference bit for bit (int8 and uint8 with zero point, per-sample steps, K % 4 != 0) at every level', async () => {
    for (const [signed, zp, K, rows] of [[true, 0, 70, 5], [false, 11, 33, 77]] as [boolean, number, number, number][]) {
      const O = 19;
      const xshape = [rows, K];
      const x = activationData(rows * K, 0.04, K, signed ? 128 : 256);
      const w = randomData([O, K], K + 1);
      const wstep = weightSteps(O, 8, K + 2);
      const bias = randomData([O], K + 3);
      const astep = Float32Array.from({ length: rows }, (_, i) => fr(0.03 + 0.002 * i));
      const wl = weightLevelsRef(w, wstep, 8);
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          const st = fromArray(astep, [rows]);
          const xq = quantizeActivation(fromArray(x, xshape), st, { bits: 8, signed, zeroPoint: zp });
          const xv = await xq.data();
          const pk = packQWeight(fromArray(w, [O, K]), fromArray(wstep, [O]), 8);
          const y = await f32(qlinear(xq, st, pk, fromArray(bias, [O]), { zeroPoint: zp }));
          const y0 = await f32(qlinear(xq, st, pk, null, { zeroPoint: zp }));
          for (let r = 0; r < rows; ++r)
            for (let o = 0; o < O; ++o) {
              let acc = 0;
              for (let k = 0; k < K; ++k) acc += (xv[r * K + k] - zp) * wl[o * K + k];
              const prod = fr(fr(acc) * fr(astep[r] * wstep[o]));
              assert.equal(y[r * O + o], fr(prod + bias[o]), `${level} signed ${signed}: [${r}, ${o}]`);
              assert.equal(y0[r * O + o], prod + 0, `${level} signed ${signed}, no bias: [${r}, ${o}]`);
            }
        });
      }
    }
  });
});

describe('cpu features', () => {
  it('reports VNNI and AMX-INT8 as booleans', () => {
    const f = native().info().cpuFeatures as Record<string, unknown>;
    assert.equal(typeof f.avx512vnni, 'boolean');
    assert.equal(typeof f.amxInt8, 'boolean');
  });
  it('names the int8 kernel of each level (VNNI where the CPU has it, else AVX2 at avx512)', () => {
    for (const level of cpuLevels()) {
      const want = level === 'scalar' ? 'scalar' : level === 'avx2' ? 'avx2' : native().info().cpuFeatures.avx512vnni ? 'avx512-vnni' : 'avx2';
      assert.equal(atLevel(level, () => native().info().int8Kernel), want);
    }
  });
});
