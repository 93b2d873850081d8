// The config schema: YAML in the shape of the CompVis latent-diffusion configs
// (model.target/params with unet_config, first_stage_config), a data section
// naming one of our datasets, and a training section in place of the
// lightning/main.py options. Every object is strict, so a misspelt key is an
// error naming its path; CompVis class paths are accepted as aliases of ours
// and replaced by our names on parsing.
//
// Relative paths in a config (data_dir, root, ckpt_path, out_dir) are taken
// relative to the working directory, as CompVis does and as CLI paths are.
import { z } from 'zod';

// ---- Targets ---------------------------------------------------------------

/** The OpenAI/CompVis UNet (openaimodel.UNetModel): attention_resolutions are downsampling factors. */
export const UNET_TARGET = 'tdq_native.models.unet.UNetModel';
/** Ho et al.'s DDPM UNet (ch, ch_mult, attn_resolutions in pixels, as in the original TF code). */
export const DDPM_UNET_TARGET = 'tdq_native.models.ddpm_unet.DDPMUNet';
/** A pixel-space diffusion model around a UNet. */
export const DDPM_TARGET = 'tdq_native.models.diffusion.DDPM';
/** A diffusion model in the latent space of a first-stage autoencoder. */
export const LDM_TARGET = 'tdq_native.models.diffusion.LatentDiffusion';
export const AUTOENCODER_KL_TARGET = 'tdq_native.models.autoencoder.AutoencoderKL';
export const FASHION_MNIST_TARGET = 'tdq_native.data.FashionMNIST';
export const IMAGE_FOLDER_TARGET = 'tdq_native.data.ImageFolder';
export const SYNTHETIC_TARGET = 'tdq_native.data.Synthetic';
/** Upstream LDM's LSUNBase: a file list under a data root, center crop, Pillow resize. */
export const LSUN_TARGET = 'tdq_native.data.LSUN';

/** Other names accepted for each target (CompVis class paths, short names). */
export const TARGET_ALIASES: Readonly<Record<string, readonly string[]>> = {
  [UNET_TARGET]: ['ldm.modules.diffusionmodules.openaimodel.UNetModel'],
  [DDPM_UNET_TARGET]: [],
  [DDPM_TARGET]: ['ldm.models.diffusion.ddpm.DDPM'],
  [LDM_TARGET]: ['ldm.models.diffusion.ddpm.LatentDiffusion'],
  [AUTOENCODER_KL_TARGET]: ['ldm.models.autoencoder.AutoencoderKL'],
  [FASHION_MNIST_TARGET]: ['fashion_mnist'],
  [IMAGE_FOLDER_TARGET]: ['image_folder'],
  [SYNTHETIC_TARGET]: ['synthetic'],
  [LSUN_TARGET]: ['ldm.data.lsun.LSUNBase', 'lsun'],
};

/** Our name for a target or one of its aliases; the input unchanged when unknown. */
export function canonicalTarget(name: string): string {
  for (const [canon, aliases] of Object.entries(TARGET_ALIASES)) if (name === canon || aliases.includes(name)) return canon;
  return name;
}

function target<T extends string>(canon: T) {
  return z.literal([canon, ...(TARGET_ALIASES[canon] ?? [])]).transform((): T => canon);
}

/**
 * Keys of the CompVis configs that tdq-native does not take, with what to do
 * instead; the error for such a key says so rather than just "unknown key".
 */
export const UNSUPPORTED_KEYS: Readonly<Record<string, string>> = {
  use_fp16: 'precision is chosen at run time, not in the model config',
  learn_sigma: 'learned variances are not supported; out_channels must equal in_channels',
};

// ---- Building blocks ---------------------------------------------------------

const posInt = z.int().min(1);
const nonNegInt = z.int().min(0);
/**
 * Upper bounds on sizes, so a typo (num_res_blocks: 100000) is a config error naming the key
 * instead of an allocation that runs until the OS kills the process. Generous: well past
 * the largest published LDM / DDPM configs.
 */
