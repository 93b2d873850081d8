// Quantized versions of the UNet's conv and linear layers. A quantized layer
// takes over the forward of an existing float layer in place: the float layer
// stays where the model's code holds it (fields, Seq children), keeps its
// parameter names ('...in_layers.2.weight'), and gets its quantizers as
// children ('...in_layers.2.act_quant.step', '...in_layers.2.weight_quant.step').
// Swapping modules instead would mean finding every reference a model keeps
// to a layer; overriding the instance's forward needs no help from the model.
//
//   y = op(Q_a(x), Q_w(W), b)        [then Q_out(y) for attention q/k/v projections]
//
// The bias stays in full precision (it is added to the int32 accumulator in
// integer inference).
//
// Integer execution (ctx.exec 'int', inference only): the same layer runs one
// op, qconv2d / qlinear on float x, which quantizes x itself with the
// activation step of this forward ((1) static, (B) from the TDQ MLP, or
// the forward's (B, Q) table rows and this quantizer's column), on weights
// packed once per layer (cached until invalidateIntCache()). A real-valued
// zero point z (SILU_MIN for SiLU outputs) is not an integer level, so the
// levels are taken of x - z and the op adds z * op(1, Q_w(W)) back in its
// epilogue (native/cpu/qgemm.h, QActSpec). The result equals the
// fake-quantized layer up to float rounding (about sqrt(K) * 2^-24 relative).
// A conv that the model calls as conv(silu(groupNorm(x))) (nn/fused.ts,
// the residual blocks) runs as two ops instead: qgroup_norm_act writes the
// uint8 levels of the norm + SiLU straight from x (no float tensor in
// between), qconv2d reads them (native/cpu/qnorm.cpp states the exactness).
import { conv2d } from '../tensor/ops/conv';
import { linear } from '../tensor/ops/linalg';
import { add, addScalar, clamp, mul, reshape, scale } from '../tensor/ops/elementwise';
import { cast } from '../tensor/ops/creation';
import { type FusedActQuant, type LevelsOf, type QWeight, packQWeight, qconv2d, qgroupNormAct, qlinear, unpackInt4 } from '../tensor/ops/qlinear';
import { noGrad } from '../tensor/autograd';
import { keep, tidy } from '../tensor/scope';
import { Conv1x1, Conv2d, type GroupNorm, Linear } from '../nn/layers';
import { type Epilogue, type NormSiluHook, type ScaleShift, addAfter } from '../nn/fused';
import type { Tensor } from '../tensor/tensor';
import { type ActQuantizer, STEP_FLOOR, type WeightQuantizer } from './quantizer';
import { levels } from './config';

export type FloatLayer = Conv2d | Linear | Conv1x1;

export function isQuantizableLayer(m: unknown): m is FloatLayer {
  return m instanceof Conv2d || m instanceof Linear || m instanceof Conv1x1;
}

export interface QuantLayerParts {
  actQuant: ActQuantizer;
  weightQuant: WeightQuantizer;
  /** Quantizes the layer's output (the inputs of the attention matmuls). */
  outQuant?: ActQuantizer;
}

const INSTALLED = new WeakMap<FloatLayer, QuantLayer>();

/** The quantized layer installed on a float layer, if any. */
export function quantLayerOf(layer: FloatLayer): QuantLayer | undefined {
  return INSTALLED.get(layer);
}

export abstract class QuantLayer {
  readonly actQuant: ActQuantizer;
  readonly weightQuant: WeightQuantizer;
  readonly outQuant: ActQuantizer | null;

  constructor(readonly name: string, readonly layer: FloatLayer, parts: QuantLayerParts) {
    if (INSTALLED.has(layer)) throw new Error(`${name}: this layer is already quantized`);
    const outCh = layer.weight.shape[0];
    if (parts.weightQuant.outChannels !== outCh)
      throw new RangeError(`${name}: the weight quantizer has ${parts.weightQuant.outChannels} steps for ${outCh} output channels`);
    this.actQuant = layer.registerModule('act_quant', parts.actQuant);
    this.weightQuant = layer.registerModule('weight_quant', parts.weightQuant);
    this.outQuant = parts.outQuant ? layer.registerModule('out_quant', parts.outQuant) : null;
    INSTALLED.set(layer, this);
    // The instance property shadows the class's forward for this layer only.
    (layer as { forward(x: Tensor): Tensor }).forward = (x: Tensor) => this.forward(x);
    // conv(silu(groupNorm(x))) in one pass to the levels where it can (nn/fused.ts)
    (layer as { forwardNormSilu?: NormSiluHook }).forwardNormSilu = (norm, x, ss, epi) => this.forwardNormSilu(norm, x, ss, epi);
  }

