// Discrete-time noise schedules (beta_1..beta_T) and the float64 tables the
// samplers read, following CompVis latent-diffusion: make_beta_schedule in
// ldm/modules/diffusionmodules/util.py and DDPM.register_schedule in
// ldm/models/diffusion/ddpm.py. Index t = 0..T-1 is the model's timestep.
//
// Forward process (Ho et al. 2020, eq. 4): q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),
// abar_t = prod_{s<=t} (1 - beta_s).

/**
 * - 'linear': LDM's "linear", which is linear in sqrt(beta):
 *   betas = linspace(sqrt(linearStart), sqrt(linearEnd), T)^2. The default of LDM / Stable Diffusion.
 * - 'ddpm_linear': linear in beta, betas = linspace(linearStart, linearEnd, T) (Ho et al. 2020).
 *   LDM calls this one "sqrt_linear" (its names are swapped); the numbers are the same.
 * - 'cosine': Nichol & Dhariwal 2021 eq. 17, abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
 *   betas = 1 - abar_t / abar_{t-1} clipped to [0, 0.999].
 */
export type BetaScheduleKind = 'linear' | 'ddpm_linear' | 'cosine';

export interface BetaScheduleOptions {
  /** LDM default 1e-4 (Stable Diffusion configs use 0.00085). */
  linearStart?: number;
  /** LDM default 2e-2 (Stable Diffusion configs use 0.012). */
  linearEnd?: number;
  /** Offset s of the cosine schedule, default 8e-3. */
  cosineS?: number;
}

export interface ScheduleConfig extends BetaScheduleOptions {
  kind?: BetaScheduleKind;
  /** Number of training timesteps T (default 1000). */
  timesteps?: number;
  /**
   * Weight of beta_t in the ancestral (DDPM) variance: (1 - v) * beta~_t + v * beta_t, as LDM's
   * v_posterior. Default 0: the posterior variance beta~_t of Ho et al. eq. 7.
   */
  vPosterior?: number;
}

/**
 * torch.linspace in float64: the first half counts up from start, the second
 * half down from end, so both endpoints are exact (the numbers LDM gets).
 */
export function linspace(start: number, end: number, n: number): Float64Array {
  const out = new Float64Array(n);
  if (n === 1) {
    out[0] = start;
    return out;
  }
  const step = (end - start) / (n - 1);
  const half = Math.floor(n / 2);
  for (let i = 0; i < n; ++i) out[i] = i < half ? start + step * i : end - step * (n - 1 - i);
  return out;
}

function checkPositiveInt(name: string, v: number, min: number): void {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new TypeError(`schedule: ${name} must be an integer, got ${String(v)}`);
  if (v < min) throw new RangeError(`schedule: ${name} must be >= ${min}, got ${v}`);
}

function checkUnit(name: string, v: number): void {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new TypeError(`schedule: ${name} must be a finite number, got ${String(v)}`);
  if (!(v > 0 && v < 1)) throw new RangeError(`schedule: ${name} must lie in (0, 1), got ${v}`);
}

/** The betas of LDM's make_beta_schedule, in float64. */
export function makeBetaSchedule(kind: BetaScheduleKind, T: number, opts: BetaScheduleOptions = {}): Float64Array {
  checkPositiveInt('timesteps', T, 2);
  const linearStart = opts.linearStart ?? 1e-4;
  const linearEnd = opts.linearEnd ?? 2e-2;
  const cosineS = opts.cosineS ?? 8e-3;
  switch (kind) {
    case 'linear': {
      checkUnit('linearStart', linearStart);
      checkUnit('linearEnd', linearEnd);
      const b = linspace(Math.sqrt(linearStart), Math.sqrt(linearEnd), T);
      for (let i = 0; i < T; ++i) b[i] = b[i] * b[i];
      return b;
    }
    case 'ddpm_linear':
      checkUnit('linearStart', linearStart);
      checkUnit('linearEnd', linearEnd);
      return linspace(linearStart, linearEnd, T);
    case 'cosine': {
      if (typeof cosineS !== 'number' || !(cosineS > 0)) throw new RangeError(`schedule: cosineS must be > 0, got ${cosineS}`);
      const f = new Float64Array(T + 1);
      for (let i = 0; i <= T; ++i) {
        const c = Math.cos((((i / T + cosineS) / (1 + cosineS)) * Math.PI) / 2);
        f[i] = c * c;
      }
      const abar = f.map((v) => v / f[0]);
      const b = new Float64Array(T);
      for (let i = 0; i < T; ++i) {
        // The clip keeps beta < 1 where f reaches 0 at t = T.
        b[i] = Math.min(Math.max(1 - abar[i + 1] / abar[i], 0), 0.999);
      }
      return b;
    }
    default:
      throw new TypeError(`schedule: unknown kind '${String(kind)}' (expected 'linear', 'ddpm_linear' or 'cosine')`);
  }
}

