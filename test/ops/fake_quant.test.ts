import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { backward } from '../../src/tensor/autograd';
import { native } from '../../src/tensor/native';
import { type FakeQuantizeOptions, fakeQuantize } from '../../src/tensor/ops/quant';
import { Generator } from '../../src/tensor/random';
import { fromArray, runOp, runOp1, sync, type Tensor } from '../../src/tensor/tensor';
import { assertClose, maxAbsError, randomData, relError } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';
import { cpuLevels, atLevel } from '../helpers/cpu_levels';

const skip = torchUnavailable();
// Forward: bit-exact against PyTorch's float32 x / s, torch.round, clamp, * s.
const EXACT = 0;
// dx is gy or 0, and y = r * s one rounding of an exact product: both exact
// against the float64 oracle on boundary-safe data ((gy * s) / s is exact in float64).
const RTOL_DX = 0;
// dstep: float32 products summed in double vs float64 (measured 2.3e-7).
const RTOL_DS = 2e-6;

const f32 = async (t: Tensor) => (await t.data()) as Float32Array;



function levelsOf(bits: number, signed: boolean): [number, number] {
  return signed ? [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] : [0, 2 ** bits - 1];
}

interface Case {
  name: string;
  shape: number[];
  granularity: FakeQuantizeOptions['granularity'];
  axis?: number;
  stepShape?: number[]; // for 'tensor'
}

const CASES: Case[] = [
  { name: 'tensor []', shape: [3, 5, 7, 9], granularity: 'tensor', stepShape: [] },
  { name: 'tensor [1], several blocks', shape: [8, 3001], granularity: 'tensor', stepShape: [1] },
  { name: 'channel, weights axis 0', shape: [6, 4, 3, 3], granularity: 'channel' },
  { name: 'channel, activations axis 1', shape: [2, 5, 6, 7], granularity: 'channel', axis: 1 },
  { name: 'channel, axis -1', shape: [3, 4, 21], granularity: 'channel', axis: -1 },
  { name: 'sample', shape: [4, 3, 6, 5], granularity: 'sample' },
  { name: 'sample, several blocks', shape: [3, 4, 40, 40], granularity: 'sample' },
];

function stepShape(c: Case): number[] {
  if (c.granularity === 'tensor') return c.stepShape ?? [];
  const nd = c.shape.length;
  return [c.shape[((c.axis ?? 0) + nd) % nd]];
}

/** Index of the step used by each element of x. */
function stepIndex(c: Case): (i: number) => number {
  if (c.granularity === 'tensor') return () => 0;
  const nd = c.shape.length, axis = ((c.axis ?? 0) + nd) % nd;
  const inner = c.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  return (i) => Math.floor(i / inner) % c.shape[axis];
}

/** Steps that clamp a few percent of N(0, 1) data, varied per step. */
function makeSteps(c: Case, bits: number, signed: boolean, seed: number): Float32Array {
  const [, qmax] = levelsOf(bits, signed);
  const g = new Generator(seed);
  const n = stepShape(c).reduce((a, b) => a * b, 1);
  return Float32Array.from({ length: n }, () => (1.8 / qmax) * (0.6 + 0.8 * g.randint(1000) / 1000));
}

/**
 * x = s * (k + u) with k an integer from qmin - 2 to qmax + 2 and 0.05 <= |u| <= 0.45:
 * every x / s is at least 0.05 from a rounding tie and from the clamp limits,
 * so float32 and float64 make the same decisions and small steps in s or x
 * cross no boundary.
 */
function boundarySafe(c: Case, steps: Float32Array, bits: number, signed: boolean, seed: number): Float32Array {
  const [qmin, qmax] = levelsOf(bits, signed);
  const g = new Generator(seed);
  const idx = stepIndex(c);
  const n = c.shape.reduce((a, b) => a * b, 1);
  return Float32Array.from({ length: n }, (_, i) => {
    const k = qmin - 2 + g.randint(qmax - qmin + 5);
    const u = (g.randint(2) ? 1 : -1) * (0.05 + 0.4 * (g.randint(1 << 20) / (1 << 20)));
    return steps[idx(i)] * (k + u);
  });
}

function opts(c: Case, bits: number, signed: boolean, gradScale?: number): FakeQuantizeOptions {
  return { bits, signed, granularity: c.granularity, axis: c.axis, gradScale };
}

