// Sampling a latent diffusion model: draw latents with the project's samplers
// from LatentDiffusion's eps model (class labels through the cond stage,
// classifier-free guidance against the unconditional class), then decode
// them through the first stage to images in [-1, 1]. What generate() and the
// `sample` command share: the option checks (typed errors naming the option),
// the labels of a batch, and one batch from a Generator.
import { type DdimDiscretize, noiseDrawsPerValue, sample, type SamplerName } from './diffusion/samplers';
import { generateBatches } from './dist/shard';
import { ClassEmbedder } from './models/conditioning';
import type { LoadedLatentModel } from './models/load_latent';
import type { LatentDiffusionSpec } from './models/latent_config';
import { type GeneratedImages, type GenerateOptions, type ProgressReport, runWithProgress } from './pipeline';
import { full } from './tensor/ops/creation';
import type { Device } from './tensor/native';
import type { Generator } from './tensor/random';
import { fromArray, type Tensor } from './tensor/tensor';

/** A sampling option that does not fit the model (--classes on an unconditional model, --scale without an unconditional class, ...). */
export class LatentSampleOptionError extends Error {
  constructor(readonly option: string, message: string) {
    super(message);
    this.name = 'LatentSampleOptionError';
  }
}

/**
 * The unconditional ("no class") label by convention, for class embedders
 * whose class count says so: upstream's cin256-v2 (1001 classes, 1000 =
 * unconditional) and this project's fmnist-ldm (11 classes, 10 = no class).
 * Any other model needs it given (uncondClass / --uncond-class).
 */
export const CONVENTIONAL_UNCOND_CLASS: Readonly<Record<number, number>> = { 1001: 1000, 11: 10 };

export interface LatentGenerateOptions extends Omit<GenerateOptions, 'labels'> {
  /** Class labels, cycled through (image i gets classes[i mod length]); default: every class but the unconditional one, cycled. */
  classes?: number[];
  /** Classifier-free guidance scale (eps_u + scale (eps_c - eps_u)); needs an unconditional class. */
  scale?: number;
  /** The unconditional class label (default: CONVENTIONAL_UNCOND_CLASS for the class count, else none). */
  uncondClass?: number;
}

/** The checked sampling plan of a latent model (see LatentDiffusionPipeline.plan). */
export interface LatentPlan {
  /** The labels to cycle through; null for a model without a class cond stage. */
  classes: number[] | null;
  /** Guidance against this unconditional label, or null. */
  guidance: { uncondClass: number; scale: number } | null;
  sampler: SamplerName;
  steps: number | undefined;
  eta: number | undefined;
  clipDenoised: boolean;
  ddimDiscretize: DdimDiscretize | undefined;
}

/** What planLatentSampling needs to know of a model (available from its config, before loading). */
export interface LatentModelTraits {
  /** Whether the model has a cond stage (conditioning_key crossattn). */
  conditional: boolean;
  /** The class embedder's class count, or null (no cond stage, or one that is not a class embedder). */
  numClasses: number | null;
  /** The cond stage's name, for messages. */
  condStage: string | null;
}

/** The traits of a parsed LDM config (ClassEmbedder's n_classes default 1000, as upstream). */
export function latentTraitsOfSpec(spec: LatentDiffusionSpec): LatentModelTraits {
  const cs = spec.condStage;
  const isClass = cs?.target === 'ldm.modules.encoders.modules.ClassEmbedder';
  return { conditional: spec.conditioningKey !== null, numClasses: cs && isClass ? ((cs.params.n_classes as number | undefined) ?? 1000) : null, condStage: cs?.target ?? null };
}

