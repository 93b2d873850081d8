// Latent diffusion (ldm.models.diffusion.ddpm.LatentDiffusion, minus
// Lightning): a UNet (`model.diffusion_model`) that denoises the latents of a
// frozen first-stage autoencoder (`first_stage_model`), optionally
// conditioned through a cond stage (`cond_stage_model`) by cross-attention.
// State-dict keys as upstream: model.diffusion_model.*, first_stage_model.*,
// cond_stage_model.*, and scale_factor (a buffer only with scale_by_std, as
// upstream, where it is a plain number otherwise).
//
// Not implemented, and errors naming what: conditioning keys concat, hybrid
// and adm; the first stage as cond stage; split_input_params (patch-wise
// first stage); the VLB term; a learned logvar.
import fs from 'node:fs';
import path from 'node:path';

import { readSafetensors } from '../io/safetensors';
import { loadTorchCheckpoint } from '../io/torch_ckpt';
import { Module } from '../nn/module';
import type { EpsModel } from '../diffusion/samplers/common';
import { timestepValues } from '../diffusion/samplers/common';
import { makeBetaSchedule, NoiseSchedule, type BetaScheduleKind } from '../diffusion/schedule';
import { noGrad } from '../tensor/autograd';
import { full } from '../tensor/ops/creation';
import { abs, add, addScalar, chunk, div, mean, mul, scale, sqrt, square, sub, sum } from '../tensor/ops';
import { cat } from '../tensor/ops/shape';
import { packageRoot } from '../tensor/native';
import { Generator } from '../tensor/random';
import { type Device, type Tensor, fromArray, runOp, shapeToString } from '../tensor/tensor';
import { type Autoencoder, AutoencoderKL, DiagonalGaussianDistribution, VQModel, VQModelInterface, buildAutoencoder, loadFirstStageStateDict } from './autoencoder';
import { ClassEmbedder, type ClassEmbedderConfig } from './conditioning';
import type { LatentDiffusionSpec } from './latent_config';
import { type UNetConfig, UNetModel } from './openai_unet';

// ---- Cond stages: the hook other conditioning encoders plug into ---------------

/** A conditioning encoder: upstream calls encode(c) when it has one (taking a Gaussian's mode), else forward(c). */
export interface CondStage extends Module {
  forward(c: unknown): Tensor;
  encode?(c: unknown): Tensor | DiagonalGaussianDistribution;
}

export type CondStageFactory = (params: Record<string, unknown>, gen: Generator) => CondStage;

const COND_STAGES = new Map<string, CondStageFactory>();

/** Makes `target` (e.g. ldm.modules.encoders.modules.ClassEmbedder) buildable by buildCondStage and accepted by the config reader. */
export function registerCondStage(target: string, factory: CondStageFactory): void {
  if (typeof target !== 'string' || !target) throw new TypeError('registerCondStage: target must be a non-empty string');
  if (typeof factory !== 'function') throw new TypeError(`registerCondStage('${target}'): factory must be a function`);
  COND_STAGES.set(target, factory);
}

// The class-conditional models' encoder (cin256, the project's fmnist-ldm).
registerCondStage('ldm.modules.encoders.modules.ClassEmbedder', (p, gen) => new ClassEmbedder(p as unknown as ClassEmbedderConfig, gen));

/** The cond-stage targets that can be built. */
export function condStageTargets(): string[] {
  return [...COND_STAGES.keys()];
}

/** upstream's instantiate_from_config for a cond_stage_config; null for an unconditional model. */
export function buildCondStage(config: { target: string; params?: Record<string, unknown> } | null | '__is_unconditional__', gen: Generator = new Generator(0)): CondStage | null {
  if (config === null || config === '__is_unconditional__') return null;
  const f = COND_STAGES.get(config.target);
  if (!f) throw new RangeError(`cond_stage_config: '${config.target}' is not implemented (implemented: ${condStageTargets().join(', ') || 'none'})`);
  return f(config.params ?? {}, gen);
}

// ---- The denoiser inside -------------------------------------------------------

/** The UNet as LatentDiffusion calls it: context is the cross-attention input (crossattn). */
export interface LatentDenoiser extends Module {
  forward(x: Tensor, t: Tensor, y?: Tensor, context?: Tensor): Tensor;
  /** use_spatial_transformer: true when the UNet takes a context. */
  readonly config?: { use_spatial_transformer?: boolean };
}

