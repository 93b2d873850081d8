// Small checkpoints written by tests.
import path from 'node:path';

import { loadConfig } from '../../src/config';
import { buildUNet, scheduleFromConfig } from '../../src/models/diffusion';
import { calibrate } from '../../src/quant/calibrate';
import { resolveQuantConfig } from '../../src/quant/config';
import { saveQuantizedCheckpoint } from '../../src/quant/weights_format';
import { Generator } from '../../src/tensor/random';
import { saveCheckpoint } from '../../src/train/checkpoint';

/**
 * A tiny fmnist-small UNet (32 channels, one level, no attention) with random
 * weights saved at `fp`, and its TDQ W8A8 model (min-max PTQ on one 4-step
 * trajectory, step table built, int8 weights) saved at `q`: the float and
 * quantized checkpoints the eval tests score.
 */
export async function writeTinyFpAndTdqCheckpoints(fp: string, q: string): Promise<void> {
  const overrides = ['model_channels=32', 'channel_mult=[1]', 'attention_resolutions=[]'].map((o) => `model.params.unet_config.params.${o}`);
  const { config } = loadConfig(path.resolve(__dirname, '..', '..', '..', 'configs', 'fmnist-small.yaml'), { overrides });
  const unet = buildUNet(config.model.params.unet_config, new Generator(0));
  await saveCheckpoint(fp, { config, model: unet });
  const qm = await calibrate(unet, resolveQuantConfig({ nBitW: 8, nBitA: 8, useDynamic: true }), {
    schedule: scheduleFromConfig(config.model.params), steps: 4, nSamples: 1, seed: 0, method: 'minmax', sampleShape: [1, 32, 32], fitIters: 20,
  });
  qm.buildTable();
  await saveQuantizedCheckpoint(q, { config, model: qm, weightsFormat: 'int' });
  qm.dispose();
}
