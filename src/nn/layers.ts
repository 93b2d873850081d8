// The layers the diffusion models are built from, with PyTorch's parameter
// names and default initialisation, so state dicts load by key.
import { activation, attention, conv, linalg, norm, shape } from './ops';
import { Module } from './module';
import { defaultBias, kaimingUniform } from './init';
import { dropout } from '../tensor/ops/dropout';
import { add, reshape } from '../tensor/ops/elementwise';
import { zeros, ones } from '../tensor/ops/creation';
import { Generator } from '../tensor/random';
import type { Tensor } from '../tensor/tensor';

export interface InitOptions {
  gen?: Generator;
  bias?: boolean;
}

export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, opts: InitOptions = {}) {
    super();
    const gen = opts.gen ?? new Generator(0);
    this.weight = this.registerParameter('weight', kaimingUniform([outFeatures, inFeatures], inFeatures, Math.sqrt(5), gen));
    this.bias = opts.bias === false ? null : this.registerParameter('bias', defaultBias(outFeatures, inFeatures, gen));
  }
  forward(x: Tensor): Tensor {
    return linalg.linear(x, this.weight, this.bias);
  }
}

export interface ConvOptions extends InitOptions {
  stride?: number;
  padding?: number;
}

export class Conv2d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly stride: number;
  readonly padding: number;
  constructor(readonly inChannels: number, readonly outChannels: number, readonly kernelSize: number, opts: ConvOptions = {}) {
    super();
    const gen = opts.gen ?? new Generator(0);
    const fanIn = inChannels * kernelSize * kernelSize;
    this.stride = opts.stride ?? 1;
    this.padding = opts.padding ?? 0;
    this.weight = this.registerParameter('weight', kaimingUniform([outChannels, inChannels, kernelSize, kernelSize], fanIn, Math.sqrt(5), gen));
    this.bias = opts.bias === false ? null : this.registerParameter('bias', defaultBias(outChannels, fanIn, gen));
  }
  forward(x: Tensor): Tensor {
    return conv.conv2d(x, this.weight, this.bias, { stride: this.stride, padding: this.padding });
  }
  /**
   * forward(x) + addChannel (N, O) broadcast over the pixels + residual, the
   * adds fused into the convolution (either may be null). A layer whose
   * forward was replaced on the instance (a quantized layer) runs that
   * forward and separate adds instead.
   */
  forwardAdd(x: Tensor, addChannel: Tensor | null, residual: Tensor | null): Tensor {
    if (Object.prototype.hasOwnProperty.call(this, 'forward')) {
      let y = this.forward(x);
      if (addChannel) y = add(y, reshape(addChannel, [addChannel.shape[0], addChannel.shape[1], 1, 1]));
      return residual ? add(residual, y) : y;
    }
    return conv.conv2d(x, this.weight, this.bias, { stride: this.stride, padding: this.padding, addChannel, residual });
  }
}

/** nn.Conv1d with kernel 1 on (B, C, L): weight (out, in, 1), as upstream attention. */
export class Conv1x1 extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(readonly inChannels: number, readonly outChannels: number, opts: InitOptions = {}) {
    super();
    const gen = opts.gen ?? new Generator(0);
    this.weight = this.registerParameter('weight', kaimingUniform([outChannels, inChannels, 1], inChannels, Math.sqrt(5), gen));
    this.bias = opts.bias === false ? null : this.registerParameter('bias', defaultBias(outChannels, inChannels, gen));
  }
  forward(x: Tensor): Tensor {
    const [b, c, l] = x.shape;
    const w = reshape(this.weight, [this.outChannels, this.inChannels, 1, 1]);
    const y = conv.conv2d(reshape(x, [b, c, l, 1]), w, this.bias, {});
    return reshape(y, [b, this.outChannels, l]);
  }
}

export class GroupNorm extends Module {
  readonly weight: Tensor | null;
  readonly bias: Tensor | null;
  constructor(readonly numGroups: number, readonly numChannels: number, readonly eps = 1e-5, affine = true) {
    super();
    if (numChannels % numGroups !== 0)
      throw new RangeError(`GroupNorm: ${numChannels} channels are not divisible into ${numGroups} groups`);
    this.weight = affine ? this.registerParameter('weight', ones([numChannels])) : null;
    this.bias = affine ? this.registerParameter('bias', zeros([numChannels])) : null;
  }
  forward(x: Tensor): Tensor {
    return norm.groupNorm(x, this.numGroups, this.weight, this.bias, this.eps);
  }
  /** silu(forward(x)), fused (norm.groupNormSiLU). */
  forwardSiLU(x: Tensor): Tensor {
    return norm.groupNormSiLU(x, this.numGroups, this.weight, this.bias, this.eps);
  }
}

export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(readonly dim: number, readonly eps = 1e-5) {
    super();
    this.weight = this.registerParameter('weight', ones([dim]));
    this.bias = this.registerParameter('bias', zeros([dim]));
  }
  forward(x: Tensor): Tensor {
    return norm.layerNorm(x, this.weight, this.bias, this.eps);
  }
}

export class SiLU extends Module {
  forward(x: Tensor): Tensor {
    return activation.silu(x);
  }
}

/** Dropout draws its masks from `generator`, which training code sets and checkpoints. */
export class Dropout extends Module {
  generator: Generator = new Generator(0);
  constructor(readonly p: number) {
    super();
    if (!(p >= 0 && p < 1)) throw new RangeError(`Dropout: p must be in [0, 1), got ${p}`);
  }
  forward(x: Tensor): Tensor {
    return this.p === 0 || !this.training ? x : dropout(x, this.p, this.generator, true);
  }
}

export class Embedding extends Module {
  readonly weight: Tensor;
  constructor(readonly numEmbeddings: number, readonly dim: number, opts: InitOptions = {}) {
    super();
    const gen = opts.gen ?? new Generator(0);
    this.weight = this.registerParameter('weight', gen.randn([numEmbeddings, dim]));
  }
  forward(indices: Tensor): Tensor {
    return shape.embedding(indices, this.weight);
  }
}

export { attention };