const NOT_IMPLEMENTED_KEYS: Record<string, string> = {
  concat: 'concat (the conditioning concatenated to the latents along channels)',
  hybrid: 'hybrid (concat and cross-attention together)',
  adm: 'adm (the conditioning as the UNet\'s class input y)',
};

/** Checks a conditioning key as upstream's DiffusionWrapper; only null and crossattn run. */
export function checkConditioningKey(key: unknown): null | 'crossattn' {
  if (key === null || key === undefined) return null;
  if (key === 'crossattn') return key;
  if (typeof key === 'string' && NOT_IMPLEMENTED_KEYS[key])
    throw new RangeError(`LatentDiffusion: conditioning_key '${key}' is not implemented (${NOT_IMPLEMENTED_KEYS[key]}); use crossattn or null`);
  throw new RangeError(`LatentDiffusion: conditioning_key must be one of null, concat, crossattn, hybrid, adm (upstream's); got ${JSON.stringify(key)}`);
}

/** upstream's DiffusionWrapper: key `diffusion_model`, routes the conditioning by conditioning_key. */
export class DiffusionWrapper extends Module {
  diffusionModel: LatentDenoiser;
  readonly conditioningKey: null | 'crossattn';
  constructor(unet: LatentDenoiser, conditioningKey: unknown) {
    super();
    this.conditioningKey = checkConditioningKey(conditioningKey);
    if (this.conditioningKey === 'crossattn' && unet.config?.use_spatial_transformer !== true)
      throw new TypeError('LatentDiffusion: conditioning_key crossattn needs a UNet with cross-attention (use_spatial_transformer); this UNet has none');
    this.diffusionModel = this.registerModule('diffusion_model', unet);
  }

  /** Puts another denoiser (the quantized UNet of QAT or PTQ) in the UNet's place; returns the old one, not disposed. */
  replaceDiffusionModel(m: LatentDenoiser): LatentDenoiser {
    const old = this.diffusionModel;
    this.replaceModule('diffusion_model', m);
    this.diffusionModel = m;
    return old;
  }
  forward(x: Tensor, t: Tensor, cond?: Tensor | null): Tensor {
    if (this.conditioningKey === null) {
      if (cond) throw new TypeError('LatentDiffusion: this model is unconditional (conditioning_key null); got a conditioning');
      return this.diffusionModel.forward(x, t);
    }
    if (!cond) throw new TypeError('LatentDiffusion: conditioning_key crossattn needs a conditioning (the context), got none');
    return this.diffusionModel.forward(x, t, undefined, cond);
  }
}

// ---- LatentDiffusion -----------------------------------------------------------

const SCHEDULE_KINDS: Record<string, BetaScheduleKind> = { linear: 'linear', sqrt_linear: 'ddpm_linear', cosine: 'cosine' };

export interface LatentDiffusionOptions {
  unet: LatentDenoiser;
  firstStage: Autoencoder;
  /** null or absent: unconditional. */
  condStage?: CondStage | null;
  /** As upstream after its defaults: null (unconditional) or crossattn; concat / hybrid / adm are errors. */
  conditioningKey?: string | null;
  timesteps?: number;
  betaSchedule?: 'linear' | 'sqrt_linear' | 'cosine';
  linearStart?: number;
  linearEnd?: number;
  cosineS?: number;
  lossType?: 'l1' | 'l2';
  parameterization?: 'eps' | 'x0';
  lSimpleWeight?: number;
  logvarInit?: number;
  scaleFactor?: number;
  scaleByStd?: boolean;
  condStageTrainable?: boolean;
  firstStageKey?: string;
  condStageKey?: string;
  imageSize?: number;
  channels?: number;
}

/** Draws the first-stage posterior with a Generator, or with explicit noise (of the latents' shape). */
export type PosteriorSampler = Generator | { noise: Tensor };

/**
 * Rows [start, start + B) of a global batch of `total` (data-parallel
 * training): every draw is made for the whole global batch and this slice
 * taken, so the ranks together compute what one process does.
 */
export interface BatchShard {
  start: number;
  total: number;
}

export interface PLossesResult {
  /** l_simple_weight * mean(loss_simple / exp(logvar) + logvar): what is minimised. */
  loss: Tensor;
  /** (B): the per-sample mean of the l1 / l2 error. */
  lossSimple: Tensor;
}