export const CONFIG_LIMITS = {
  image_size: 4096,
  channels: 1024,
  model_channels: 4096,
  num_res_blocks: 64,
  channel_mult: 64,
  levels: 16,
  num_classes: 1_000_000,
  num_heads: 1024,
  timesteps: 100_000,
  batch_size: 65_536,
} as const;
const bounded = (max: number) => z.int().min(1).max(max);
const imageSize = bounded(CONFIG_LIMITS.image_size);
const channels = bounded(CONFIG_LIMITS.channels);
const modelChannels = bounded(CONFIG_LIMITS.model_channels);
const numResBlocks = bounded(CONFIG_LIMITS.num_res_blocks);
const multList = z.array(bounded(CONFIG_LIMITS.channel_mult)).max(CONFIG_LIMITS.levels);
const headsOrMinus1 = z.int().min(-1).max(CONFIG_LIMITS.num_heads);
const headChannelsOrMinus1 = z.int().min(-1).max(CONFIG_LIMITS.model_channels);

/**
 * A key accepted by upstream's configs but not read by tdq-native for this
 * model: refused, the message naming why (the reader adds the file and key).
 */
const notRead = (why: string) => z.unknown().refine(() => false, `not read for a LatentDiffusion (${why}); remove it`).optional();
/** notRead with the value the shared code sees in its place (the type of the shared key). */
const notReadAs = <T>(why: string, value: T) => notRead(why).transform((): T => value);

// ---- UNets ------------------------------------------------------------------

export const UNetParamsSchema = z.strictObject({
  image_size: imageSize,
  in_channels: channels,
  out_channels: channels,
  model_channels: modelChannels,
  num_res_blocks: numResBlocks,
  /** Downsampling factors (1, 2, 4, ...) at which blocks get self-attention. */
  attention_resolutions: z.array(posInt).max(CONFIG_LIMITS.levels),
  channel_mult: multList.min(1).default([1, 2, 4, 8]),
  dropout: z.number().min(0).lt(1).default(0),
  conv_resample: z.boolean().default(true),
  dims: z.literal(2).default(2),
  /** Class-conditional when set: a learned embedding of the label is added to the time embedding. */
  num_classes: bounded(CONFIG_LIMITS.num_classes).optional(),
  /** Accepted for CompVis configs; gradient checkpointing has no effect here. */
  use_checkpoint: z.boolean().default(false),
  /** Heads per attention layer; -1: derive from num_head_channels. */
  num_heads: headsOrMinus1.refine((v) => v !== 0, 'must be -1 or a positive integer').default(-1),
  /** Channels per head; -1: use num_heads. */
  num_head_channels: headChannelsOrMinus1.refine((v) => v !== 0, 'must be -1 or a positive integer').default(-1),
  num_heads_upsample: headsOrMinus1.refine((v) => v !== 0, 'must be -1 or a positive integer').default(-1),
  use_scale_shift_norm: z.boolean().default(false),
  resblock_updown: z.boolean().default(false),
  /** false: the legacy QKV layout of the CompVis checkpoints, the only one implemented. */
  use_new_attention_order: z.boolean().refine((v) => !v, 'true is not supported: only the legacy QKV attention layout (false, as the CompVis checkpoints) is implemented').default(false),
  /** SpatialTransformers (self- and cross-attention to a context) in place of the attention blocks. */
  use_spatial_transformer: z.boolean().default(false),
  /** BasicTransformerBlocks per SpatialTransformer. */
  transformer_depth: posInt.default(1),
  /** Width of the cross-attention context tokens; required with use_spatial_transformer. */
  context_dim: posInt.nullable().optional(),
  /** Upstream's head-width rule: dim_head = ch // num_heads for spatial transformers. */
  legacy: z.boolean().default(true),
});

export const DDPMUNetParamsSchema = z.strictObject({
  resolution: imageSize,
  in_channels: channels,
  out_ch: channels,
  ch: modelChannels,
  ch_mult: multList.min(1).default([1, 2, 2, 2]),
  num_res_blocks: numResBlocks,
  /** Feature-map sizes in pixels (e.g. [16] at 32 x 32) at which blocks get self-attention. */
  attn_resolutions: z.array(posInt).max(CONFIG_LIMITS.levels),
  dropout: z.number().min(0).lt(1).default(0),
  resamp_with_conv: z.boolean().default(true),
});

const GROUPS = 32; // GroupNorm(32, C) throughout both UNets

