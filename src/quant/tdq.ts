// The TDQ module (So et al., NeurIPS 2023, Sec. 4.2): an activation
// quantizer's step size as a function of the diffusion timestep,
//   s(t) = softplus(MLP(enc(t))),
// enc(t) the sinusoidal encoding of t with geometric frequencies (the UNet's
// own timestep embedding), an MLP of `layers` linear layers with ReLU between
// them, and softplus for a positive output. It only depends on t, so after
// training it is evaluated once per timestep into a table (table.ts) and
// inference never runs it.
import { record } from '../tensor/autograd';
import { linear } from '../tensor/ops/linalg';
import { cos, mul, relu, reshape, sin } from '../tensor/ops/elementwise';
import { cat } from '../tensor/ops/shape';
import { dropout } from '../tensor/ops/dropout';
import { Module } from '../nn/module';
import { linearInit } from '../nn/init';
import { Generator } from '../tensor/random';
import { type Tensor, fromArray, runOp, runOp1 } from '../tensor/tensor';
import type { TdqModuleConfig } from './config';

/** softplus(x) = log(1 + exp(x)) (x itself above 20), as torch.nn.functional.softplus. */
export function softplus(x: Tensor): Tensor {
  const out = runOp1('softplus_forward', [x]);
  return record(out, 'softplus', [x], (g) => [runOp1('softplus_backward', [g, x])]);
}

/** The inverse of softplus, for setting a bias so that softplus(bias) = y (y > 0). */
export function inverseSoftplus(y: number): number {
  if (!(y > 0) || !Number.isFinite(y)) throw new RangeError(`inverseSoftplus: y must be positive and finite, got ${y}`);
  // log(exp(y) - 1) = y + log(1 - exp(-y)), stable for large and small y.
  return y > 20 ? y : y + Math.log(-Math.expm1(-y));
}

/** The geometric frequencies f_i = maxPeriod^(-i/h), i < h = dim/2, as float32. */
function frequencies(dim: number, maxPeriod: number): Float32Array {
  if (!Number.isInteger(dim) || dim < 2 || dim % 2) throw new RangeError(`fourier encoding: dim must be an even integer >= 2, got ${dim}`);
  const half = dim / 2;
  return Float32Array.from({ length: half }, (_, i) => Math.exp((-Math.log(maxPeriod) * i) / half));
}

/**
 * The encoding of a (B) float32 timestep tensor into (B, dim), row b =
 * [cos(t_b f_0) .. cos(t_b f_{h-1}), sin(t_b f_0) .. sin(t_b f_{h-1})],
 * f_i = maxPeriod^(-i/h), h = dim/2: the layout and float32 arithmetic of
 * openaimodel's timestep_embedding. Computed on the engine from t itself, so
 * training needs no read of t back to JS; the table is built through this
 * same function, so table and live module see exactly the same inputs.
 */
export function encodeTimesteps(t: Tensor, dim: number, maxPeriod = 10000): Tensor {
  if (t.ndim !== 1 || t.dtype !== 'float32') throw new TypeError(`encodeTimesteps: t must be a (B) float32 tensor, got ${t.dtype} [${t.shape.join(', ')}]`);
  const f = frequencies(dim, maxPeriod);
  const args = mul(reshape(t, [t.shape[0], 1]), fromArray(f, [1, f.length], 'float32', t.device));
  return cat([cos(args), sin(args)], 1);
}

/** The same encoding in float64 (then rounded once): the reference for tests. */
export function fourierEncoding(tValues: ArrayLike<number>, dim: number, maxPeriod = 10000): Float32Array {
  if (!Number.isInteger(dim) || dim < 2 || dim % 2) throw new RangeError(`fourierEncoding: dim must be an even integer >= 2, got ${dim}`);
  const half = dim / 2;
  const out = new Float32Array(tValues.length * dim);
  const freqs = new Float64Array(half);
  for (let i = 0; i < half; ++i) freqs[i] = Math.exp((-Math.log(maxPeriod) * i) / half);
  for (let b = 0; b < tValues.length; ++b) {
    const t = tValues[b];
    if (!Number.isFinite(t)) throw new RangeError(`fourierEncoding: timestep ${b} is ${t}`);
    for (let i = 0; i < half; ++i) {
      out[b * dim + i] = Math.cos(t * freqs[i]);
      out[b * dim + half + i] = Math.sin(t * freqs[i]);
    }
  }
  return out;
}