export class LatentDiffusion extends Module {
  readonly model: DiffusionWrapper;
  readonly firstStageModel: Autoencoder;
  readonly condStageModel: CondStage | null;
  readonly schedule: NoiseSchedule;
  readonly numTimesteps: number;
  readonly lossType: 'l1' | 'l2';
  readonly parameterization: 'eps' | 'x0';
  readonly lSimpleWeight: number;
  readonly logvarInit: number;
  readonly scaleByStd: boolean;
  readonly condStageTrainable: boolean;
  readonly firstStageKey: string;
  readonly condStageKey: string;
  readonly imageSize: number;
  readonly channels: number;
  /** The buffer `scale_factor` with scale_by_std, else null (the factor is then a fixed number). */
  readonly scaleFactorBuffer: Tensor | null;
  private readonly fixedScaleFactor: number;

  constructor(o: LatentDiffusionOptions) {
    super();
    const key = checkConditioningKey(o.conditioningKey ?? null);
    this.condStageModel = o.condStage ?? null;
    if (key === null && this.condStageModel) throw new TypeError('LatentDiffusion: a cond stage was given to an unconditional model (conditioning_key null)');
    if (key !== null && !this.condStageModel) throw new TypeError(`LatentDiffusion: conditioning_key ${key} needs a cond stage`);
    this.lossType = o.lossType ?? 'l2';
    if (this.lossType !== 'l1' && this.lossType !== 'l2') throw new RangeError(`LatentDiffusion: loss_type must be l1 or l2, got '${String(this.lossType)}'`);
    this.parameterization = o.parameterization ?? 'eps';
    if (this.parameterization !== 'eps' && this.parameterization !== 'x0')
      throw new RangeError(`LatentDiffusion: parameterization must be eps or x0, got '${String(this.parameterization)}'`);
    this.lSimpleWeight = o.lSimpleWeight ?? 1;
    this.logvarInit = o.logvarInit ?? 0;
    for (const [k, v] of [['l_simple_weight', this.lSimpleWeight], ['logvar_init', this.logvarInit]] as const)
      if (!Number.isFinite(v)) throw new RangeError(`LatentDiffusion: ${k} must be finite, got ${v}`);
    const kind = SCHEDULE_KINDS[o.betaSchedule ?? 'linear'];
    if (!kind) throw new RangeError(`LatentDiffusion: beta_schedule '${String(o.betaSchedule)}' is not supported (use linear, sqrt_linear or cosine)`);
    this.schedule = new NoiseSchedule(makeBetaSchedule(kind, o.timesteps ?? 1000, { linearStart: o.linearStart ?? 1e-4, linearEnd: o.linearEnd ?? 2e-2, cosineS: o.cosineS ?? 8e-3 }));
    this.numTimesteps = this.schedule.numTimesteps;
    this.scaleByStd = o.scaleByStd ?? false;
    const sf = o.scaleFactor ?? 1;
    if (!(sf > 0 && Number.isFinite(sf))) throw new RangeError(`LatentDiffusion: scale_factor must be a positive number, got ${sf}`);
    this.fixedScaleFactor = sf;
    this.condStageTrainable = o.condStageTrainable ?? false;
    this.firstStageKey = o.firstStageKey ?? 'image';
    this.condStageKey = o.condStageKey ?? 'image';
    this.imageSize = o.imageSize ?? 256;
    this.channels = o.channels ?? 3;
    this.scaleFactorBuffer = this.scaleByStd ? this.registerBuffer('scale_factor', full([], sf)) : null;
    this.model = this.registerModule('model', new DiffusionWrapper(o.unet, key));
    // instantiate_first_stage: eval, train() disabled, no gradients.
    this.firstStageModel = this.registerModule('first_stage_model', o.firstStage);
    freeze(this.firstStageModel);
    if (this.condStageModel) {
      this.registerModule('cond_stage_model', this.condStageModel);
      if (!this.condStageTrainable) freeze(this.condStageModel);
    }
  }

  get conditioningKey(): null | 'crossattn' {
    return this.model.conditioningKey;
  }

  /** The frozen stages stay in eval mode (upstream's disabled_train). */
  override train(mode = true): this {
    super.train(mode);
    this.firstStageModel.train(false);
    if (this.condStageModel && !this.condStageTrainable) this.condStageModel.train(false);
    return this;
  }

