// Glue for quantization-aware training with the project's trainer
// (src/train/trainer.ts, its `prepare` hook): the float UNet is quantized
// and initialised by calibration (static steps from the statistics, TDQ
// modules fitted to the per-timestep steps, as the paper initialises QAT),
// and its parameters are split into the float weights and the quantizer
// parameters, each group with its own learning rate.
import type { Denoiser } from '../models/diffusion';
import type { ParamGroupSpec } from '../optim/adam';
import { Generator } from '../tensor/random';
import { type CalibConditioning, type CalibrateOptions, calibrate } from './calibrate';
import type { NoiseSchedule } from '../diffusion/schedule';
import { type QuantConfig, resolveQuantConfig } from './config';
import { type QuantizedModel, quantizeModel } from './quantize_model';
import { makeSchedule } from '../diffusion/schedule';

export interface QatOptions extends CalibrateOptions {
  /**
   * Learning rate of the quantizer group (steps, PACT bounds, TDQ MLPs), as
   * a number or a function of the base learning rate. Default: the base
   * rate (LSQ's gradient scaling keeps the steps' updates in proportion).
   */
  quantLr?: number | ((baseLr: number) => number);
  /**
   * Calibrate before training (default true). Pass false when resuming: the
   * checkpoint then restores every quantizer, and only the structure is needed.
   */
  calibrate?: boolean;
}

/** What the trainer tells the hook about a latent model (see TrainOptions.prepare). */
export interface QatContext {
  schedule: NoiseSchedule;
  sampleShape: number[];
  conditioning?: CalibConditioning;
}

export interface PreparedQat {
  model: QuantizedModel;
  groups: (baseLr: number) => ParamGroupSpec[];
  metadata: Record<string, string>;
}

/** The trainer's `prepare` hook for QAT with this quantization config. */
export function qatPrepare(cfgIn: QuantConfig, opts: QatOptions): (unet: Denoiser, ctx?: QatContext) => Promise<PreparedQat> {
  const cfg = resolveQuantConfig(cfgIn);
  return async (unet, ctx) => {
    // A latent model: its schedule, latent shape and class conditioning replace the pixel config's.
    const o: QatOptions = ctx ? { ...opts, schedule: ctx.schedule, sampleShape: ctx.sampleShape, conditioning: ctx.conditioning } : opts;
    const model = o.calibrate === false
      ? quantizeModel(unet, cfg, { timesteps: makeSchedule(o.schedule).numTimesteps, gen: o.gen ?? new Generator(o.seed) })
      : await calibrate(unet, cfg, o);
    model.train();
    const groups = (baseLr: number): ParamGroupSpec[] => {
      const q = opts.quantLr === undefined ? baseLr : typeof opts.quantLr === 'number' ? opts.quantLr : opts.quantLr(baseLr);
      return [
        { name: 'float', params: model.floatParameters(), lr: baseLr },
        { name: 'quant', params: model.quantParameters(), lr: q },
      ];
    };
    return { model, groups, metadata: model.checkpointMetadata() };
  };
}
