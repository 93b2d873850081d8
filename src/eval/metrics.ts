// Sample-quality metrics on feature sets: FID (Heusel et al. 2017), Inception
// Score (Salimans et al. 2016), KID (Bińkowski et al. 2018) and k-NN
// precision/recall (Kynkäänniemi et al. 2019). Statistics and the Fréchet
// distance are float64 throughout; the large pairwise products of KID and
// precision/recall go through a Gram provider (the engine's float32 matmul
// when available) whose error bound the callers respect.
import { matmul } from '../tensor/ops/linalg';
import { Generator } from '../tensor/random';
import { fromArray } from '../tensor/tensor';
import { checkSymmetric, traceSqrtProduct } from './linalg64';

/** n feature vectors of dimension dim, row-major. */
export interface Features {
  n: number;
  dim: number;
  data: Float32Array | Float64Array;
}

export function features(data: Float32Array | Float64Array, n: number, dim: number): Features {
  if (!Number.isInteger(n) || n < 0 || !Number.isInteger(dim) || dim < 1)
    throw new RangeError(`features: n must be a non-negative integer and dim a positive one, got n=${n}, dim=${dim}`);
  if (data.length !== n * dim) throw new RangeError(`features: ${n} x ${dim} needs ${n * dim} values, got ${data.length}`);
  return { n, dim, data };
}

function checkFinite(f: Features, what: string): void {
  for (let i = 0; i < f.data.length; ++i)
    if (!Number.isFinite(f.data[i]))
      throw new RangeError(`${what}: non-finite feature ${f.data[i]} in sample ${Math.floor(i / f.dim)} (dimension ${i % f.dim})`);
}

/** The Gaussian fitted to a feature set: mean and unbiased covariance (ddof 1, as numpy.cov). */
export interface GaussianStats {
  n: number;
  dim: number;
  mu: Float64Array;
  /** dim x dim, row-major. */
  sigma: Float64Array;
}

/**
 * Streaming mean and covariance in float64. Each batch is centred on its own
 * mean and merged with Chan et al.'s pairwise update, so no raw second
 * moments (and no cancellation between them) ever appear.
 */
export class StatsAccumulator {
  private count = 0;
  readonly mean: Float64Array;
  /** Sum of outer products of deviations; only the upper triangle is kept up to date. */
  private readonly m2: Float64Array;

  constructor(readonly dim: number) {
    if (!Number.isInteger(dim) || dim < 1) throw new RangeError(`StatsAccumulator: dim must be a positive integer, got ${dim}`);
    this.mean = new Float64Array(dim);
    this.m2 = new Float64Array(dim * dim);
  }

  get n(): number {
    return this.count;
  }

  /** Adds `rows` samples from data (rows x dim, row-major). */
  add(data: ArrayLike<number>, rows = data.length / this.dim): void {
    const d = this.dim;
    if (!Number.isInteger(rows) || rows < 0 || data.length < rows * d)
      throw new RangeError(`StatsAccumulator.add: ${rows} rows of ${d} need ${rows * d} values, got ${data.length}`);
    if (rows === 0) return;
    for (let i = 0; i < rows * d; ++i)
      if (!Number.isFinite(data[i])) throw new RangeError(`StatsAccumulator.add: non-finite feature ${data[i]} in row ${Math.floor(i / d)}`);
    const bm = new Float64Array(d);
    for (let r = 0; r < rows; ++r) for (let j = 0; j < d; ++j) bm[j] += data[r * d + j];
    for (let j = 0; j < d; ++j) bm[j] /= rows;
    // Deviations, a block of rows at a time: the m2 row is read once per block.
    const BLOCK = 8;
    const c = new Float64Array(BLOCK * d);
    for (let r0 = 0; r0 < rows; r0 += BLOCK) {
      const nb = Math.min(BLOCK, rows - r0);
      for (let b = 0; b < nb; ++b) for (let j = 0; j < d; ++j) c[b * d + j] = data[(r0 + b) * d + j] - bm[j];
      for (let b = nb; b < BLOCK; ++b) c.fill(0, b * d, (b + 1) * d);
      const m2 = this.m2;
      for (let i = 0; i < d; ++i) {
        const a0 = c[i], a1 = c[d + i], a2 = c[2 * d + i], a3 = c[3 * d + i];
        const a4 = c[4 * d + i], a5 = c[5 * d + i], a6 = c[6 * d + i], a7 = c[7 * d + i];
        const row = i * d;
        for (let j = i; j < d; ++j)
          m2[row + j] +=
            a0 * c[j] + a1 * c[d + j] + a2 * c[2 * d + j] + a3 * c[3 * d + j] +
            a4 * c[4 * d + j] + a5 * c[5 * d + j] + a6 * c[6 * d + j] + a7 * c[7 * d + j];
      }
    }
    // Merge: M2 += M2_batch (done above) + delta delta^T * n_a n_b / n.
    const na = this.count, n = na + rows;
    const f = (na * rows) / n;
    for (let i = 0; i < d; ++i) {
      const di = bm[i] - this.mean[i];
      if (na > 0) {
        const row = i * d;
        for (let j = i; j < d; ++j) this.m2[row + j] += f * di * (bm[j] - this.mean[j]);
      }
    }
    for (let j = 0; j < d; ++j) this.mean[j] += ((bm[j] - this.mean[j]) * rows) / n;
    this.count = n;
  }