  /** What upstream's configure_optimizers optimises: the UNet, and the cond stage when cond_stage_trainable. */
  trainableParameters(): Tensor[] {
    const ps = this.model.parameters();
    if (this.condStageModel && this.condStageTrainable) ps.push(...this.condStageModel.parameters());
    return ps;
  }

  /** The scale factor as a 0-d tensor (the buffer with scale_by_std), or the fixed number. */
  private scaleFactor(): Tensor | number {
    return this.scaleFactorBuffer ?? this.fixedScaleFactor;
  }

  private times(z: Tensor, s: Tensor | number, inverse: boolean): Tensor {
    if (typeof s === 'number') return scale(z, inverse ? 1 / s : s);
    return inverse ? div(z, s) : mul(z, s);
  }

  /** The scale factor's current value (reads the buffer back). */
  async scaleFactorValue(): Promise<number> {
    return this.scaleFactorBuffer ? ((await this.scaleFactorBuffer.data()) as Float32Array)[0] : this.fixedScaleFactor;
  }

  /** encode_first_stage: the KL posterior, or a VQModelInterface's latents before quantization. */
  encodeFirstStage(x: Tensor): DiagonalGaussianDistribution | Tensor {
    const m = this.firstStageModel;
    if (m instanceof AutoencoderKL) return m.encode(x);
    if (m instanceof VQModelInterface) return m.encode(x);
    throw new TypeError(`LatentDiffusion: the first stage must be an AutoencoderKL or a VQModelInterface, got ${m.constructor.name}`);
  }

  /** get_first_stage_encoding: a posterior sample (or the latents) times scale_factor. */
  getFirstStageEncoding(posterior: DiagonalGaussianDistribution | Tensor, sampler?: PosteriorSampler): Tensor {
    let z: Tensor;
    if (posterior instanceof DiagonalGaussianDistribution) {
      if (!sampler) throw new TypeError('LatentDiffusion: sampling the first-stage posterior needs a Generator or { noise }');
      z = posterior.sample(sampler);
    } else z = posterior;
    return this.times(z, this.scaleFactor(), false);
  }

  /** Images (B, C, H, W) in [-1, 1] -> scaled latents, detached (as get_input). */
  encode(x: Tensor, sampler?: PosteriorSampler): Tensor {
    return noGrad(() => this.getFirstStageEncoding(this.encodeFirstStage(x), sampler));
  }

  /** decode_first_stage (predict_cids false): z / scale_factor, then the first stage's decoder (a VQ first stage quantizes first). */
  decode(z: Tensor): Tensor {
    return noGrad(() => {
      const u = this.times(z, this.scaleFactor(), true);
      const m = this.firstStageModel;
      if (m instanceof VQModelInterface) return m.decode(u, false);
      if (m instanceof VQModel) return m.decode(u);
      return (m as AutoencoderKL).decode(u);
    });
  }

  /**
   * upstream's on_train_batch_start with scale_by_std, for the first batch of
   * a fresh run (not a resumed one): scale_factor := 1 / std(z) over every
   * element of the batch's posterior samples (unbiased std, as torch's).
   * Returns the new value.
   */
  async initScaleByStd(x: Tensor, sampler: PosteriorSampler, dist?: { shard: BatchShard; allreduceSum: (t: Tensor) => Tensor }): Promise<number> {
    if (!this.scaleFactorBuffer) throw new TypeError('LatentDiffusion.initScaleByStd: the model was built without scale_by_std');
    const cur = await this.scaleFactorValue();
    if (cur !== 1) throw new RangeError(`LatentDiffusion.initScaleByStd: scale_factor is ${cur}, expected 1 (upstream: rather not use custom rescaling and std-rescaling simultaneously)`);
    const inv = noGrad(() => {
      const z = dist && sampler instanceof Generator ? this.encodeSlice(x, sampler, dist.shard) : this.encode(x, sampler);
      // Data-parallel: the std of the global batch's latents (sums over the ranks, two passes), as one process computes it.
      const n = dist ? (z.size / z.shape[0]) * dist.shard.total : z.size;
      if (n < 2) throw new RangeError(`LatentDiffusion.initScaleByStd: the latents have ${n} element(s); the std needs at least 2`);
      const total = (t: Tensor) => (dist ? dist.allreduceSum(t) : t);
      const d = sub(z, scale(total(sum(z)), 1 / n));
      const variance = scale(total(sum(square(d))), 1 / (n - 1));
      return div(full([], 1), sqrt(variance));
    });
    noGrad(() => runOp('copy_', [this.scaleFactorBuffer!, inv]));
    inv.dispose();
    return this.scaleFactorValue();
  }

