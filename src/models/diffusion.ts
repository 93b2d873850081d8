// A pixel-space diffusion model (LDM's DDPM class, minus Lightning): the UNet,
// its noise schedule and the training loss. Built from a validated config.
import type { DDPMUNetParams, ModelConfig, UNetParams } from '../config/schema';
import { DDPM_UNET_TARGET } from '../config/schema';
import { makeBetaSchedule, NoiseSchedule, type BetaScheduleKind } from '../diffusion/schedule';
import type { EpsModel } from '../diffusion/samplers/common';
import { abs, add, mean, mul, square, sub } from '../tensor/ops/elementwise';
import { fromArray } from '../tensor/tensor';
import type { Generator } from '../tensor/random';
import type { Tensor } from '../tensor/tensor';
import type { Module } from '../nn/module';
import { DDPMUNet } from './ddpm_unet';
import { UNetModel } from './openai_unet';

/**
 * What the training loop, the samplers and the quantizer need from a
 * denoiser: (x, t, y?, context?) -> predicted noise (y: class labels;
 * context: cross-attention tokens). Full-precision UNets and QuantizedModel alike.
 */
export interface Denoiser extends Module {
  forward(x: Tensor, t: Tensor, y?: Tensor, context?: Tensor): Tensor;
}

/** CompVis names -> this project's schedule kinds (CompVis 'linear' is sqrt-linear). */
const SCHEDULE_KINDS: Record<string, BetaScheduleKind> = { linear: 'linear', sqrt_linear: 'ddpm_linear', cosine: 'cosine' };

export function scheduleFromConfig(p: { beta_schedule: string; timesteps: number; linear_start: number; linear_end: number; cosine_s: number }): NoiseSchedule {
  const kind = SCHEDULE_KINDS[p.beta_schedule];
  if (!kind) throw new RangeError(`beta_schedule '${p.beta_schedule}' is not supported (use linear, sqrt_linear or cosine)`);
  return new NoiseSchedule(makeBetaSchedule(kind, p.timesteps, { linearStart: p.linear_start, linearEnd: p.linear_end, cosineS: p.cosine_s }));
}

export function buildUNet(unet: { target: string; params: unknown }, gen: Generator): Denoiser {
  if (unet.target === DDPM_UNET_TARGET) return new DDPMUNet(unet.params as DDPMUNetParams, gen);
  const p = unet.params as UNetParams;
  return new UNetModel({ ...p, num_classes: p.num_classes ?? null }, gen);
}

export class PixelDiffusion {
  readonly schedule: NoiseSchedule;
  readonly lossType: 'l1' | 'l2';
  readonly imageShape: [number, number, number];

  constructor(readonly config: ModelConfig, readonly unet: Denoiser) {
    if (config.target !== 'tdq_native.models.diffusion.DDPM')
      throw new TypeError(`model.target '${config.target}' is not a pixel-space DDPM (latent diffusion needs the first-stage autoencoder, which is not implemented yet)`);
    const p = config.params;
    if (p.parameterization !== 'eps') throw new RangeError(`model.params.parameterization '${p.parameterization}' is not supported yet (use eps)`);
    this.schedule = scheduleFromConfig(p);
    this.lossType = p.loss_type;
    this.imageShape = [p.channels, p.image_size, p.image_size];
  }

  /**
   * The epsilon-prediction loss of a batch x0 (B, C, H, W): one timestep and
   * one noise draw per sample, from `gen`. Returns the scalar loss.
   */
  /**
   * With `shard`, x0 is rows [start, start + B) of a global batch of `total`
   * (data-parallel training): the timesteps and noise are drawn for the whole
   * global batch and this slice taken, so the ranks together compute exactly
   * what one process does on the global batch.
   */
  trainingLoss(x0: Tensor, gen: Generator, y?: Tensor | null, shard?: { start: number; total: number }): { loss: Tensor; timesteps: number[] } {
    const b = x0.shape[0];
    const T = this.schedule.numTimesteps;
    const start = shard?.start ?? 0, total = shard?.total ?? b;
    if (start < 0 || start + b > total) throw new RangeError(`trainingLoss: rows [${start}, ${start + b}) do not fit a global batch of ${total}`);
    const timesteps = Array.from({ length: total }, () => gen.randint(T)).slice(start, start + b);
    const a = new Float32Array(b), s = new Float32Array(b);
    timesteps.forEach((t, i) => {
      a[i] = this.schedule.sqrtAlphasCumprod[t];
      s[i] = this.schedule.sqrtOneMinusAlphasCumprod[t];
    });
    const noise = shard ? gen.randnSlice(x0.shape, start, total, x0.device) : gen.randn(x0.shape, x0.device);
    const xt = add(mul(x0, fromArray(a, [b, 1, 1, 1], 'float32', x0.device)), mul(noise, fromArray(s, [b, 1, 1, 1], 'float32', x0.device)));
    const eps = this.unet.forward(xt, fromArray(timesteps, [b], 'float32', x0.device), y ?? undefined);
    const diff = sub(eps, noise);
    return { loss: mean(this.lossType === 'l2' ? square(diff) : abs(diff)), timesteps };
  }

  /** The denoiser as a sampler's model (class labels fixed per call when given). */
  epsModel(y?: Tensor): EpsModel {
    return (x, t) => this.unet.forward(x, t, y);
  }
}
