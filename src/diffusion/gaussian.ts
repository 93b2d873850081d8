// An analytic diffusion problem: data x_0 ~ N(mu, diag(sigma^2)), for which
// the optimal noise predictor and the probability-flow ODE are closed-form.
// It checks samplers without a trained network, and serves as a tiny
// ground-truth model for the rest of the pipeline.
//
// Under the forward process x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps, per dimension
//   x_t ~ N(m, v^2),  m = sqrt(abar) mu,  v^2 = abar sigma^2 + 1 - abar,
// and the MMSE noise prediction is
//   eps*(x_t, t) = E[eps | x_t] = sqrt(1 - abar) (x_t - m) / v^2.
// The probability-flow ODE (DDIM eq. 14: d(x/sqrt(abar)) = eps d(sqrt((1 - abar)/abar)))
// keeps (x - m) / v constant along each path, so its exact solution from abar_s to abar_t is
//   x_t = m_t + (v_t / v_s) (x_s - m_s),
// a per-dimension affine map of the starting point.
import { add, mul } from '../tensor/ops/elementwise';
import type { Device } from '../tensor/native';
import type { Generator } from '../tensor/random';
import { tidy } from '../tensor/scope';
import { type Shape, type Tensor, fromArray, numel, shapeToString } from '../tensor/tensor';
import type { NoiseSchedule } from './schedule';
import { type EpsModel, timestepValues } from './samplers/common';

export class GaussianData {
  readonly mu: Float64Array;
  readonly sigma: Float64Array;
  /** Shape of one sample (without the batch dimension). */
  readonly sampleShape: Shape;

  constructor(mu: ArrayLike<number>, sigma: ArrayLike<number>, sampleShape: Shape = [mu.length]) {
    const n = numel(sampleShape);
    if (mu.length !== n || sigma.length !== n)
      throw new RangeError(`GaussianData: mu (${mu.length}) and sigma (${sigma.length}) need ${n} entries for sample shape ${shapeToString(sampleShape)}`);
    this.mu = Float64Array.from(mu);
    this.sigma = Float64Array.from(sigma);
    for (let i = 0; i < n; ++i) {
      if (!Number.isFinite(this.mu[i])) throw new RangeError(`GaussianData: mu[${i}] = ${this.mu[i]} is not finite`);
      if (!(this.sigma[i] > 0 && Number.isFinite(this.sigma[i]))) throw new RangeError(`GaussianData: sigma[${i}] = ${this.sigma[i]} must be > 0`);
    }
    this.sampleShape = Object.freeze([...sampleShape]);
  }

  get dim(): number {
    return this.mu.length;
  }

  /** Per-dimension mean and std of x_t at noise level abar. */
  marginal(abar: number): { mean: Float64Array; std: Float64Array } {
    const sa = Math.sqrt(abar);
    return {
      mean: this.mu.map((m) => sa * m),
      std: this.sigma.map((s) => Math.sqrt(abar * s * s + 1 - abar)),
    };
  }

  /** The exact eps prediction E[eps | x_t] for this data under `schedule` (fractional t allowed). */
  epsModel(schedule: NoiseSchedule): EpsModel {
    const D = this.dim;
    // eps* = c (x - m) = c x + b per dimension, with c = sqrt(1 - abar) / v^2 and b = -c m.
    const coefficients = (abar: number, c: Float32Array, b: Float32Array, at: number) => {
      const sa = Math.sqrt(abar), s1 = Math.sqrt(1 - abar);
      for (let d = 0; d < D; ++d) {
        const cd = s1 / (abar * this.sigma[d] * this.sigma[d] + 1 - abar);
        c[at + d] = cd;
        b[at + d] = -cd * sa * this.mu[d];
      }
    };
    return (x: Tensor, t: Tensor) => {
      const B = x.shape[0];
      if (x.shape.slice(1).join() !== this.sampleShape.join())
        throw new RangeError(`GaussianData model: x has shape ${shapeToString(x.shape)}, expected (B, ${this.sampleShape.join(', ')})`);
      if (t.shape.length !== 1 || t.shape[0] !== B) throw new RangeError(`GaussianData model: t has shape ${shapeToString(t.shape)}, expected [${B}]`);
      const ts = timestepValues(t);
      const uniform = ts.every((v) => v === ts[0]);
      const rows = uniform ? 1 : B;
      const c = new Float32Array(rows * D), b = new Float32Array(rows * D);
      for (let r = 0; r < rows; ++r) coefficients(schedule.alphaBar(ts[r]), c, b, r * D);
      const shape = uniform ? this.sampleShape : x.shape;
      return tidy(() => add(mul(x, fromArray(c, shape, 'float32', x.device)), fromArray(b, shape, 'float32', x.device)));
    };
  }

  /** A batch of x_t ~ N(sqrt(abar) mu, v^2) (abar = 1: data samples x_0). */
  sample(batch: number, gen: Generator, abar = 1, device: Device = 'cpu'): Tensor {
    const { mean, std } = this.marginal(abar);
    return tidy(() =>
      add(
        mul(gen.randn([batch, ...this.sampleShape], device), fromArray(new Float32Array(std), this.sampleShape, 'float32', device)),
        fromArray(new Float32Array(mean), this.sampleShape, 'float32', device),
      ),
    );
  }

  /**
   * The exact probability-flow map from noise level abarFrom to abarTo applied to a batch
   * x (B * dim values, row-major), in float64.
   */
  flow(x: ArrayLike<number>, abarFrom: number, abarTo: number): Float64Array {
    const D = this.dim;
    if (x.length % D !== 0) throw new RangeError(`GaussianData.flow: ${x.length} values are not a whole number of ${D}-dim samples`);
    const from = this.marginal(abarFrom), to = this.marginal(abarTo);
    const out = new Float64Array(x.length);
    for (let i = 0; i < x.length; ++i) {
      const d = i % D;
      out[i] = to.mean[d] + (to.std[d] / from.std[d]) * (x[i] - from.mean[d]);
    }
    return out;
  }
}
