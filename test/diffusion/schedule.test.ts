import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  type BetaScheduleKind,
  NoiseSchedule,
  ddimSamplingParameters,
  dpmSolverTimesteps,
  makeBetaSchedule,
  makeDdimTimesteps,
} from '../../src/diffusion';
import { relError } from '../helpers/assert';
import { type Arr, Oracle, torchUnavailable } from '../helpers/oracle';

const skip = torchUnavailable();

// Float64 tables come back as hi + lo float32 pairs (see ops_diffusion.py).
function join64(hi: Arr, lo: Arr): Float64Array {
  const out = new Float64Array(hi.data.length);
  for (let i = 0; i < out.length; ++i) out[i] = hi.data[i] + lo.data[i];
  return out;
}

function rows(a: Float64Array, cols: number): Float64Array[] {
  const out: Float64Array[] = [];
  for (let r = 0; r * cols < a.length; ++r) out.push(a.subarray(r * cols, (r + 1) * cols));
  return out;
}

// The oracle's row order (ops_diffusion.py TABLE_ROWS) and the engine's field for each.
const TABLES: (keyof NoiseSchedule)[] = [
  'betas',
  'alphasCumprod',
  'alphasCumprodPrev',
  'sqrtAlphasCumprod',
  'sqrtOneMinusAlphasCumprod',
  'logOneMinusAlphasCumprod',
  'sqrtRecipAlphasCumprod',
  'sqrtRecipm1AlphasCumprod',
  'posteriorVariance',
  'posteriorLogVarianceClipped',
  'posteriorMeanCoef1',
  'posteriorMeanCoef2',
];

// float64 on both sides; the hi/lo transport keeps ~1e-14. sqrt/cos/log may differ by an
// ulp between V8 and glibc, and the cosine betas (1 - abar_t / abar_{t-1}) amplify that by
// cancellation: 1e-12 was measured as exceeded (1.2e-12 for posterior_mean_coef1), so 1e-11.
const RTOL64 = 1e-11;

describe('noise schedules against LDM (numpy / torch float64)', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const configs: { kind: BetaScheduleKind; T: number; linearStart?: number; linearEnd?: number; vPosterior?: number }[] = [
    { kind: 'linear', T: 1000 },
    { kind: 'linear', T: 1000, linearStart: 0.00085, linearEnd: 0.012 },
    { kind: 'ddpm_linear', T: 1000 },
    { kind: 'cosine', T: 1000 },
    { kind: 'cosine', T: 37 },
    { kind: 'linear', T: 51, vPosterior: 0.3 },
  ];
  for (const c of configs) {
    it(`${c.kind} T=${c.T}${c.linearStart ? ` (${c.linearStart}..${c.linearEnd})` : ''}${c.vPosterior ? ` v_posterior=${c.vPosterior}` : ''}: every register_schedule table`, async () => {
      const s = NoiseSchedule.fromConfig({ kind: c.kind, timesteps: c.T, linearStart: c.linearStart, linearEnd: c.linearEnd, vPosterior: c.vPosterior });
      const attrs: Record<string, unknown> = { schedule: c.kind, n_timestep: c.T, v_posterior: c.vPosterior ?? 0 };
      if (c.linearStart !== undefined) Object.assign(attrs, { linear_start: c.linearStart, linear_end: c.linearEnd });
      const ref = await oracle.call('ldm_schedule', {}, attrs);
      const tables = rows(join64(ref.outputs[0], ref.outputs[1]), c.T);
      assert.equal(tables.length, TABLES.length);
      TABLES.forEach((name, k) => {
        const mine = s[name] as Float64Array;
        const e = relError(mine, tables[k]);
        assert.ok(e <= RTOL64, `${name}: relative error ${e.toExponential(2)} > ${RTOL64}`);
      });
      assert.deepEqual(Array.from(makeBetaSchedule(c.kind, c.T, c)), Array.from(s.betas));
    });
  }

  for (const [method, steps, T] of [
    ['uniform', 50, 1000],
    ['uniform', 6, 1000], // c = 166 does not divide 1000: LDM then runs 7 steps
    ['uniform', 7, 100],
    ['quad', 50, 1000],
    ['quad', 20, 1000],
  ] as const) {
    it(`DDIM timesteps '${method}' S=${steps} T=${T} and sigma(eta) match make_ddim_timesteps / make_ddim_sampling_parameters`, async () => {
      const s = NoiseSchedule.fromConfig({ timesteps: T });
      const ts = makeDdimTimesteps(method, steps, T);
      for (const eta of [0, 0.5, 1]) {
        const ref = await oracle.call('ddim_schedule', {}, { method, steps, eta, n_timestep: T });
        assert.deepEqual(ts, Array.from(ref.outputs[0].data), 'timesteps');
        const [al, alp, sig] = rows(join64(ref.outputs[1], ref.outputs[2]), ts.length);
        const p = ddimSamplingParameters(s.alphasCumprod, ts, eta);
        assert.ok(relError(p.alphas, al) <= RTOL64, 'alphas');
        assert.ok(relError(p.alphasPrev, alp) <= RTOL64, 'alphas_prev');
        if (eta === 0) assert.ok(p.sigmas.every((v) => v === 0));
        else assert.ok(relError(p.sigmas, sig) <= 1e-10, `sigmas: ${relError(p.sigmas, sig)}`);
      }
    });
  }

  for (const kind of ['linear', 'cosine'] as const)
    for (const skipType of ['time_uniform', 'logSNR'] as const)
      it(`DPM-Solver ${skipType} timesteps on ${kind} match the reference's NoiseScheduleVP('discrete')`, async () => {
        const s = NoiseSchedule.fromConfig({ kind });
        const ts = dpmSolverTimesteps(s, 20, skipType);
        const ref = await oracle.call('dpm_timesteps', {}, { schedule: kind, steps: 20, skip_type: skipType });
        const want = join64(ref.outputs[0], ref.outputs[1]);
        // Absolute in model time: np.linspace vs torch-style linspace and the float round
        // trip of t_cont = (t + 1) / N differ in the last bits.
        for (let i = 0; i < ts.length; ++i) assert.ok(Math.abs(ts[i] - want[i]) < 1e-9, `t[${i}] = ${ts[i]} vs ${want[i]}`);
      });
});