/**
 * A discrete noise schedule with every table the samplers use, in float64.
 * Names follow LDM's register_schedule buffers.
 */
export class NoiseSchedule {
  readonly numTimesteps: number;
  readonly vPosterior: number;
  readonly betas: Float64Array;
  readonly alphas: Float64Array;
  readonly alphasCumprod: Float64Array;
  /** abar_{t-1}, with abar_{-1} = 1. */
  readonly alphasCumprodPrev: Float64Array;
  readonly sqrtAlphasCumprod: Float64Array;
  readonly sqrtOneMinusAlphasCumprod: Float64Array;
  readonly logOneMinusAlphasCumprod: Float64Array;
  readonly sqrtRecipAlphasCumprod: Float64Array;
  readonly sqrtRecipm1AlphasCumprod: Float64Array;
  /** Variance of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 7), mixed with beta_t by vPosterior. */
  readonly posteriorVariance: Float64Array;
  /** log(max(posteriorVariance, 1e-20)): finite at t = 0 where the variance is 0. */
  readonly posteriorLogVarianceClipped: Float64Array;
  /** Coefficients of x_0 and x_t in the posterior mean mu~_t (Ho et al. eq. 7). */
  readonly posteriorMeanCoef1: Float64Array;
  readonly posteriorMeanCoef2: Float64Array;
  /** 0.5 * log(abar_t): the log of alpha_t in the (alpha_t, sigma_t) notation of DPM-Solver. */
  readonly logAlphas: Float64Array;

  constructor(betas: ArrayLike<number>, opts: { vPosterior?: number } = {}) {
    const T = betas.length;
    checkPositiveInt('number of betas', T, 2);
    const v = opts.vPosterior ?? 0;
    if (typeof v !== 'number' || !(v >= 0 && v <= 1)) throw new RangeError(`schedule: vPosterior must lie in [0, 1], got ${v}`);
    this.numTimesteps = T;
    this.vPosterior = v;
    const mk = () => new Float64Array(T);
    this.betas = Float64Array.from(betas);
    for (let t = 0; t < T; ++t) {
      const b = this.betas[t];
      if (!(b > 0 && b < 1)) throw new RangeError(`schedule: betas[${t}] = ${b} is outside (0, 1)`);
    }
    this.alphas = mk();
    this.alphasCumprod = mk();
    this.alphasCumprodPrev = mk();
    this.sqrtAlphasCumprod = mk();
    this.sqrtOneMinusAlphasCumprod = mk();
    this.logOneMinusAlphasCumprod = mk();
    this.sqrtRecipAlphasCumprod = mk();
    this.sqrtRecipm1AlphasCumprod = mk();
    this.posteriorVariance = mk();
    this.posteriorLogVarianceClipped = mk();
    this.posteriorMeanCoef1 = mk();
    this.posteriorMeanCoef2 = mk();
    this.logAlphas = mk();
    let acc = 1;
    for (let t = 0; t < T; ++t) {
      const b = this.betas[t];
      const a = 1 - b;
      const prev = acc;
      acc *= a; // the same left-to-right product as np.cumprod
      this.alphas[t] = a;
      this.alphasCumprod[t] = acc;
      this.alphasCumprodPrev[t] = prev;
      this.sqrtAlphasCumprod[t] = Math.sqrt(acc);
      this.sqrtOneMinusAlphasCumprod[t] = Math.sqrt(1 - acc);
      this.logOneMinusAlphasCumprod[t] = Math.log(1 - acc);
      this.sqrtRecipAlphasCumprod[t] = Math.sqrt(1 / acc);
      this.sqrtRecipm1AlphasCumprod[t] = Math.sqrt(1 / acc - 1);
      const pv = ((1 - v) * b * (1 - prev)) / (1 - acc) + v * b;
      this.posteriorVariance[t] = pv;
      this.posteriorLogVarianceClipped[t] = Math.log(Math.max(pv, 1e-20));
      this.posteriorMeanCoef1[t] = (b * Math.sqrt(prev)) / (1 - acc);
      this.posteriorMeanCoef2[t] = ((1 - prev) * Math.sqrt(a)) / (1 - acc);
      this.logAlphas[t] = 0.5 * Math.log(acc);
    }
  }

