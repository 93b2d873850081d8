import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  type EpsModel,
  GaussianData,
  NoiseSchedule,
  type SampleOptions,
  type SamplerName,
  makeDdimTimesteps,
  sample,
  timestepValues,
} from '../../src/diffusion';
import { native } from '../../src/tensor/native';
import { Generator } from '../../src/tensor/random';
import { type Tensor, fromArray, sync } from '../../src/tensor/tensor';
import { relError } from '../helpers/assert';
import { Oracle, torchUnavailable } from '../helpers/oracle';

const skip = torchUnavailable();

// Per-dimension data: a mix of offsets and scales, all well inside what a
// sampler must handle (sigma from 0.3 to 1.5, |mu| up to 2).
const MU = [1.5, -1, 0.5, 0, 2, -2, 0.25, 1];
const SIGMA = [0.5, 1, 0.3, 1.5, 0.8, 0.4, 1.2, 0.6];
const D = MU.length;
const data = new GaussianData(MU, SIGMA);
const linear = NoiseSchedule.fromConfig({ kind: 'linear' });
const cosine = NoiseSchedule.fromConfig({ kind: 'cosine' });

async function values(t: Tensor): Promise<Float32Array> {
  return (await t.data()) as Float32Array;
}

/** The model time a sampler starts from, and abar where it ends. */
function span(sampler: SamplerName, steps: number, s: NoiseSchedule): { start: number; abarEnd: number } {
  if (sampler === 'ddim' || sampler === 'plms') {
    const ts = makeDdimTimesteps('uniform', steps, s.numTimesteps);
    return { start: ts[ts.length - 1], abarEnd: s.alphasCumprod[0] };
  }
  return { start: s.numTimesteps - 1, abarEnd: s.alphasCumprod[0] };
}

/** Relative 2-norm error of a deterministic sampler against the exact flow map of x_T. */
async function flowError(sampler: SamplerName, steps: number, s: NoiseSchedule, xT: Tensor, extra: Partial<SampleOptions> = {}): Promise<number> {
  const out = await sample(data.epsModel(s), { sampler, steps, shape: xT.shape, schedule: s, x_T: xT, ...extra });
  const { start, abarEnd } = span(sampler, steps, s);
  const exact = data.flow(await values(xT), s.alphasCumprod[start], abarEnd);
  const e = relError(await values(out), exact);
  out.dispose();
  return e;
}

describe('deterministic samplers against float64 numpy runs of the upstream algorithms', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  const B = 64;
  const xT = new Generator(3).randn([B, D]);
  const cases: [SamplerName, number, 'linear' | 'cosine', ('time_uniform' | 'logSNR')?][] = [
    ['ddim', 50, 'linear'],
    ['ddim', 20, 'cosine'],
    ['plms', 50, 'linear'],
    ['plms', 10, 'cosine'],
    ['dpmpp', 20, 'linear', 'time_uniform'],
    ['dpmpp', 8, 'linear', 'time_uniform'], // < 10 steps: first-order last step
    ['dpmpp', 25, 'cosine', 'logSNR'],
    ['dpmpp', 50, 'linear', 'logSNR'],
  ];
  for (const [sampler, steps, kind, skipType] of cases) {
    it(`${sampler} ${steps} steps on ${kind}${skipType ? ` (${skipType})` : ''}`, async () => {
      const s = kind === 'linear' ? linear : cosine;
      const out = await sample(data.epsModel(s), { sampler, steps, shape: [B, D], schedule: s, x_T: xT, skipType });
      const ref = await oracle.call(
        'gaussian_sampler',
        { x_T: { shape: [B, D], data: await values(xT) }, mu: { shape: [D], data: new Float32Array(MU) }, sigma: { shape: [D], data: new Float32Array(SIGMA) } },
        { sampler, steps, schedule: kind, skip_type: skipType ?? 'time_uniform' },
      );
      // float32 state and coefficients over <= 50 steps vs float64: measured <= 3.5e-7.
      const e = relError(await values(out), ref.outputs[0].data as Float32Array);
      assert.ok(e < 2e-6, `relative error ${e.toExponential(2)} vs numpy`);
      out.dispose();
    });
  }
});

