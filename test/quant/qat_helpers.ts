// Shared by the QAT recipe and distillation tests: a tiny pixel DDPM on the
// synthetic data (no dataset needed) and its full-precision checkpoint with
// non-zero weights everywhere (upstream zero-initialises the output conv,
// which would make teacher and student agree trivially).
import path from 'node:path';

import { type Config, parseConfig } from '../../src/config';
import { buildUNet, scheduleFromConfig } from '../../src/models/diffusion';
import { Generator } from '../../src/tensor/random';
import { saveCheckpoint } from '../../src/train/checkpoint';
import { randomizeZeroParams } from './helpers';

export const qatYaml = (maxSteps: number, checkpointEvery = 2): string => `
model:
  base_learning_rate: 2.0e-4
  target: tdq_native.models.diffusion.DDPM
  params:
    beta_schedule: linear
    timesteps: 100
    image_size: 8
    channels: 1
    unet_config:
      target: tdq_native.models.unet.UNetModel
      params: {image_size: 8, in_channels: 1, out_channels: 1, model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [2], num_head_channels: 32, dropout: 0}
data:
  target: tdq_native.data.Synthetic
  params: {count: 40, kind: blobs, seed: 3}
training:
  batch_size: 4
  max_steps: ${maxSteps}
  warmup_steps: 0
  ema: {decay: 0.9}
  seed: 11
  log_every: 1
  checkpoint_every: ${checkpointEvery}
  sample_every: 0
`;

export function qatConfig(maxSteps: number, checkpointEvery = 2): Config {
  return parseConfig(qatYaml(maxSteps, checkpointEvery), 'qat-test.yaml').config;
}

/** Writes a full-precision checkpoint of the config's UNet (zero-initialised parameters given small random values) to dir/fp.safetensors. */
export async function writeFpCheckpoint(dir: string, config: Config, seed = 0): Promise<string> {
  const gen = new Generator(seed);
  const unet = buildUNet(config.model.params.unet_config, gen);
  randomizeZeroParams(unet, gen);
  const file = path.join(dir, 'fp.safetensors');
  await saveCheckpoint(file, { config, model: unet });
  unet.dispose();
  return file;
}

/** Calibration options of the tests: few, short trajectories. */
export function quickCalib(config: Config) {
  return { schedule: scheduleFromConfig(config.model.params), steps: 4, nSamples: 2, seed: 0, sampleShape: [1, 8, 8] };
}