function checkUNet(p: z.output<typeof UNetParamsSchema>, ctx: z.RefinementCtx): void {
  const levels = p.channel_mult.length;
  const maxDs = 2 ** (levels - 1);
  if (p.image_size % maxDs !== 0) {
    ctx.addIssue({ code: 'custom', path: ['image_size'], message: `must be divisible by ${maxDs} (${levels} levels of channel_mult halve it ${levels - 1} times)` });
  }
  const reachable = Array.from({ length: levels }, (_, i) => 2 ** i);
  p.attention_resolutions.forEach((ds, i) => {
    if (!reachable.includes(ds)) {
      ctx.addIssue({
        code: 'custom', path: ['attention_resolutions', i],
        message: `${ds} is not a downsampling factor of this UNet (reachable: ${reachable.join(', ')}; attention_resolutions are factors, not pixel sizes)`,
      });
    }
  });
  p.channel_mult.forEach((m, i) => {
    if ((p.model_channels * m) % GROUPS !== 0) {
      ctx.addIssue({ code: 'custom', path: ['channel_mult', i], message: `level channels model_channels x ${m} = ${p.model_channels * m} must be divisible by ${GROUPS} for GroupNorm(${GROUPS})` });
    }
  });
  if (p.num_heads === -1 && p.num_head_channels === -1) {
    ctx.addIssue({ code: 'custom', path: ['num_heads'], message: 'set num_heads or num_head_channels' });
  }
  if (p.use_spatial_transformer && p.context_dim == null) {
    ctx.addIssue({ code: 'custom', path: ['context_dim'], message: 'use_spatial_transformer needs context_dim (the width of the cross-attention context)' });
  }
  if (p.context_dim != null && !p.use_spatial_transformer) {
    ctx.addIssue({ code: 'custom', path: ['use_spatial_transformer'], message: `must be true when context_dim (${p.context_dim}) is set: cross-attention lives in the spatial transformer` });
  }
  if (p.num_head_channels !== -1) {
    p.channel_mult.forEach((m, i) => {
      const ch = p.model_channels * m;
      if (p.attention_resolutions.includes(2 ** i) && ch % p.num_head_channels !== 0) {
        ctx.addIssue({ code: 'custom', path: ['num_head_channels'], message: `must divide the ${ch} channels of attention level ${i}` });
      }
    });
  } else if (p.num_heads > 0) {
    p.channel_mult.forEach((m, i) => {
      const ch = p.model_channels * m;
      if (p.attention_resolutions.includes(2 ** i) && ch % p.num_heads !== 0) {
        ctx.addIssue({ code: 'custom', path: ['num_heads'], message: `must divide the ${ch} channels of attention level ${i}` });
      }
    });
  }
}

function checkDDPMUNet(p: z.output<typeof DDPMUNetParamsSchema>, ctx: z.RefinementCtx): void {
  const levels = p.ch_mult.length;
  const maxDs = 2 ** (levels - 1);
  if (p.resolution % maxDs !== 0) {
    ctx.addIssue({ code: 'custom', path: ['resolution'], message: `must be divisible by ${maxDs} (${levels} levels of ch_mult halve it ${levels - 1} times)` });
  }
  const sizes = Array.from({ length: levels }, (_, i) => p.resolution / 2 ** i);
  p.attn_resolutions.forEach((r, i) => {
    if (!sizes.includes(r)) {
      ctx.addIssue({ code: 'custom', path: ['attn_resolutions', i], message: `${r} is not a feature-map size of this UNet (sizes: ${sizes.join(', ')}; attn_resolutions are pixel sizes)` });
    }
  });
  p.ch_mult.forEach((m, i) => {
    if ((p.ch * m) % GROUPS !== 0) {
      ctx.addIssue({ code: 'custom', path: ['ch_mult', i], message: `level channels ch x ${m} = ${p.ch * m} must be divisible by ${GROUPS} for GroupNorm(${GROUPS})` });
    }
  });
}

export const UNetConfigSchema = z.discriminatedUnion('target', [
  z.strictObject({ target: target(UNET_TARGET), params: UNetParamsSchema.superRefine(checkUNet) }),
  z.strictObject({ target: target(DDPM_UNET_TARGET), params: DDPMUNetParamsSchema.superRefine(checkDDPMUNet) }),
]);