describe('deterministic samplers converge to the exact probability-flow map', () => {
  // For Gaussian data the probability-flow ODE maps x_T to m_0 + (v_0 / v_T)(x_T - m_T) per
  // dimension (src/diffusion/gaussian.ts), so each deterministic sampler's discretisation
  // error is measurable exactly. Linear (LDM) schedule, T = 1000, 256 samples.
  const xT = new Generator(7).randn([256, D]);
  const errs: Record<string, Record<number, number>> = {};
  const STEPS = [25, 50, 100, 200];
  before(async () => {
    for (const [name, sampler, extra] of [
      ['ddim', 'ddim', {}],
      ['plms', 'plms', {}],
      ['dpmpp(time_uniform)', 'dpmpp', { skipType: 'time_uniform' }],
      ['dpmpp(logSNR)', 'dpmpp', { skipType: 'logSNR' }],
    ] as const) {
      errs[name] = {};
      for (const S of STEPS) errs[name][S] = await flowError(sampler, S, linear, xT, extra);
    }
    for (const [name, row] of Object.entries(errs))
      console.log(`# flow-map error ${name.padEnd(20)} ${STEPS.map((S) => `S=${S}: ${row[S].toExponential(2)}`).join('  ')}`);
  });

  it('DDIM (eta = 0) is first order: the error halves when the steps double', () => {
    for (const S of [25, 50, 100]) {
      const ratio = errs.ddim[S] / errs.ddim[2 * S];
      assert.ok(ratio > 1.8 && ratio < 2.2, `DDIM error ratio S=${S} -> ${2 * S}: ${ratio.toFixed(2)}`);
    }
    assert.ok(errs.ddim[200] < 5e-3, `DDIM at 200 steps: ${errs.ddim[200]}`);
  });

  it('DPM-Solver++(2M) with logSNR steps is second order: the error quarters when the steps double', () => {
    for (const S of [50, 100]) {
      const ratio = errs['dpmpp(logSNR)'][S] / errs['dpmpp(logSNR)'][2 * S];
      assert.ok(ratio > 3.5 && ratio < 4.5, `DPM-Solver++ error ratio S=${S} -> ${2 * S}: ${ratio.toFixed(2)}`);
    }
  });

  it('PLMS and DPM-Solver++ beat DDIM clearly at the same number of steps', () => {
    for (const S of STEPS) {
      // PLMS's lead narrows with more steps (its error falls 3.8x, 3.5x, 2.3x per doubling
      // here); a float64 numpy run shows the same, also on an equal-step grid down to t = 0,
      // so it is the method with steps equal in t, not float32 round-off.
      assert.ok(errs.plms[S] < errs.ddim[S] / 10, `PLMS S=${S}: ${errs.plms[S]} vs DDIM ${errs.ddim[S]}`);
      assert.ok(errs['dpmpp(logSNR)'][S] < errs.ddim[S] / 8, `DPM-Solver++(logSNR) S=${S}: ${errs['dpmpp(logSNR)'][S]} vs DDIM ${errs.ddim[S]}`);
      // Time-uniform steps leave one long last step in lambda (abar changes fastest near
      // t = 0), so the gain is smaller there, but still a factor > 2.
      assert.ok(errs['dpmpp(time_uniform)'][S] < errs.ddim[S] / 2, `DPM-Solver++(time_uniform) S=${S}: ${errs['dpmpp(time_uniform)'][S]} vs DDIM ${errs.ddim[S]}`);
    }
    for (const name of Object.keys(errs)) for (const S of [25, 50, 100]) assert.ok(errs[name][2 * S] < errs[name][S], `${name} error grows from S=${S}`);
  });
});

// ---- distributions --------------------------------------------------------

interface Moments {
  mean: Float64Array;
  std: Float64Array;
}

function sampleMoments(x: Float32Array, dim: number): Moments {
  const n = x.length / dim;
  const mean = new Float64Array(dim), std = new Float64Array(dim);
  for (let i = 0; i < x.length; ++i) mean[i % dim] += x[i] / n;
  for (let i = 0; i < x.length; ++i) std[i % dim] += (x[i] - mean[i % dim]) ** 2 / (n - 1);
  return { mean, std: std.map(Math.sqrt) };
}

/**
 * z-scores of the sample mean and std against a Gaussian target, per dimension: with n
 * samples the mean has standard error sd / sqrt(n) and the std a relative one of
 * 1 / sqrt(2 n). 16 z-scores of a correct sampler stay below 4 but for a 1e-3 chance.
 */