  /** Mean and covariance (ddof 1) of everything added; needs at least 2 samples. */
  stats(): GaussianStats {
    const d = this.dim, n = this.count;
    if (n < 2) throw new RangeError(`covariance needs at least 2 samples, got ${n}`);
    const sigma = new Float64Array(d * d);
    for (let i = 0; i < d; ++i)
      for (let j = i; j < d; ++j) {
        const v = this.m2[i * d + j] / (n - 1);
        sigma[i * d + j] = v;
        sigma[j * d + i] = v;
      }
    return { n, dim: d, mu: Float64Array.from(this.mean), sigma };
  }
}

/** Mean and covariance (ddof 1) of a feature set. */
export function featureStats(f: Features): GaussianStats {
  const acc = new StatsAccumulator(f.dim);
  const rowsPerChunk = Math.max(1, Math.floor(65536 / f.dim));
  for (let r = 0; r < f.n; r += rowsPerChunk) {
    const rows = Math.min(rowsPerChunk, f.n - r);
    acc.add(f.data.subarray(r * f.dim, (r + rows) * f.dim), rows);
  }
  return acc.stats();
}

export interface FrechetResult {
  /** ||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2). */
  value: number;
  meanTerm: number;
  traceTerm: number;
  traceSqrt: number;
  /** Numerical rank of S1 (see linalg64.ts). */
  rank: number;
}

/**
 * The Fréchet distance between two Gaussians, the FID when they are fitted to
 * Inception pool3 features. Float64 throughout; see linalg64.ts for the
 * square-root term. Never negative: rounding below zero is clamped.
 */
export function frechetDistance(a: GaussianStats, b: GaussianStats): FrechetResult {
  if (a.dim !== b.dim) throw new RangeError(`frechetDistance: feature dimensions differ: ${a.dim} vs ${b.dim}`);
  const d = a.dim;
  for (const [s, w] of [[a, 'first'], [b, 'second']] as const) {
    if (s.mu.length !== d) throw new RangeError(`frechetDistance: the ${w} mean has ${s.mu.length} values, expected ${d}`);
    for (const v of s.mu) if (!Number.isFinite(v)) throw new RangeError(`frechetDistance: the ${w} mean has a non-finite value ${v}`);
    checkSymmetric(s.sigma, d, `frechetDistance: the ${w} covariance`);
  }
  let meanTerm = 0, traceTerm = 0;
  for (let i = 0; i < d; ++i) {
    const diff = a.mu[i] - b.mu[i];
    meanTerm += diff * diff;
    traceTerm += a.sigma[i * d + i] + b.sigma[i * d + i];
  }
  const ts = traceSqrtProduct(a.sigma, b.sigma, d);
  const value = Math.max(0, meanTerm + traceTerm - 2 * ts.value);
  return { value, meanTerm, traceTerm, traceSqrt: ts.value, rank: ts.rank };
}

