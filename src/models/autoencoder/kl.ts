// The KL-regularised first stage (ldm.models.autoencoder.AutoencoderKL), its
// posterior (ldm.modules.distributions.DiagonalGaussianDistribution), and a
// training loss without LPIPS or a discriminator.
import { Module } from '../../nn/module';
import { Conv2d } from '../../nn/layers';
import { full, zerosLike } from '../../tensor/ops/creation';
import { abs, add, addScalar, chunk, clamp, div, exp, mean, mul, scale, square, sub, sum } from '../../tensor/ops';
import { Generator } from '../../tensor/random';
import { type Tensor, shapeToString } from '../../tensor/tensor';
import { type DDConfig, Decoder, Encoder } from './model';

const LOG_2PI = Math.log(2 * Math.PI);

/**
 * A diagonal Gaussian from `parameters` (B, 2C, H, W) = [mean; logvar] along
 * channels, logvar clamped to [-30, 20]. With `deterministic` the variance is
 * zero: sample() is the mean and kl()/nll() are zero (per sample here, where
 * upstream returns a single [0.]).
 */
export class DiagonalGaussianDistribution {
  readonly mean: Tensor;
  readonly logvar: Tensor;
  readonly std: Tensor;
  readonly var: Tensor;

  constructor(readonly parameters: Tensor, readonly deterministic = false) {
    if (parameters.ndim < 2 || parameters.shape[1] % 2 !== 0)
      throw new RangeError(`DiagonalGaussianDistribution: parameters must be (B, 2C, ...), got ${shapeToString(parameters.shape)}`);
    const [m, lv] = chunk(parameters, 2, 1);
    this.mean = m;
    this.logvar = clamp(lv, -30, 20);
    if (deterministic) {
      this.std = zerosLike(m);
      this.var = zerosLike(m);
    } else {
      this.std = exp(scale(this.logvar, 0.5));
      this.var = exp(this.logvar);
    }
  }

  /**
   * mean + std * eps, eps ~ N(0, I) from `gen`, or the given `noise` (of the
   * mean's shape; for reproducing a sample exactly).
   */
  sample(gen: Generator | { noise: Tensor }): Tensor {
    let eps: Tensor;
    if (gen instanceof Generator) eps = gen.randn(this.mean.shape, this.mean.device);
    else {
      eps = gen.noise;
      if (eps.shape.join() !== this.mean.shape.join())
        throw new RangeError(`DiagonalGaussianDistribution.sample: noise of shape ${shapeToString(eps.shape)}, expected ${shapeToString(this.mean.shape)}`);
    }
    return add(this.mean, mul(this.std, eps));
  }

  mode(): Tensor {
    return this.mean;
  }

  private perSampleSum(x: Tensor): Tensor {
    const dims = x.shape.map((_, i) => i).slice(1);
    return sum(x, dims);
  }

  /** KL(this || other), other defaulting to N(0, I): (B), summed over every non-batch dim. */
  kl(other?: DiagonalGaussianDistribution): Tensor {
    if (this.deterministic) return full([this.mean.shape[0]], 0);
    if (!other) return scale(this.perSampleSum(addScalar(sub(add(square(this.mean), this.var), this.logvar), -1)), 0.5);
    const t = add(div(square(sub(this.mean, other.mean)), other.var), div(this.var, other.var));
    return scale(this.perSampleSum(add(addScalar(sub(t, this.logvar), -1), other.logvar)), 0.5);
  }

  /** Negative log-likelihood of `x`: (B), summed over `dims` (default every non-batch dim). */
  nll(x: Tensor, dims?: number[]): Tensor {
    if (this.deterministic) return full([this.mean.shape[0]], 0);
    const t = addScalar(add(this.logvar, div(square(sub(x, this.mean)), this.var)), LOG_2PI);
    return scale(dims ? sum(t, dims) : this.perSampleSum(t), 0.5);
  }
}

export interface AutoencoderKLConfig {
  ddconfig: DDConfig;
  embed_dim: number;
}

/**
 * encoder -> quant_conv (2 z_channels -> 2 embed_dim) -> posterior; z ->
 * post_quant_conv (embed_dim -> z_channels) -> decoder. Upstream's loss
 * (LPIPS and discriminator) is not part of the model: see AutoencoderKLLoss.
 */
export class AutoencoderKL extends Module {
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quantConv: Conv2d;
  readonly postQuantConv: Conv2d;
  readonly embedDim: number;

  constructor(cfg: AutoencoderKLConfig, gen: Generator = new Generator(0)) {
    super();
    const dd = cfg.ddconfig;
    if ((dd.double_z ?? true) !== true) throw new RangeError('AutoencoderKL: ddconfig.double_z must be true (the encoder outputs mean and log-variance)');
    if (!Number.isInteger(cfg.embed_dim) || cfg.embed_dim < 1) throw new RangeError(`AutoencoderKL: embed_dim must be a positive integer, got ${cfg.embed_dim}`);
    this.embedDim = cfg.embed_dim;
    this.encoder = this.registerModule('encoder', new Encoder(dd, gen));
    this.decoder = this.registerModule('decoder', new Decoder(dd, gen));
    this.quantConv = this.registerModule('quant_conv', new Conv2d(2 * dd.z_channels, 2 * cfg.embed_dim, 1, { gen }));
    this.postQuantConv = this.registerModule('post_quant_conv', new Conv2d(cfg.embed_dim, dd.z_channels, 1, { gen }));
  }