// ---- First stage (latent diffusion) -------------------------------------------

export const AutoencoderKLConfigSchema = z.strictObject({
  target: target(AUTOENCODER_KL_TARGET),
  params: z.strictObject({
    embed_dim: channels,
    ckpt_path: z.string().min(1).optional(),
    monitor: notRead('an upstream logging key'),
    ddconfig: z.strictObject({
      double_z: z.boolean().default(true),
      z_channels: channels,
      resolution: imageSize,
      in_channels: channels,
      out_ch: channels,
      ch: modelChannels,
      ch_mult: multList.min(1),
      num_res_blocks: numResBlocks,
      attn_resolutions: z.array(posInt).default([]),
      dropout: z.number().min(0).lt(1).default(0),
    }).superRefine((d, ctx) => {
      // The first-stage reader's rule (src/models/autoencoder/config.ts, GroupNorm(32) as upstream).
      for (const m of [1, ...d.ch_mult])
        if ((d.ch * m) % GROUPS !== 0) {
          ctx.addIssue({ code: 'custom', path: ['ch'], message: `${d.ch * m} channels (ch ${d.ch} x ${m}) are not divisible into ${GROUPS} GroupNorm groups` });
          break;
        }
    }),
    lossconfig: notRead('the autoencoder\'s own training loss; the first stage is not trained with the diffusion model'),
  }),
});

// ---- Diffusion model -----------------------------------------------------------

/**
 * Beta schedules with the CompVis meanings: 'linear' is the square of
 * linspace(sqrt(linear_start), sqrt(linear_end)) (as in LDM), 'sqrt_linear'
 * is linspace(linear_start, linear_end) (Ho et al.'s linear schedule),
 * 'sqrt' its square root, 'cosine' Nichol & Dhariwal's with cosine_s.
 */
export const BETA_SCHEDULES = ['linear', 'sqrt_linear', 'sqrt', 'cosine'] as const;

const diffusionParams = {
  linear_start: z.number().gt(0).lt(1).default(1e-4),
  linear_end: z.number().gt(0).lt(1).default(2e-2),
  cosine_s: z.number().gt(0).default(8e-3),
  beta_schedule: z.enum(BETA_SCHEDULES).default('linear'),
  timesteps: bounded(CONFIG_LIMITS.timesteps).default(1000),
  loss_type: z.enum(['l1', 'l2']).default('l2'),
  /** What the UNet predicts: the noise, the clean sample, or v = alpha eps - sigma x0. */
  parameterization: z.enum(['eps', 'x0', 'v']).default('eps'),
  image_size: imageSize,
  channels: channels,
  /** Clamp the predicted x_0 to [-1, 1] when sampling (sample, eval); sample --clip-denoised overrides it. */
  clip_denoised: z.boolean().default(true),
  /** Steps between intermediates logged while sampling. */
  log_every_t: posInt.default(100),
  /** Not read: weights come from the command line (train --ckpt, sample --ckpt); an error says so. */
  ckpt_path: z.string().min(1).refine(() => false, 'not supported: the config does not load weights; pass them with --ckpt (train starts from them, sample loads them)').optional(),
  ignore_keys: z.array(z.string()).refine((k) => k.length === 0, 'not supported (it filters the weights of ckpt_path, which the config does not load); remove it or leave it []').default([]),
  /** Accepted for CompVis configs; unused. */
  monitor: z.string().optional(),
  first_stage_key: z.string().default('image'),
  unet_config: UNetConfigSchema,
};

export const DDPMParamsSchema = z.strictObject(diffusionParams);

/**
 * The LatentDiffusion branch: no wider than the one LDM reader
 * (src/config/latent_schema.ts, which train, sample and calibrate use for
 * these files) accepts and reads. Keys that reader accepts only to warn that
 * they are not read are refused here, naming the key.
 */
