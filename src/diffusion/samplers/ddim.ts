// DDIM (Song et al. 2021) on a sub-sequence of the training timesteps, with
// LDM's choice of that sub-sequence and of sigma_t(eta).
import { lincomb } from '../../tensor/ops/elementwise';
import type { Tensor } from '../../tensor/tensor';
import type { NoiseSchedule } from '../schedule';
import { type EpsModel, type SamplerOptions, checkSamplerOptions, checkSteps, clipEpsilon, runSampler } from './common';

export type DdimDiscretize = 'uniform' | 'quad' | 'linspace' | 'trailing';
export const DDIM_DISCRETIZE: readonly DdimDiscretize[] = ['uniform', 'quad', 'linspace', 'trailing'];

/**
 * What LDM's 'uniform' layout makes of `steps` on a T-step schedule: the number of
 * timesteps it yields (ceil(T / floor(T / steps))), and whether they all fit (the last,
 * shifted by LDM's +1, must stay below T).
 */
export function uniformLayout(steps: number, T: number): { count: number; fits: boolean } {
  const c = Math.floor(T / steps);
  const count = Math.ceil(T / c);
  return { count, fits: (count - 1) * c + 1 <= T - 1 };
}

/** The step counts nearest to `steps` (one below, one above, when they exist) that 'uniform' lays out exactly. */
export function nearestUniformCounts(steps: number, T: number): number[] {
  const ok = (n: number) => {
    const u = uniformLayout(n, T);
    return u.fits && u.count === n;
  };
  const out: number[] = [];
  for (let n = Math.min(steps - 1, T); n >= 1; --n) if (ok(n)) { out.push(n); break; }
  for (let n = steps + 1; n <= T; ++n) if (ok(n)) { out.push(n); break; }
  return out;
}

/** The error for a step count that 'uniform' cannot lay out: the nearest counts that work and the other layouts. */
export function uniformLayoutMessage(steps: number, T: number): string {
  const u = uniformLayout(steps, T);
  const near = nearestUniformCounts(steps, T);
  const what = u.fits ? `gives ${u.count} steps, not ${steps}` : `reaches timestep ${(u.count - 1) * Math.floor(T / steps) + 1} >= T = ${T}`;
  return (
    `${steps} DDIM steps with the 'uniform' layout (c = floor(${T} / ${steps}) = ${Math.floor(T / steps)}, range(0, ${T}, c) + 1) ${what}; ` +
    `counts that 'uniform' lays out exactly near ${steps}: ${near.join(', ') || 'none'}; ` +
    `or use ddim_discretize 'linspace' or 'trailing' (--ddim-discretize), which give exactly ${steps} steps for any 1 <= steps <= ${T}`
  );
}

/** numpy's round: halves to even. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The DDIM timesteps, ascending, as LDM's make_ddim_timesteps:
 * - 'uniform': c = floor(T / S), range(0, T, c) + 1. When c does not divide T this gives
 *   ceil(T / c) steps, which can be more than S (T = 1000, S = 3 gives 4 steps).
 * - 'quad': floor(linspace(0, sqrt(0.8 T), S)^2) + 1; early entries can repeat (a repeated
 *   step leaves x unchanged: it costs one model call).
 * - 'linspace': round(linspace(0, T - 1, S)) (diffusers' timestep_spacing 'linspace'):
 *   exactly S distinct steps for any 1 <= S <= T, from 0 up to T - 1.
 * - 'trailing': round(T - k T / S) - 1 for k = 0..S-1 (diffusers' 'trailing'): exactly S
 *   distinct steps ending at T - 1, for any 1 <= S <= T.
 */
export function makeDdimTimesteps(method: DdimDiscretize, steps: number, T: number): number[] {
  checkSteps(steps, T);
  const out: number[] = [];
  if (method === 'uniform') {
    const c = Math.floor(T / steps);
    for (let t = 0; t < T; t += c) out.push(t + 1);
  } else if (method === 'quad') {
    // numpy's linspace: i * step with the last point set to stop exactly.
    const stop = Math.sqrt(T * 0.8);
    const step = steps > 1 ? stop / (steps - 1) : 0;
    for (let i = 0; i < steps; ++i) {
      const v = i === steps - 1 && steps > 1 ? stop : i * step;
      out.push(Math.trunc(v * v) + 1);
    }
  } else if (method === 'linspace') {
    // numpy.linspace(0, T - 1, S).round()
    const step = steps > 1 ? (T - 1) / (steps - 1) : 0;
    for (let i = 0; i < steps; ++i) out.push(roundHalfEven(i === steps - 1 && steps > 1 ? T - 1 : i * step));
  } else if (method === 'trailing') {
    // numpy.round(numpy.arange(T, 0, -T / S)) - 1, ascending
    for (let k = steps - 1; k >= 0; --k) out.push(roundHalfEven(T - (k * T) / steps) - 1);
  } else {
    throw new TypeError(`sample: ddimDiscretize must be one of ${DDIM_DISCRETIZE.join(', ')}; got '${String(method)}'`);
  }
  // LDM indexes abar at t + 1, which needs t + 1 <= T - 1.
  if (out[out.length - 1] > T - 1) throw new RangeError(`sample: ${method === 'uniform' ? uniformLayoutMessage(steps, T) : `${steps} DDIM steps reach timestep ${out[out.length - 1]} >= T = ${T}`}`);
  return out;
}

