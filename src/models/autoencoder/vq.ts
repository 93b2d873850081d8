// The vector-quantised first stage: taming's VectorQuantizer2 (as LDM imports
// it) and ldm.models.autoencoder.VQModel / VQModelInterface.
import { Module } from '../../nn/module';
import { Conv2d } from '../../nn/layers';
import { noGrad } from '../../tensor/autograd';
import { full, ones } from '../../tensor/ops/creation';
import { add, affine, detach, mean, reshape, scale, square, sub, sum } from '../../tensor/ops/elementwise';
import { matmul } from '../../tensor/ops/linalg';
import { cat, embedding, narrow, permute } from '../../tensor/ops/shape';
import { Generator } from '../../tensor/random';
import { type Tensor, fromArray, runOp1, shapeToString } from '../../tensor/tensor';
import { type DDConfig, Decoder, Encoder } from './model';

/**
 * The index of the smallest entry of each row of d (N, K), the first one on
 * ties (as torch.argmin), as int32 (N), computed on the engine: the rows are
 * laid out as s x s squares (padded with -inf after negation) and
 * max_pool2d's backward, which sends the gradient to the first maximum of its
 * window in row-major order, marks the winner; a product with 0..K-1 reads
 * its position. Not differentiable (nothing needs it to be).
 */
export function argminRows(d: Tensor): Tensor {
  if (d.ndim !== 2) throw new RangeError(`argminRows: expected a 2-D tensor, got ${shapeToString(d.shape)}`);
  const [n, k] = d.shape;
  if (k < 1 || k > 1 << 24) throw new RangeError(`argminRows: the number of columns must be in [1, 2^24], got ${k}`);
  return noGrad(() => {
    const s = Math.ceil(Math.sqrt(k));
    let neg = affine(d, -1);
    if (s * s > k) neg = cat([neg, full([n, s * s - k], -Infinity, d.dtype, d.device)], 1);
    const planes = reshape(neg, [n, 1, s, s]);
    const mark = runOp1('max_pool2d_backward', [ones([n, 1, 1, 1], d.dtype, d.device), planes], { kernel: s, stride: s, padding: 0 });
    const oneHot = narrow(reshape(mark, [n, s * s]), 1, 0, k);
    const positions = fromArray(Float32Array.from({ length: k }, (_, i) => i), [k, 1], 'float32', d.device);
    const idx = matmul(oneHot, positions); // (N, 1): exact, K < 2^24
    return reshape(runOp1('cast', [idx], { dtype: 'int32' }), [n]);
  });
}

export interface VectorQuantizerOptions {
  /** Commitment weight (VQModel passes 0.25). */
  beta?: number;
  /**
   * true (upstream's default, which VQModel uses): the loss is
   * mean((sg[zq] - z)^2) + beta * mean((zq - sg[z])^2), i.e. beta on the
   * codebook term; false puts beta on the commitment term as the VQ-VAE paper.
   */
  legacy?: boolean;
  /** Return indices as (B, H, W) instead of (B*H*W). */
  saneIndexShape?: boolean;
  gen?: Generator;
}

/** (quant, loss, (perplexity, min_encodings, indices)) as upstream; the first two of the info are always null there too. */
export type QuantizeResult = [quant: Tensor, loss: Tensor, info: [perplexity: null, minEncodings: null, indices: Tensor]];

class Codebook extends Module {
  readonly weight: Tensor;
  constructor(n: number, dim: number, gen: Generator) {
    super();
    // Upstream: uniform in (-1/n, 1/n).
    this.weight = this.registerParameter('weight', noGrad(() => affine(gen.rand([n, dim]), 2 / n, -1 / n)));
  }
}

/**
 * Nearest codebook entry by |z|^2 + |e|^2 - 2 z.e (the same formula as
 * upstream, so near ties break the same way), the straight-through estimator
 * z + sg[zq - z] for the output, and the codebook / commitment loss.
 * Keys: embedding.weight (n_e, e_dim). remap is not supported.
 */
export class VectorQuantizer extends Module {
  readonly embedding: Codebook;
  readonly beta: number;
  readonly legacy: boolean;
  readonly saneIndexShape: boolean;