export const LatentDiffusionParamsSchema = z.strictObject({
  ...diffusionParams,
  // What the reader implements (sqrt and v-prediction are refused there).
  beta_schedule: z.enum(['linear', 'sqrt_linear', 'cosine']).default('linear'),
  parameterization: z.enum(['eps', 'x0']).default('eps'),
  timesteps: z.int().min(2).max(CONFIG_LIMITS.timesteps).default(1000),
  clip_denoised: notReadAs('latent sampling clips x_0 as upstream (ddpm only); sample --clip-denoised sets it', true),
  log_every_t: notRead('an upstream logging key'),
  monitor: notRead('an upstream logging key'),
  ignore_keys: notRead('it filters the weights of ckpt_path, which the config does not load'),
  first_stage_key: notRead('the data section gives the images'),
  unet_config: z.strictObject({ target: target(UNET_TARGET), params: UNetParamsSchema.extend({ use_checkpoint: notReadAs('gradient checkpointing has no effect here', false) }).superRefine(checkUNet) }),
  first_stage_config: AutoencoderKLConfigSchema,
  /** Only unconditional LDMs; the reader's conditional ones are not described here. Required, as by the reader. */
  cond_stage_config: z.literal('__is_unconditional__'),
  cond_stage_key: notRead('an unconditional model has no conditioning input'),
  cond_stage_trainable: notRead('an unconditional model has no cond stage'),
  num_timesteps_cond: notRead('an unconditional model has no conditioning schedule'),
  concat_mode: notRead('an unconditional model has no conditioning'),
  conditioning_key: notRead('an unconditional model has no conditioning'),
  /** Latents are multiplied by scale_factor; with scale_by_std it is set to 1/std of the first batch's latents. */
  scale_factor: z.number().gt(0).default(1),
  scale_by_std: z.boolean().default(false),
}).superRefine((p, ctx) => {
  if (p.scale_by_std && p.scale_factor !== 1)
    ctx.addIssue({ code: 'custom', path: ['scale_factor'], message: `scale_by_std sets the scale factor from the data; scale_factor must stay 1 (upstream asserts this), got ${p.scale_factor}` });
});

const modelCommon = {
  /** The learning rate used as is, or times the batch size with training.scale_lr. */
  base_learning_rate: z.number().gt(0),
};

export const ModelConfigSchema = z.discriminatedUnion('target', [
  z.strictObject({ ...modelCommon, target: target(DDPM_TARGET), params: DDPMParamsSchema }),
  z.strictObject({ ...modelCommon, target: target(LDM_TARGET), params: LatentDiffusionParamsSchema }),
]);

// ---- Data ---------------------------------------------------------------------

// Images are brought to the model's input size (modelImageShape): the UNet's
// for pixel diffusion, the first stage's resolution for latent diffusion.
const fitParams = {
  fit: z.enum(['auto', 'pad', 'resize', 'crop']).default('auto'),
  pad: z.enum(['zero', 'edge']).default('zero'),
  interpolation: z.enum(['auto', 'bilinear', 'area']).default('auto'),
  /** Use only the first `limit` samples. */
  limit: posInt.optional(),
  /** Mirror samples left-right at random (seeded by training.seed, resumable). */
  random_flip: z.boolean().default(false),
};

export const DataConfigSchema = z.discriminatedUnion('target', [
  z.strictObject({
    target: target(FASHION_MNIST_TARGET),
    params: z.strictObject({
      /** Folder of the idx files; default /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist). */
      data_dir: z.string().min(1).optional(),
      split: z.enum(['train', 'test']).default('train'),
      classes: z.array(z.int().min(0).max(9)).min(1).optional(),
      ...fitParams,
    }).prefault({}),
  }),
  z.strictObject({
    target: target(IMAGE_FOLDER_TARGET),
    params: z.strictObject({
      root: z.string().min(1),
      convert: z.boolean().default(false),
      class_dirs: z.boolean().default(false),
      cache: z.boolean().default(false),
      ...fitParams,
      fit: z.enum(['auto', 'pad', 'resize', 'crop']).default('crop'),
    }),
  }),
  z.strictObject({
    target: target(LSUN_TARGET),
    params: z.strictObject({
      /** One image path per line, relative to data_root (relative paths from the working directory, as upstream). */
      txt_file: z.string().min(1),
      data_root: z.string().min(1),
      /** Square output size: must be the model's input size. */
      size: imageSize,
      interpolation: z.enum(['linear', 'bilinear', 'bicubic', 'lanczos']).default('bicubic'),
      /** Upstream's RandomHorizontalFlip probability: 0.5 (training) or 0 (validation). */
      flip_p: z.union([z.literal(0), z.literal(0.5)]).default(0.5),
      limit: posInt.optional(),
    }),
  }),
  z.strictObject({
    target: target(SYNTHETIC_TARGET),
    params: z.strictObject({
      count: posInt.default(1024),
      kind: z.enum(['shapes', 'blobs']).default('shapes'),
      seed: nonNegInt.default(0),
      random_flip: z.boolean().default(false),
    }).prefault({}),
  }),
]);

