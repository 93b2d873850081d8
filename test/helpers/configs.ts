// The tiny configs the tests share: a DDPM on 8 x 8 x 1 synthetic blobs
// (training, resume, run-folder and data-parallel tests), a KL autoencoder first stage, and the
// tiny class-conditional LDM of test/fixtures/latent (16 x 16 x 1 images,
// 8 x 8 x 3 latents), with a writer for config files.
import fs from 'node:fs';
import path from 'node:path';

import type { DDConfig } from '../../src/models/autoencoder';

/** test/fixtures/latent: the tiny LDM's first-stage checkpoint and its fixtures. */
export const FIX = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'latent');

/** A tiny first-stage ddconfig (16 x 16 x 1 -> 8 x 8 x 3, 4 GroupNorm groups); overrides replace keys, an undefined one drops its key. */
export function tinyDdconfig(over: Partial<DDConfig> = {}): DDConfig {
  const dd: DDConfig = { double_z: true, z_channels: 3, resolution: 16, in_channels: 1, out_ch: 1, ch: 8, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0, norm_num_groups: 4, ...over };
  for (const k of Object.keys(dd) as (keyof DDConfig)[]) if (dd[k] === undefined) delete dd[k];
  return dd;
}

/** YAML flow style as the configs write it by hand: {ch: 8, ch_mult: [1, 2]} (tests edit the text, e.g. 'ch: 8,' -> 'ch: 16,'). */
export function flow(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(flow).join(', ')}]`;
  if (v !== null && typeof v === 'object') return `{${Object.entries(v).map(([k, x]) => `${k}: ${flow(x)}`).join(', ')}}`;
  return String(v);
}

/**
 * A CompVis-shaped AutoencoderKL config file (models/first_stage_models/kl-*
 * layout: monitor, an LPIPSWithDiscriminator lossconfig), the tiny ddconfig
 * unless given; `sections` is appended (data:, training:, lightning: ...).
 */
export function tinyKlYaml(o: { embedDim?: number; ddconfig?: DDConfig; baseLr?: string; lossParams?: string; sections?: string } = {}): string {
  return `
model:
  base_learning_rate: ${o.baseLr ?? '1.0e-3'}
  target: ldm.models.autoencoder.AutoencoderKL
  params:
    monitor: val/rec_loss
    embed_dim: ${o.embedDim ?? 3}
    lossconfig:
      target: ldm.modules.losses.LPIPSWithDiscriminator
      params: ${o.lossParams ?? '{disc_start: 50001, kl_weight: 1.0e-6, disc_weight: 0.5}'}
    ddconfig: ${flow(o.ddconfig ?? tinyDdconfig())}
${o.sections ?? ''}`;
}

/**
 * An upstream LDM config in the shape of CompVis'
 * configs/latent-diffusion/lsun_churches-ldm-kl-8.yaml (smaller numbers):
 * upstream's logging keys, an Identity lossconfig, main.DataModuleFromConfig
 * over ldm.data.lsun.LSUNChurchesTrain (size 16, plus `trainParams`), a
 * LambdaLinear scheduler_config and a lightning section (`trainer`, with the
 * ImageLogger callback when `callbacks`), as the config and training tests
 * read it unchanged.
 */
export function churchesYaml(o: {
  unet: Record<string, unknown>;
  batchSize: number;
  warmUpSteps: number;
  firstStageCkpt?: string;
  trainParams?: Record<string, unknown>;
  validation?: boolean;
  callbacks?: boolean;
  trainer: Record<string, unknown>;
}): string {
  return `
