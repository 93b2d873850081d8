// conv(silu(groupNorm(x) [* (scale + 1) + shift])) of the UNets' residual
// blocks as one call, so that a layer that can do better than the three ops
// (an integer-executed quantized conv: one pass from x to the 8-bit levels it
// reads, native/cpu/qnorm.cpp) gets the chance. A layer opts in by carrying a
// `forwardNormSilu` function (set on the instance, as quant/quant_layers.ts
// sets its forward); it may decline (return null), and then, as for any other
// layer, the float ops run exactly as the model wrote them before.
import { silu } from '../tensor/ops/activation';
import { add, addScalar, mul } from '../tensor/ops/elementwise';
import type { Tensor } from '../tensor/tensor';
import type { Dropout, GroupNorm } from './layers';

export interface ScaleShift {
  /** (N, C, 1, 1): the norm's output is multiplied by scale + 1 ... */
  scale: Tensor;
  /** ... then shift (N, C, 1, 1) is added (use_scale_shift_norm). */
  shift: Tensor;
}

/** The hook a layer may carry: the fused forward, or null to decline. */
export type NormSiluHook = (norm: GroupNorm, x: Tensor, ss: ScaleShift | null) => Tensor | null;

interface Layer {
  forward(x: Tensor): Tensor;
  forwardNormSilu?: NormSiluHook;
}

/**
 * layer(dropout(silu(norm(x) [* (ss.scale + 1) + ss.shift]))). The layer's
 * hook runs instead where it has one and the dropout is a no-op (eval or p 0).
 */
export function normSiluInto(norm: GroupNorm, layer: Layer, x: Tensor, ss: ScaleShift | null = null, dropout: Dropout | null = null): Tensor {
  if (layer.forwardNormSilu && (!dropout || dropout.p === 0 || !dropout.training)) {
    const y = layer.forwardNormSilu(norm, x, ss);
    if (y) return y;
  }
  let h = norm.forward(x);
  if (ss) h = add(mul(h, addScalar(ss.scale, 1)), ss.shift);
  h = silu(h);
  if (dropout) h = dropout.forward(h);
  return layer.forward(h);
}