export interface DdimParameters {
  /** abar at each DDIM timestep. */
  alphas: Float64Array;
  /** abar at the previous DDIM timestep; abar_0 (not 1) before the first. */
  alphasPrev: Float64Array;
  /** sigma_t(eta), Song et al. eq. 16. */
  sigmas: Float64Array;
}

/** LDM's make_ddim_sampling_parameters. */
export function ddimSamplingParameters(alphasCumprod: Float64Array, timesteps: number[], eta: number): DdimParameters {
  if (typeof eta !== 'number' || !Number.isFinite(eta) || eta < 0) throw new RangeError(`sample: eta must be a finite number >= 0, got ${eta}`);
  const n = timesteps.length;
  const alphas = new Float64Array(n), alphasPrev = new Float64Array(n), sigmas = new Float64Array(n);
  for (let i = 0; i < n; ++i) {
    const a = alphasCumprod[timesteps[i]];
    const ap = i === 0 ? alphasCumprod[0] : alphasCumprod[timesteps[i - 1]];
    alphas[i] = a;
    alphasPrev[i] = ap;
    // eq. 16: sigma_t = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev)
    sigmas[i] = eta * Math.sqrt(((1 - ap) / (1 - a)) * (1 - a / ap));
  }
  return { alphas, alphasPrev, sigmas };
}

export interface DdimOptions extends SamplerOptions {
  steps: number;
  /** 0: deterministic DDIM; 1: DDPM-like ancestral noise on the sub-sequence. */
  eta?: number;
  ddimDiscretize?: DdimDiscretize;
  /**
   * Clamp the predicted x_0 to [-1, 1] and take eps from the clamped x_0
   * (pixel-space data; LDM's clip_denoised, diffusers' clip_sample). Default false.
   */
  clipDenoised?: boolean;
}

/**
 * The coefficients of one DDIM step (eq. 12) written as x_prev = cx x_t + ce eps + cz z:
 *   x_prev = sqrt(a_prev) (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)      "predicted x_0"
 *          + sqrt(1 - a_prev - sigma_t^2) eps                        "direction pointing to x_t"
 *          + sigma_t z.
 * With sigma_t = 0 this is the Euler step of the probability-flow ODE in
 * (x / sqrt(abar), sqrt((1 - abar) / abar)) (eq. 13).
 */
export function ddimStepCoefficients(a: number, ap: number, sigma: number): { cx: number; ce: number; cz: number } {
  const dir2 = 1 - ap - sigma * sigma;
  if (dir2 < -1e-12) throw new RangeError(`sample: eta too large: sigma_t^2 = ${sigma * sigma} exceeds 1 - abar_prev = ${1 - ap}`);
  const cx = Math.sqrt(ap / a);
  return { cx, ce: Math.sqrt(Math.max(dir2, 0)) - cx * Math.sqrt(1 - a), cz: sigma };
}

export async function sampleDdim(model: EpsModel, schedule: NoiseSchedule, opts: DdimOptions): Promise<Tensor> {
  checkSamplerOptions(opts);
  const ts = makeDdimTimesteps(opts.ddimDiscretize ?? 'uniform', opts.steps, schedule.numTimesteps);
  const p = ddimSamplingParameters(schedule.alphasCumprod, ts, opts.eta ?? 0);
  const coeffs = ts.map((_, k) => ddimStepCoefficients(p.alphas[k], p.alphasPrev[k], p.sigmas[k]));
  const n = ts.length;
  return runSampler(opts, n, ({ x }, i, loop) => {
    const k = n - 1 - i; // walk the sub-sequence from its last (noisiest) entry
    let eps = loop.eps(model, x, ts[k]);
    // x0 = (x - sqrt(1 - a) eps) / sqrt(a), clamped; then eps consistent with it.
    if (opts.clipDenoised) eps = clipEpsilon(x, eps, p.alphas[k]);
    const { cx, ce, cz } = coeffs[k];
    if (cz === 0) return { x: lincomb([x, eps], [cx, ce]), history: [] };
    const z = loop.gen.randn(x.shape, loop.device);
    return { x: lincomb([x, eps, z], [cx, ce, cz]), history: [] };
  });
}
