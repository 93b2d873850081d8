import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { levels } from '../../src/quant/config';
import { SILU_MIN, rangeForMin } from '../../src/quant/quantizer';
import { StatsCollector, activationMethod, denseLogSteps, minmaxStep, mulberry32, quantMse, searchStep, smoothSteps, smoothestPath, weightSteps } from '../../src/quant/step_search';
import { randomData } from '../helpers/assert';

const SIGNED = { signed: true, zeroPoint: 0 };
const UNSIGNED = { signed: false, zeroPoint: 0 };

/** The smallest MSE over a fine grid of steps: the reference the search must reach. */
function bruteForce(x: Float32Array, sMax: number, bits: number, range = SIGNED): { s: number; mse: number } {
  let best = { s: sMax, mse: Infinity };
  for (let i = 1; i <= 4000; ++i) {
    const s = (i / 4000) * sMax;
    const e = quantMse(x, s, bits, range);
    if (e < best.mse) best = { s, mse: e };
  }
  return best;
}

function extremes(x: ArrayLike<number>): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < x.length; ++i) {
    lo = Math.min(lo, x[i]);
    hi = Math.max(hi, x[i]);
  }
  return [lo, hi];
}

describe('range rule', () => {
  it('unsigned for non-negative data, SiLU zero point for SiLU outputs, signed otherwise', () => {
    assert.deepEqual(rangeForMin(0), { signed: false, zeroPoint: 0 });
    assert.deepEqual(rangeForMin(0.3), { signed: false, zeroPoint: 0 });
    assert.deepEqual(rangeForMin(-0.2), { signed: false, zeroPoint: SILU_MIN });
    assert.deepEqual(rangeForMin(Math.fround(SILU_MIN)), { signed: false, zeroPoint: SILU_MIN });
    assert.deepEqual(rangeForMin(-0.3), { signed: true, zeroPoint: 0 });
    // SiLU's minimum, numerically: x * sigmoid(x) at its stationary point.
    let m = 0;
    for (let x = -3; x < 0; x += 1e-5) m = Math.min(m, x / (1 + Math.exp(-x)));
    assert.ok(Math.abs(m - SILU_MIN) < 1e-9, `SiLU min ${m}`);
  });
});

