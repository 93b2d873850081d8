// One entry point over the four samplers.
import { zerosLike } from '../../tensor/ops/creation';
import { Generator } from '../../tensor/random';
import type { Tensor } from '../../tensor/tensor';
import { type NoiseSchedule, type ScheduleConfig, makeSchedule } from '../schedule';
import type { EpsModel, SamplerOptions } from './common';
import { sampleDdim, type DdimDiscretize } from './ddim';
import { sampleDdpm } from './ddpm';
import { sampleDpmSolverPP, type DpmSkipType } from './dpm_solver';
import { samplePlms } from './plms';

export * from './common';
export { DDIM_DISCRETIZE, makeDdimTimesteps, nearestUniformCounts, uniformLayout, uniformLayoutMessage, ddimSamplingParameters, ddimStepCoefficients, sampleDdim } from './ddim';
export type { DdimDiscretize, DdimOptions, DdimParameters } from './ddim';
export { sampleDdpm } from './ddpm';
export type { DdpmOptions } from './ddpm';
export { samplePlms } from './plms';
export type { PlmsOptions } from './plms';
export { dpmSolverTimesteps, sampleDpmSolverPP } from './dpm_solver';
export type { DpmSkipType, DpmSolverOptions } from './dpm_solver';

export type SamplerName = 'ddpm' | 'ddim' | 'plms' | 'dpmpp';
export const SAMPLERS: readonly SamplerName[] = ['ddpm', 'ddim', 'plms', 'dpmpp'];

export interface SampleOptions extends SamplerOptions {
  sampler: SamplerName;
  /**
   * Number of steps (model-call rounds) for ddim / plms / dpmpp, default 50. DDPM always runs
   * all T steps: leave steps unset or equal to T for it.
   */
  steps?: number;
  /** DDIM's eta (default 0). plms and dpmpp are deterministic and accept only 0; ddpm ignores it. */
  eta?: number;
  /** The noise schedule, or a config for one (default: LDM 'linear', T = 1000). */
  schedule?: NoiseSchedule | ScheduleConfig;
  /** ddim / plms timestep selection (default 'uniform'). */
  ddimDiscretize?: DdimDiscretize;
  /** dpmpp timestep selection (default 'time_uniform'). */
  skipType?: DpmSkipType;
  /** dpmpp: first-order last step when steps < 10 (default true). */
  lowerOrderFinal?: boolean;
  /** Clamp the predicted x_0 to [-1, 1] (default false): ddpm, ddim, plms (eps from the clamped x_0), dpmpp (the data prediction). */
  clipDenoised?: boolean;
}

/**
 * Draws a batch of samples x_0 (float32, opts.shape) from the model: deterministic for a
 * seed, one onProgress call per step, stoppable with opts.signal (rejects with an
 * Error named 'AbortError', having freed what it allocated). The caller owns the result.
 */
export async function sample(model: EpsModel, opts: SampleOptions): Promise<Tensor> {
  if (typeof model !== 'function') throw new TypeError('sample: model must be a function (x, t) => eps');
  if (!opts || typeof opts !== 'object') throw new TypeError('sample: options are required');
  const schedule = makeSchedule(opts.schedule);
  const steps = opts.steps ?? 50;
  switch (opts.sampler) {
    case 'ddpm':
      if (opts.steps !== undefined && opts.steps !== schedule.numTimesteps)
        throw new RangeError(`sample: ddpm runs all ${schedule.numTimesteps} steps; got steps = ${opts.steps} (use ddim for fewer)`);
      return sampleDdpm(model, schedule, opts);
    case 'ddim':
      return sampleDdim(model, schedule, { ...opts, steps });
    case 'plms':
      return samplePlms(model, schedule, { ...opts, steps });
    case 'dpmpp':
      if ((opts.eta ?? 0) !== 0) throw new RangeError(`sample: dpmpp is deterministic; eta must be 0, got ${opts.eta}`);
      return sampleDpmSolverPP(model, schedule, { ...opts, steps });
    default:
      throw new TypeError(`sample: unknown sampler '${String(opts.sampler)}' (expected ${SAMPLERS.join(', ')})`);
  }
}

/**
 * How many normal draws one sampled value costs: x_T plus every step's noise
 * (DDPM, DDIM with eta > 0). Counted by running the sampler on a single value
 * with a zero model, so it follows the samplers' code rather than restating it.
 * A batch of shape (B, ...) advances its Generator by B * prod(...) times this,
 * whatever the values: which is what lets batch b of a run start at a known
 * offset on any rank (see src/dist/shard.ts).
 */
export async function noiseDrawsPerValue(opts: Omit<SampleOptions, 'shape' | 'generator' | 'seed' | 'x_T' | 'onProgress' | 'signal' | 'device'>): Promise<number> {
  const gen = new Generator(0);
  const x = await sample((v) => zerosLike(v), { ...opts, shape: [1], generator: gen });
  x.dispose();
  return gen.offset;
}