describe('noise schedule properties', () => {
  it('LDM linear defaults: T = 1000, beta from 1e-4 to 2e-2, abar decreasing', () => {
    const s = NoiseSchedule.fromConfig();
    assert.equal(s.numTimesteps, 1000);
    assert.ok(Math.abs(s.betas[0] - 1e-4) < 1e-18 && Math.abs(s.betas[999] - 2e-2) < 1e-16);
    for (let t = 1; t < 1000; ++t) assert.ok(s.alphasCumprod[t] < s.alphasCumprod[t - 1]);
    assert.equal(s.alphasCumprodPrev[0], 1);
    assert.equal(s.posteriorVariance[0], 0);
    assert.equal(s.posteriorLogVarianceClipped[0], Math.log(1e-20));
  });

  it('cosine: abar follows f(t)/f(0) and the last beta is clipped to 0.999', () => {
    const s = NoiseSchedule.fromConfig({ kind: 'cosine', timesteps: 1000 });
    const f = (t: number) => Math.cos(((t / 1000 + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
    for (const t of [0, 10, 500, 900]) assert.ok(Math.abs(s.alphasCumprod[t] - f(t + 1) / f(0)) < 1e-12, `abar[${t}]`);
    assert.equal(s.betas[999], 0.999);
  });

  it('logAlpha / alphaBar interpolate between steps and timeForLambda inverts lambda', () => {
    const s = NoiseSchedule.fromConfig();
    for (const t of [0, 1, 17, 500, 999]) {
      assert.equal(s.alphaBar(t), s.alphasCumprod[t]);
      assert.ok(Math.abs(s.logAlpha(t) - 0.5 * Math.log(s.alphasCumprod[t])) < 1e-15);
    }
    const mid = s.logAlpha(10.25);
    assert.ok(Math.abs(mid - (0.75 * s.logAlphas[10] + 0.25 * s.logAlphas[11])) < 1e-15);
    for (const t of [0, 0.5, 3.7, 123.456, 998.9, 999]) {
      const back = s.timeForLambda(s.lambda(t));
      assert.ok(Math.abs(back - t) < 1e-8, `t=${t} -> lambda -> ${back}`);
    }
    for (let t = 1; t < 1000; ++t) assert.ok(s.lambda(t) < s.lambda(t - 1), 'lambda decreases with t');
  });

  it('bad configurations throw with the argument named', () => {
    assert.throws(() => NoiseSchedule.fromConfig({ timesteps: 1 }), (e: Error) => e instanceof RangeError && /timesteps/.test(e.message));
    assert.throws(() => NoiseSchedule.fromConfig({ timesteps: 10.5 }), (e: Error) => e instanceof TypeError && /timesteps/.test(e.message));
    assert.throws(() => NoiseSchedule.fromConfig({ linearStart: 0 }), (e: Error) => e instanceof RangeError && /linearStart/.test(e.message));
    assert.throws(() => NoiseSchedule.fromConfig({ kind: 'sigmoid' as never }), (e: Error) => e instanceof TypeError && /kind/.test(e.message));
    assert.throws(() => NoiseSchedule.fromConfig({ vPosterior: 2 }), (e: Error) => e instanceof RangeError && /vPosterior/.test(e.message));
    assert.throws(() => new NoiseSchedule([0.1, 1.5]), (e: Error) => e instanceof RangeError && /betas\[1\]/.test(e.message));
    const s = NoiseSchedule.fromConfig({ timesteps: 100 });
    assert.throws(() => s.logAlpha(99.5), (e: Error) => e instanceof RangeError && /99.5/.test(e.message));
    assert.throws(() => makeDdimTimesteps('uniform', 0, 100), (e: Error) => e instanceof RangeError && /steps/.test(e.message));
    assert.throws(() => makeDdimTimesteps('uniform', 100, 100), (e: Error) => e instanceof RangeError && /timestep 100/.test(e.message));
    // range(0, 1000, 333) + 1 ends at 1000, past LDM's table (it fails there too).
    assert.throws(() => makeDdimTimesteps('uniform', 3, 1000), (e: Error) => e instanceof RangeError && /timestep 1000/.test(e.message));
    assert.throws(() => makeDdimTimesteps('cubic' as never, 10, 100), (e: Error) => e instanceof TypeError && /ddimDiscretize/.test(e.message));
    assert.throws(() => ddimSamplingParameters(s.alphasCumprod, [1, 11], -1), (e: Error) => e instanceof RangeError && /eta/.test(e.message));
    assert.throws(() => dpmSolverTimesteps(s, 10, 'karras' as never), (e: Error) => e instanceof TypeError && /skipType/.test(e.message));
  });
});
