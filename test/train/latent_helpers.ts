// The tiny latent diffusion configs of the latent training tests (test/train/latent_*.test.ts, test/cli/train_latent.test.ts).
import fs from 'node:fs';
import path from 'node:path';

export const FIX = path.resolve(__dirname, '..', '..', '..', 'test', 'fixtures', 'latent');

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
        ddconfig: {double_z: true, z_channels: 3, resolution: 16, in_channels: 1, out_ch: 1, ch: 8, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0, norm_num_groups: 4}
        lossconfig: {target: torch.nn.Identity}
data:
  target: tdq_native.data.Synthetic
  params: {count: 40, kind: shapes, seed: 3}
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