// ---- Training -----------------------------------------------------------------

export const TrainingConfigSchema = z.strictObject({
  batch_size: bounded(CONFIG_LIMITS.batch_size),
  max_steps: posInt,
  /** Multiply base_learning_rate by batch_size x accumulate_grad_batches (CompVis main.py's default). */
  scale_lr: z.boolean().default(false),
  accumulate_grad_batches: posInt.default(1),
  optimizer: z.strictObject({
    type: z.enum(['adam', 'adamw']).default('adam'),
    betas: z.tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)]).default([0.9, 0.999]),
    eps: z.number().gt(0).default(1e-8),
    weight_decay: z.number().min(0).default(0),
  }).prefault({}),
  /** Linear warmup from 0 over these steps. */
  warmup_steps: nonNegInt.default(0),
  /** 'lambda_linear': CompVis latent-diffusion's LambdaLinearScheduler (parameters in lambda_linear; warmup_steps unused). */
  lr_schedule: z.enum(['constant', 'cosine', 'linear', 'lambda_linear']).default('constant'),
  lambda_linear: z
    .strictObject({
      warm_up_steps: z.array(nonNegInt).min(1),
      f_min: z.array(z.number()).min(1),
      f_max: z.array(z.number()).min(1),
      f_start: z.array(z.number()).min(1),
      cycle_lengths: z.array(posInt).min(1),
    })
    .optional(),
  /** Final learning rate of the cosine/linear decay, as a fraction of the peak. */
  min_lr_ratio: z.number().min(0).max(1).default(0),
  /** Global gradient-norm clip; null: none. */
  grad_clip: z.number().gt(0).nullable().default(1),
  ema: z.strictObject({
    enabled: z.boolean().default(true),
    decay: z.number().gt(0).lt(1).default(0.9999),
    start_step: nonNegInt.default(0),
    every: posInt.default(1),
  }).prefault({}),
  seed: nonNegInt.default(0),
  log_every: posInt.default(50),
  /** Steps between sample grids; 0: none during training. */
  sample_every: nonNegInt.default(0),
  sample_count: posInt.default(16),
  checkpoint_every: posInt.default(1000),
  keep_checkpoints: posInt.default(3),
  /** Run folder; default runs/<config file name>. */
  out_dir: z.string().min(1).optional(),
});

// ---- The whole file ---------------------------------------------------------------

const ConfigObjectSchema = z.strictObject({
  model: ModelConfigSchema,
  data: DataConfigSchema,
  training: TrainingConfigSchema,
  /** Accepted so CompVis configs load; ignored with a warning (see training). */
  lightning: z.record(z.string(), z.unknown()).optional(),
});

export const ConfigSchema = ConfigObjectSchema.superRefine(checkConsistency);

export type Config = z.output<typeof ConfigSchema>;
export type ModelConfig = Config['model'];
export type UNetConfig = z.output<typeof UNetConfigSchema>;
export type UNetParams = z.output<typeof UNetParamsSchema>;
export type DDPMUNetParams = z.output<typeof DDPMUNetParamsSchema>;
export type AutoencoderKLConfig = z.output<typeof AutoencoderKLConfigSchema>;
export type DataConfig = Config['data'];
export type TrainingConfig = Config['training'];

/** Channels and spatial size of the UNet's input. */
export function unetIO(u: UNetConfig): { size: number; inChannels: number; outChannels: number; numClasses: number | undefined } {
  return u.target === UNET_TARGET
    ? { size: u.params.image_size, inChannels: u.params.in_channels, outChannels: u.params.out_channels, numClasses: u.params.num_classes }
    : { size: u.params.resolution, inChannels: u.params.in_channels, outChannels: u.params.out_ch, numClasses: undefined };
}

