import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseConfig } from '../../src/config';
import { lrFactor } from '../../src/train/trainer';

const cfg = (training: string) =>
  parseConfig(
    `model: {base_learning_rate: 1.0e-4, target: tdq_native.models.diffusion.DDPM, params: {image_size: 8, channels: 1, unet_config: {target: tdq_native.models.unet.UNetModel, params: {image_size: 8, in_channels: 1, out_channels: 1, model_channels: 32, num_res_blocks: 1, attention_resolutions: [], channel_mult: [1], num_heads: 1}}}}
data: {target: tdq_native.data.Synthetic, params: {count: 8}}
training: ${training}`,
    't.yaml',
  ).config.training;

describe('learning-rate factor', () => {
  it('linear warm-up then cosine decay to min_lr_ratio', () => {
    const t = cfg('{batch_size: 2, max_steps: 110, warmup_steps: 10, lr_schedule: cosine, min_lr_ratio: 0.1}');
    assert.equal(lrFactor(t, 5), 0.5);
    assert.equal(lrFactor(t, 10), 1);
    assert.ok(Math.abs(lrFactor(t, 60) - (0.1 + 0.9 * 0.5)) < 1e-12);
    assert.ok(Math.abs(lrFactor(t, 110) - 0.1) < 1e-12);
  });

  it("LDM's LambdaLinearScheduler: f_start to f_max over the warm-up, then linear to f_min over the cycle", () => {
    const t = cfg('{batch_size: 2, max_steps: 200, lr_schedule: lambda_linear, lambda_linear: {warm_up_steps: [100], f_min: [0.5], f_max: [1.0], f_start: [1.0e-6], cycle_lengths: [1000]}}');
    // optimizer step n (0-based) = training step n + 1
    assert.ok(Math.abs(lrFactor(t, 1) - 1e-6) < 1e-15);
    assert.ok(Math.abs(lrFactor(t, 51) - (1e-6 + (1 - 1e-6) * 0.5)) < 1e-12);
    assert.ok(Math.abs(lrFactor(t, 201) - (0.5 + 0.5 * (1000 - 200) / 1000)) < 1e-12);
  });

  it('lambda_linear without its parameters is a clear error', () => {
    const t = cfg('{batch_size: 2, max_steps: 10, lr_schedule: lambda_linear}');
    assert.throws(() => lrFactor(t, 1), /training.lambda_linear is not set/);
  });
});