/** Checks sampling options against a latent model's traits; errors (LatentSampleOptionError) name the option. */
export function planLatentSampling(o: LatentGenerateOptions, m: LatentModelTraits): LatentPlan {
  const n = m.numClasses;
  if (m.conditional && n === null)
    throw new LatentSampleOptionError('classes', `this model's cond stage (${m.condStage}) is not a class embedder: only class-conditional and unconditional latent models can be sampled`);
  let uncond: number | null = null;
  if (o.uncondClass !== undefined) {
    if (n === null) throw new LatentSampleOptionError('uncond-class', `--uncond-class ${o.uncondClass}: this model is unconditional (no class cond stage)`);
    if (!Number.isInteger(o.uncondClass) || o.uncondClass < 0 || o.uncondClass >= n)
      throw new LatentSampleOptionError('uncond-class', `--uncond-class must be a class of this model (0..${n - 1}), got ${o.uncondClass}`);
    uncond = o.uncondClass;
  } else if (n !== null) uncond = CONVENTIONAL_UNCOND_CLASS[n] ?? null;
  let classes: number[] | null = null;
  if (o.classes !== undefined) {
    if (n === null) throw new LatentSampleOptionError('classes', `--classes ${o.classes.join(',')}: this model is unconditional (no class cond stage); drop --classes`);
    if (!o.classes.length) throw new LatentSampleOptionError('classes', '--classes is empty');
    for (const c of o.classes)
      if (!Number.isInteger(c) || c < 0 || c >= n) throw new LatentSampleOptionError('classes', `--classes: ${c} is not a class of this model (0..${n - 1})`);
    classes = [...o.classes];
  } else if (n !== null) classes = Array.from({ length: n }, (_, i) => i).filter((i) => i !== uncond);
  let guidance: LatentPlan['guidance'] = null;
  if (o.scale !== undefined) {
    if (!Number.isFinite(o.scale)) throw new LatentSampleOptionError('scale', `--scale must be a finite number, got ${o.scale}`);
    if (n === null) throw new LatentSampleOptionError('scale', `--scale ${o.scale}: classifier-free guidance needs a class-conditional model with an unconditional class; this model is unconditional`);
    if (uncond === null)
      throw new LatentSampleOptionError('scale', `--scale ${o.scale}: this model's class embedder (${n} classes) has no known unconditional class; name it with --uncond-class (upstream's cin256-v2: 1000 of 1001)`);
    guidance = { uncondClass: uncond, scale: o.scale };
  }
  const sampler = o.sampler ?? 'ddim';
  return {
    classes, guidance, sampler,
    steps: sampler === 'ddpm' ? undefined : o.steps ?? 50,
    eta: o.eta,
    // upstream: DDPM's p_sample_loop clips x_0 (clip_denoised default True); its DDIM / PLMS samplers do not.
    clipDenoised: o.clipDenoised ?? sampler === 'ddpm',
    ddimDiscretize: o.ddimDiscretize,
  };
}

export class LatentDiffusionPipeline {
  private disposed = false;
  /** The whole LDM (first stage, cond stage, UNet) is moved to `device` here. */
  constructor(readonly loaded: LoadedLatentModel, readonly device: Device = 'cpu') {
    if (device !== 'cpu') loaded.model.to(device);
  }

  get model() {
    return this.loaded.model;
  }

  /** (C, H, W) of the latents the UNet denoises. */
  get latentShape(): [number, number, number] {
    const s = this.loaded.spec;
    return [s.unet.in_channels, s.imageSize, s.imageSize];
  }

  /** (C, H, W) of the decoded images: the first stage's out_ch, the latents upsampled by 2^(len(ch_mult) - 1). */
  get imageShape(): [number, number, number] {
    const d = this.loaded.spec.firstStage.ddconfig;
    const f = 2 ** (d.ch_mult.length - 1);
    return [d.out_ch, this.loaded.spec.imageSize * f, this.loaded.spec.imageSize * f];
  }

  /** The class embedder's class count (the unconditional class included), or null. */
  get numClasses(): number | null {
    return this.loaded.numClasses;
  }

  /** Checks the options against the model; errors name the option. */
  plan(o: LatentGenerateOptions): LatentPlan {
    const cs = this.model.condStageModel;
    return planLatentSampling(o, { conditional: this.model.conditioningKey !== null, numClasses: this.numClasses, condStage: cs?.constructor.name ?? null });
  }

  /** The labels of images start..start+b-1 (cycled through plan.classes). */
  labels(plan: LatentPlan, start: number, b: number): number[] | null {
    const cl = plan.classes;
    return cl ? Array.from({ length: b }, (_, i) => cl[(start + i) % cl.length]) : null;
  }

