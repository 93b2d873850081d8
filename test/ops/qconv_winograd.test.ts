// qconv2d's exact integer Winograd F(2x2, 3x3) path (native/cpu/qconv2d_winograd.cpp)
// against the direct integer path (TDQ_QCONV_WINOGRAD=0: im2col + qgemm) and
// the plain int64 reference (TDQ_QCONV_WINOGRAD=ref), bit for bit: odd map
// sizes (partial 2x2 tiles), channel counts off multiples of 4/8/16/32,
// output channels off multiples of 32, zero points, int8 and uint8 levels,
// float32 x quantized in the op with a real zero point (border fix-up), the
// fused channel / residual adds, 1 to 3 threads, every CPU level. And the
// exactness bound: where 4 * 9 * C * 255 * 128 does not fit int32 the path
// falls back to the direct one (data that would overflow it otherwise).
// The direct path itself is checked against JS references in qconv.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { native } from '../../src/tensor/native';
import { type FusedActQuant, packQWeight, qconv2d, quantizeActivation } from '../../src/tensor/ops/qlinear';
import { fromArray, type Tensor } from '../../src/tensor/tensor';
import { randomData } from '../helpers/assert';
import { atLevel, cpuLevels } from '../helpers/cpu_levels';
import { SILU_MIN } from '../helpers/quant_ref';

const fr = Math.fround;
const f32 = async (t: Tensor) => (await t.data()) as Float32Array;

async function withMode<T>(mode: string, fn: () => Promise<T>): Promise<T> {
  const before = process.env.TDQ_QCONV_WINOGRAD;
  process.env.TDQ_QCONV_WINOGRAD = mode;
  try {
    return await fn();
  } finally {
    if (before === undefined) delete process.env.TDQ_QCONV_WINOGRAD;
    else process.env.TDQ_QCONV_WINOGRAD = before;
  }
}

interface Case {
  x: [number, number, number, number];
  O: number;
  padding: number;
  kind: 'uint8' | 'int8' | 'float';  // levels in, or float32 x quantized in the op
  zeroPoint: number;                  // uint8 levels' zero point
  z: number;                          // float32 x: real zero point (offset)
  bias: boolean;
  adds: boolean;                      // addChannel and residual
}

const CASES: Case[] = [
  { x: [1, 3, 5, 7], O: 5, padding: 1, kind: 'uint8', zeroPoint: 0, z: 0, bias: false, adds: false },
  { x: [2, 13, 9, 11], O: 33, padding: 1, kind: 'uint8', zeroPoint: 77, z: 0, bias: true, adds: false },
  { x: [3, 20, 7, 6], O: 40, padding: 0, kind: 'int8', zeroPoint: 0, z: 0, bias: true, adds: true },
  { x: [1, 36, 16, 16], O: 70, padding: 1, kind: 'int8', zeroPoint: 0, z: 0, bias: true, adds: false },
  { x: [2, 17, 3, 3], O: 9, padding: 2, kind: 'uint8', zeroPoint: 255, z: 0, bias: false, adds: true },
  { x: [4, 24, 8, 8], O: 64, padding: 1, kind: 'float', zeroPoint: 0, z: SILU_MIN, bias: true, adds: true },
  { x: [1, 50, 13, 15], O: 31, padding: 1, kind: 'float', zeroPoint: 0, z: 0, bias: false, adds: true },
  { x: [9, 8, 4, 4], O: 32, padding: 1, kind: 'float', zeroPoint: 0, z: SILU_MIN, bias: true, adds: false },
];