describe('step search', () => {
  it('quantMse is the kernel formula: exact zero on grid points, half-even ties, clamping', () => {
    // 2 bits signed: levels -2..1 at step 0.5.
    assert.equal(quantMse(Float32Array.of(-1, -0.5, 0, 0.5), 0.5, 2, SIGNED), 0);
    // 0.25 / 0.5 = 0.5 ties to 0 (error 0.25); 1.0 clamps to 0.5 (error 0.5).
    assert.equal(quantMse(Float32Array.of(0.25), 0.5, 2, SIGNED), 0.0625);
    assert.equal(quantMse(Float32Array.of(1), 0.5, 2, SIGNED), 0.25);
    // unsigned with a zero point: x - z on levels 0..3.
    assert.equal(quantMse([SILU_MIN, SILU_MIN + 1.5], 0.5, 2, { signed: false, zeroPoint: SILU_MIN }), 0);
  });

  it('minmax covers both ends of the signed levels and the top of the unsigned ones', () => {
    const { qmin, qmax } = levels(4, true);
    assert.equal(minmaxStep(-1, 0.5, 4, SIGNED), 1 / -qmin);
    assert.equal(minmaxStep(-0.1, 2, 4, SIGNED), 2 / qmax);
    assert.equal(minmaxStep(0, 3, 4, UNSIGNED), 3 / 15);
    assert.ok(Math.abs(minmaxStep(SILU_MIN, 3, 4, { signed: false, zeroPoint: SILU_MIN }) - (3 - SILU_MIN) / 15) < 1e-15);
    assert.equal(minmaxStep(0, 0, 8, UNSIGNED), 1e-8, 'an all-zero input keeps a positive step');
  });

  for (const bits of [2, 4, 8]) {
    it(`MSE search reaches the brute-force optimum within 0.05% (Gaussian and heavy-tailed data, ${bits} bits)`, () => {
      const gauss = randomData([8192], 10 + bits);
      const rand = mulberry32(bits);
      // Student-t-like tails: a Gaussian divided by a random scale.
      const heavy = gauss.map((v) => v / Math.sqrt(0.2 + rand()));
      for (const [what, x] of [['gaussian', gauss], ['heavy', heavy]] as const) {
        const [lo, hi] = extremes(x);
        const s = searchStep(x, lo, hi, bits, SIGNED, { method: 'mse' });
        const ref = bruteForce(x, minmaxStep(lo, hi, bits, SIGNED), bits);
        const e = quantMse(x, s, bits, SIGNED);
        assert.ok(e <= ref.mse * 1.0005, `${what}: search mse ${e} vs brute force ${ref.mse} (steps ${s} / ${ref.s})`);
        // Clipping pays off at low bit-widths: the optimal step is below min-max.
        if (bits <= 4) assert.ok(s < 0.8 * minmaxStep(lo, hi, bits, SIGNED), `${what}: ${s}`);
      }
    });
  }

  it("'auto' is min-max at 8 bits and the percentile below; explicit methods pass through", () => {
    assert.equal(activationMethod('auto', 8), 'minmax');
    assert.equal(activationMethod('auto', 4), 'percentile');
    assert.equal(activationMethod('mse', 8), 'mse');
    const x = randomData([20000], 5);
    x[0] = 40; // one outlier: the 99.99th percentile of |x| stays far below it
    const [lo, hi] = extremes(x);
    for (const bits of [4, 8])
      assert.equal(searchStep(x, lo, hi, bits, SIGNED, { method: 'auto' }), searchStep(x, lo, hi, bits, SIGNED, { method: activationMethod('auto', bits) }));
    assert.notEqual(searchStep(x, lo, hi, 4, SIGNED, { method: 'auto' }), minmaxStep(lo, hi, 4, SIGNED));
    assert.equal(searchStep(x, lo, hi, 8, SIGNED, { method: 'auto' }), minmaxStep(lo, hi, 8, SIGNED));
  });

  it('percentile clips the given fraction of |x|', () => {
    const x = Float32Array.from({ length: 10001 }, (_, i) => i / 10000 - 0.5); // uniform on [-0.5, 0.5]
    const s = searchStep(x, -0.5, 0.5, 8, SIGNED, { method: 'percentile', percentile: 90 });
    assert.ok(Math.abs(s * 127 - 0.45) < 1e-4, `covers ${s * 127}`);
    assert.throws(() => searchStep(x, -0.5, 0.5, 8, SIGNED, { method: 'percentile', percentile: 0 }), /percentile/);
    assert.throws(() => searchStep(x, -0.5, 0.5, 8, SIGNED, { method: 'bogus' as 'mse' }), /unknown step method 'bogus'/);
  });

  it('weight steps are per output channel', () => {
    const w = Float32Array.from({ length: 3 * 50 }, (_, i) => Math.sin(i) * (1 + Math.floor(i / 50)));
    const s = weightSteps(w, 3, 8, 'minmax');
    for (let o = 0; o < 3; ++o) {
      const [lo, hi] = extremes(w.subarray(o * 50, (o + 1) * 50));
      assert.equal(s[o], Math.fround(Math.max(hi / 127, lo / -128)), `channel ${o}`);
    }
    const m = weightSteps(w, 3, 4, 'mse');
    assert.ok(m[2] > m[1] && m[1] > m[0], 'steps grow with the channel scale');
  });
});

describe('calibration statistics recover known per-timestep ranges', () => {
  // Synthetic activations: at timestep t, uniform on [-a(t), b(t)] with a and b
  // varying over 30x, as activation ranges of diffusion models do over t.
  const a = (t: number) => 0.05 + 1.5 * (t / 999) ** 2;
  const b = (t: number) => 0.1 + 3 * Math.exp(-t / 200);
  const ts = [1, 101, 201, 401, 601, 801, 999];

  function collect(): ReturnType<StatsCollector['result']> {
    const c = new StatsCollector(1024, 5);
    const rand = mulberry32(3);
    for (let batch = 0; batch < 4; ++batch)
      for (const t of ts) {
        const x = Float32Array.from({ length: 20000 }, () => -a(t) + (a(t) + b(t)) * rand());
        x[0] = -a(t); // the exact ends, so min/max are known
        x[1] = b(t);
        c.add('layer.act_quant', t, x);
      }
    return c.result();
  }

  it('min/max are exact per timestep and the subsample has batches x perObservation values', () => {
    const list = collect().get('layer.act_quant')!;
    assert.deepEqual(list.map((s) => s.t), ts);
    for (const s of list) {
      assert.equal(s.min, Math.fround(-a(s.t)));
      assert.equal(s.max, Math.fround(b(s.t)));
      assert.equal(s.count, 80000);
      assert.equal(s.sample.length, 4 * 1024);
    }
  });

  it('minmax steps follow max(a, b)/qmax; MSE steps follow the range with a constant ratio', () => {
    const list = collect().get('layer.act_quant')!;
    const ratios: number[] = [];
    for (const s of list) {
      const mm = searchStep(s.sample, s.min, s.max, 4, SIGNED, { method: 'minmax' });
      const want = Math.max(b(s.t) / 7, a(s.t) / 8);
      assert.ok(Math.abs(mm / want - 1) < 1e-6, `t ${s.t}: minmax ${mm} vs ${want}`);
      const mse = searchStep(s.sample, s.min, s.max, 8, SIGNED, { method: 'mse' });
      ratios.push(mse / searchStep(s.sample, s.min, s.max, 8, SIGNED, { method: 'minmax' }));
    }
    // Uniform data at 8 bits: clipping gains little, the MSE step stays near min-max.
    for (const r of ratios) assert.ok(r > 0.9 && r <= 1, `ratio ${r}`);
  });

  it('throws on a non-finite activation and a bad subsample size', () => {
    const c = new StatsCollector(4);
    assert.throws(() => c.add('q', 3, Float32Array.of(1, NaN)), /non-finite activation at t = 3/);
    assert.throws(() => new StatsCollector(0), /perObservation must be a positive integer/);
  });

  it('the dense log-step curve interpolates in log space and is flat outside', () => {
    const d = denseLogSteps({ t: [10, 20], step: [1, 100] }, 30);
    assert.equal(d[0], 0);
    assert.equal(d[10], 0);
    assert.ok(Math.abs(d[15] - Math.log(10)) < 1e-12);
    assert.ok(Math.abs(d[29] - Math.log(100)) < 1e-12);
  });
});