  /**
   * get_learned_conditioning: the cond stage's encode (a Gaussian's mode)
   * when it has one, else its forward. `c` is what upstream passes: for
   * cond_stage_key class_label the batch itself ({ class_label: labels }),
   * which ClassEmbedder reads its key from.
   */
  getLearnedConditioning(c: unknown): Tensor {
    const m = this.condStageModel;
    if (!m) throw new TypeError('LatentDiffusion: this model is unconditional (no cond stage)');
    if (typeof m.encode === 'function') {
      const r = m.encode(c);
      return r instanceof DiagonalGaussianDistribution ? r.mode() : r;
    }
    return m.forward(c);
  }

  /** apply_model: the wrapped UNet's output for noisy latents, (B) timesteps and the conditioning (the context for crossattn). */
  applyModel(xNoisy: Tensor, t: Tensor, cond?: Tensor | null): Tensor {
    return this.model.forward(xNoisy, t, cond);
  }

  private coef(table: Float64Array, t: readonly number[], device: Device): Tensor {
    const b = t.length;
    return fromArray(Float32Array.from(t, (i) => table[i]), [b, 1, 1, 1], 'float32', device);
  }

  private checkT(t: readonly number[], b: number): void {
    if (t.length !== b) throw new RangeError(`LatentDiffusion: ${t.length} timesteps for a batch of ${b}`);
    for (const v of t) if (!Number.isInteger(v) || v < 0 || v >= this.numTimesteps) throw new RangeError(`LatentDiffusion: timestep ${v} is not an integer in [0, ${this.numTimesteps})`);
  }

  /** q_sample: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. */
  qSample(x0: Tensor, t: readonly number[], noise: Tensor): Tensor {
    this.checkT(t, x0.shape[0]);
    return add(mul(x0, this.coef(this.schedule.sqrtAlphasCumprod, t, x0.device)), mul(noise, this.coef(this.schedule.sqrtOneMinusAlphasCumprod, t, x0.device)));
  }

  /** p_losses for latents x0 (already scaled), conditioning, integer timesteps and noise. */
  pLosses(x0: Tensor, cond: Tensor | null, t: readonly number[], noise: Tensor): PLossesResult {
    if (noise.shape.join() !== x0.shape.join()) throw new RangeError(`LatentDiffusion.pLosses: noise ${shapeToString(noise.shape)} and latents ${shapeToString(x0.shape)} differ in shape`);
    if (x0.ndim !== 4) throw new RangeError(`LatentDiffusion.pLosses: latents must be (B, C, H, W), got ${shapeToString(x0.shape)}`);
    const xNoisy = this.qSample(x0, t, noise);
    const out = this.applyModel(xNoisy, fromArray(Float32Array.from(t), [t.length], 'float32', x0.device), cond);
    const target = this.parameterization === 'eps' ? noise : x0;
    const d = sub(out, target);
    const lossSimple = mean(this.lossType === 'l2' ? square(d) : abs(d), [1, 2, 3]);
    // logvar is upstream's fixed full(logvar_init) when not learned.
    const lv = this.logvarInit;
    const perT = lv === 0 ? lossSimple : addScalar(scale(lossSimple, Math.exp(-lv)), lv);
    return { loss: scale(mean(perT), this.lSimpleWeight), lossSimple };
  }

  /**
   * upstream's forward(x, c): a uniform timestep and a noise draw per sample
   * from `gen`; a trainable cond stage encodes `c` here (with gradients).
   */
  forward(z: Tensor, c: unknown, gen: Generator, shard?: BatchShard): PLossesResult & { t: number[] } {
    const b = z.shape[0];
    const start = shard?.start ?? 0, total = shard?.total ?? b;
    if (start < 0 || start + b > total) throw new RangeError(`LatentDiffusion.forward: rows [${start}, ${start + b}) do not fit a global batch of ${total}`);
    const t = Array.from({ length: total }, () => gen.randint(this.numTimesteps)).slice(start, start + b);
    let cond: Tensor | null = null;
    if (this.conditioningKey !== null) {
      if (c === null || c === undefined) throw new TypeError('LatentDiffusion: a conditional model needs a conditioning');
      cond = this.condStageTrainable ? this.getLearnedConditioning(c) : (c as Tensor);
    }
    const noise = shard ? gen.randnSlice(z.shape, start, total, z.device) : gen.randn(z.shape, z.device);
    return { ...this.pLosses(z, cond, t, noise), t };
  }