  get weight(): Tensor {
    return this.layer.weight;
  }

  get bias(): Tensor | null {
    return this.layer.bias;
  }

  /** The float layer's op on already quantized input and weight (bias: the layer's unless given). */
  protected abstract op(x: Tensor, w: Tensor, bias?: Tensor | null): Tensor;

  /** The integer op on float x, quantized inside the op as `act` says with actStep (FusedActQuant). */
  protected abstract intOp(x: Tensor, actStep: Tensor, w: QWeight, bias: Tensor | null, act: FusedActQuant, epi: Epilogue | null): Tensor;

  /**
   * The epilogue's adds inside the integer op (rounded as addAfter rounds
   * them), where the op has them and the shapes need no broadcasting: then
   * intOp / levelsOp get it; otherwise null (the adds run as separate ops).
   */
  protected fusedEpilogue(_x: Tensor, _epi: Epilogue): Epilogue | null {
    return null;
  }

  /** Whether levelsOp exists (else norm + SiLU run as float ops before intOp). */
  protected readonly takesLevels: boolean = false;

  /** The integer op on uint8 levels of x - levels.offset made by qgroupNormAct (zeroPoint 128 for signed levels, else 0). */
  protected levelsOp(_x: Tensor, _actStep: Tensor, _w: QWeight, _bias: Tensor | null, _levels: LevelsOf, _zeroPoint: number, _epi: Epilogue | null): Tensor {
    throw new Error(`${this.name}: this layer has no integer op on precomputed levels`);
  }

  /** Packed weights, built on first integer use. */
  private intCache: { w: QWeight } | null = null;

  /**
   * Integer weights standing in for the float ones (a quantized checkpoint
   * in the 'int' weights format, quant/weights_format.ts): int8 levels of the
   * weight's shape, or 4-bit levels two per byte (packInt4). While set, the
   * float weight's storage is freed; the first float use (fake or full
   * precision forward, materializeFloatWeight) brings it back dequantized,
   * level * step, which is what fake quantization makes of the float weight.
   */
  private intSource: { data: Tensor; int4: boolean } | null = null;

  get hasIntWeights(): boolean {
    return this.intSource !== null;
  }

  /**
   * Makes integer levels the layer's weights (takes ownership of data: int8
   * of the weight's shape, or uint8 [ceil(n / 2)] from packInt4) and frees
   * the float weights. The levels must be those of the weight quantizer's
   * steps (clamp(round(w / step), ...)); their range is checked here.
   */
  setIntWeights(data: Tensor, int4: boolean): void {
    const shape = this.layer.weight.shape, n = this.layer.weight.size;
    const what = `${this.name}.weight_${int4 ? 'int4' : 'int8'}`;
    if (int4 ? data.dtype !== 'uint8' || data.ndim !== 1 || data.shape[0] !== Math.ceil(n / 2) : data.dtype !== 'int8' || data.shape.join() !== shape.join())
      throw new TypeError(`${what}: expected ${int4 ? `uint8 [${Math.ceil(n / 2)}] (two 4-bit levels per byte)` : `int8 [${shape.join(', ')}]`} for weights [${shape.join(', ')}], got ${data.dtype} [${data.shape.join(', ')}]`);
    const { qmin, qmax } = levels(this.weightQuant.bits, true);
    const lv = int4 ? noGrad(() => unpackInt4(data, shape)) : data;
    const v = lv.dataSync() as Int8Array;
    if (lv !== data) lv.dispose();
    for (let i = 0; i < n; ++i)
      if (v[i] < qmin || v[i] > qmax) throw new RangeError(`${what}: element ${i} = ${v[i]} is outside the ${this.weightQuant.bits}-bit range ${qmin}..${qmax}`);
    this.invalidateIntCache();
    this.intSource?.data.dispose();
    this.intSource = { data: keep(data), int4 };
    this.layer.weight.dispose();
  }

  /** The integer weights as kept (int8 levels, or uint8 int4 pairs), or null. */
  intSourceTensor(): Tensor | null {
    return this.intSource?.data ?? null;
  }

