import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { localLinearSmooth, ndtcCounts, selectSmoothing, smoothTarget } from '../../src/quant/ptq_select';
import { mulberry32 } from '../../src/quant/step_search';

// A smooth log-step curve over 50 DDIM timesteps, and noisy calibrations of it.
const ts = Array.from({ length: 50 }, (_, i) => 1 + 20 * i);
const truth = (t: number) => Math.exp(-1 + 0.8 * Math.sin(t / 300));
function noisy(seed: number, sigma: number) {
  const r = mulberry32(seed);
  return ts.map((t) => truth(t) * Math.exp(sigma * (r() + r() + r() - 1.5) * 2));
}

describe('quant/ptq_select: smoothing of TDQ targets', () => {
  it('local linear smoothing: h = 0 is the identity, h = Infinity the LS line, a line is kept', () => {
    const y = [3, 1, 4, 1, 5];
    const x = [0, 1, 2, 3, 4];
    assert.deepEqual(localLinearSmooth(x, y, 0), y);
    const line = localLinearSmooth(x, y, Infinity);
    // least squares: slope 0.4, intercept 2.0
    line.forEach((v, i) => assert.ok(Math.abs(v - (2 + 0.4 * i)) < 1e-12));
    const lin = x.map((v) => 2 - 0.5 * v);
    localLinearSmooth(x, lin, 1.5).forEach((v, i) => assert.ok(Math.abs(v - lin[i]) < 1e-12));
    assert.throws(() => localLinearSmooth(x, y, -1), RangeError);
    assert.throws(() => localLinearSmooth(x, [1], 1), RangeError);
  });

  it('held-out selection smooths noisy targets, and the smoothed fit is closer to the truth', () => {
    const fit = [0, 1, 2].map((q) => ({ t: ts, step: noisy(10 + q, 0.3) }));
    const held = [0, 1, 2].map((q) => ({ t: ts, step: noisy(100 + q, 0.3) }));
    const c = selectSmoothing(fit, held);
    assert.ok(c.h > 0 && Number.isFinite(c.h), `chose h = ${c.h}`);
    const err = (h: number) => {
      let s = 0;
      for (const f of fit) smoothTarget(f, h).step.forEach((v, i) => (s += (Math.log(v) - Math.log(truth(ts[i]))) ** 2));
      return s;
    };
    assert.ok(err(c.h) < 0.5 * err(0), `smoothed ${err(c.h)} vs raw ${err(0)}`);
  });

  it('noise-free targets with structure keep a small bandwidth', () => {
    const sharp = ts.map((t) => Math.exp(t < 500 ? -2 : 0.5));
    const fit = [{ t: ts, step: sharp }];
    const c = selectSmoothing(fit, [{ t: ts, step: [...sharp] }]);
    assert.equal(c.h, 0);
  });

  it('rejects held-out targets at other timesteps', () => {
    assert.throws(() => selectSmoothing([{ t: [1, 2], step: [1, 1] }], [{ t: [1, 3], step: [1, 1] }]), /timesteps differ/);
    assert.throws(() => selectSmoothing([], []), RangeError);
  });
});

describe('quant/ptq_select: PTQ4DM timesteps', () => {
  it('counts sum to n and follow the clamped normal over the loop', () => {
    const c = ndtcCounts(100000, 50, mulberry32(1));
    assert.equal(c.reduce((s, v) => s + v, 0), 100000);
    // P(index 0): the clamped left tail plus [0, 1/50) truncated toward zero:
    // P(z < (0.02 - 0.4) / 0.4) with truncation toward zero also taking (-1/50, 0)
    const phi = (z: number) => 0.5 * (1 + erf(z / Math.SQRT2));
    const p0 = phi((1 / 50 - 0.4) / 0.4);
    assert.ok(Math.abs(c[0] / 1e5 - p0) < 0.005, `index 0: ${c[0] / 1e5} vs ${p0}`);
    const pLast = 1 - phi((49 / 50 - 0.4) / 0.4);
    assert.ok(Math.abs(c[49] / 1e5 - pLast) < 0.005, `last: ${c[49] / 1e5} vs ${pLast}`);
    // the mode sits at 0.4 of the range
    const peak = c.slice(1, 49).indexOf(Math.max(...c.slice(1, 49))) + 1;
    assert.ok(Math.abs(peak - 20) <= 3, `peak at ${peak}`);
    assert.throws(() => ndtcCounts(0, 50, mulberry32(1)), RangeError);
  });
});

function erf(x: number): number {
  // Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7)
  const s = Math.sign(x), a = Math.abs(x), t = 1 / (1 + 0.3275911 * a);
  const y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-a * a);
  return s * y;
}