  /**
   * upstream's shared_step on images: encode (posterior sample from `gen`),
   * the conditioning of `condInput` (encoded now unless the cond stage is
   * trainable, then inside forward), and the loss.
   */
  lossOnImages(x: Tensor, condInput: unknown, gen: Generator, shard?: BatchShard): PLossesResult & { t: number[] } {
    const z = shard ? this.encodeSlice(x, gen, shard) : this.encode(x, gen);
    let c: unknown = null;
    if (this.conditioningKey !== null) c = this.condStageTrainable ? condInput : noGrad(() => this.getLearnedConditioning(condInput));
    return this.forward(z, c, gen, shard);
  }

  /** encode() of rows [start, start + B) of a global batch: the posterior's noise is that slice of the global batch's draw. */
  encodeSlice(x: Tensor, gen: Generator, shard: BatchShard): Tensor {
    return noGrad(() => {
      const posterior = this.encodeFirstStage(x);
      const sampler = posterior instanceof DiagonalGaussianDistribution ? { noise: gen.randnSlice(posterior.mean.shape, shard.start, shard.total, posterior.mean.device) } : gen;
      return this.getFirstStageEncoding(posterior, sampler);
    });
  }

  /**
   * The denoiser as the samplers' model (x_t, t) -> eps, in latent space.
   * cond: the learned conditioning (the context). guidance: classifier-free
   * guidance, eps_u + scale (eps_c - eps_u) with `uncond` the unconditional
   * context, both halves in one batch as upstream's DDIM sampler. An x0
   * model's output is turned into eps (_predict_eps_from_xstart).
   */
  epsModel(cond?: Tensor | null, guidance?: { uncond: Tensor; scale: number }): EpsModel {
    if (this.conditioningKey !== null && !cond) throw new TypeError('LatentDiffusion.epsModel: a conditional model needs the conditioning');
    if (guidance && (!cond || !(Number.isFinite(guidance.scale)))) throw new TypeError('LatentDiffusion.epsModel: guidance needs a conditioning and a finite scale');
    const raw = (x: Tensor, t: Tensor): Tensor => {
      if (!guidance || guidance.scale === 1) return this.applyModel(x, t, cond);
      const out = this.applyModel(cat([x, x], 0), cat([t, t], 0), cat([guidance.uncond, cond!], 0));
      const [eu, ec] = chunk(out, 2, 0);
      return add(eu, scale(sub(ec, eu), guidance.scale));
    };
    if (this.parameterization === 'eps') return raw;
    return (x, t) => {
      const tv = timestepValues(t);
      const idx = Array.from(tv, (v) => {
        if (!Number.isInteger(v)) throw new RangeError(`LatentDiffusion.epsModel: an x0 model needs integer timesteps, got ${v}`);
        return v;
      });
      const x0 = raw(x, t);
      return div(sub(mul(x, this.coef(this.schedule.sqrtRecipAlphasCumprod, idx, x.device)), x0), this.coef(this.schedule.sqrtRecipm1AlphasCumprod, idx, x.device));
    };
  }
}

function freeze(m: Module): void {
  m.eval();
  for (const p of m.parameters()) p.requiresGrad = false;
}

// ---- From a config ----------------------------------------------------------------