model:
  base_learning_rate: 5.0e-5
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0155
    num_timesteps_cond: 1
    log_every_t: 200
    timesteps: 1000
    loss_type: l1
    first_stage_key: image
    cond_stage_key: image
    image_size: 8
    channels: 4
    cond_stage_trainable: false
    concat_mode: false
    scale_by_std: true
    monitor: val/loss_simple_ema
    scheduler_config:
      target: ldm.lr_scheduler.LambdaLinearScheduler
      params: {warm_up_steps: [${o.warmUpSteps}], cycle_lengths: [10000000000000], f_start: [1.0e-6], f_max: [1.0], f_min: [1.0]}
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params: ${flow(o.unet)}
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss${o.firstStageCkpt === undefined ? '' : `\n        ckpt_path: ${o.firstStageCkpt}`}
        ddconfig: {double_z: true, z_channels: 4, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
        lossconfig: {target: torch.nn.Identity}
    cond_stage_config: __is_unconditional__
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: ${o.batchSize}
    num_workers: 5
    wrap: false
    train:
      target: ldm.data.lsun.LSUNChurchesTrain
      params: ${flow({ size: 16, ...o.trainParams })}${o.validation ? `
    validation:
      target: ldm.data.lsun.LSUNChurchesValidation
      params: {size: 16}` : ''}
lightning:${o.callbacks ? `
  callbacks:
    image_logger:
      target: main.ImageLogger
      params: {batch_frequency: 5000, max_images: 8, increase_log_steps: false}` : ''}
  trainer: ${flow(o.trainer)}
`;
}

/** The synthetic data section of the tiny configs. */
export function syntheticData(kind: 'blobs' | 'shapes'): string {
  return `data:
  target: tdq_native.data.Synthetic
  params: {count: 40, kind: ${kind}, seed: 3}`;
}

/**
 * A tiny pixel DDPM (8 x 8 x 1, UNet of 32 channels, attention at 4 px) on
 * synthetic blobs, EMA 0.9, logging every step; by default batch 4, 2 warmup
 * steps, dropout 0.1, seed 11; `training` adds lines to the training section.
 */
export function tinyDdpmYaml(o: { maxSteps: number; dropout?: number; checkpointEvery?: number; batchSize?: number; warmupSteps?: number; seed?: number; training?: string }): string {
  return `
model:
  base_learning_rate: 1.0e-3
  target: tdq_native.models.diffusion.DDPM
  params:
    beta_schedule: sqrt_linear
    timesteps: 100
    image_size: 8
    channels: 1
    unet_config:
      target: tdq_native.models.unet.UNetModel
      params: {image_size: 8, in_channels: 1, out_channels: 1, model_channels: 32, channel_mult: [1, 1], num_res_blocks: 1, attention_resolutions: [2], num_heads: 2, dropout: ${o.dropout ?? 0.1}}
${syntheticData('blobs')}
training:
  batch_size: ${o.batchSize ?? 4}
  max_steps: ${o.maxSteps}
  warmup_steps: ${o.warmupSteps ?? 2}
  ema: {decay: 0.9}
  seed: ${o.seed ?? 11}
  log_every: 1
  checkpoint_every: ${o.checkpointEvery ?? 100}
${o.training ?? ''}`;
}

/**
 * The tiny DDPM for data-parallel tests: batch 8 (4 per rank on 2 ranks), no
 * dropout (the ranks' masks would differ from one process's) and no warmup,
 * gradients accumulated over `accumulate` batches (default 1).
 */
export function tinyDdpYaml(o: { maxSteps?: number; seed?: number; checkpointEvery?: number; accumulate?: number } = {}): string {
  return tinyDdpmYaml({
    maxSteps: o.maxSteps ?? 6, dropout: 0, batchSize: 8, warmupSteps: 0, seed: o.seed, checkpointEvery: o.checkpointEvery ?? 3,
    training: `  accumulate_grad_batches: ${o.accumulate ?? 1}\n`,
  });
}

/** The tiny class-conditional LDM of test/fixtures/latent (16 x 16 x 1 images, 8 x 8 x 3 latents, 4 classes), on synthetic shapes. */
export function tinyLdmYaml(o: { maxSteps: number; ckptPath?: string; extraParams?: string; training?: string }): string {
  return `
model:
  base_learning_rate: 1.0e-3
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.0015
    linear_end: 0.0155
    timesteps: 1000
    first_stage_key: image
    image_size: 8
    channels: 3
    scale_by_std: true
    conditioning_key: crossattn
    cond_stage_key: class_label
    cond_stage_trainable: true
${o.extraParams ?? ''}
    cond_stage_config:
      target: ldm.modules.encoders.modules.ClassEmbedder
      params: {embed_dim: 8, n_classes: 4, key: class_label}
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params: {image_size: 8, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [1], num_res_blocks: 1, channel_mult: [1], num_heads: 2, use_spatial_transformer: true, context_dim: 8, dropout: 0.2}
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 3
        ${o.ckptPath === undefined ? `ckpt_path: ${path.join(FIX, 'tiny_ldm_cond.ckpt')}` : o.ckptPath}
        ddconfig: ${flow(tinyDdconfig())}
        lossconfig: {target: torch.nn.Identity}
${syntheticData('shapes')}
training:
  batch_size: 4
  max_steps: ${o.maxSteps}
  scale_lr: false
  grad_clip: 0.5
  ema: {decay: 0.9}
  seed: 11
  log_every: 1
  checkpoint_every: 3
${o.training ?? ''}
`;
}

let n = 0;
/** Writes a config into `dir`; returns its path. */
export function writeYamlIn(dir: string, text: string): string {
  const f = path.join(dir, `cfg-${n++}.yaml`);
  fs.writeFileSync(f, text);
  return f;
}
