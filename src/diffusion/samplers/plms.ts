// PLMS: the pseudo linear multistep method of Liu et al. 2022 ("Pseudo
// Numerical Methods for Diffusion Models on Manifolds", PNDM), as LDM's
// PLMSSampler runs it: the DDIM transfer step (PNDM eq. 9, which is DDIM
// eq. 12 with sigma = 0) driven by an Adams-Bashforth combination of the
// current and up to three earlier epsilon predictions. LDM starts it without
// PNDM's Runge-Kutta warm-up: the first step is a pseudo improved Euler (Heun)
// step with two model calls, then orders 2, 3 and 4 as history accumulates.
import { lincomb } from '../../tensor/ops/elementwise';
import type { Tensor } from '../../tensor/tensor';
import type { NoiseSchedule } from '../schedule';
import { type EpsModel, type Loop, type SamplerOptions, checkSamplerOptions, clipEpsilon, runSampler } from './common';
import { type DdimDiscretize, ddimSamplingParameters, ddimStepCoefficients, makeDdimTimesteps } from './ddim';

export interface PlmsOptions extends SamplerOptions {
  steps: number;
  /** PLMS is deterministic: only eta = 0 is accepted (as LDM). */
  eta?: number;
  ddimDiscretize?: DdimDiscretize;
  /**
   * Clamp the predicted x_0 of every model call to [-1, 1] and use the epsilon consistent
   * with it (as DDIM's clipDenoised), so the multistep history holds clipped predictions.
   */
  clipDenoised?: boolean;
}

/**
 * Adams-Bashforth weights on [eps_t, eps_{t+1}, eps_{t+2}, eps_{t+3}] (newest first)
 * given 1, 2 or 3 earlier predictions: the PNDM linear multistep rule of orders 2-4.
 */
const AB_WEIGHTS: Record<number, readonly number[]> = {
  1: [3 / 2, -1 / 2],
  2: [23 / 12, -16 / 12, 5 / 12],
  3: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
};

export async function samplePlms(model: EpsModel, schedule: NoiseSchedule, opts: PlmsOptions): Promise<Tensor> {
  checkSamplerOptions(opts);
  if ((opts.eta ?? 0) !== 0) throw new RangeError(`sample: PLMS needs eta = 0, got ${opts.eta}`);
  const ts = makeDdimTimesteps(opts.ddimDiscretize ?? 'uniform', opts.steps, schedule.numTimesteps);
  const p = ddimSamplingParameters(schedule.alphasCumprod, ts, 0);
  const coeffs = ts.map((_, k) => ddimStepCoefficients(p.alphas[k], p.alphasPrev[k], 0));
  const n = ts.length;
  const abar = schedule.alphasCumprod;
  const epsAt = (loop: Loop, xt: Tensor, t: number): Tensor => {
    const e = loop.eps(model, xt, t);
    return opts.clipDenoised ? clipEpsilon(xt, e, abar[t]) : e;
  };
  return runSampler(opts, n, ({ x, history }, i, loop) => {
    const k = n - 1 - i;
    const { cx, ce } = coeffs[k];
    const eps = epsAt(loop, x, ts[k]);
    let combined: Tensor[], weights: number[];
    if (history.length === 0) {
      // Heun: a DDIM step to the next timestep, the model there, then the mean slope.
      const xNext = lincomb([x, eps], [cx, ce]);
      const epsNext = epsAt(loop, xNext, ts[Math.max(k - 1, 0)]);
      combined = [eps, epsNext];
      weights = [0.5, 0.5];
    } else {
      combined = [eps, ...history];
      weights = [...AB_WEIGHTS[history.length]];
    }
    // The carried history is the raw model output at each visited x (newest first), at most 3.
    const nextHistory = [eps, ...history].slice(0, 3);
    return { x: lincomb([x, ...combined], [cx, ...weights.map((w) => ce * w)]), history: nextHistory };
  });
}