function assertMoments(x: Float32Array, target: Moments, what: string, zmax = 4): void {
  const n = x.length / D;
  const got = sampleMoments(x, D);
  for (let d = 0; d < D; ++d) {
    const zm = (got.mean[d] - target.mean[d]) / (target.std[d] / Math.sqrt(n));
    const zs = (got.std[d] / target.std[d] - 1) * Math.sqrt(2 * n);
    assert.ok(
      Math.abs(zm) < zmax && Math.abs(zs) < zmax,
      `${what}, dim ${d}: mean ${got.mean[d].toFixed(4)} vs ${target.mean[d].toFixed(4)} (z = ${zm.toFixed(2)}), ` +
        `std ${got.std[d].toFixed(4)} vs ${target.std[d].toFixed(4)} (z = ${zs.toFixed(2)})`,
    );
  }
}

describe('samples follow the data distribution (4096 samples x 8 dims)', () => {
  const N = 4096;
  const target: Moments = { mean: Float64Array.from(MU), std: Float64Array.from(SIGMA) };
  // Steps per sampler: enough that the discretisation bias (measured with the flow map
  // and the exact moments below) is under one standard error. DDIM is first order and
  // needs the most; eta = 1 adds a variance deficit on coarse steps (see the next suite).
  const runs: [string, SampleOptions['sampler'], number | undefined, Partial<SampleOptions>][] = [
    ['DDPM ancestral, 1000 steps', 'ddpm', undefined, {}],
    ['DDIM eta=0, 200 steps', 'ddim', 200, { eta: 0 }],
    ['DDIM eta=1, 500 steps', 'ddim', 500, { eta: 1 }],
    ['PLMS, 50 steps', 'plms', 50, {}],
    ['DPM-Solver++(2M), 25 logSNR steps', 'dpmpp', 25, { skipType: 'logSNR' }],
    ['DPM-Solver++(2M), 100 time-uniform steps', 'dpmpp', 100, { skipType: 'time_uniform' }],
  ];
  for (const [what, sampler, steps, extra] of runs) {
    it(what, async () => {
      // The ODE samplers transport whatever x_T they start from, so x_T is drawn from the
      // true marginal at their first timestep (N(0, I) would leave a bias of
      // sqrt(abar_start) * mu * sigma / v_start in the mean, ~3 standard errors here).
      const { start } = span(sampler, steps ?? 0, linear);
      const xT = data.sample(N, new Generator(11), linear.alphasCumprod[start]);
      const out = await sample(data.epsModel(linear), { sampler, steps, shape: [N, D], schedule: linear, seed: 5, x_T: xT, ...extra });
      assertMoments(await values(out), target, what);
      out.dispose();
      xT.dispose();
    });
  }
});

/**
 * The exact per-dimension mean and std of a DDPM or DDIM run with the exact model: each
 * step is affine in x plus independent noise, x' = A x + b + s z, so (m, v) propagate as
 * m' = A m + b, v' = A^2 v + s^2. Written from Ho et al. eq. 7 / Song et al. eq. 12, 16
 * in float64 independently of the sampler code.
 */
function exactMoments(g: GaussianData, sched: NoiseSchedule, kind: 'ddpm' | 'ddim', steps: number, eta: number): Moments {
  const ac = sched.alphasCumprod;
  const mean = new Float64Array(D), std = new Float64Array(D);
  for (let d = 0; d < D; ++d) {
    const mu = g.mu[d], sg = g.sigma[d];
    let m = 0, v = 1; // x_T ~ N(0, I)
    // eps*(x) = c (x - sqrt(a) mu), c = sqrt(1 - a) / (a sg^2 + 1 - a)
    const epsCoef = (a: number) => Math.sqrt(1 - a) / (a * sg * sg + 1 - a);
    if (kind === 'ddpm') {
      for (let t = sched.numTimesteps - 1; t >= 0; --t) {
        const a = ac[t], ap = t > 0 ? ac[t - 1] : 1, beta = sched.betas[t];
        const c = epsCoef(a);
        // x0 = (x - sqrt(1-a) eps) / sqrt(a) = P x + q
        const P = (1 - Math.sqrt(1 - a) * c) / Math.sqrt(a), q = (Math.sqrt(1 - a) * c * Math.sqrt(a) * mu) / Math.sqrt(a);
        const c1 = (beta * Math.sqrt(ap)) / (1 - a), c2 = ((1 - ap) * Math.sqrt(1 - beta)) / (1 - a);
        const noise = t > 0 ? (beta * (1 - ap)) / (1 - a) : 0;
        m = (c1 * P + c2) * m + c1 * q;
        v = (c1 * P + c2) ** 2 * v + noise;
      }
    } else {
      const ts = makeDdimTimesteps('uniform', steps, sched.numTimesteps);
      for (let k = ts.length - 1; k >= 0; --k) {
        const a = ac[ts[k]], ap = k > 0 ? ac[ts[k - 1]] : ac[0];
        const sig = eta * Math.sqrt(((1 - ap) / (1 - a)) * (1 - a / ap));
        const c = epsCoef(a);
        const P = (1 - Math.sqrt(1 - a) * c) / Math.sqrt(a), q = (Math.sqrt(1 - a) * c * Math.sqrt(a) * mu) / Math.sqrt(a);
        // x' = sqrt(ap) x0 + sqrt(1 - ap - sig^2) eps + sig z, eps = c x - c sqrt(a) mu
        const dir = Math.sqrt(1 - ap - sig * sig);
        const A = Math.sqrt(ap) * P + dir * c, b = Math.sqrt(ap) * q - dir * c * Math.sqrt(a) * mu;
        m = A * m + b;
        v = A * A * v + sig * sig;
      }
    }
    mean[d] = m;
    std[d] = Math.sqrt(v);
  }
  return { mean, std };
}