export interface InceptionScoreResult {
  mean: number;
  /** Population standard deviation over the splits (numpy.std, as the original code reports). */
  std: number;
  perSplit: number[];
}

/**
 * Inception Score from logits (n x classes): exp(E_x KL(p(y|x) || p(y))) in
 * each of `splits` consecutive chunks [floor(i n / splits), floor((i+1) n / splits)),
 * p(y) the chunk's mean prediction. Softmax and logs in float64.
 */
export function inceptionScore(logits: Features, opts: { splits?: number } = {}): InceptionScoreResult {
  const splits = opts.splits ?? 10;
  const { n, dim: c } = logits;
  if (!Number.isInteger(splits) || splits < 1) throw new RangeError(`inceptionScore: splits must be a positive integer, got ${splits}`);
  if (n < splits) throw new RangeError(`inceptionScore: ${n} samples cannot make ${splits} splits (need at least one sample per split)`);
  if (c < 2) throw new RangeError(`inceptionScore: need at least 2 classes, got ${c}`);
  checkFinite(logits, 'inceptionScore');
  const logp = new Float64Array(n * c);
  for (let i = 0; i < n; ++i) {
    let m = -Infinity;
    for (let j = 0; j < c; ++j) m = Math.max(m, logits.data[i * c + j]);
    let s = 0;
    for (let j = 0; j < c; ++j) s += Math.exp(logits.data[i * c + j] - m);
    const lse = m + Math.log(s);
    for (let j = 0; j < c; ++j) logp[i * c + j] = logits.data[i * c + j] - lse;
  }
  const perSplit: number[] = [];
  const q = new Float64Array(c);
  for (let k = 0; k < splits; ++k) {
    const lo = Math.floor((k * n) / splits), hi = Math.floor(((k + 1) * n) / splits);
    q.fill(0);
    for (let i = lo; i < hi; ++i) for (let j = 0; j < c; ++j) q[j] += Math.exp(logp[i * c + j]);
    for (let j = 0; j < c; ++j) q[j] = Math.log(q[j] / (hi - lo));
    let kl = 0;
    for (let i = lo; i < hi; ++i)
      for (let j = 0; j < c; ++j) {
        const lp = logp[i * c + j];
        const p = Math.exp(lp);
        if (p > 0) kl += p * (lp - q[j]);
      }
    perSplit.push(Math.exp(kl / (hi - lo)));
  }
  const mean = perSplit.reduce((s, v) => s + v, 0) / splits;
  const std = Math.sqrt(perSplit.reduce((s, v) => s + (v - mean) * (v - mean), 0) / splits);
  return { mean, std, perSplit };
}

/**
 * Computes A B^T for row-major A (na x d) and B (nb x d). `relErr` bounds the
 * error of each entry by relErr * |a_i| |b_j| (the caller widens decisions by it).
 */
export interface GramProvider {
  gram(a: Float32Array | Float64Array, na: number, b: Float32Array | Float64Array, nb: number, d: number): Promise<Float32Array | Float64Array>;
  relErr(d: number): number;
}

/** A B^T in float64 JS loops: exact to float64 rounding, slow for large sets (tests, references). */
export const jsGram: GramProvider = {
  async gram(a, na, b, nb, d) {
    const out = new Float64Array(na * nb);
    for (let i = 0; i < na; ++i)
      for (let j = 0; j < nb; ++j) {
        let s = 0;
        for (let k = 0; k < d; ++k) s += a[i * d + k] * b[j * d + k];
        out[i * nb + j] = s;
      }
    return out;
  },
  relErr: (d) => 1.01 * d * 2 ** -53,
};

/**
 * A B^T with the engine's float32 matmul. Entry error <= gamma_d |a||b| for
 * any summation order (d 2^-24 / (1 - d 2^-24)), plus 2 2^-24 |a||b| when
 * float64 inputs are rounded to float32 first.
 */
export const engineGram: GramProvider = {
  async gram(a, na, b, nb, d) {
    const ta = fromArray(a instanceof Float32Array ? a : Float32Array.from(a), [na, d]);
    const tb = a === b && na === nb ? ta : fromArray(b instanceof Float32Array ? b : Float32Array.from(b), [nb, d]);
    const g = matmul(ta, tb, { transB: true });
    try {
      return (await g.data()) as Float32Array;
    } finally {
      g.dispose();
      ta.dispose();
      tb.dispose();
    }
  },
  relErr: (d) => (1.01 * (d + 2) * 2 ** -24) / (1 - (d + 2) * 2 ** -24),
};

