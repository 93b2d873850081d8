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
import { conv2d } from '../tensor/ops/conv';
import { linear } from '../tensor/ops/linalg';
import { reshape } from '../tensor/ops/elementwise';
import { Conv1x1, Conv2d, Linear } from '../nn/layers';
import type { Tensor } from '../tensor/tensor';
import type { ActQuantizer, WeightQuantizer } from './quantizer';

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

  /** The float layer's op on already quantized input and weight. */
  protected abstract op(x: Tensor, w: Tensor): Tensor;

  forward(x: Tensor): Tensor {
    const y = this.op(this.actQuant.forward(x), this.weightQuant.forward(this.layer.weight));
    return this.outQuant ? this.outQuant.forward(y) : y;
  }
}

export class QuantConv2d extends QuantLayer {
  declare readonly layer: Conv2d;
  constructor(name: string, layer: Conv2d, parts: QuantLayerParts) {
    super(name, layer, parts);
  }
  protected op(x: Tensor, w: Tensor): Tensor {
    return conv2d(x, w, this.layer.bias, { stride: this.layer.stride, padding: this.layer.padding });
  }
}

export class QuantLinear extends QuantLayer {
  declare readonly layer: Linear;
  constructor(name: string, layer: Linear, parts: QuantLayerParts) {
    super(name, layer, parts);
  }
  protected op(x: Tensor, w: Tensor): Tensor {
    return linear(x, w, this.layer.bias);
  }
}

/** Conv1x1: a kernel-1 Conv1d on (B, C, L), computed as the float layer does (a 1x1 conv2d). */
export class QuantConv1x1 extends QuantLayer {
  declare readonly layer: Conv1x1;
  constructor(name: string, layer: Conv1x1, parts: QuantLayerParts) {
    super(name, layer, parts);
  }
  protected op(x: Tensor, w: Tensor): Tensor {
    const [b, c, l] = x.shape;
    const { inChannels, outChannels } = this.layer;
    const y = conv2d(reshape(x, [b, c, l, 1]), reshape(w, [outChannels, inChannels, 1, 1]), this.layer.bias, {});
    return reshape(y, [b, outChannels, l]);
  }
}

/** The quantized layer class for a float layer. */
export function quantLayerFor(name: string, layer: FloatLayer, parts: QuantLayerParts): QuantLayer {
  if (layer instanceof Conv2d) return new QuantConv2d(name, layer, parts);
  if (layer instanceof Conv1x1) return new QuantConv1x1(name, layer, parts);
  return new QuantLinear(name, layer, parts);
}