describe('stochastic samplers produce their exact output law (small scales, coarse steps)', () => {
  // Here the samplers' own biases are large and known: DDPM's beta~ variance and DDIM's
  // coarse eta > 0 steps under-disperse small-sigma dimensions. Matching the exact law
  // within sampling error checks the noise scale and every coefficient.
  const N = 4096;
  const small = new GaussianData([1, -1, 0.5, 0, 2, -0.5, 0.3, 1], [0.05, 0.1, 0.2, 0.3, 0.08, 0.15, 1, 0.5]);
  const cases: [string, 'ddpm' | 'ddim', number, number][] = [
    ['DDPM, 1000 steps', 'ddpm', 1000, 1],
    ['DDIM eta=1, 50 steps', 'ddim', 50, 1],
    ['DDIM eta=0.5, 20 steps', 'ddim', 20, 0.5],
  ];
  for (const [what, sampler, steps, eta] of cases) {
    it(what, async () => {
      const want = exactMoments(small, linear, sampler, steps, eta);
      const out = await sample(small.epsModel(linear), { sampler, steps: sampler === 'ddpm' ? undefined : steps, eta, shape: [N, D], schedule: linear, seed: 21 });
      const x = await values(out);
      assertMoments(x, want, what);
      // ...and the bias is real: the smallest-sigma dimension is clearly under-dispersed.
      const got = sampleMoments(x, D);
      assert.ok(got.std[0] < 0.97 * small.sigma[0], `${what}: std of dim 0 is ${got.std[0]}, expected a deficit vs ${small.sigma[0]}`);
      out.dispose();
    });
  }
});

// ---- behaviour --------------------------------------------------------------

/** Wraps a model to count calls and record the timesteps it saw. */
function counting(model: EpsModel): EpsModel & { calls: number; times: number[] } {
  const f = ((x: Tensor, t: Tensor) => {
    f.calls++;
    f.times.push(timestepValues(t)[0]);
    return model(x, t);
  }) as EpsModel & { calls: number; times: number[] };
  f.calls = 0;
  f.times = [];
  return f;
}