let defaultGram: GramProvider = engineGram;
/** The Gram provider KID and precision/recall use when none is passed. */
export function setDefaultGram(g: GramProvider): void {
  defaultGram = g;
}
export function getDefaultGram(): GramProvider {
  return defaultGram;
}

export interface KidOptions {
  /** Number of random subsets (default 100). */
  subsets?: number;
  /** Samples per subset (default 1000); more than either set holds is an error. */
  subsetSize?: number;
  seed?: number;
  /** Polynomial kernel (gamma x.y + coef0)^degree; defaults: degree 3, gamma 1/dim, coef0 1. */
  degree?: number;
  gamma?: number;
  coef0?: number;
  gram?: GramProvider;
}

export interface KidResult {
  mean: number;
  /** Population standard deviation over the subsets. */
  std: number;
  perSubset: number[];
}

/**
 * Subset indices for KID: subset s draws `size` distinct indices from
 * [0, n) (a partial Fisher-Yates shuffle driven by the project's seeded
 * Generator). Exported so tests can hand the same subsets to a reference.
 */
export function kidSubsets(n: number, size: number, subsets: number, seed: number): Int32Array[] {
  const gen = new Generator(seed);
  const out: Int32Array[] = [];
  const pool = new Int32Array(n);
  for (let s = 0; s < subsets; ++s) {
    for (let i = 0; i < n; ++i) pool[i] = i;
    for (let i = 0; i < size; ++i) {
      const j = i + gen.randint(n - i);
      const t = pool[i];
      pool[i] = pool[j];
      pool[j] = t;
    }
    out.push(pool.slice(0, size));
  }
  return out;
}

function gather(f: Features, idx: Int32Array): Float32Array | Float64Array {
  const out = f.data instanceof Float64Array ? new Float64Array(idx.length * f.dim) : new Float32Array(idx.length * f.dim);
  for (let i = 0; i < idx.length; ++i) out.set(f.data.subarray(idx[i] * f.dim, (idx[i] + 1) * f.dim), i * f.dim);
  return out;
}

/**
 * The unbiased MMD^2 estimate between X (m samples) and Y (n samples) under
 * the polynomial kernel: mean of k(x, x') over x != x', plus the same for Y,
 * minus twice the mean of k(x, y).
 */
export async function mmd2Unbiased(
  x: Features,
  y: Features,
  opts: { degree?: number; gamma?: number; coef0?: number; gram?: GramProvider } = {},
): Promise<number> {
  if (x.dim !== y.dim) throw new RangeError(`mmd2Unbiased: feature dimensions differ: ${x.dim} vs ${y.dim}`);
  if (x.n < 2 || y.n < 2) throw new RangeError(`mmd2Unbiased: each set needs at least 2 samples, got ${x.n} and ${y.n}`);
  const degree = opts.degree ?? 3, gamma = opts.gamma ?? 1 / x.dim, coef0 = opts.coef0 ?? 1;
  const g = opts.gram ?? defaultGram;
  const k = (v: number) => (gamma * v + coef0) ** degree;
  const sumK = (gm: Float32Array | Float64Array, skipDiag: boolean, cols: number) => {
    let s = 0;
    for (let i = 0; i < gm.length; ++i) if (!(skipDiag && i % (cols + 1) === 0)) s += k(gm[i]);
    return s;
  };
  const kxx = sumK(await g.gram(x.data, x.n, x.data, x.n, x.dim), true, x.n);
  const kyy = sumK(await g.gram(y.data, y.n, y.data, y.n, y.dim), true, y.n);
  const kxy = sumK(await g.gram(x.data, x.n, y.data, y.n, x.dim), false, y.n);
  return kxx / (x.n * (x.n - 1)) + kyy / (y.n * (y.n - 1)) - (2 * kxy) / (x.n * y.n);
}

