// DPM-Solver++(2M): Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
// Sampling of Diffusion Probabilistic Models", Algorithm 2. A second-order
// multistep exponential integrator of the diffusion ODE in data-prediction
// form, one model call per step.
//
// Notation: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t =
// log(alpha_t / sigma_t), x_theta(x, t) = (x - sigma_t eps(x, t)) / alpha_t.
// With h = lambda_t - lambda_s the exact solution of the ODE from s to t is
//   x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x_theta dlambda,
// and the solver approximates x_theta in lambda by a constant (first step) or by
// the line through the last two evaluations (every later step).
//
// Discrete-time models: time is continuous here, as in the DPM-Solver reference's
// NoiseScheduleVP('discrete'): log alpha is interpolated linearly between integer
// steps (NoiseSchedule.logAlpha) and the model receives fractional timesteps in
// [0, T-1]. The reference feeds the model (t_cont - 1/T) * 1000; we feed
// (t_cont - 1/T) * T, which is the same for T = 1000 and keeps integer model times
// on the training grid for other T. The solve runs from T-1 to 0 and returns x at
// t = 0 (abar_0, like DDIM's last step), without a final denoising call.
import { clamp, lincomb } from '../../tensor/ops/elementwise';
import type { Tensor } from '../../tensor/tensor';
import { linspace, type NoiseSchedule } from '../schedule';
import { type EpsModel, type SamplerOptions, checkSamplerOptions, checkSteps, runSampler } from './common';

/**
 * - 'time_uniform': model times equally spaced from T-1 down to 0 (the reference's default,
 *   which it recommends for guided / high-resolution sampling).
 * - 'logSNR': equally spaced in lambda (recommended there for low-resolution, unguided models).
 */
export type DpmSkipType = 'time_uniform' | 'logSNR';

/** The steps + 1 model times t_0 = T-1 > ... > t_steps = 0 of the solve. */
export function dpmSolverTimesteps(schedule: NoiseSchedule, steps: number, skipType: DpmSkipType = 'time_uniform'): Float64Array {
  const T = schedule.numTimesteps;
  checkSteps(steps, T);
  if (skipType === 'time_uniform') return linspace(T - 1, 0, steps + 1);
  if (skipType === 'logSNR') {
    const lams = linspace(schedule.lambda(T - 1), schedule.lambda(0), steps + 1);
    const ts = lams.map((l) => schedule.timeForLambda(l));
    ts[0] = T - 1; // the endpoints exactly, whatever the rounding of the inverse
    ts[steps] = 0;
    return ts;
  }
  throw new TypeError(`sample: skipType must be 'time_uniform' or 'logSNR', got '${String(skipType)}'`);
}

export interface DpmSolverOptions extends SamplerOptions {
  steps: number;
  skipType?: DpmSkipType;
  /**
   * Use the first-order update for the last step when steps < 10 (the reference's
   * lower_order_final, which steadies very short solves). Default true.
   */
  lowerOrderFinal?: boolean;
  /**
   * Clamp the data prediction x_theta to [-1, 1] at every step (clip_denoised; the same as
   * taking the epsilon consistent with the clamped x_0, as DDIM does). Default false.
   */
  clipDenoised?: boolean;
}

export async function sampleDpmSolverPP(model: EpsModel, schedule: NoiseSchedule, opts: DpmSolverOptions): Promise<Tensor> {
  checkSamplerOptions(opts);
  const steps = opts.steps;
  const ts = dpmSolverTimesteps(schedule, steps, opts.skipType ?? 'time_uniform');
  const logAlpha = Array.from(ts, (t) => schedule.logAlpha(t));
  const alpha = logAlpha.map(Math.exp);
  const sigma = logAlpha.map((la) => Math.sqrt(-Math.expm1(2 * la)));
  const lambda = logAlpha.map((la, i) => la - Math.log(sigma[i]));
  const lowerFinal = (opts.lowerOrderFinal ?? true) && steps < 10;

  return runSampler(opts, steps, ({ x, history }, i, loop) => {
    // From t_i to t_{i+1}; history[0] is x_theta at t_{i-1}.
    const eps = loop.eps(model, x, ts[i]);
    let d = lincomb([x, eps], [1 / alpha[i], -sigma[i] / alpha[i]]); // x_theta(x_{t_i}, t_i)
    if (opts.clipDenoised) d = clamp(d, -1, 1);
    const h = lambda[i + 1] - lambda[i];
    // alpha_{t_{i+1}} (1 - e^{-h}) = -alpha_{t_{i+1}} (e^{-h} - 1): the weight of the x_theta term.
    const k = alpha[i + 1] * -Math.expm1(-h);
    const ratio = sigma[i + 1] / sigma[i];
    const firstOrder = history.length === 0 || (lowerFinal && i === steps - 1);
    let xNext: Tensor;
    if (firstOrder) {
      // DPM-Solver++(1) (= DDIM): x_{t_{i+1}} = (sigma_{i+1}/sigma_i) x - alpha_{i+1} (e^{-h} - 1) D_i.
      xNext = lincomb([x, d], [ratio, k]);
    } else {
      // Algorithm 2: r = h_{i-1} / h_i, D = (1 + 1/(2r)) D_i - (1/(2r)) D_{i-1}.
      const r = (lambda[i] - lambda[i - 1]) / h;
      xNext = lincomb([x, d, history[0]], [ratio, k * (1 + 1 / (2 * r)), -k / (2 * r)]);
    }
    return { x: xNext, history: [d] };
  });
}
