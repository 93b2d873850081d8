// Integer execution of quantized layers (no autograd: inference only). See
// native/cpu/qgemm.h, qgemm.cpp and qconv2d.cpp for the exact formulas.
//
//   const w = packQWeight(weight, wstep, 8);                       // once per model
//   const xq = quantizeActivation(x, astep, { bits: 8, signed: false });
//   const y = qconv2d(xq, astep, w, bias, { stride: 1, padding: 1 });
//
// equals conv2d(fakeQuantize(x, astep, ...), fakeQuantize(weight, wstep, ...), bias)
// up to float rounding (three roundings of the result; see qgemm.h). The
// activation step is a tensor ([] / [1], or [N] for one step per sample), so a
// step-table lookup on the engine can feed it without t going through JS.
import { type Tensor, runOp, runOp1 } from '../tensor';

export interface QuantizeActivationOptions {
  /** 2 to 8. */
  bits: number;
  /** true: int8 levels -2^(bits-1)..2^(bits-1)-1 (symmetric); false: uint8 levels 0..2^bits-1. */
  signed: boolean;
  /** Unsigned only: the level of real 0 (default 0, fakeQuantize's unsigned quantizer). */
  zeroPoint?: number;
}

/**
 * q = clamp(round(x / step) + zeroPoint, qmin, qmax), round half to even, as
 * uint8 (unsigned) or int8 (signed): the levels of fakeQuantize with the same
 * step. step: [] or [1], or [x.shape[0]] (one step per sample).
 */
export function quantizeActivation(x: Tensor, step: Tensor, opts: QuantizeActivationOptions): Tensor {
  if (opts === null || typeof opts !== 'object') throw new TypeError('quantizeActivation: argument \'opts\' must be an object {bits, signed}');
  return runOp1('quantize_act', [x, step], { bits: opts.bits, signed: opts.signed, zero_point: opts.zeroPoint ?? 0 });
}

/** Weights in the integer kernels' layout, made once per model by packQWeight. */
export interface QWeight {
  /** int8 (O, Kp): the levels, rows padded with zeros to Kp = round_up(K, 4). */
  readonly packed: Tensor;
  /** float32 (O): the per-output-channel steps (real weight = level * step). */
  readonly step: Tensor;
  /** int32 (O): the sum of each row's levels (for the activations' zero point). */
  readonly rowSums: Tensor;
  /** The shape of the float weights: (O, C, kH, kW) for a conv, (O, K) for a linear layer. */
  readonly shape: readonly number[];
  readonly bits: number;
}

/**
 * Quantizes (float32 weight) or takes (int8 levels, e.g. from unpackInt4)
 * weights of shape (O, ...) per output channel, symmetric:
 * level = clamp(round(w / step[o]), -2^(bits-1), 2^(bits-1)-1), as
 * fakeQuantize(w, step, {bits, signed: true, granularity: 'channel'}).
 */
export function packQWeight(weight: Tensor, step: Tensor, bits: number): QWeight {
  const [packed, rowSums] = runOp('qweight_pack', [weight, step], { bits });
  return { packed, step, rowSums, shape: [...weight.shape], bits };
}

/** 4-bit levels (-8..7, any shape) two per byte: uint8 [ceil(n / 2)], element 2i in the low nibble. */
export function packInt4(levels: Tensor): Tensor {
  return runOp1('int4_pack', [levels]);
}

/** The inverse of packInt4: int8 levels of the given shape. */
export function unpackInt4(packed: Tensor, shape: readonly number[]): Tensor {
  return runOp1('int4_unpack', [packed], { shape: [...shape] });
}

/**
 * Quantization of float32 x inside qconv2d / qlinear (native/cpu/qgemm.h,
 * QActSpec): the levels of fakeQuantize(x - offset, max(step, stepFloor)),
 * without a quantize_act op or a uint8 tensor; the real zero point `offset`
 * is added back in the epilogue (bias + offset * the weights over the taps
 * inside the input).
 */
export interface FusedActQuant {
  bits: number;
  signed: boolean;
  /** The real zero point z (default 0): levels of x - z, z added back to the result. */
  offset?: number;
  /** x is already x - offset (e.g. PACT-clipped): only the result correction applies. */
  inputShifted?: boolean;
  /** The step is max(step, stepFloor) (default 0). */
  stepFloor?: number;
  /**
   * actStep is a (1 or N, Q) table (the forward's step_table_lookup rows)
   * and column `column` holds this quantizer's step (default -1: actStep is
   * [] / [1] / [N]).
   */
  column?: number;
}

function fusedAttrs(x: Tensor, q: FusedActQuant | undefined, op: string): Record<string, number | boolean> {
  if (x.dtype !== 'float32') {
    if (q) throw new TypeError(`${op}: opts.act is for float32 x; x is ${x.dtype} (already quantized levels)`);
    return {};
  }
  if (!q) throw new TypeError(`${op}: float32 x needs opts.act (how to quantize it), or pass levels from quantizeActivation`);
  return {
    bits: q.bits,
    signed: q.signed,
    offset: q.offset ?? 0,
    input_shifted: q.inputShifted ?? false,
    step_floor: q.stepFloor ?? 0,
    column: q.column ?? -1,
  };
}