  /** The int8 levels of the integer weights (the stored tensor, or unpacked from int4 in the current scope). */
  intLevels(): Tensor {
    if (!this.intSource) throw new Error(`${this.name}: the layer has no integer weights`);
    return this.intSource.int4 ? unpackInt4(this.intSource.data, this.layer.weight.shape) : this.intSource.data;
  }

  /** level * step per output channel (float32, the weight's shape): bit for bit fake quantization's Q_w(W). */
  private dequantized(step: Tensor): Tensor {
    const shape = this.layer.weight.shape;
    return mul(cast(this.intLevels(), 'float32'), reshape(step, [shape[0], ...shape.slice(1).map(() => 1)]));
  }

  /** Brings back the float weights (dequantized) and drops the integer ones; no-op for a float-weighted layer. */
  materializeFloatWeight(): void {
    if (!this.intSource) return;
    const w = noGrad(() => tidy(() => this.dequantized(clamp(this.weightQuant.step, STEP_FLOOR))));
    this.layer.weight.adoptStorage(w);
    this.intSource.data.dispose();
    this.intSource = null;
  }

  /** Frees the integer weights (with the model; the float weights stay as they are). */
  releaseIntWeights(): void {
    this.intSource?.data.dispose();
    this.intSource = null;
  }

  /** Bytes held for this layer's weight: float32, integer levels (int8 or packed int4), packed kernel copy. */
  weightBytes(): { float: number; int: number; packed: number } {
    const c = this.intCache;
    return {
      float: this.layer.weight.nbytes,
      int: this.intSource?.data.nbytes ?? 0,
      packed: c ? c.w.packed.nbytes + c.w.rowSums.nbytes : 0,
    };
  }

  /**
   * Why this layer cannot run in integer arithmetic, or null when it can:
   * every activation quantizer kind (LSQ, PACT, TDQ) has an integer path;
   * bypassed quantizers (sensitivity analysis) run fake.
   */
  intUnsupported(): string | null {
    if (this.actQuant.bypass) return 'its activation quantizer is bypassed';
    return null;
  }

  /** Frees the packed weights (call after changing the weights or the weight steps in 'int' mode). */
  invalidateIntCache(): void {
    if (!this.intCache) return;
    this.intCache.w.packed.dispose();
    this.intCache.w.step.dispose();
    this.intCache.w.rowSums.dispose();
    this.intCache = null;
  }

  private packed(): { w: QWeight } {
    if (!this.intCache) {
      const { bits } = this.weightQuant;
      const built = noGrad(() => tidy(() => {
        const w = packQWeight(this.intSource ? this.intLevels() : this.layer.weight, clamp(this.weightQuant.step, STEP_FLOOR), bits);
        return { packed: w.packed, step: w.step, rowSums: w.rowSums, shape: w.shape };
      }));
      const w: QWeight = { packed: keep(built.packed), step: keep(built.step), rowSums: keep(built.rowSums), shape: built.shape, bits };
      this.intCache = { w };
    }
    return this.intCache;
  }

  forward(x: Tensor): Tensor {
    const ctx = this.actQuant.ctx;
    if (ctx.mode === 'quant' && ctx.exec === 'int' && this.intUnsupported() === null) return this.forwardInt(x);
    this.materializeFloatWeight();
    const y = this.op(this.actQuant.forward(x), this.weightQuant.forward(this.layer.weight));
    return this.outQuant ? this.outQuant.forward(y) : y;
  }

  /** The activation step of this forward for a batch of n: (1) static, (n) TDQ MLP, or the table rows and this quantizer's column. */
  private actStep(n: number): { s: Tensor; column?: number } {
    const aq = this.actQuant;
    const rows = aq.kind === 'tdq' ? aq.ctx.tableStepRows(aq) : null;
    const r = rows ? { s: rows.rows, column: rows.column } : { s: aq.stepTensor() };
    if (aq.kind === 'tdq' && r.s.shape[0] !== n) throw new RangeError(`${aq.name}: ${r.s.shape[0]} timesteps for a batch of ${n}`);
    return r;
  }

  /**
   * The layer, then the epilogue's adds (addAfter), for Conv2d.forwardAdd in
   * quantized execution: in integer execution the adds run inside the integer
   * op where fusedEpilogue allows (same roundings), otherwise as separate ops.
   */
  protected forwardThenAdd(x: Tensor, epi: Epilogue): Tensor {
    const ctx = this.actQuant.ctx;
    if (!this.outQuant && ctx.mode === 'quant' && ctx.exec === 'int' && this.intUnsupported() === null) {
      const fe = this.fusedEpilogue(x, epi);
      return fe ? this.forwardInt(x, fe) : addAfter(this.forwardInt(x), epi);
    }
    return addAfter(this.layer.forward(x), epi);
  }

