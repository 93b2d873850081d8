// Ancestral sampling of Ho et al. 2020 (Algorithm 2), in the form LDM uses:
// predict x_0 from epsilon, then draw from the Gaussian posterior
// q(x_{t-1} | x_t, x_0) with the predicted x_0 plugged in. All T steps.
import { clamp, lincomb } from '../../tensor/ops/elementwise';
import type { Tensor } from '../../tensor/tensor';
import type { NoiseSchedule } from '../schedule';
import { type EpsModel, type SamplerOptions, checkSamplerOptions, runSampler } from './common';

export interface DdpmOptions extends SamplerOptions {
  /** Clamp the predicted x_0 to [-1, 1] (LDM's clip_denoised; pixel-space data). Default false. */
  clipDenoised?: boolean;
}

export async function sampleDdpm(model: EpsModel, schedule: NoiseSchedule, opts: DdpmOptions): Promise<Tensor> {
  checkSamplerOptions(opts);
  const T = schedule.numTimesteps;
  const s = schedule;
  return runSampler(opts, T, ({ x }, i, loop) => {
    const t = T - 1 - i;
    const eps = loop.eps(model, x, t);
    // x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), eq. 4 solved for x_0.
    let x0 = lincomb([x, eps], [s.sqrtRecipAlphasCumprod[t], -s.sqrtRecipm1AlphasCumprod[t]]);
    if (opts.clipDenoised) x0 = clamp(x0, -1, 1);
    // Posterior mean mu~_t(x_t, x_0) of eq. 7; variance beta~_t (LDM's v_posterior mix),
    // no noise on the last step (t = 0), where the output is mu~_0 = x_0.
    const c1 = s.posteriorMeanCoef1[t], c2 = s.posteriorMeanCoef2[t];
    if (t === 0) return { x: lincomb([x0, x], [c1, c2]), history: [] };
    const z = loop.gen.randn(x.shape, loop.device);
    return { x: lincomb([x0, x, z], [c1, c2, Math.exp(0.5 * s.posteriorLogVarianceClipped[t])]), history: [] };
  });
}