describe('qconv2d integer Winograd F(2x2, 3x3)', () => {
  it('equals the direct integer path and the int64 reference bit for bit (odd sizes, partial tiles, odd channel counts, zero points, int8/uint8/float32 x, fused adds, 1-3 threads, every CPU level)', async () => {
    const prevThreads = native().info().threads as number;
    try {
      for (const [i, c] of CASES.entries()) {
        const [N, C, H, W] = c.x;
        const Ho = H + 2 * c.padding - 2, Wo = W + 2 * c.padding - 2;
        const wshape = [c.O, C, 3, 3];
        const w = randomData(wshape, 100 + i, 0.5);
        const wstep = Float32Array.from({ length: c.O }, (_, o) => fr(0.004 + 0.0003 * ((o * 37) % 11)));
        const bias = c.bias ? randomData([c.O], 200 + i) : null;
        const steps = Float32Array.from({ length: N }, (_, n) => fr(0.02 + n / 1000));
        const x = randomData(c.x, 300 + i, 3).map((v) => fr(Math.max(v, c.z)));
        const addc = randomData([N, c.O], 400 + i, 3), res = randomData([N, c.O, Ho, Wo], 500 + i, 3);
        const run = async (): Promise<Float32Array> => {
          const pk = packQWeight(fromArray(w, wshape), fromArray(wstep, [c.O]), 8);
          const st = fromArray(steps, [N]);
          const adds = c.adds ? { addChannel: fromArray(addc, [N, c.O]), residual: fromArray(res, [N, c.O, Ho, Wo]) } : {};
          const b = bias ? fromArray(bias, [c.O]) : null;
          if (c.kind === 'float') {
            const act: FusedActQuant = { bits: 8, signed: false, offset: c.z, stepFloor: 1e-8 };
            return f32(qconv2d(fromArray(x, c.x), st, pk, b, { padding: c.padding, act, ...adds }));
          }
          const xq = quantizeActivation(fromArray(x, c.x), st, { bits: 8, signed: c.kind === 'int8', zeroPoint: c.zeroPoint });
          return f32(qconv2d(xq, st, pk, b, { padding: c.padding, zeroPoint: c.zeroPoint, ...adds }));
        };
        let direct: Float32Array | null = null;
        for (const threads of [1, 2, 3]) {
          native().setThreads(threads);
          for (const level of cpuLevels()) {
            await atLevel(level, async () => {
              direct ??= await withMode('0', run);
              const ref = threads === 1 ? await withMode('ref', run) : null;
              const fast = await withMode('1', run);
              assert.equal(fast.length, N * c.O * Ho * Wo);
              for (let j = 0; j < fast.length; ++j) {
                if (fast[j] !== direct[j]) assert.fail(`case ${i} ${threads} threads ${level}: element ${j}: winograd ${fast[j]} != direct ${direct[j]}`);
                if (ref && ref[j] !== direct[j]) assert.fail(`case ${i} ${level}: element ${j}: reference ${ref[j]} != direct ${direct[j]}`);
              }
            });
          }
        }
        // not a copy of one value: the case exercises the arithmetic
        assert.ok(new Set(direct!).size > Math.min(10, direct!.length / 2), `case ${i}: degenerate output`);
      }
    } finally {
      native().setThreads(prevThreads);
    }
  });

  it('falls back to the direct path past the int32 bound (C = 2048, all levels 255 and weights 127: 4 * S would overflow)', async () => {
    const N = 1, C = 2048, H = 3, W = 3, O = 2;
    const wshape = [O, C, 3, 3];
    const w = new Float32Array(O * C * 9).fill(1);
    const wstep = Float32Array.of(fr(1 / 127), fr(1 / 127));
    const x = new Float32Array(N * C * H * W).fill(10);
    const st = () => fromArray([0.01], []);
    const run = async () => {
      const xq = quantizeActivation(fromArray(x, [N, C, H, W]), st(), { bits: 8, signed: false });
      const pk = packQWeight(fromArray(w, wshape), fromArray(wstep, [O]), 8);
      return f32(qconv2d(xq, st(), pk, null, { padding: 1 }));
    };
    for (const level of cpuLevels()) {
      await atLevel(level, async () => {
        const direct = await withMode('0', run);
        // the centre pixel sums 9 * 2048 * 255 * 127 (fits int32; 4x that does not)
        assert.equal(direct[4], fr(9 * 2048 * 255 * 127 * fr(fr(0.01) * fr(1 / 127))));
        const forced = await withMode('1', run);
        for (let j = 0; j < direct.length; ++j) assert.equal(forced[j], direct[j], `${level}: element ${j}`);
      });
    }
  });
});