function oracleAttrs(c: Case, bits: number, signed: boolean, gradScale?: number) {
  return { bits, signed, granularity: c.granularity, ...(c.axis !== undefined ? { axis: c.axis } : {}), ...(gradScale ? { grad_scale: gradScale } : {}) };
}

describe('fakeQuantize against PyTorch', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  for (const c of CASES) {
    it(`forward (${c.name}) equals torch's float32 formula bit for bit, bits 2/4/8, signed/unsigned, every CPU level`, async () => {
      for (const bits of [2, 4, 8]) {
        for (const signed of [true, false]) {
          const x = randomData(c.shape, 100 + bits);
          const s = makeSteps(c, bits, signed, bits);
          const ref = await oracle.call('fake_quant', { x: { shape: c.shape, data: x }, step: { shape: stepShape(c), data: s } },
            { ...oracleAttrs(c, bits, signed), _float32: true });
          for (const level of cpuLevels()) {
            const y = await atLevel(level, () => f32(fakeQuantize(fromArray(x, c.shape), fromArray(s, stepShape(c)), opts(c, bits, signed))));
            const err = maxAbsError(y, ref.outputs[0].data);
            assert.equal(err, EXACT, `${level} bits ${bits} ${signed ? 'signed' : 'unsigned'}: max abs error ${err}`);
          }
        }
      }
    });

    it(`backward (${c.name}) equals autograd of the LSQ formulation, bits 2/4/8, signed/unsigned, every CPU level`, async () => {
      for (const bits of [2, 4, 8]) {
        for (const signed of [true, false]) {
          for (const gradScale of [undefined, 0.5]) {
            const s = makeSteps(c, bits, signed, bits + 10);
            const x = boundarySafe(c, s, bits, signed, bits + 20);
            const gy = randomData(c.shape, bits + 30);
            const ref = await oracle.call('fake_quant_lsq', { x: { shape: c.shape, data: x }, step: { shape: stepShape(c), data: s } },
              oracleAttrs(c, bits, signed, gradScale), { wrt: ['x', 'step'], gradOutputs: [{ shape: c.shape, data: gy }] });
            for (const level of cpuLevels()) {
              const what = `${level} bits ${bits} ${signed ? 'signed' : 'unsigned'} gradScale ${gradScale ?? 'LSQ'}`;
              await atLevel(level, async () => {
                const xt = fromArray(x, c.shape), st = fromArray(s, stepShape(c));
                xt.requiresGrad = st.requiresGrad = true;
                const y = fakeQuantize(xt, st, opts(c, bits, signed, gradScale));
                backward(y, fromArray(gy, c.shape));
                assertClose(await f32(y), ref.outputs[0].data, RTOL_DX, `${what}: forward`);
                assertClose(await f32(xt.grad!), ref.grads.x.data, RTOL_DX, `${what}: dx`);
                assertClose(await f32(st.grad!), ref.grads.step.data, RTOL_DS, `${what}: dstep`);
              });
            }
          }
        }
      }
    });
  }

  it('ties round half to even and values on the clamp limits count as inside', async () => {
    // bits 2 signed: qmin = -2, qmax = 1; s = 0.5, so x / s = the list below.
    const v = [1, -2, 1.2, -2.4, 0.4, 0.5, -0.5, 1.5, -1.5];
    const x = Float32Array.from(v, (t) => t * 0.5);
    const gy = new Float32Array(v.length).fill(1);
    const o = { bits: 2, signed: true, granularity: 'tensor' as const };
    const ref = await oracle.call('fake_quant_lsq', { x: { shape: [9], data: x }, step: { shape: [1], data: Float32Array.of(0.5) } }, o,
      { wrt: ['x', 'step'], gradOutputs: [{ shape: [9], data: gy }] });
    for (const level of cpuLevels()) {
      await atLevel(level, async () => {
        const xt = fromArray(x, [9]), st = fromArray([0.5], [1]);
        xt.requiresGrad = st.requiresGrad = true;
        const y = fakeQuantize(xt, st, o);
        backward(y, fromArray(gy, [9]));
        assert.deepEqual(Array.from(await f32(y)), [0.5, -1, 0.5, -1, 0, 0, -0, 0.5, -1], level);
        assert.deepEqual(Array.from(await f32(xt.grad!)), [1, 1, 0, 0, 1, 1, 1, 0, 1], level);
        // t = round(v) - v inside, qmin / qmax outside: 0+0+1-2-0.4-0.5+0.5+1-0.5 = -0.9;
        // LSQ scale 1/sqrt(9 * 1) = 1/3.
        assertClose(await f32(st.grad!), [-0.3], 1e-6, `${level} dstep`);
        assertClose(await f32(st.grad!), ref.grads.step.data, 1e-6, `${level} dstep vs torch`);
      });
    }
    const wide = await f32(fakeQuantize(fromArray([2.5, 3.5, -2.5, -3.5, 0.5, -7.5, 7.5], [7]), fromArray([1], []), { bits: 4, signed: true, granularity: 'tensor' }));
    assert.deepEqual(Array.from(wide), [2, 4, -2, -4, 0, -8, 7]);
  });
});