describe('sampler behaviour', () => {
  const small = NoiseSchedule.fromConfig({ timesteps: 100 });
  const model = data.epsModel(small);
  const base = { shape: [16, D], schedule: small } as const;
  const ALL: [SamplerName, number | undefined][] = [
    ['ddpm', undefined],
    ['ddim', 10],
    ['plms', 10],
    ['dpmpp', 10],
  ];

  for (const [sampler, steps] of ALL) {
    it(`${sampler}: same seed gives identical samples, another seed differs`, async () => {
      const eta = sampler === 'ddim' ? 1 : undefined; // exercise the per-step noise too
      const a = await sample(model, { ...base, sampler, steps, eta, seed: 1 });
      const b = await sample(model, { ...base, sampler, steps, eta, seed: 1 });
      const c = await sample(model, { ...base, sampler, steps, eta, seed: 2 });
      assert.deepEqual(await values(a), await values(b));
      assert.ok(relError(await values(c), await values(a)) > 0.1);
      for (const t of [a, b, c]) t.dispose();
    });

    it(`${sampler}: onProgress(step, total) once per step, model calls and timesteps as upstream`, async () => {
      const seen: [number, number][] = [];
      const m = counting(model);
      const out = await sample(m, { ...base, sampler, steps, onProgress: (s, tot) => seen.push([s, tot]) });
      const n = steps ?? small.numTimesteps;
      assert.deepEqual(seen, Array.from({ length: n }, (_, i) => [i + 1, n]));
      assert.equal(m.calls, sampler === 'plms' ? n + 1 : n); // PLMS: 2 calls on its first step
      if (sampler === 'ddpm') assert.deepEqual(m.times, Array.from({ length: 100 }, (_, i) => 99 - i));
      if (sampler === 'ddim') assert.deepEqual(m.times, [91, 81, 71, 61, 51, 41, 31, 21, 11, 1]);
      if (sampler === 'plms') assert.deepEqual(m.times, [91, 81, 71, 61, 51, 41, 31, 21, 11, 1].flatMap((t, i) => (i === 0 ? [91, 81] : [t])));
      if (sampler === 'dpmpp') for (let i = 0; i < n; ++i) assert.ok(Math.abs(m.times[i] - 99 * (1 - i / 10)) < 1e-9, `dpmpp t[${i}] = ${m.times[i]}`);
      out.dispose();
    });

    it(`${sampler}: abort stops the loop, rejects with AbortError and frees everything`, async () => {
      const ctl = new AbortController();
      const before = native().memory().liveBytes;
      const m = counting(model);
      const p = sample(m, { ...base, sampler, steps, signal: ctl.signal, onProgress: (s) => s === 3 && ctl.abort(new Error('user stop')) });
      await assert.rejects(p, (e: Error) => e.name === 'AbortError' && /before step 4/.test(e.message) && (e.cause as Error).message === 'user stop');
      assert.equal(m.calls, sampler === 'plms' ? 4 : 3);
      assert.equal(native().memory().liveBytes, before, 'bytes still allocated after abort');
    });
  }

  it('an already aborted signal rejects before any work', async () => {
    const m = counting(model);
    const ctl = new AbortController();
    ctl.abort();
    await assert.rejects(sample(m, { ...base, sampler: 'ddim', steps: 5, signal: ctl.signal }), { name: 'AbortError' });
    assert.equal(m.calls, 0);
  });

  it('x_T is used as given and stays owned by the caller', async () => {
    const xT = new Generator(4).randn([16, D]);
    const a = await sample(model, { ...base, sampler: 'ddim', steps: 10, x_T: xT, seed: 1 });
    const b = await sample(model, { ...base, sampler: 'ddim', steps: 10, x_T: xT, seed: 2 });
    assert.equal(xT.disposed, false);
    assert.deepEqual(await values(a), await values(b), 'deterministic DDIM from the same x_T ignores the seed');
    const c = await sample(model, { ...base, sampler: 'ddim', steps: 10, seed: 4 }); // default x_T: randn of Generator(4)
    assert.deepEqual(await values(c), await values(a));
    for (const t of [xT, a, b, c]) t.dispose();
  });

  it('memory stays bounded: live bytes after a run are the result only, peak does not grow with steps', async () => {
    const live0 = native().memory().liveBytes;
    const peak = async (steps: number) => {
      native().resetPeakMemory();
      const out = await sample(model, { shape: [256, D], schedule: small, sampler: 'plms', steps });
      const p = native().memory().peakBytes - live0;
      assert.equal(native().memory().liveBytes - live0, out.nbytes, 'only the result remains');
      out.dispose();
      return p;
    };
    const p5 = await peak(5), p40 = await peak(40);
    assert.ok(p40 <= p5 * 1.25, `peak ${p40} B at 40 steps vs ${p5} B at 5`);
    assert.equal(native().memory().liveBytes, live0);
  });

  it('the event loop keeps running during sampling', async () => {
    let ticks = 0;
    let running = true;
    const tick = () => {
      ticks++;
      if (running) setImmediate(tick);
    };
    setImmediate(tick);
    const out = await sample(model, { ...base, sampler: 'ddpm' });
    running = false;
    assert.ok(ticks >= 50, `only ${ticks} event-loop turns during 100 steps`);
    out.dispose();
  });

  it('a model error rejects and frees the loop state', async () => {
    // Storage is released on the engine's thread once the ops that use it have
    // run: read the counter after a sync, or a busy machine shows frees still in flight.
    const live = async () => (await sync(), native().memory().liveBytes);
    const live0 = await live();
    let calls = 0;
    const bad: EpsModel = (x, t) => {
      if (++calls === 4) throw new Error('model exploded');
      return model(x, t);
    };
    await assert.rejects(sample(bad, { ...base, sampler: 'dpmpp', steps: 10 }), /model exploded/);
    assert.equal(await live(), live0);
    const wrong: EpsModel = () => fromArray(new Float32Array(3), [3]);
    await assert.rejects(sample(wrong, { ...base, sampler: 'ddim', steps: 5 }), (e: Error) => e instanceof RangeError && /model returned shape \[3\]/.test(e.message));
    assert.equal(await live(), live0);
  });

  it('bad options reject with the option named', async () => {
    const cases: [Partial<SampleOptions>, RegExp, ErrorConstructor][] = [
      [{ sampler: 'euler' as never }, /unknown sampler 'euler'/, TypeError],
      [{ sampler: 'ddim', steps: 0 }, /steps must lie in \[1, 100\]/, RangeError],
      [{ sampler: 'ddim', steps: 2.5 }, /steps must be an integer/, TypeError],
      [{ sampler: 'ddpm', steps: 50 }, /ddpm runs all 100 steps/, RangeError],
      [{ sampler: 'plms', steps: 10, eta: 0.5 }, /PLMS needs eta = 0/, RangeError],
      [{ sampler: 'dpmpp', steps: 10, eta: 1 }, /eta must be 0/, RangeError],
      [{ sampler: 'ddim', steps: 10, eta: -1 }, /eta must be a finite number >= 0/, RangeError],
      [{ sampler: 'ddim', steps: 10, eta: 3 }, /eta too large/, RangeError],
      [{ sampler: 'ddim', steps: 10, shape: [0, 8] }, /shape must be/, RangeError],
      [{ sampler: 'ddim', steps: 10, seed: -1 }, /seed must be/, RangeError],
      [{ sampler: 'ddim', steps: 10, x_T: fromArray(new Float32Array(8), [1, 8]) }, /x_T has shape \[1, 8\], expected \[16, 8\]/, RangeError],
      [{ sampler: 'dpmpp', steps: 10, skipType: 'karras' as never }, /skipType/, TypeError],
    ];
    for (const [opts, re, cls] of cases)
      await assert.rejects(sample(model, { ...base, ...opts } as SampleOptions), (e: Error) => e instanceof cls && re.test(e.message), `${JSON.stringify(Object.keys(opts))} -> ${re}`);
    await assert.rejects(sample(null as never, { ...base, sampler: 'ddim' }), TypeError);
  });

  it('clipDenoised clamps the DDPM x_0 prediction to [-1, 1]', async () => {
    const far = new GaussianData([3, -3], [0.1, 0.1]);
    const out = await sample(far.epsModel(small), { shape: [64, 2], schedule: small, sampler: 'ddpm', clipDenoised: true, seed: 3 });
    // The last step returns the (clamped) x_0 prediction itself.
    for (const v of await values(out)) assert.ok(v >= -1 && v <= 1, `sample ${v} outside [-1, 1]`);
    out.dispose();
  });
});