/** The (channels, size) of the images the model takes in: the first stage's input for latent diffusion. */
export function modelImageShape(m: ModelConfig): { channels: number; size: number } {
  if (m.target === LDM_TARGET) {
    const dd = m.params.first_stage_config.params.ddconfig;
    return { channels: dd.in_channels, size: dd.resolution };
  }
  return { channels: m.params.channels, size: m.params.image_size };
}

/** The classes a dataset config delivers (0 when unlabeled). */
export function dataNumClasses(d: DataConfig): number {
  switch (d.target) {
    case FASHION_MNIST_TARGET: return 10;
    case SYNTHETIC_TARGET: return d.params.kind === 'blobs' ? 3 : 4;
    case IMAGE_FOLDER_TARGET: return d.params.class_dirs ? -1 : 0; // -1: known only from the folder
    case LSUN_TARGET: return 0;
  }
}

function checkConsistency(c: z.output<typeof ConfigObjectSchema>, ctx: z.RefinementCtx): void {
  const m = c.model.params;
  const io = unetIO(m.unet_config);
  const up = ['model', 'params', 'unet_config', 'params'];
  const isUNet = m.unet_config.target === UNET_TARGET;
  if (m.linear_start >= m.linear_end) {
    ctx.addIssue({ code: 'custom', path: ['model', 'params', 'linear_end'], message: `must be greater than linear_start (${m.linear_start})` });
  }
  if (io.size !== m.image_size) {
    ctx.addIssue({ code: 'custom', path: [...up, isUNet ? 'image_size' : 'resolution'], message: `must equal model.params.image_size (${m.image_size})` });
  }
  if (io.inChannels !== m.channels) {
    ctx.addIssue({ code: 'custom', path: [...up, 'in_channels'], message: `must equal model.params.channels (${m.channels})` });
  }
  if (io.outChannels !== m.channels) {
    ctx.addIssue({ code: 'custom', path: [...up, isUNet ? 'out_channels' : 'out_ch'], message: `must equal model.params.channels (${m.channels}): the UNet predicts ${m.parameterization === 'eps' ? 'the noise' : 'a sample'} of the input's shape` });
  }
  if (c.model.target === LDM_TARGET) {
    const fs = c.model.params.first_stage_config.params;
    const f = 2 ** (fs.ddconfig.ch_mult.length - 1);
    if (fs.embed_dim !== m.channels) {
      ctx.addIssue({ code: 'custom', path: ['model', 'params', 'channels'], message: `must equal first_stage_config.params.embed_dim (${fs.embed_dim}): the latents' channels` });
    }
    if (fs.ddconfig.resolution / f !== m.image_size) {
      ctx.addIssue({ code: 'custom', path: ['model', 'params', 'image_size'], message: `must equal the latent size ${fs.ddconfig.resolution}/${f} = ${fs.ddconfig.resolution / f} of the first stage` });
    }
  }
  const shape = modelImageShape(c.model);
  if (c.data.target === LSUN_TARGET) {
    if (shape.channels !== 3) ctx.addIssue({ code: 'custom', path: ['data', 'target'], message: `LSUN images are RGB but the model takes ${shape.channels} channels` });
    if (c.data.params.size !== shape.size) ctx.addIssue({ code: 'custom', path: ['data', 'params', 'size'], message: `must equal the model's input size ${shape.size}` });
  }
  if (c.data.target === FASHION_MNIST_TARGET && shape.channels !== 1) {
    ctx.addIssue({ code: 'custom', path: ['data', 'target'], message: `Fashion-MNIST images have 1 channel but the model takes ${shape.channels}` });
  }
  if (io.numClasses !== undefined) {
    const have = dataNumClasses(c.data);
    if (have === 0) {
      ctx.addIssue({ code: 'custom', path: [...up, 'num_classes'], message: `the model is class-conditional but ${c.data.target} gives no labels${c.data.target === IMAGE_FOLDER_TARGET ? ' (set data.params.class_dirs: true)' : ''}` });
    } else if (have > 0 && have > io.numClasses) {
      ctx.addIssue({ code: 'custom', path: [...up, 'num_classes'], message: `${c.data.target} has ${have} classes, more than num_classes ${io.numClasses}` });
    }
  }
}
