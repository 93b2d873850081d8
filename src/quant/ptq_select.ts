// Two calibration choices of the PTQ rows of the results table (issue 13),
// as plain functions on numbers:
//
// 1. How smooth the TDQ fit's targets are. The per-timestep steps come from a
//    few calibration trajectories and are noisy; an MLP fitted to them traces
//    that noise. The log steps are smoothed over t (local linear regression,
//    Gaussian weights of bandwidth h timesteps) before the fit, and h is
//    chosen on held-out trajectories: the h whose smoothed curve of the fit
//    set is closest to the (independent, equally noisy) held-out curve. The
//    held-out noise is the same for every h, so the smallest held-out error
//    is the best bias/variance trade-off (cross-validation).
//
// 2. PTQ4DM's calibration timesteps ("normally distributed time-step
//    calibration", Shang et al., CVPR 2023, arXiv 2211.15736). The paper draws
//    each calibration sample's timestep t from a normal distribution N(mu, sigma)
//    skewed toward the end of sampling (mu <= T/2) and takes x_t from the
//    full-precision denoising process started at x_T. The authors' code
//    (github.com/42Shawn/PTQ4DM, improved-diffusion/scripts/quant_image_sample.py,
//    generate_t with t_mode 'normal') draws t = int(N(mean, std) * T), clamped
//    to [0, T - 1]; their script quant_sample_ddim_in_backward_DNTC.sh uses
//    mean 0.4, std 0.4 (argument defaults 0.5, 0.35) and 1,024 samples. The
//    clamp piles the mass outside [0, T) onto the two ends: a skewed,
//    truncated normal. (Their backward_t_calib_data_generator picks the image
//    at sampling-loop index t but passes t to the model as the timestep; we
//    follow the paper: the activations of the model at timestep t, on x_t.)
//    Activations are then calibrated once (static steps) on that mix.
import type { TdqTarget } from './step_search';

/**
 * Local linear regression of y on x with Gaussian weights of bandwidth h,
 * evaluated at every x. h = 0 returns y unchanged; h = Infinity is the
 * least-squares line.
 */
export function localLinearSmooth(x: readonly number[], y: readonly number[], h: number): number[] {
  if (x.length !== y.length) throw new RangeError(`localLinearSmooth: ${x.length} x for ${y.length} y`);
  if (!(h >= 0)) throw new RangeError(`localLinearSmooth: bandwidth must be >= 0, got ${h}`);
  if (h === 0 || x.length < 3) return [...y];
  return x.map((x0) => {
    let s0 = 0, s1 = 0, s2 = 0, t0 = 0, t1 = 0;
    for (let i = 0; i < x.length; ++i) {
      const d = x[i] - x0;
      const w = Number.isFinite(h) ? Math.exp(-0.5 * (d / h) ** 2) : 1;
      s0 += w;
      s1 += w * d;
      s2 += w * d * d;
      t0 += w * y[i];
      t1 += w * d * y[i];
    }
    const det = s0 * s2 - s1 * s1;
    // Too narrow for a line (one point carries the weight): the weighted mean.
    return det > 1e-12 * s0 * s2 ? (s2 * t0 - s1 * t1) / det : t0 / s0;
  });
}

/** A target with its steps smoothed in log space (bandwidth h timesteps). */
export function smoothTarget(tg: TdqTarget, h: number): TdqTarget {
  const logs = tg.step.map((s) => {
    if (!(s > 0)) throw new RangeError(`smoothTarget: steps must be positive, got ${s}`);
    return Math.log(s);
  });
  return { t: [...tg.t], step: localLinearSmooth(tg.t, logs, h).map(Math.exp) };
}

export const DEFAULT_BANDWIDTHS: readonly number[] = [0, 10, 20, 40, 80, 160, 320, Infinity];

export interface SmoothingChoice {
  /** The chosen bandwidth (timesteps). */
  h: number;
  /** Mean squared log-step error against the held-out targets, per candidate (same order). */
  errors: { h: number; error: number }[];
}

/**
 * Picks the bandwidth whose smoothed fit targets are closest (mean squared
 * log step over all quantizers and timesteps) to the held-out targets, which
 * come from other calibration trajectories at the same timesteps.
 */
export function selectSmoothing(fit: readonly TdqTarget[], heldOut: readonly TdqTarget[], candidates: readonly number[] = DEFAULT_BANDWIDTHS): SmoothingChoice {
  if (fit.length !== heldOut.length || !fit.length) throw new RangeError(`selectSmoothing: ${fit.length} fit targets for ${heldOut.length} held-out ones`);
  if (!candidates.length) throw new RangeError('selectSmoothing: no candidate bandwidths');
  fit.forEach((f, q) => {
    const o = heldOut[q];
    if (f.t.length !== o.t.length || f.t.some((t, i) => t !== o.t[i])) throw new RangeError(`selectSmoothing: target ${q}: the held-out timesteps differ from the fit's (${o.t.slice(0, 4).join(',')}... vs ${f.t.slice(0, 4).join(',')}...)`);
  });
  const errors = candidates.map((h) => {
    let s = 0, n = 0;
    fit.forEach((f, q) => {
      const sm = smoothTarget(f, h).step;
      heldOut[q].step.forEach((v, i) => {
        s += (Math.log(sm[i]) - Math.log(v)) ** 2;
        n++;
      });
    });
    return { h, error: s / n };
  });
  let best = errors[0];
  for (const e of errors) if (e.error < best.error) best = e;
  return { h: best.h, errors };
}

/** The normal draws behind PTQ4DM's timesteps (Box-Muller on a uniform source). */
function normal(rand: () => number): number {
  const u = Math.max(rand(), 1e-300), v = rand();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/**
 * PTQ4DM's calibration draw over `steps` calibration timesteps in ascending
 * order (index 0: the smallest t, the end of sampling): `n` draws of
 * int(N(mean, std) * steps), truncated toward zero and clamped to
 * [0, steps - 1] as the authors' generate_t does over t = 0..T-1; returns how
 * many draws fall on each index.
 */
export function ndtcCounts(n: number, steps: number, rand: () => number, mean = 0.4, std = 0.4): number[] {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`ndtcCounts: n must be a positive integer, got ${n}`);
  if (!Number.isInteger(steps) || steps < 1) throw new RangeError(`ndtcCounts: steps must be a positive integer, got ${steps}`);
  if (!(std >= 0)) throw new RangeError(`ndtcCounts: std must be >= 0, got ${std}`);
  const counts = new Array<number>(steps).fill(0);
  for (let i = 0; i < n; ++i) {
    const k = Math.trunc((mean + std * normal(rand)) * steps);
    counts[Math.min(steps - 1, Math.max(0, k))]++;
  }
  return counts;
}