  /** The moments (B, 2 embed_dim, h, w) of the posterior: quant_conv(encoder(x)). */
  encodeMoments(x: Tensor): Tensor {
    return this.quantConv.forward(this.encoder.forward(x));
  }

  encode(x: Tensor): DiagonalGaussianDistribution {
    return new DiagonalGaussianDistribution(this.encodeMoments(x));
  }

  decode(z: Tensor): Tensor {
    if (z.ndim !== 4 || z.shape[1] !== this.embedDim)
      throw new RangeError(`AutoencoderKL.decode: expected z of shape [B, ${this.embedDim}, h, w], got ${shapeToString(z.shape)}`);
    return this.decoder.forward(this.postQuantConv.forward(z));
  }

  /** Reconstruction from a posterior sample (`generator` or `noise`), or from its mode with samplePosterior false. */
  forward(x: Tensor, opts: { samplePosterior?: boolean; generator?: Generator; noise?: Tensor } = {}): { dec: Tensor; posterior: DiagonalGaussianDistribution } {
    const posterior = this.encode(x);
    let z: Tensor;
    if (opts.samplePosterior === false) z = posterior.mode();
    else if (opts.noise) z = posterior.sample({ noise: opts.noise });
    else if (opts.generator) z = posterior.sample(opts.generator);
    else throw new TypeError('AutoencoderKL.forward: sampling the posterior needs opts.generator or opts.noise (or samplePosterior: false)');
    return { dec: this.decode(z), posterior };
  }
}

export interface AutoencoderKLLossOptions {
  /** Weight of the KL term (upstream default 1.0; the released configs use 1e-6). */
  klWeight?: number;
  /** Initial value of the learned output log-variance (upstream logvar_init, default 0). */
  logvarInit?: number;
  /** 'l1' as upstream (|x - x_rec|), or 'l2' ((x - x_rec)^2). */
  recLoss?: 'l1' | 'l2';
}

export interface AutoencoderKLLossResult {
  /** nll_loss + kl_weight * kl_loss: what the optimizer minimises. */
  loss: Tensor;
  /** sum(rec / exp(logvar) + logvar) / B. */
  nll: Tensor;
  /** sum(kl) / B. */
  kl: Tensor;
  /** mean(rec): upstream's logged rec_loss. */
  rec: Tensor;
}

/**
 * The generator loss of upstream's LPIPSWithDiscriminator with
 * perceptual_weight 0 and before disc_start (where its discriminator term is
 * multiplied by 0): nll = rec / exp(logvar) + logvar with a learned scalar
 * logvar (key "logvar", as "loss.logvar" in upstream checkpoints), summed and
 * divided by the batch size, plus kl_weight * KL / B. No LPIPS, no
 * discriminator, no per-pixel `weights`.
 */
export class AutoencoderKLLoss extends Module {
  readonly logvar: Tensor;
  readonly klWeight: number;
  readonly recLoss: 'l1' | 'l2';

  constructor(opts: AutoencoderKLLossOptions = {}) {
    super();
    this.klWeight = opts.klWeight ?? 1;
    this.recLoss = opts.recLoss ?? 'l1';
    if (!(this.klWeight >= 0)) throw new RangeError(`AutoencoderKLLoss: klWeight must be >= 0, got ${this.klWeight}`);
    if (this.recLoss !== 'l1' && this.recLoss !== 'l2') throw new RangeError(`AutoencoderKLLoss: recLoss must be 'l1' or 'l2', got '${String(this.recLoss)}'`);
    const init = opts.logvarInit ?? 0;
    if (!Number.isFinite(init)) throw new RangeError(`AutoencoderKLLoss: logvarInit must be finite, got ${init}`);
    this.logvar = this.registerParameter('logvar', full([], init));
  }

  forward(inputs: Tensor, reconstructions: Tensor, posterior: DiagonalGaussianDistribution): AutoencoderKLLossResult {
    if (inputs.shape.join() !== reconstructions.shape.join())
      throw new RangeError(`AutoencoderKLLoss: inputs ${shapeToString(inputs.shape)} and reconstructions ${shapeToString(reconstructions.shape)} differ in shape`);
    const b = inputs.shape[0];
    const d = sub(inputs, reconstructions);
    const rec = this.recLoss === 'l1' ? abs(d) : square(d);
    const nllMap = add(div(rec, exp(this.logvar)), this.logvar);
    const nll = scale(sum(nllMap), 1 / b);
    const kl = scale(sum(posterior.kl()), 1 / b);
    const loss = this.klWeight === 0 ? nll : add(nll, scale(kl, this.klWeight));
    return { loss, nll, kl, rec: mean(rec) };
  }
}
