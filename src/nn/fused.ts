// conv(silu(groupNorm(x) [* (scale + 1) + shift])) of the UNets' residual
// blocks as one call, so that a layer that can do better than the three ops
// (an integer-executed quantized conv: one pass from x to the 8-bit levels it
// reads, native/cpu/qnorm.cpp) gets the chance. A layer opts in by carrying a
// `forwardNormSilu` function (set on the instance, as quant/quant_layers.ts
// sets its forward); it may decline (return null), and then, as for any other
// layer, the float ops run exactly as the model wrote them before.
import { silu } from '../tensor/ops/activation';
import { add, addScalar, mul, reshape } from '../tensor/ops/elementwise';
import type { Tensor } from '../tensor/tensor';
import type { Dropout, GroupNorm } from './layers';

export interface ScaleShift {
  /** (N, C, 1, 1): the norm's output is multiplied by scale + 1 ... */
  scale: Tensor;
  /** ... then shift (N, C, 1, 1) is added (use_scale_shift_norm). */
  shift: Tensor;
}

/** The hook a layer may carry: the fused forward with the epilogue's adds done (as addAfter rounds them), or null to decline. */
export type NormSiluHook = (norm: GroupNorm, x: Tensor, ss: ScaleShift | null, epi: Epilogue) => Tensor | null;

/** Adds after the layer: a per-channel (N, C) term (a time embedding) and a residual (N, C, H, W). */
export interface Epilogue {
  addChannel?: Tensor | null;
  residual?: Tensor | null;
}

interface Layer {
  forward(x: Tensor): Tensor;
  /** The layer with the epilogue's adds done in its own output pass (Conv2d.forwardAdd). */
  forwardAdd?(x: Tensor, addChannel: Tensor | null, residual: Tensor | null): Tensor;
  forwardNormSilu?: NormSiluHook;
}

/** y + addChannel, then residual + that, as separate ops. */
export function addAfter(y: Tensor, epi: Epilogue): Tensor {
  const c = epi.addChannel;
  if (c) y = add(y, reshape(c, [c.shape[0], c.shape[1], 1, 1]));
  return epi.residual ? add(epi.residual, y) : y;
}

/**
 * layer(dropout(silu(norm(x) [* (ss.scale + 1) + ss.shift]))) [+ addChannel]
 * [+ residual]. The layer's hook runs instead where it has one and the
 * dropout is a no-op (eval or p 0); otherwise GroupNorm+SiLU run as one op
 * (without scale-shift) and the adds go into the layer's output pass where
 * it has forwardAdd.
 */
export function normSiluInto(norm: GroupNorm, layer: Layer, x: Tensor, ss: ScaleShift | null = null, dropout: Dropout | null = null, epi: Epilogue = {}): Tensor {
  if (layer.forwardNormSilu && (!dropout || dropout.p === 0 || !dropout.training)) {
    const y = layer.forwardNormSilu(norm, x, ss, epi);
    if (y) return y;
  }
  let h = ss ? silu(add(mul(norm.forward(x), addScalar(ss.scale, 1)), ss.shift)) : norm.forwardSiLU(x);
  if (dropout) h = dropout.forward(h);
  return layer.forwardAdd ? layer.forwardAdd(h, epi.addChannel ?? null, epi.residual ?? null) : addAfter(layer.forward(h), epi);
}