export interface QConv2dOptions {
  stride?: number;
  padding?: number;
  /** The zero point of uint8 x (default 0); int8 x is symmetric. */
  zeroPoint?: number;
  /** float32 x only: how the op quantizes it. */
  act?: FusedActQuant;
  /**
   * uint8 x only: the levels are of x - offset (qgroupNormAct), made with the
   * step max(actStep[column], stepFloor): the op adds offset * weights back.
   */
  levels?: LevelsOf;
  /**
   * Added after the conv in its own output pass, rounded as the separate adds
   * round: y = residual + (y + addChannel[n, o]). addChannel (N, O) (a time
   * embedding), residual (N, O, Ho, Wo) (a skip connection).
   */
  addChannel?: Tensor | null;
  residual?: Tensor | null;
}

/** How uint8 levels from qgroupNormAct were made (its opts.act less bits and signed). */
export interface LevelsOf {
  offset?: number;
  stepFloor?: number;
  column?: number;
}

/**
 * y = conv2d(x - zeroPoint, levels) * (actStep * weight step) + bias in integer
 * arithmetic; x: uint8/int8 (N, C, H, W) from quantizeActivation with actStep,
 * or float32 x quantized inside the op as opts.act says (FusedActQuant).
 */
export function qconv2d(x: Tensor, actStep: Tensor, w: QWeight, bias: Tensor | null, opts: QConv2dOptions = {}): Tensor {
  if (w.shape.length !== 4) throw new RangeError(`qconv2d: weights of shape [${w.shape.join(', ')}] are not (O, C, kH, kW)`);
  const adds = opts.addChannel || opts.residual ? [opts.addChannel ?? null, opts.residual ?? null] : [];
  return runOp1('qconv2d', [x, actStep, w.packed, w.step, w.rowSums, bias, ...adds], {
    weight_shape: [...w.shape],
    stride: opts.stride ?? 1,
    padding: opts.padding ?? 0,
    zero_point: opts.zeroPoint ?? 0,
    ...fusedAttrs(x, opts.act, 'qconv2d'),
    ...levelsAttrs(x, opts.levels, 'qconv2d'),
  });
}

function levelsAttrs(x: Tensor, l: LevelsOf | undefined, op: string): Record<string, number> {
  if (!l) return {};
  if (x.dtype === 'float32') throw new TypeError(`${op}: opts.levels is for uint8 / int8 x (levels made outside); float32 x takes opts.act`);
  return { offset: l.offset ?? 0, step_floor: l.stepFloor ?? 0, column: l.column ?? -1 };
}

export interface QGroupNormActOptions {
  numGroups: number;
  eps?: number;
  /** SiLU after the norm (default true). */
  silu?: boolean;
  /** Per-sample (N, C) or (N, C, 1, 1) scale and shift after the norm: v * (scale + 1) + shift. */
  scaleShift?: { scale: Tensor; shift: Tensor };
  /** How the result is quantized (inputShifted does not apply). */
  act: FusedActQuant;
}

/**
 * The uint8 levels of [silu](groupNorm(x) [* (scale + 1) + shift]) quantized
 * as opts.act says (byte = level + 128 for signed), in one pass
 * (native/cpu/qnorm.cpp): feed them to qconv2d with zeroPoint 128 (signed) or
 * 0, and opts.levels = { offset, stepFloor, column } of the same act.
 */
export function qgroupNormAct(x: Tensor, weight: Tensor | null, bias: Tensor | null, actStep: Tensor, opts: QGroupNormActOptions): Tensor {
  const q = opts.act;
  if (q.inputShifted) throw new RangeError('qgroupNormAct: act.inputShifted does not apply (the op quantizes its own result)');
  return runOp1('qgroup_norm_act', [x, weight, bias, actStep, opts.scaleShift?.scale ?? null, opts.scaleShift?.shift ?? null], {
    num_groups: opts.numGroups,
    eps: opts.eps ?? 1e-5,
    silu: opts.silu ?? true,
    bits: q.bits,
    signed: q.signed,
    offset: q.offset ?? 0,
    step_floor: q.stepFloor ?? 0,
    column: q.column ?? -1,
  });
}

/**
 * y = (x - zeroPoint) · levels^T * (actStep * weight step) + bias over the last
 * axis of x; actStep [] / [1] or [x.shape[0]]; float32 x with opts.act as qconv2d.
 */
export function qlinear(x: Tensor, actStep: Tensor, w: QWeight, bias: Tensor | null, opts: { zeroPoint?: number; act?: FusedActQuant } = {}): Tensor {
  if (w.shape.length !== 2) throw new RangeError(`qlinear: weights of shape [${w.shape.join(', ')}] are not (O, K)`);
  return runOp1('qlinear', [x, actStep, w.packed, w.step, w.rowSums, bias], {
    weight_shape: [...w.shape],
    zero_point: opts.zeroPoint ?? 0,
    ...fusedAttrs(x, opts.act, 'qlinear'),
  });
}
