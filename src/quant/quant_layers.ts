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
// Integer execution (ctx.exec 'int', inference only): the same layer runs
// quantize_act on x with the activation step of this forward ((1) static,
// (B) per sample from the TDQ table or MLP), then qconv2d / qlinear on weights
// packed once per layer (cached until invalidateIntCache()). A real-valued
// zero point z (SILU_MIN for SiLU outputs) is not an integer level, so the
// levels are taken of x - z and the term z * op(1, Q_w(W)) (a per-layer
// constant map: zero padding makes it vary at the borders of a conv) is added
// back. The result equals the fake-quantized layer up to float rounding
// (native/cpu/qgemm.h: about sqrt(K) * 2^-24 relative).
import { conv2d } from '../tensor/ops/conv';
import { linear } from '../tensor/ops/linalg';
import { add, addScalar, clamp, mul, reshape, scale } from '../tensor/ops/elementwise';
import { cast, ones } from '../tensor/ops/creation';
import { fakeQuantize } from '../tensor/ops/quant';
import { type QWeight, packQWeight, qconv2d, qlinear, quantizeActivation, unpackInt4 } from '../tensor/ops/qlinear';
import { noGrad } from '../tensor/autograd';
import { keep, tidy } from '../tensor/scope';
import { Conv1x1, Conv2d, Linear } from '../nn/layers';
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
  }

  get weight(): Tensor {
    return this.layer.weight;
  }

  get bias(): Tensor | null {
    return this.layer.bias;
  }

  /** The float layer's op on already quantized input and weight (bias: the layer's unless given). */
  protected abstract op(x: Tensor, w: Tensor, bias?: Tensor | null): Tensor;

  /** The integer op on quantized x (levels from quantizeActivation with actStep). */
  protected abstract intOp(xq: Tensor, actStep: Tensor, w: QWeight, bias: Tensor | null): Tensor;

  /** Packed weights and zero-point corrections (by input shape), built on first integer use. */
  private intCache: { w: QWeight; corr: Map<string, Tensor> } | null = null;

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
    for (const t of this.intCache.corr.values()) t.dispose();
    this.intCache = null;
  }

  private packed(): { w: QWeight; corr: Map<string, Tensor> } {
    if (!this.intCache) {
      const { bits } = this.weightQuant;
      const built = noGrad(() => tidy(() => {
        const w = packQWeight(this.intSource ? this.intLevels() : this.layer.weight, clamp(this.weightQuant.step, STEP_FLOOR), bits);
        return { packed: w.packed, step: w.step, rowSums: w.rowSums, shape: w.shape };
      }));
      const w: QWeight = { packed: keep(built.packed), step: keep(built.step), rowSums: keep(built.rowSums), shape: built.shape, bits };
      this.intCache = { w, corr: new Map() };
    }
    return this.intCache;
  }

  /** z * op(1, Q_w(W)) without bias, (1, ...out) for inputs shaped like x: cached per input shape. */
  private zeroPointCorrection(x: Tensor, z: number): Tensor {
    const c = this.packed();
    const key = `${z}|${x.shape.slice(1).join('x')}`;
    let t = c.corr.get(key);
    if (!t) {
      // Q_w(W) as fake quantization makes it, from the packed copy's steps (made once per input shape).
      const { bits } = this.weightQuant;
      t = keep(noGrad(() => tidy(() => {
        const wq = this.intSource ? this.dequantized(c.w.step) : fakeQuantize(this.layer.weight, c.w.step, { bits, signed: true, granularity: 'channel', axis: 0 });
        return scale(this.op(ones([1, ...x.shape.slice(1)]), wq, null), z);
      })));
      c.corr.set(key, t);
    }
    return t;
  }

  forward(x: Tensor): Tensor {
    const ctx = this.actQuant.ctx;
    if (ctx.mode === 'quant' && ctx.exec === 'int' && this.intUnsupported() === null) return this.forwardInt(x);
    this.materializeFloatWeight();
    const y = this.op(this.actQuant.forward(x), this.weightQuant.forward(this.layer.weight));
    return this.outQuant ? this.outQuant.forward(y) : y;
  }

  private forwardInt(x: Tensor): Tensor {
    if (this.layer.training) throw new Error(`${this.name}: integer execution is inference only; call eval() or setExec('fake') before training`);
    const aq = this.actQuant;
    const { signed, zeroPoint } = aq.range;
    const y = noGrad(() => {
      let xs = zeroPoint !== 0 ? addScalar(x, -zeroPoint) : x;
      let s: Tensor;
      if (aq.kind === 'pact') {
        xs = aq.pactClip(xs);
        s = scale(aq.pactAlpha(), 1 / levels(aq.bits, signed).qmax);
      } else {
        s = clamp(aq.stepTensor(), STEP_FLOOR);
        if (aq.kind === 'tdq' && s.shape[0] !== x.shape[0])
          throw new RangeError(`${aq.name}: ${s.shape[0]} timesteps for a batch of ${x.shape[0]}`);
      }
      const xq = quantizeActivation(xs, s, { bits: aq.bits, signed });
      const out = this.intOp(xq, s, this.packed().w, this.layer.bias);
      return zeroPoint !== 0 ? add(out, this.zeroPointCorrection(x, zeroPoint)) : out;
    });
    return this.outQuant ? this.outQuant.forward(y) : y;
  }
}

export class QuantConv2d extends QuantLayer {
  declare readonly layer: Conv2d;
  constructor(name: string, layer: Conv2d, parts: QuantLayerParts) {
    super(name, layer, parts);
  }
  protected op(x: Tensor, w: Tensor, bias: Tensor | null = this.layer.bias): Tensor {
    return conv2d(x, w, bias, { stride: this.layer.stride, padding: this.layer.padding });
  }
  protected intOp(xq: Tensor, s: Tensor, w: QWeight, bias: Tensor | null): Tensor {
    return qconv2d(xq, s, w, bias, { stride: this.layer.stride, padding: this.layer.padding });
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
  protected intOp(xq: Tensor, s: Tensor, w: QWeight, bias: Tensor | null): Tensor {
    return qlinear(xq, s, w, bias);
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
  protected intOp(xq: Tensor, s: Tensor, w: QWeight, bias: Tensor | null): Tensor {
    const [b, c, l] = xq.shape;
    const { inChannels, outChannels } = this.layer;
    const w4: QWeight = { ...w, shape: [outChannels, inChannels, 1, 1] };
    return reshape(qconv2d(reshape(xq, [b, c, l, 1]), s, w4, bias), [b, outChannels, l]);
  }
}

/** The quantized layer class for a float layer. */
export function quantLayerFor(name: string, layer: FloatLayer, parts: QuantLayerParts): QuantLayer {
  if (layer instanceof Conv2d) return new QuantConv2d(name, layer, parts);
  if (layer instanceof Conv1x1) return new QuantConv1x1(name, layer, parts);
  return new QuantLinear(name, layer, parts);
}
