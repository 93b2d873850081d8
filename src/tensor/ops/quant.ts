// Fake quantization with a learnable step size (LSQ, Esser et al. 2020): the
// building block of the quantized (TDQ) models. See native/cpu/fake_quant.cpp
// for the exact formulas.
import { record } from '../autograd';
import { type Tensor, runOp, runOp1 } from '../tensor';

export interface FakeQuantizeOptions {
  /** 2 to 8. */
  bits: number;
  /** Signed: levels -2^(bits-1) .. 2^(bits-1)-1; unsigned: 0 .. 2^bits-1. */
  signed: boolean;
  /**
   * 'tensor': step has shape [] or [1]. 'channel': step has shape [x.shape[axis]]
   * (weights (O, I, kh, kw) use axis 0). 'sample': step has shape [x.shape[axis]],
   * axis 0 by default: one step per batch element (per-timestep activations).
   */
  granularity: 'tensor' | 'channel' | 'sample';
  /** For 'channel' and 'sample'; default 0. */
  axis?: number;
  /**
   * Multiplies d(loss)/d(step). Default: LSQ's 1 / sqrt(numel_per_step * qmax),
   * which keeps the step's updates in proportion to the weights' updates.
   * Pass 1 for the plain gradient.
   */
  gradScale?: number;
}

/**
 * y = clamp(round(x / step), qmin, qmax) * step, round half to even. Gradients
 * flow to x (straight-through inside the range, 0 outside) and to step (LSQ).
 * A step that is not positive makes reading the output (or anything computed from it) reject.
 */
export function fakeQuantize(x: Tensor, step: Tensor, opts: FakeQuantizeOptions): Tensor {
  if (opts === null || typeof opts !== 'object') throw new TypeError('fakeQuantize: argument \'opts\' must be an object {bits, signed, granularity}');
  const attrs = {
    bits: opts.bits,
    signed: opts.signed,
    granularity: opts.granularity,
    axis: opts.axis,
    grad_scale: opts.gradScale,
  };
  const [out] = runOp('fake_quant_forward', [x, step], attrs);
  return record(out, 'fake_quantize', [x, step], (g) => runOp('fake_quant_backward', [g, x, step], attrs));
}

/**
 * The rows of a (T, Q) step table at the (B) float32 timesteps t, as (B, Q):
 * row k exactly at an integer t = k, linear interpolation between rows at a
 * fractional t (src/quant/table.ts StepTable.at is the reference). No gradient.
 */
export function stepTableLookup(table: Tensor, t: Tensor): Tensor {
  return runOp1('step_table_lookup', [table, t]);
}
