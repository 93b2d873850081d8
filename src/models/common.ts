// Pieces shared by the UNets: sinusoidal timestep embeddings and init helpers.
import { Module } from '../nn/module';
import { runOp } from '../tensor/tensor';
import { zerosLike, fromArray } from '../tensor/ops/creation';
import { cat } from '../tensor/ops/shape';
import { cos, mul, reshape, sin } from '../tensor/ops/elementwise';
import type { Tensor } from '../tensor/tensor';

/**
 * Sinusoidal embedding of (B) timesteps into (B, dim).
 * order 'cos-sin' with denominator half (openaimodel.timestep_embedding) or
 * 'sin-cos' with denominator half - 1 (the DDPM port's get_timestep_embedding).
 */
export function timestepEmbedding(t: Tensor, dim: number, order: 'cos-sin' | 'sin-cos', maxPeriod = 10000): Tensor {
  const half = Math.floor(dim / 2);
  const denom = order === 'cos-sin' ? half : half - 1;
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; ++i) freqs[i] = Math.exp((-Math.log(maxPeriod) * i) / denom);
  const args = mul(reshape(t, [t.shape[0], 1]), fromArray(freqs, [1, half], 'float32', t.device));
  const parts = order === 'cos-sin' ? [cos(args), sin(args)] : [sin(args), cos(args)];
  if (dim % 2) parts.push(zerosLike(reshape(t, [t.shape[0], 1])));
  return cat(parts, 1);
}

/** Sets every parameter of m to zero in place (upstream's zero_module). */
export function zeroModule<M extends Module>(m: M): M {
  for (const [, p] of m.namedParameters()) {
    const z = zerosLike(p);
    runOp('copy_', [p, z]);
    z.dispose();
  }
  return m;
}