  private forwardInt(x: Tensor, epi: Epilogue | null = null): Tensor {
    if (this.layer.training) throw new Error(`${this.name}: integer execution is inference only; call eval() or setExec('fake') before training`);
    const aq = this.actQuant;
    const { signed, zeroPoint } = aq.range;
    const y = noGrad(() => {
      // One kernel path for every quantizer kind: the op quantizes x itself
      // (offset = the real zero point, step floored in the kernel), and reads
      // a TDQ step from the forward's table rows by column.
      const act: FusedActQuant = { bits: aq.bits, signed, offset: zeroPoint, stepFloor: STEP_FLOOR };
      let xin = x, s: Tensor;
      if (aq.kind === 'pact') {
        xin = aq.pactClip(zeroPoint !== 0 ? addScalar(x, -zeroPoint) : x);
        s = scale(aq.pactAlpha(), 1 / levels(aq.bits, signed).qmax);
        act.inputShifted = true;
        act.stepFloor = 0;
      } else {
        const r = this.actStep(x.shape[0]);
        s = r.s;
        if (r.column !== undefined) act.column = r.column;
      }
      return this.intOp(xin, s, this.packed().w, this.layer.bias, act, epi);
    });
    return this.outQuant ? this.outQuant.forward(y) : y;
  }

  /**
   * layer(silu(norm(x) [* (scale + 1) + shift])) in integer execution as two
   * ops: qgroupNormAct writes the levels this layer's quantizer would make of
   * the float result (native/cpu/qnorm.cpp says how exactly), and the integer
   * op reads them. null (the float ops then run) outside integer execution,
   * for PACT quantizers (clipping at a learned alpha), layers with an output
   * quantizer, and layers without a levels op.
   */
  private forwardNormSilu(norm: GroupNorm, x: Tensor, ss: ScaleShift | null, epi: Epilogue): Tensor | null {
    const aq = this.actQuant, ctx = aq.ctx;
    if (!(ctx.mode === 'quant' && ctx.exec === 'int' && this.intUnsupported() === null)) return null;
    if (!this.takesLevels || this.layer.training || this.outQuant || aq.kind === 'pact') return null;
    const { signed, zeroPoint } = aq.range;
    return noGrad(() => {
      const { s, column } = this.actStep(x.shape[0]);
      const act: FusedActQuant = { bits: aq.bits, signed, offset: zeroPoint, stepFloor: STEP_FLOOR, column };
      const lv = qgroupNormAct(x, norm.weight, norm.bias, s, { numGroups: norm.numGroups, eps: norm.eps, scaleShift: ss ?? undefined, act });
      const fe = this.fusedEpilogue(x, epi);
      const y = this.levelsOp(lv, s, this.packed().w, this.layer.bias, { offset: zeroPoint, stepFloor: STEP_FLOOR, column }, signed ? 128 : 0, fe);
      return fe ? y : addAfter(y, epi);
    });
  }
}