describe('smoothed per-timestep steps', () => {
  it('the Viterbi path is the exact minimiser (brute force over every path)', () => {
    const rand = mulberry32(7);
    for (const lambda of [0, 0.3, 3, 100]) {
      const K = 4, G = 5;
      const grid = Array.from({ length: G }, (_, g) => g * 0.7 + rand() * 0.2);
      const cost = Array.from({ length: K }, () => Array.from({ length: G }, () => rand() * 3));
      const objective = (p: number[]) => p.reduce((acc, g, k) => acc + cost[k][g] + (k ? lambda * (grid[g] - grid[p[k - 1]]) ** 2 : 0), 0);
      let best = Infinity;
      for (let code = 0; code < G ** K; ++code) {
        const p = Array.from({ length: K }, (_, k) => Math.floor(code / G ** k) % G);
        best = Math.min(best, objective(p));
      }
      const path = smoothestPath(cost, grid, lambda);
      assert.equal(path.length, K);
      assert.ok(Math.abs(objective(path) - best) < 1e-12, `lambda ${lambda}: path cost ${objective(path)} vs optimum ${best}`);
    }
  });

  // Timesteps whose scale drifts, with a heavy tail: the independent optima jump around.
  const rand = mulberry32(3);
  const lists = Array.from({ length: 12 }, (_, k) => {
    const x = randomData([2048], 100 + k).map((v) => v * (1 + k / 12) * (rand() < 0.02 ? 6 : 1));
    const [min, max] = extremes(x);
    return { sample: x, min, max };
  });
  const roughness = (s: number[]) => s.slice(1).reduce((acc, v, k) => acc + Math.log(v / s[k]) ** 2, 0);

  it('lambda 0 gives each timestep its own optimum (within the grid spacing); a huge lambda one constant step', () => {
    const free = smoothSteps(lists, 4, SIGNED, { lambda: 0 });
    lists.forEach((l, k) => {
      const opt = searchStep(l.sample, l.min, l.max, 4, SIGNED, { method: 'mse' });
      const ratio = quantMse(l.sample, free[k], 4, SIGNED) / quantMse(l.sample, opt, 4, SIGNED);
      assert.ok(ratio < 1.03, `timestep ${k}: grid step's MSE is ${ratio}x the searched optimum's`);
    });
    const flat = smoothSteps(lists, 4, SIGNED, { lambda: 1e9 });
    assert.ok(flat.every((v) => v === flat[0]), `expected one step, got ${flat.join(', ')}`);
    const mid = smoothSteps(lists, 4, SIGNED, { lambda: 20 });
    assert.ok(roughness(mid) <= roughness(free) && roughness(mid) >= roughness(flat), 'smoothness grows with lambda');
  });

  it('rejects a negative or non-finite lambda and a degenerate grid', () => {
    assert.throws(() => smoothSteps(lists, 4, SIGNED, { lambda: -1 }), /lambda must be a finite number >= 0/);
    assert.throws(() => smoothSteps(lists, 4, SIGNED, { lambda: NaN }), /lambda/);
    assert.throws(() => smoothSteps(lists, 4, SIGNED, { lambda: 1, grid: 1 }), /grid must be an integer >= 2/);
    assert.deepEqual(smoothSteps([], 4, SIGNED, { lambda: 1 }), []);
  });
});