/**
 * Kernel Inception Distance: the unbiased polynomial-kernel MMD^2 averaged
 * over random subsets of `subsetSize` samples drawn from each set (as
 * torch-fidelity and the KID paper's code). Subset size must not exceed
 * either set's size.
 */
export async function kid(real: Features, fake: Features, opts: KidOptions = {}): Promise<KidResult> {
  const subsets = opts.subsets ?? 100;
  const size = opts.subsetSize ?? 1000;
  if (real.dim !== fake.dim) throw new RangeError(`kid: feature dimensions differ: ${real.dim} vs ${fake.dim}`);
  if (!Number.isInteger(subsets) || subsets < 1) throw new RangeError(`kid: subsets must be a positive integer, got ${subsets}`);
  if (!Number.isInteger(size) || size < 2) throw new RangeError(`kid: subsetSize must be an integer >= 2, got ${size}`);
  if (size > real.n || size > fake.n)
    throw new RangeError(`kid: subsetSize ${size} exceeds the number of samples (${real.n} reference, ${fake.n} generated); lower the subset size or add samples`);
  checkFinite(real, 'kid (reference features)');
  checkFinite(fake, 'kid (generated features)');
  const seed = opts.seed ?? 0;
  // Independent streams for the two sets, so the real subsets do not depend on the fake set's size.
  const ri = kidSubsets(real.n, size, subsets, seed * 2 + 1);
  const fi = kidSubsets(fake.n, size, subsets, seed * 2 + 2);
  const perSubset: number[] = [];
  for (let s = 0; s < subsets; ++s) {
    const x = features(gather(real, ri[s]), size, real.dim);
    const y = features(gather(fake, fi[s]), size, fake.dim);
    perSubset.push(await mmd2Unbiased(x, y, opts));
  }
  const mean = perSubset.reduce((a, v) => a + v, 0) / subsets;
  const std = Math.sqrt(perSubset.reduce((a, v) => a + (v - mean) * (v - mean), 0) / subsets);
  return { mean, std, perSubset };
}

function rowNorms2(f: Features): Float64Array {
  const out = new Float64Array(f.n);
  for (let i = 0; i < f.n; ++i) {
    let s = 0;
    for (let k = 0; k < f.dim; ++k) s += f.data[i * f.dim + k] * f.data[i * f.dim + k];
    out[i] = s;
  }
  return out;
}

/** ||a_i - b_j||^2 summed directly in float64: the exact check behind every borderline decision. */
function dist2(a: Features, i: number, b: Features, j: number): number {
  let s = 0;
  const d = a.dim, ao = i * d, bo = j * d;
  for (let k = 0; k < d; ++k) {
    const t = a.data[ao + k] - b.data[bo + k];
    s += t * t;
  }
  return s;
}

/**
 * Visits the squared distances between every a_i and every b_j in row blocks:
 * fn(i, approx, tol) gets approximate squared distances to all of b with a
 * per-entry bound (|exact - approx[j]| <= tol[j]).
 */
async function forDistanceRows(
  a: Features,
  b: Features,
  gram: GramProvider,
  fn: (i: number, approx: Float64Array, tol: Float64Array) => void,
): Promise<void> {
  const na2 = rowNorms2(a), nb2 = rowNorms2(b);
  const rel = gram.relErr(a.dim);
  const rowsPerBlock = Math.max(1, Math.floor((1 << 22) / Math.max(b.n, 1)));
  const approx = new Float64Array(b.n), tol = new Float64Array(b.n);
  for (let r0 = 0; r0 < a.n; r0 += rowsPerBlock) {
    const rows = Math.min(rowsPerBlock, a.n - r0);
    const g = await gram.gram(a.data.subarray(r0 * a.dim, (r0 + rows) * a.dim), rows, b.data, b.n, a.dim);
    for (let r = 0; r < rows; ++r) {
      const i = r0 + r;
      for (let j = 0; j < b.n; ++j) {
        approx[j] = na2[i] + nb2[j] - 2 * g[r * b.n + j];
        // 2 |dg| <= 2 rel |a||b| <= rel (|a|^2 + |b|^2), plus float64 rounding of this sum.
        tol[j] = (rel + 8 * 2 ** -53) * (na2[i] + nb2[j]);
      }
      fn(i, approx, tol);
    }
  }
}

