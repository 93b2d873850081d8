// Distillation for quantization-aware training: the quantized model learns
// the frozen full-precision model's noise prediction on the same noisy input
// and timestep,
//   L = w * mean((eps_Q(x_t, t) - eps_FP(x_t, t))^2) + (1 - w) * L_diffusion,
// L_diffusion the plain training loss (eps_Q against the drawn noise). The
// randomness (timesteps, then noise) is drawn exactly as
// PixelDiffusion.trainingLoss draws it, so w = 0 is the plain loss bit for
// bit, and a resumed run continues the same draws.
import type { Denoiser, PixelDiffusion } from '../models/diffusion';
import { noGrad } from '../tensor/autograd';
import { abs, add, detach, mean, mul, scale, square, sub } from '../tensor/ops/elementwise';
import type { Generator } from '../tensor/random';
import { type Tensor, fromArray } from '../tensor/tensor';

export interface DistillOptions {
  /** The frozen full-precision model (eval mode; never trained, never saved with the run). */
  teacher: Denoiser;
  /** w in [0, 1]: the distillation term's share of the loss (1: distillation only). */
  weight: number;
}

export function checkDistillWeight(w: number): number {
  if (typeof w !== 'number' || !(w >= 0 && w <= 1)) throw new RangeError(`distill weight must be a number in [0, 1], got ${JSON.stringify(w)}`);
  return w;
}

/** The loss of a batch with distillation, and its two parts (the parts are not part of the graph's output). */
export function distillLoss(
  diffusion: PixelDiffusion, d: DistillOptions, x0: Tensor, gen: Generator, y?: Tensor | null, shard?: { start: number; total: number },
): { loss: Tensor; distill: Tensor; diffusion: Tensor | null; timesteps: number[] } {
  const w = checkDistillWeight(d.weight);
  const b = x0.shape[0];
  const sch = diffusion.schedule;
  const T = sch.numTimesteps;
  const start = shard?.start ?? 0, total = shard?.total ?? b;
  if (start < 0 || start + b > total) throw new RangeError(`distillLoss: rows [${start}, ${start + b}) do not fit a global batch of ${total}`);
  // The draws of PixelDiffusion.trainingLoss, in its order.
  const timesteps = Array.from({ length: total }, () => gen.randint(T)).slice(start, start + b);
  const a = new Float32Array(b), s = new Float32Array(b);
  timesteps.forEach((t, i) => {
    a[i] = sch.sqrtAlphasCumprod[t];
    s[i] = sch.sqrtOneMinusAlphasCumprod[t];
  });
  const noise = shard ? gen.randnSlice(x0.shape, start, total) : gen.randn(x0.shape);
  const xt = add(mul(x0, fromArray(a, [b, 1, 1, 1])), mul(noise, fromArray(s, [b, 1, 1, 1])));
  const eps = diffusion.unet.forward(xt, fromArray(timesteps, [b]), y ?? undefined);
  const target = noGrad(() => detach(d.teacher.forward(detach(xt), fromArray(timesteps, [b]), y ?? undefined)));
  const distill = mean(square(sub(eps, target)));
  if (w === 1) return { loss: distill, distill, diffusion: null, timesteps };
  const diff = sub(eps, noise);
  const plain = mean(diffusion.lossType === 'l2' ? square(diff) : abs(diff));
  if (w === 0) return { loss: plain, distill, diffusion: plain, timesteps };
  return { loss: add(scale(distill, w), scale(plain, 1 - w)), distill, diffusion: plain, timesteps };
}