describe('GaussianData', () => {
  it('eps model: exact E[eps | x_t] per dimension, also with one timestep per sample', async () => {
    const s = NoiseSchedule.fromConfig({ timesteps: 100 });
    const x = new Generator(1).randn([4, D]);
    const ts = [3, 40.5, 99, 0];
    const eps = data.epsModel(s)(x, fromArray(ts, [4]));
    const xv = await values(x), ev = await values(eps);
    const want = new Float64Array(4 * D);
    for (let b = 0; b < 4; ++b)
      for (let d = 0; d < D; ++d) {
        const a = s.alphaBar(ts[b]);
        want[b * D + d] = (Math.sqrt(1 - a) * (xv[b * D + d] - Math.sqrt(a) * MU[d])) / (a * SIGMA[d] ** 2 + 1 - a);
      }
    assert.ok(relError(ev, want) < 1e-6);
    x.dispose();
    eps.dispose();
  });

  it('sample() draws from the marginal, flow() maps marginals onto marginals', async () => {
    const gen = new Generator(9);
    const x = data.sample(4096, gen, 0.3);
    const xv = await values(x);
    assertMoments(xv, data.marginal(0.3), 'marginal at abar = 0.3');
    const moved = data.flow(xv, 0.3, 0.9);
    assertMoments(Float32Array.from(moved), data.marginal(0.9), 'flowed to abar = 0.9');
    x.dispose();
    assert.throws(() => new GaussianData([1, 2], [1, 0]), (e: Error) => e instanceof RangeError && /sigma\[1\]/.test(e.message));
    assert.throws(() => new GaussianData([1, 2], [1]), (e: Error) => e instanceof RangeError && /sigma/.test(e.message));
  });
});
