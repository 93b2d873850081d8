// Shared by the quantization tests: a tiny UNetModel with non-zero weights
// everywhere (upstream zero-initialises the output convs, which would make
// every comparison trivially exact).
import { UNetModel } from '../../src/models/openai_unet';
import type { Module } from '../../src/nn/module';
import { noGrad } from '../../src/tensor/autograd';
import { Generator } from '../../src/tensor/random';
import { runOp } from '../../src/tensor/tensor';

export const TINY_UNET = {
  image_size: 8,
  in_channels: 1,
  model_channels: 32,
  out_channels: 1,
  num_res_blocks: 1,
  attention_resolutions: [2],
  channel_mult: [1, 2],
  num_head_channels: 32,
  dropout: 0,
  use_scale_shift_norm: true,
};

/** A tiny UNet whose zero-initialised parameters get small random values. */
export function tinyUNet(seed = 0): UNetModel {
  const gen = new Generator(seed);
  const m = new UNetModel(TINY_UNET, gen);
  randomizeZeroParams(m, gen);
  return m;
}

/** Gives a model's zero-initialised parameters (zero_module layers) small random values N(0, 0.05^2), so every layer matters. */
export function randomizeZeroParams(m: Module, gen: Generator): void {
  noGrad(() => {
    for (const [, p] of m.namedParameters()) {
      const v = p.dataSync() as Float32Array;
      if (v.some((x) => x !== 0)) continue;
      const r = gen.randn(p.shape);
      const s = runOp('affine', [r], { scale: 0.05 })[0];
      runOp('copy_', [p, s]);
      r.dispose();
      s.dispose();
    }
  });
}

/** The noise schedule of the tests: LDM's linear schedule, T = 1000. */
export const SCHEDULE = { kind: 'linear' as const, timesteps: 1000 };