  static fromConfig(cfg: ScheduleConfig = {}): NoiseSchedule {
    const betas = makeBetaSchedule(cfg.kind ?? 'linear', cfg.timesteps ?? 1000, cfg);
    return new NoiseSchedule(betas, { vPosterior: cfg.vPosterior });
  }

  private checkTime(t: number): void {
    if (typeof t !== 'number' || !(t >= 0 && t <= this.numTimesteps - 1))
      throw new RangeError(`schedule: time ${t} is outside [0, ${this.numTimesteps - 1}]`);
  }

  /**
   * log(alpha_t) = 0.5 log(abar_t) at a fractional model time t in [0, T-1], interpolated
   * linearly between the integer steps: DPM-Solver's NoiseScheduleVP('discrete') rule, in
   * model time rather than its t_cont = (t + 1) / T (the two are the same affine line).
   */
  logAlpha(t: number): number {
    this.checkTime(t);
    const i = Math.min(Math.floor(t), this.numTimesteps - 2);
    const f = t - i;
    return f === 0 ? this.logAlphas[i] : this.logAlphas[i] + f * (this.logAlphas[i + 1] - this.logAlphas[i]);
  }

  /** abar at a fractional model time (exact table value at integers). */
  alphaBar(t: number): number {
    this.checkTime(t);
    return Number.isInteger(t) ? this.alphasCumprod[t] : Math.exp(2 * this.logAlpha(t));
  }

  /** Half the log-SNR, lambda_t = log(alpha_t / sigma_t), DPM-Solver's time variable. */
  lambda(t: number): number {
    const la = this.logAlpha(t);
    return la - 0.5 * Math.log(-Math.expm1(2 * la));
  }

  /** The model time whose lambda is `lambda` (the inverse of lambda() over [0, T-1]). */
  timeForLambda(lambda: number): number {
    // log alpha = -0.5 log(1 + e^{-2 lambda}), then invert the piecewise-linear log alpha.
    const m = -2 * lambda;
    const la = -0.5 * (m > 0 ? m + Math.log1p(Math.exp(-m)) : Math.log1p(Math.exp(m)));
    const L = this.logAlphas;
    const last = this.numTimesteps - 1;
    if (la >= L[0]) return 0;
    if (la <= L[last]) return last;
    // L decreases with t: find i with L[i] >= la > L[i+1].
    let lo = 0, hi = last;
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (L[mid] >= la) lo = mid;
      else hi = mid;
    }
    return lo + (la - L[lo]) / (L[lo + 1] - L[lo]);
  }
}

/** A schedule from a config (default: LDM 'linear', T = 1000), or the schedule itself. */
export function makeSchedule(s: NoiseSchedule | ScheduleConfig = {}): NoiseSchedule {
  return s instanceof NoiseSchedule ? s : NoiseSchedule.fromConfig(s);
}