/** Builds the model a spec describes, with fresh weights (first-stage weights: loadFirstStageCheckpoint). */
export function buildLatentDiffusion(spec: LatentDiffusionSpec, gen: Generator = new Generator(0)): LatentDiffusion {
  const { use_spatial_transformer: st, num_classes } = spec.unet;
  const unet = new UNetModel({ ...spec.unet, num_classes: num_classes ?? null } as UNetConfig, gen) as unknown as LatentDenoiser;
  if (st && unet.config?.use_spatial_transformer !== true) {
    unet.dispose();
    throw new TypeError('LatentDiffusion: unet_config asks for use_spatial_transformer, but this build\'s UNetModel has no spatial transformer (cross-attention)');
  }
  const firstStage = buildAutoencoder(spec.firstStage, gen);
  const condStage = spec.condStage ? buildCondStage(spec.condStage, gen) : null;
  return new LatentDiffusion({
    unet, firstStage, condStage,
    conditioningKey: spec.conditioningKey,
    timesteps: spec.timesteps, betaSchedule: spec.betaSchedule, linearStart: spec.linearStart, linearEnd: spec.linearEnd, cosineS: spec.cosineS,
    lossType: spec.lossType, parameterization: spec.parameterization, lSimpleWeight: spec.lSimpleWeight, logvarInit: spec.logvarInit,
    scaleFactor: spec.scaleFactor, scaleByStd: spec.scaleByStd, condStageTrainable: spec.condStageTrainable,
    firstStageKey: spec.firstStageKey, condStageKey: spec.condStageKey, imageSize: spec.imageSize, channels: spec.channels,
  });
}

/**
 * Loads first-stage weights (upstream keys; loss.* and model_ema.* skipped)
 * from a .safetensors file or a PyTorch checkpoint (.ckpt / .pt / .pth, read
 * by the safe torch_ckpt reader; a Lightning file's state_dict). A whole LDM
 * checkpoint's first_stage_model.* part is taken when the keys have that
 * prefix. Returns the skipped keys.
 */
export async function loadFirstStageCheckpoint(model: Autoencoder, file: string): Promise<string[]> {
  const ext = path.extname(file).toLowerCase();
  if (!fs.existsSync(file)) throw new Error(`${file}: no such file`);
  let tensors: Map<string, Tensor>;
  if (ext === '.ckpt' || ext === '.pt' || ext === '.pth') tensors = (await loadTorchCheckpoint(file)).tensors;
  else if (ext === '.safetensors') tensors = (await readSafetensors(file)).tensors;
  else throw new TypeError(`${file}: expected a .safetensors or PyTorch (.ckpt, .pt, .pth) first-stage checkpoint, got '${ext || 'no extension'}'`);
  try {
    let dict = tensors;
    const pre = 'first_stage_model.';
    if ([...tensors.keys()].some((k) => k.startsWith(pre))) {
      dict = new Map();
      for (const [k, t] of tensors) if (k.startsWith(pre)) dict.set(k.slice(pre.length), t);
    }
    try {
      return loadFirstStageStateDict(model, dict).ignoredKeys;
    } catch (e) {
      throw new Error(`${file}: ${(e as Error).message}`, { cause: e });
    }
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/**
 * Where first_stage_config.params.ckpt_path points: against `baseDir`
 * (default the working directory, as upstream); a relative path that is not
 * there but is under the package root resolves there, so that the shipped
 * configs (ckpt_path: models/...) work from any directory.
 */
export function resolveFirstStagePath(ckptPath: string, baseDir?: string): string {
  const given = path.resolve(baseDir ?? process.cwd(), ckptPath);
  if (path.isAbsolute(ckptPath) || fs.existsSync(given)) return given;
  const inPackage = path.join(packageRoot, ckptPath);
  return fs.existsSync(inPackage) ? inPackage : given;
}

/**
 * What a loader calls: the model of a spec with fresh UNet (and cond stage)
 * weights, and the first stage's weights from first_stage_config.params.ckpt_path
 * (resolved against `baseDir`, default the working directory, as upstream
 * resolves it) unless `loadFirstStage` is false. A ckpt_path that is not
 * there is an error naming the key, as upstream's torch.load would fail.
 */
export async function createLatentDiffusion(
  spec: LatentDiffusionSpec,
  opts: { gen?: Generator; baseDir?: string; loadFirstStage?: boolean } = {},
): Promise<{ model: LatentDiffusion; ignoredKeys: string[] }> {
  const model = buildLatentDiffusion(spec, opts.gen ?? new Generator(0));
  let ignoredKeys: string[] = [];
  if (spec.firstStageCkptPath && opts.loadFirstStage !== false) {
    const file = resolveFirstStagePath(spec.firstStageCkptPath, opts.baseDir);
    try {
      ignoredKeys = await loadFirstStageCheckpoint(model.firstStageModel, file);
    } catch (e) {
      model.dispose();
      throw new Error(`first_stage_config.params.ckpt_path: ${(e as Error).message}`, { cause: e });
    }
  }
  return { model, ignoredKeys };
}