  /** Samples b latents (B, C, h, w) from `gen`; the caller owns the result. */
  async sampleLatents(plan: LatentPlan, labels: number[] | null, b: number, gen: Generator, extra: { signal?: AbortSignal; onProgress?: (step: number, steps: number) => void } = {}): Promise<Tensor> {
    if (this.disposed) throw new Error('LatentDiffusionPipeline: sampling after dispose()');
    const cs = this.model.condStageModel as ClassEmbedder | null;
    let cond: Tensor | undefined, uncond: Tensor | undefined;
    try {
      if (labels && cs) {
        cond = this.model.getLearnedConditioning({ [cs.key]: fromArray(labels, [b], 'int32', this.device) });
        if (plan.guidance) uncond = this.model.getLearnedConditioning({ [cs.key]: full([b], plan.guidance.uncondClass, 'int32', this.device) });
      }
      const [c, h, w] = this.latentShape;
      return await sample(this.model.epsModel(cond, uncond && plan.guidance ? { uncond, scale: plan.guidance.scale } : undefined), {
        shape: [b, c, h, w],
        sampler: plan.sampler,
        steps: plan.steps,
        eta: plan.eta,
        clipDenoised: plan.clipDenoised,
        ddimDiscretize: plan.ddimDiscretize,
        generator: gen,
        device: this.device,
        schedule: this.model.schedule,
        signal: extra.signal,
        onProgress: extra.onProgress,
      });
    } finally {
      cond?.dispose();
      uncond?.dispose();
    }
  }

  /** One batch of images (b, C, H, W) in [-1, 1] (as decoded; PNG writing clamps): latents from `gen`, decoded. */
  async sampleImages(plan: LatentPlan, labels: number[] | null, b: number, gen: Generator, extra: { signal?: AbortSignal; onProgress?: (step: number, steps: number) => void } = {}): Promise<Float32Array> {
    const z = await this.sampleLatents(plan, labels, b, gen, extra);
    try {
      const x = this.model.decode(z);
      try {
        return Float32Array.from((await x.data()) as Float32Array);
      } finally {
        x.dispose();
      }
    } finally {
      z.dispose();
    }
  }

  /** The normal draws one image's latents cost with this plan (x_T and any per-step noise). */
  async drawsPerImage(plan: LatentPlan): Promise<number> {
    const [c, h, w] = this.latentShape;
    const per = await noiseDrawsPerValue({ sampler: plan.sampler, steps: plan.steps, eta: plan.eta, ddimDiscretize: plan.ddimDiscretize, schedule: this.model.schedule });
    return per * c * h * w;
  }

  /**
   * n images, batch by batch from one Generator(seed): the same seed and
   * options give the same images, also when `comm` splits the batches across
   * ranks (each rank then returns all n).
   */
  async generate(o: LatentGenerateOptions): Promise<GeneratedImages> {
    if (this.disposed) throw new Error('LatentDiffusionPipeline: generate() after dispose()');
    if (!Number.isInteger(o.n) || o.n < 1) throw new RangeError(`generate: n must be a positive integer, got ${o.n}`);
    const bs = o.batchSize ?? Math.min(o.n, 16);
    if (!Number.isInteger(bs) || bs < 1) throw new RangeError(`generate: batchSize must be a positive integer, got ${bs}`);
    const plan = this.plan(o);
    const [c, h, w] = this.imageShape;
    const drawsPerImage = await this.drawsPerImage(plan);
    let data!: Float32Array;
    await runWithProgress(o, async (signal: AbortSignal, report: ProgressReport) => {
      data = await generateBatches({ n: o.n, batchSize: bs, seed: o.seed ?? 0, imageSize: c * h * w, drawsPerImage, comm: o.comm }, (slot, gen) =>
        this.sampleImages(plan, this.labels(plan, slot.start, slot.count), slot.count, gen, { signal, onProgress: (step, steps) => report({ images: slot.start, total: o.n, step, steps }) }),
      );
    });
    return { data, shape: [o.n, c, h, w] };
  }

  dispose(): void {
    if (!this.disposed) this.loaded.dispose();
    this.disposed = true;
  }
}