describe('fakeQuantize gradients by finite differences', () => {
  const fdCases: [Case, number, boolean][] = [
    [{ name: 'tensor', shape: [40, 10], granularity: 'tensor', stepShape: [1] }, 4, true],
    [{ name: 'channel', shape: [3, 50], granularity: 'channel' }, 3, false],
    [{ name: 'sample', shape: [2, 3, 5, 5], granularity: 'sample' }, 2, true],
  ];
  for (const [c, bits, signed] of fdCases) {
    it(`dstep (${c.name}, ${bits} bits ${signed ? 'signed' : 'unsigned'}) matches central differences`, async () => {
      const s = makeSteps(c, bits, signed, 1);
      const x = boundarySafe(c, s, bits, signed, 2);
      const gy = randomData(c.shape, 3);
      const o = opts(c, bits, signed, 1); // gradScale 1: the plain derivative
      const xt = fromArray(x, c.shape), st = fromArray(s, stepShape(c));
      st.requiresGrad = true;
      backward(fakeQuantize(xt, st, o), fromArray(gy, c.shape));
      const ds = await f32(st.grad!);
      const [qmin, qmax] = levelsOf(bits, signed);
      const idx = stepIndex(c);
      const inside = Array.from(x, (xv, i) => xv / s[idx(i)] >= qmin && xv / s[idx(i)] <= qmax);
      // Between rounding boundaries y = round(x / s) * s is linear in s, so the
      // central difference of sum(gy * y) is sum(gy * round(x / s)) (clamped
      // elements: qmin or qmax). LSQ's straight-through estimator differentiates
      // round as the identity, which adds d(x / s)/ds * s = -x / s for elements
      // inside the range: the derivative of the frozen-rounding surrogate
      //   y~(s) = y(s) + [inside] * x * (1 - s / s0),
      // equal to y at s0 and making the same rounding decisions near it.
      const vmax = Math.max(-qmin, qmax) + 2.5;
      const sums = async (steps: Float32Array, a: number) => {
        const y = await f32(fakeQuantize(xt, fromArray(steps, stepShape(c)), o));
        let plain = 0, surrogate = 0;
        for (let i = 0; i < y.length; ++i) {
          plain += gy[i] * y[i];
          surrogate += gy[i] * (y[i] + (inside[i] && idx(i) === a ? x[i] * (1 - steps[a] / s[a]) : 0));
        }
        return [plain, surrogate];
      };
      const fdPlain = new Float64Array(s.length), fdLsq = new Float64Array(s.length), rounded = new Float64Array(s.length);
      for (let a = 0; a < s.length; ++a) {
        // |x / s| < vmax, so a relative change of 0.02 / vmax moves x / s by
        // under 0.02, less than its 0.05 distance to any boundary.
        const h = (0.02 / vmax) * s[a];
        const plus = s.slice(), minus = s.slice();
        plus[a] = s[a] + h;
        minus[a] = s[a] - h;
        const [p1, q1] = await sums(plus, a), [p0, q0] = await sums(minus, a);
        fdPlain[a] = (p1 - p0) / (plus[a] - minus[a]);
        fdLsq[a] = (q1 - q0) / (plus[a] - minus[a]);
      }
      x.forEach((xv, i) => {
        const v = xv / s[idx(i)];
        rounded[idx(i)] += gy[i] * Math.min(Math.max(Math.round(v), qmin), qmax); // no ties: |v - k| >= 0.05
      });
      // 1e-4: y is float32, and its rounding (6e-8 relative) is divided by 2h / s ~ 1e-3 (measured <= 1.3e-5).
      assertClose(fdPlain, rounded, 1e-4, 'central difference of sum(gy * y) vs sum(gy * clamp(round(x / s)))');
      assertClose(ds, fdLsq, 1e-4, 'dstep vs central difference of the straight-through surrogate');
    });
  }

  it('dx (STE) is the central difference of clamp(x / s, qmin, qmax) * s: gy inside, 0 outside', async () => {
    const c: Case = { name: 'channel', shape: [4, 64], granularity: 'channel' };
    for (const [bits, signed] of [[2, true], [4, false], [8, true]] as [number, boolean][]) {
      const s = makeSteps(c, bits, signed, 4);
      const x = boundarySafe(c, s, bits, signed, 5);
      const gy = randomData(c.shape, 6);
      const [qmin, qmax] = levelsOf(bits, signed);
      const idx = stepIndex(c);
      const surrogate = (xv: number, sv: number) => Math.min(Math.max(xv / sv, qmin), qmax) * sv;
      const want = Float64Array.from(x, (xv, i) => {
        const sv = s[idx(i)], h = 0.01 * sv; // x / s moves by 0.01 < 0.05
        return (gy[i] * (surrogate(xv + h, sv) - surrogate(xv - h, sv))) / (2 * h);
      });
      for (const level of cpuLevels()) {
        await atLevel(level, async () => {
          const xt = fromArray(x, c.shape);
          xt.requiresGrad = true;
          backward(fakeQuantize(xt, fromArray(s, [4]), opts(c, bits, signed)), fromArray(gy, c.shape));
          const dx = await f32(xt.grad!);
          assertClose(dx, want, 1e-9, `${level} bits ${bits}: dx`);
          const outside = want.filter((v) => v === 0).length;
          assert.ok(outside > 0 && outside < want.length, `bits ${bits}: both inside and outside elements (${outside} outside)`);
        });
      }
    }
  });
});