export class QuantConv2d extends QuantLayer {
  declare readonly layer: Conv2d;
  constructor(name: string, layer: Conv2d, parts: QuantLayerParts) {
    super(name, layer, parts);
    // Conv2d.forwardAdd (a time embedding and a residual added in the conv's
    // output pass) for this layer: fused while quantization is off, as in the
    // float model, so that the model is then bit for bit the float one; with
    // quantization on, separate adds after the layer in fake and integer
    // execution alike, so that the two differ only by the layers' own
    // rounding (test/quant/int_exec).
    layer.forwardAdd = (x, addChannel, residual) => this.forwardAdd(x, addChannel, residual);
  }
  private forwardAdd(x: Tensor, addChannel: Tensor | null, residual: Tensor | null): Tensor {
    if (this.outQuant || this.actQuant.ctx.mode === 'quant') return this.forwardThenAdd(x, { addChannel, residual });
    this.materializeFloatWeight();
    return conv2d(this.actQuant.forward(x), this.weightQuant.forward(this.layer.weight), this.layer.bias, { stride: this.layer.stride, padding: this.layer.padding, addChannel, residual });
  }
  protected op(x: Tensor, w: Tensor, bias: Tensor | null = this.layer.bias): Tensor {
    return conv2d(x, w, bias, { stride: this.layer.stride, padding: this.layer.padding });
  }
  protected intOp(x: Tensor, s: Tensor, w: QWeight, bias: Tensor | null, act: FusedActQuant, epi: Epilogue | null): Tensor {
    return qconv2d(x, s, w, bias, { stride: this.layer.stride, padding: this.layer.padding, act, ...epiOpts(epi) });
  }
  protected override readonly takesLevels = true;
  protected override levelsOp(x: Tensor, s: Tensor, w: QWeight, bias: Tensor | null, levels: LevelsOf, zeroPoint: number, epi: Epilogue | null): Tensor {
    return qconv2d(x, s, w, bias, { stride: this.layer.stride, padding: this.layer.padding, zeroPoint, levels, ...epiOpts(epi) });
  }
  /** qconv2d takes addChannel (N, O) and residual (N, O, Ho, Wo) of float32, shapes exact (no broadcasting). */
  protected override fusedEpilogue(x: Tensor, epi: Epilogue): Epilogue | null {
    const c = epi.addChannel ?? null, r = epi.residual ?? null;
    if (!c && !r) return null;
    const { stride, padding } = this.layer;
    const [n, , h, w] = x.shape, [o, , kh, kw] = this.layer.weight.shape;
    const ho = Math.floor((h + 2 * padding - kh) / stride) + 1, wo = Math.floor((w + 2 * padding - kw) / stride) + 1;
    if (c && !(c.dtype === 'float32' && (c.ndim === 2 || (c.ndim === 4 && c.shape[2] === 1 && c.shape[3] === 1)) && c.shape[0] === n && c.shape[1] === o)) return null;
    if (r && !(r.dtype === 'float32' && r.shape.join() === [n, o, ho, wo].join())) return null;
    return { addChannel: c && c.ndim === 4 ? reshape(c, [n, o]) : c, residual: r };
  }
}

export class QuantLinear extends QuantLayer {
  declare readonly layer: Linear;
  constructor(name: string, layer: Linear, parts: QuantLayerParts) {
    super(name, layer, parts);
  }
  protected op(x: Tensor, w: Tensor, bias: Tensor | null = this.layer.bias): Tensor {
    return linear(x, w, bias);
  }
  protected intOp(x: Tensor, s: Tensor, w: QWeight, bias: Tensor | null, act: FusedActQuant): Tensor {
    return qlinear(x, s, w, bias, { act });
  }
}

/** Conv1x1: a kernel-1 Conv1d on (B, C, L), computed as the float layer does (a 1x1 conv2d). */
export class QuantConv1x1 extends QuantLayer {
  declare readonly layer: Conv1x1;
  constructor(name: string, layer: Conv1x1, parts: QuantLayerParts) {
    super(name, layer, parts);
  }
  protected op(x: Tensor, w: Tensor, bias: Tensor | null = this.layer.bias): Tensor {
    const [b, c, l] = x.shape;
    const { inChannels, outChannels } = this.layer;
    const y = conv2d(reshape(x, [b, c, l, 1]), reshape(w, [outChannels, inChannels, 1, 1]), bias, {});
    return reshape(y, [b, outChannels, l]);
  }
  protected intOp(x: Tensor, s: Tensor, w: QWeight, bias: Tensor | null, act: FusedActQuant): Tensor {
    const [b, c, l] = x.shape;
    const { inChannels, outChannels } = this.layer;
    const w4: QWeight = { ...w, shape: [outChannels, inChannels, 1, 1] };
    return reshape(qconv2d(reshape(x, [b, c, l, 1]), s, w4, bias, { act }), [b, outChannels, l]);
  }
}

function epiOpts(epi: Epilogue | null): { addChannel?: Tensor | null; residual?: Tensor | null } {
  return epi ? { addChannel: epi.addChannel ?? null, residual: epi.residual ?? null } : {};
}

/** The quantized layer class for a float layer. */
export function quantLayerFor(name: string, layer: FloatLayer, parts: QuantLayerParts): QuantLayer {
  if (layer instanceof Conv2d) return new QuantConv2d(name, layer, parts);
  if (layer instanceof Conv1x1) return new QuantConv1x1(name, layer, parts);
  return new QuantLinear(name, layer, parts);
}
