// Glue for quantization-aware training with the project's trainer
// (src/train/trainer.ts, its `prepare` hook): the float UNet is quantized
// and initialised by calibration (steps from the activation statistics; TDQ
// modules either started at the static step, as the authors' code does, or
// fitted to the per-timestep steps), and its parameters are split into
// three groups with their own learning rates: the float weights, the
// quantizer steps (weight steps, static activation steps, PACT bounds) and
// the TDQ MLPs (the authors' AdamW groups: lr, lr / 10, lr).
import type { Denoiser } from '../models/diffusion';
import type { ParamGroupSpec } from '../optim/adam';
import { Generator } from '../tensor/random';
import { type CalibConditioning, type CalibrateOptions, calibrate } from './calibrate';
import type { NoiseSchedule } from '../diffusion/schedule';
import { type QuantConfig, resolveQuantConfig } from './config';
import { type QuantizedModel, quantizeModel } from './quantize_model';
import { makeSchedule } from '../diffusion/schedule';
import { type WeightsFormat, saveQuantizedCheckpoint } from './weights_format';

export interface QatOptions extends CalibrateOptions {
  /**
   * Learning rate of the quantizer steps (weight steps, static activation
   * steps, PACT bounds), as a number or a function of the base learning
   * rate. Default: the base rate.
   */
  quantLr?: number | ((baseLr: number) => number);
  /** Learning rate of the TDQ MLPs (group 'tdq'), as quantLr. Default: quantLr's. */
  tdqLr?: number | ((baseLr: number) => number);
  /**
   * Calibrate before training (default true). Pass false when resuming: the
   * checkpoint then restores every quantizer, and only the structure is needed.
   */
  calibrate?: boolean;
  /**
   * How the final model (the trainer's model.safetensors) stores the
   * quantized weights: 'int' levels (the default) or 'float'. Training
   * checkpoints (resume) always keep float weights: QAT updates the float
   * weights below the grid, which the levels no longer hold, and the
   * optimizer moments and EMA are float anyway.
   */
  weightsFormat?: WeightsFormat;
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
  saveExport: (file: string, parts: { config: unknown; extraMetadata: Record<string, string> }) => Promise<void>;
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
      const rate = (r: QatOptions['quantLr'], dflt: number) => (r === undefined ? dflt : typeof r === 'number' ? r : r(baseLr));
      const q = rate(opts.quantLr, baseLr);
      const quant = model.quantParameters();
      const isMlp = ([n]: [string, unknown]) => /(^|\.)tdq\.mlp\./.test(n);
      const mlps = quant.filter(isMlp);
      return [
        { name: 'float', params: model.floatParameters(), lr: baseLr },
        { name: 'quant', params: quant.filter((p) => !isMlp(p)), lr: q },
        ...(mlps.length ? [{ name: 'tdq', params: mlps, lr: rate(opts.tdqLr, q) }] : []),
      ];
    };
    const saveExport = (file: string, parts: { config: unknown; extraMetadata: Record<string, string> }) =>
      saveQuantizedCheckpoint(file, { config: parts.config, model, extraMetadata: parts.extraMetadata, weightsFormat: opts.weightsFormat ?? 'int' });
    return { model, groups, metadata: model.checkpointMetadata(), saveExport };
  };
}