describe('fakeQuantize: autograd wiring, determinism, errors', () => {
  it('gradients reach x and step with their shapes; a step-only graph leaves x alone', async () => {
    const x = fromArray(randomData([2, 3, 4], 1), [2, 3, 4]);
    const s = fromArray([0.3, 0.2], [2]);
    x.requiresGrad = s.requiresGrad = true;
    backward(fakeQuantize(x, s, { bits: 4, signed: true, granularity: 'sample' }), fromArray(new Float32Array(24).fill(1), [2, 3, 4]));
    assert.deepEqual([...x.grad!.shape], [2, 3, 4]);
    assert.deepEqual([...s.grad!.shape], [2]);
    const w = fromArray(randomData([3, 2], 2), [3, 2]);
    const sw = fromArray([0.1], []);
    sw.requiresGrad = true;
    backward(fakeQuantize(w, sw, { bits: 8, signed: true, granularity: 'tensor' }), fromArray(new Float32Array(6).fill(1), [3, 2]));
    assert.equal(w.grad, null);
    assert.deepEqual([...sw.grad!.shape], []);
  });

  it('dstep does not depend on the thread count', async () => {
    const shape = [4, 50000];
    const x = fromArray(randomData(shape, 7), shape), gy = fromArray(randomData(shape, 8), shape);
    const b = native();
    const threads = b.info().threads;
    const got: Float32Array[] = [];
    try {
      for (const t of [1, 2, 3]) {
        b.setThreads(t);
        for (const [granularity, step] of [['tensor', fromArray([0.05], [1])], ['sample', fromArray([0.05, 0.04, 0.03, 0.06], [4])]] as const) {
          const [, ds] = runOp('fake_quant_backward', [gy, x, step], { bits: 6, signed: true, granularity });
          got.push(await f32(ds));
        }
      }
    } finally {
      b.setThreads(threads);
    }
    assert.deepEqual(got[2], got[0]);
    assert.deepEqual(got[4], got[0]);
    assert.deepEqual(got[3], got[1]);
    assert.deepEqual(got[5], got[1]);
  });

  it('a step that is not positive rejects data() naming the quantizer step, and the engine carries on', async () => {
    const x = fromArray([1, 2, 3, 4, 5, 6], [3, 2]);
    const o = { bits: 4, signed: true, granularity: 'tensor' as const };
    await assert.rejects(fakeQuantize(x, fromArray([0], [1]), o).data(), /fake_quant_forward: quantizer step 'step' = 0 must be positive/);
    const ch = fakeQuantize(x, fromArray([0.5, -2, 1], [3]), { ...o, granularity: 'channel' });
    await assert.rejects(ch.data(), /quantizer step 'step'\[1\] = -2 must be positive and finite \(granularity 'channel'\)/);
    const nan = fakeQuantize(x, fromArray([NaN], [1]), o);
    await sync(); // an op's error belongs to its outputs: sync() resolves
    await assert.rejects(nan.data(), /quantizer step 'step' = nan/);
    const [dx] = runOp('fake_quant_backward', [x, x, fromArray([-1], [])], o);
    await assert.rejects(dx.data(), /fake_quant_backward: quantizer step 'step' = -1/);
    const ok = await f32(fakeQuantize(x, fromArray([1], [1]), o));
    assert.deepEqual(Array.from(ok), [1, 2, 3, 4, 5, 6]);
  });

  it('bad inputs throw the right error class naming the argument', () => {
    const x = fromArray(randomData([2, 3], 1), [2, 3]);
    const s1 = fromArray([0.1], [1]);
    const o: FakeQuantizeOptions = { bits: 4, signed: true, granularity: 'tensor' };
    const throwsWith = (fn: () => unknown, cls: typeof TypeError | typeof RangeError, re: RegExp) =>
      assert.throws(fn, (e: Error) => e instanceof cls && re.test(e.message), `${cls.name} matching ${re}`);
    throwsWith(() => fakeQuantize(x, s1, { ...o, bits: 1 }), RangeError, /'bits' must be an integer from 2 to 8, got 1/);
    throwsWith(() => fakeQuantize(x, s1, { ...o, bits: 9 }), RangeError, /'bits'.*got 9/);
    throwsWith(() => fakeQuantize(x, s1, { ...o, bits: 4.5 }), TypeError, /'bits' must be an integer/);
    throwsWith(() => fakeQuantize(x, s1, { bits: 4, granularity: 'tensor' } as FakeQuantizeOptions), TypeError, /'signed'/);
    throwsWith(() => fakeQuantize(x, s1, { ...o, granularity: 'row' as 'tensor' }), RangeError, /'granularity' must be 'tensor', 'channel' or 'sample', got 'row'/);
    throwsWith(() => fakeQuantize(x, fromArray([1, 1], [2]), o), RangeError, /'step' must have shape \[\] or \[1\] for granularity 'tensor', got \[2\]/);
    throwsWith(() => fakeQuantize(x, s1, { ...o, granularity: 'channel' }), RangeError, /'step' must have shape \[2\].*got \[1\]/);
    throwsWith(() => fakeQuantize(x, fromArray([1, 1], [2]), { ...o, granularity: 'channel', axis: 1 }), RangeError, /'step' must have shape \[3\].*axis 1/);
    throwsWith(() => fakeQuantize(x, fromArray([1, 1, 1, 1], [2, 2]), { ...o, granularity: 'sample' }), RangeError, /'step' must have shape \[2\].*'sample'.*got \[2, 2\]/);
    throwsWith(() => fakeQuantize(x, s1, { ...o, granularity: 'channel', axis: 2 }), RangeError, /'axis' = 2/);
    throwsWith(() => fakeQuantize(fromArray([1], [], 'float32'), s1, { ...o, granularity: 'sample' }), RangeError, /'x' must have at least 1 dimension/);
    throwsWith(() => fakeQuantize(fromArray([1, 2], [2], 'int32'), s1, o), TypeError, /'x' must be float32/);
    throwsWith(() => fakeQuantize(x, fromArray([1], [1], 'int32'), o), TypeError, /'step' must be float32/);
    throwsWith(() => fakeQuantize(x, s1, { ...o, gradScale: -1 }), RangeError, /'grad_scale' must be positive/);
    throwsWith(() => fakeQuantize(x, s1, null as unknown as FakeQuantizeOptions), TypeError, /'opts'/);
    throwsWith(() => runOp1('fake_quant_forward', [x], o as never), TypeError, /expected 2 inputs/);
    throwsWith(() => runOp('fake_quant_backward', [fromArray([1, 2], [2]), x, s1], { ...o }), RangeError, /'gy' must have shape \[2, 3\]/);
  });
});