/** One linear layer of the TDQ MLP (keys 'weight', 'bias' as nn.Linear). */
class TdqLinear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(readonly inFeatures: number, readonly outFeatures: number, gen: Generator) {
    super();
    const { weight, bias } = linearInit(inFeatures, outFeatures, { gen });
    this.weight = this.registerParameter('weight', weight);
    this.bias = this.registerParameter('bias', bias!);
  }
  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
}

/** Linear layers under '0', '1', ... (keys 'mlp.0.weight', ...). */
class TdqMlp extends Module {
  readonly layers: TdqLinear[] = [];
  constructor(cfg: TdqModuleConfig, gen: Generator) {
    super();
    for (let i = 0; i < cfg.layers; ++i) {
      const inF = i === 0 ? cfg.encDim : cfg.hidden;
      const outF = i === cfg.layers - 1 ? 1 : cfg.hidden;
      this.layers.push(this.registerModule(String(i), new TdqLinear(inF, outF, gen)));
    }
  }
}

export class TdqModule extends Module {
  readonly mlp: TdqMlp;
  /** Draws the dropout masks in training (set by the trainer for reproducible runs). */
  dropoutGenerator: Generator;

  constructor(readonly cfg: TdqModuleConfig, gen: Generator) {
    super();
    this.mlp = this.registerModule('mlp', new TdqMlp(cfg, gen));
    this.dropoutGenerator = new Generator(gen.seed + 1);
  }

  get lastLayer(): TdqLinear {
    return this.mlp.layers[this.mlp.layers.length - 1];
  }

  /** Encodes B timestep values into the (B, encDim) input of forward (as float32 t, like the model's t). */
  encode(tValues: ArrayLike<number>): Tensor {
    return encodeTimesteps(fromArray(Float32Array.from(tValues), [tValues.length], 'float32', this.device()), this.cfg.encDim, this.cfg.maxPeriod);
  }

  /** enc (B, encDim) -> step sizes (B), all positive. */
  forward(enc: Tensor): Tensor {
    if (enc.ndim !== 2 || enc.shape[1] !== this.cfg.encDim)
      throw new RangeError(`TdqModule.forward: expected an encoding of shape [B, ${this.cfg.encDim}], got [${enc.shape.join(', ')}]`);
    let h = enc;
    const n = this.mlp.layers.length;
    this.mlp.layers.forEach((layer, i) => {
      if (i === n - 1 && this.cfg.dropout > 0) h = dropout(h, this.cfg.dropout, this.dropoutGenerator, this.training);
      h = layer.forward(h);
      if (i < n - 1) h = relu(h);
    });
    return reshape(softplus(h), [enc.shape[0]]);
  }

  /**
   * The authors' initialisation: the last bias set so that the output starts
   * near `step` for every t (the weights keep their random init). calibrate.ts
   * goes further and fits the whole MLP to per-timestep steps.
   */
  initConstant(step: number): void {
    const b = fromArray([inverseSoftplus(step)], [1], 'float32', this.lastLayer.bias.device);
    runOp('copy_', [this.lastLayer.bias, b]);
    b.dispose();
  }

  /**
   * Exactly `step` at every t: initConstant with the last layer's weights
   * zeroed (QAT's start, so that a TDQ quantizer begins where its static
   * counterpart does). The hidden layers keep their random init: the first
   * update of the last weights opens the time dependence.
   */
  startAt(step: number): void {
    this.initConstant(step);
    const z = fromArray(new Float32Array(this.lastLayer.weight.size), this.lastLayer.weight.shape, 'float32', this.lastLayer.weight.device);
    runOp('copy_', [this.lastLayer.weight, z]);
    z.dispose();
  }
}