  constructor(readonly nE: number, readonly eDim: number, opts: VectorQuantizerOptions = {}) {
    super();
    for (const [k, v] of [['n_e', nE], ['e_dim', eDim]] as const)
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`VectorQuantizer: ${k} must be a positive integer, got ${v}`);
    this.beta = opts.beta ?? 0.25;
    this.legacy = opts.legacy ?? true;
    this.saneIndexShape = opts.saneIndexShape ?? false;
    if (!(this.beta >= 0)) throw new RangeError(`VectorQuantizer: beta must be >= 0, got ${this.beta}`);
    this.embedding = this.registerModule('embedding', new Codebook(nE, eDim, opts.gen ?? new Generator(0)));
  }

  /** Squared distances (B*H*W, n_e) of each position of z (B, e_dim, H, W) to each entry, positions in (b, h, w) order. */
  distances(z: Tensor): Tensor {
    this.check(z);
    return noGrad(() => {
      const zf = reshape(permute(z, [0, 2, 3, 1]), [-1, this.eDim]);
      const w = this.embedding.weight;
      const zz = sum(square(zf), [1], true); // (N, 1)
      const ee = reshape(sum(square(w), [1]), [1, this.nE]); // (1, K)
      return sub(add(zz, ee), scale(matmul(zf, w, { transB: true }), 2));
    });
  }

  private check(z: Tensor): void {
    if (z.ndim !== 4 || z.shape[1] !== this.eDim)
      throw new RangeError(`VectorQuantizer: expected z of shape [B, ${this.eDim}, H, W], got ${shapeToString(z.shape)}`);
  }

  forward(z: Tensor): QuantizeResult {
    this.check(z);
    const [b, , h, w] = z.shape;
    const zp = permute(z, [0, 2, 3, 1]); // (B, H, W, C)
    const indices = argminRows(this.distances(z));
    const zq = reshape(embedding(indices, this.embedding.weight), [b, h, w, this.eDim]);
    const toCode = mean(square(sub(detach(zq), zp))); // moves z towards its code
    const toLatent = mean(square(sub(zq, detach(zp)))); // moves the code towards z
    const loss = this.legacy ? add(toCode, scale(toLatent, this.beta)) : add(scale(toCode, this.beta), toLatent);
    const st = add(zp, detach(sub(zq, zp)));
    const quant = permute(st, [0, 3, 1, 2]);
    return [quant, loss, [null, null, this.saneIndexShape ? reshape(indices, [b, h, w]) : indices]];
  }

  /** Codebook rows for int32 indices, as (B, e_dim, H, W) given shape = [B, H, W, e_dim]. */
  getCodebookEntry(indices: Tensor, shape: [number, number, number, number]): Tensor {
    if (shape[3] !== this.eDim || shape[0] * shape[1] * shape[2] !== indices.size)
      throw new RangeError(`VectorQuantizer.getCodebookEntry: shape ${shapeToString(shape)} does not fit ${indices.size} indices of dimension ${this.eDim}`);
    const rows = embedding(reshape(indices, [-1]), this.embedding.weight);
    return permute(reshape(rows, shape), [0, 3, 1, 2]);
  }
}

export interface VQModelConfig {
  ddconfig: DDConfig;
  n_embed: number;
  embed_dim: number;
  /** Indices as (B, H, W) (upstream sane_index_shape). */
  sane_index_shape?: boolean;
  /** Not an upstream VQModel argument (it always uses the legacy quantizer loss); default true. */
  legacy?: boolean;
}

/** The modules and key layout shared by VQModel and VQModelInterface. */
abstract class VQBase extends Module {
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quantize: VectorQuantizer;
  readonly quantConv: Conv2d;
  readonly postQuantConv: Conv2d;
  readonly embedDim: number;
  readonly nEmbed: number;

  constructor(cfg: VQModelConfig, gen: Generator) {
    super();
    const dd = cfg.ddconfig;
    this.embedDim = cfg.embed_dim;
    this.nEmbed = cfg.n_embed;
    this.encoder = this.registerModule('encoder', new Encoder(dd, gen));
    this.decoder = this.registerModule('decoder', new Decoder(dd, gen));
    this.quantize = this.registerModule(
      'quantize',
      new VectorQuantizer(cfg.n_embed, cfg.embed_dim, { beta: 0.25, legacy: cfg.legacy ?? true, saneIndexShape: cfg.sane_index_shape ?? false, gen }),
    );
    this.quantConv = this.registerModule('quant_conv', new Conv2d(dd.z_channels, cfg.embed_dim, 1, { gen }));
    this.postQuantConv = this.registerModule('post_quant_conv', new Conv2d(cfg.embed_dim, dd.z_channels, 1, { gen }));
  }

  /** quant_conv(encoder(x)): the latents before quantization (B, embed_dim, h, w). */
  encodeToPrequant(x: Tensor): Tensor {
    return this.quantConv.forward(this.encoder.forward(x));
  }

  protected decodeQuant(quant: Tensor): Tensor {
    if (quant.ndim !== 4 || quant.shape[1] !== this.embedDim)
      throw new RangeError(`${this.constructor.name}.decode: expected a latent of shape [B, ${this.embedDim}, h, w], got ${shapeToString(quant.shape)}`);
    return this.decoder.forward(this.postQuantConv.forward(quant));
  }

  /** Decodes codebook indices; shape = [B, h, w, embed_dim]. */
  decodeCode(indices: Tensor, shape: [number, number, number, number]): Tensor {
    return this.decodeQuant(this.quantize.getCodebookEntry(indices, shape));
  }
}

/** VQModel: encode() quantizes, decode() takes quantized latents. */
export class VQModel extends VQBase {
  constructor(cfg: VQModelConfig, gen: Generator = new Generator(0)) {
    super(cfg, gen);
  }

  encode(x: Tensor): QuantizeResult {
    return this.quantize.forward(this.encodeToPrequant(x));
  }

  decode(quant: Tensor): Tensor {
    return this.decodeQuant(quant);
  }

  /** (reconstruction, quantizer loss, indices). */
  forward(x: Tensor): { dec: Tensor; diff: Tensor; indices: Tensor } {
    const [quant, diff, [, , indices]] = this.encode(x);
    return { dec: this.decode(quant), diff, indices };
  }
}

/**
 * VQModelInterface, as LDM uses a VQ first stage: encode() stops before the
 * quantizer; decode() quantizes first unless forceNotQuantize.
 */
export class VQModelInterface extends VQBase {
  constructor(cfg: VQModelConfig, gen: Generator = new Generator(0)) {
    super(cfg, gen);
  }

  encode(x: Tensor): Tensor {
    return this.encodeToPrequant(x);
  }

  decode(h: Tensor, forceNotQuantize = false): Tensor {
    if (forceNotQuantize) return this.decodeQuant(h);
    const [quant, loss, [, , indices]] = this.quantize.forward(h);
    loss.dispose();
    indices.dispose();
    return this.decodeQuant(quant);
  }
}