/** The k-th nearest-neighbour distance (squared) of each sample within its own set, self excluded. */
export async function knnRadii2(f: Features, k: number, gram: GramProvider = defaultGram): Promise<Float64Array> {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`knnRadii: k must be a positive integer, got ${k}`);
  if (f.n <= k) throw new RangeError(`knnRadii: ${f.n} samples have no ${k}-th nearest neighbour (need more than ${k})`);
  const radii = new Float64Array(f.n);
  const upper = new Float64Array(f.n);
  await forDistanceRows(f, f, gram, (i, approx, tol) => {
    // The k-th smallest upper bound bounds the exact k-th distance from above;
    // every sample whose lower bound is above it is out.
    let m = 0;
    for (let j = 0; j < f.n; ++j) if (j !== i) upper[m++] = approx[j] + tol[j];
    const uk = kthSmallest(upper.subarray(0, m), k - 1);
    const exact: number[] = [];
    for (let j = 0; j < f.n; ++j) if (j !== i && approx[j] - tol[j] <= uk) exact.push(dist2(f, i, f, j));
    exact.sort((p, q) => p - q);
    radii[i] = exact[k - 1];
  });
  return radii;
}

/** The k-th smallest (0-based) of arr, which it reorders (quickselect). */
function kthSmallest(arr: Float64Array, k: number): number {
  let lo = 0, hi = arr.length - 1;
  while (lo < hi) {
    const pivot = arr[(lo + hi) >> 1];
    let i = lo, j = hi;
    while (i <= j) {
      while (arr[i] < pivot) ++i;
      while (arr[j] > pivot) --j;
      if (i <= j) {
        const t = arr[i];
        arr[i] = arr[j];
        arr[j] = t;
        ++i;
        --j;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return arr[k];
  }
  return arr[k];
}

/**
 * The fraction of `query` samples inside the manifold of `ref`: the union of
 * balls around each ref sample with radius its k-th nearest-neighbour
 * distance (radii2 squared, from knnRadii2).
 */
async function coverage(query: Features, ref: Features, radii2: Float64Array, gram: GramProvider): Promise<number> {
  let inside = 0;
  await forDistanceRows(query, ref, gram, (i, approx, tol) => {
    let unsure = false;
    for (let j = 0; j < ref.n; ++j) {
      if (approx[j] + tol[j] <= radii2[j]) {
        ++inside;
        return;
      }
      if (approx[j] - tol[j] <= radii2[j]) unsure = true;
    }
    if (!unsure) return;
    for (let j = 0; j < ref.n; ++j)
      if (approx[j] - tol[j] <= radii2[j] && dist2(query, i, ref, j) <= radii2[j]) {
        ++inside;
        return;
      }
  });
  return inside / query.n;
}

export interface PrecisionRecallResult {
  /** Fraction of generated samples inside the real manifold. */
  precision: number;
  /** Fraction of real samples inside the generated manifold. */
  recall: number;
  k: number;
}

/**
 * Improved precision and recall (Kynkäänniemi et al. 2019): each set's
 * manifold is the union of balls reaching every sample's k-th nearest
 * neighbour (default k = 3); precision is the share of generated samples in
 * the real manifold, recall the share of real samples in the generated one.
 * Distances are decided exactly in float64 (see forDistanceRows).
 */
export async function precisionRecall(
  real: Features,
  fake: Features,
  opts: { k?: number; gram?: GramProvider } = {},
): Promise<PrecisionRecallResult> {
  const k = opts.k ?? 3;
  const gram = opts.gram ?? defaultGram;
  if (real.dim !== fake.dim) throw new RangeError(`precisionRecall: feature dimensions differ: ${real.dim} vs ${fake.dim}`);
  checkFinite(real, 'precisionRecall (reference features)');
  checkFinite(fake, 'precisionRecall (generated features)');
  const rr = await knnRadii2(real, k, gram);
  const rf = await knnRadii2(fake, k, gram);
  return { precision: await coverage(fake, real, rr, gram), recall: await coverage(real, fake, rf, gram), k };
}
