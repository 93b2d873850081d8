import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import {
  type Features,
  type GaussianStats,
  StatsAccumulator,
  engineGram,
  featureStats,
  features,
  frechetDistance,
  inceptionScore,
  jsGram,
  kid,
  kidSubsets,
  knnRadii2,
  mmd2Unbiased,
  precisionRecall,
} from '../../src/eval/metrics';
import { pivotedCholesky, symmetricEigenvalues, traceSqrtProduct } from '../../src/eval/linalg64';
import { assertClose, randomData } from '../helpers/assert';
import { type Arr, Oracle, torchUnavailable } from '../helpers/oracle';

const skip = torchUnavailable();
/** The FID reference uses scipy.linalg.sqrtm (pytorch-fid's method); Debian: python3-scipy. */
const noScipy = (() => {
  if (skip) return skip;
  const r = spawnSync(process.env.TDQ_PYTHON ?? '/usr/bin/python3', ['-c', 'import scipy.linalg'], { encoding: 'utf8' });
  if (r.status === 0) return false;
  const why = 'scipy unavailable for the FID reference: apt-get install python3-scipy';
  if (process.env.CI) throw new Error(why);
  return why;
})();

/** hi + lo pairs from the oracle (see ops_eval.py) back to float64. */
function hilo(a: Arr): Float64Array {
  const d = a.data as Float32Array;
  const half = d.length / 2;
  const out = new Float64Array(half);
  for (let i = 0; i < half; ++i) out[i] = d[i] + d[half + i];
  return out;
}

const arr = (f: Features): Arr => ({ shape: [f.n, f.dim], data: f.data as Float32Array });

/** n samples of a correlated, shifted Gaussian in `dim` dimensions. */
function gaussianFeatures(n: number, dim: number, seed: number, scale = 1, shift = 0, mix = 0.5): Features {
  const z = randomData([n, dim], seed);
  const out = new Float32Array(n * dim);
  for (let i = 0; i < n; ++i)
    for (let j = 0; j < dim; ++j) out[i * dim + j] = scale * (z[i * dim + j] + (j > 0 ? mix * z[i * dim + j - 1] : 0)) + shift * (1 + (j % 3));
  return features(out, n, dim);
}

function relDiff(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-300);
}

describe('metrics against numpy/scipy references', { skip: skip ?? false }, () => {
  let oracle: Oracle;
  before(async () => (oracle = await Oracle.start()));
  after(() => oracle.close());

  it('featureStats: mean and covariance equal numpy.cov (float64) to 1e-12 relative', async () => {
    const f = gaussianFeatures(1003, 37, 1, 2, 5); // a large mean: centring must not lose digits
    const s = featureStats(f);
    const ref = await oracle.call('feature_stats_ref', { x: arr(f) });
    assertClose(s.mu, hilo(ref.outputs[0]), 1e-12, 'mean');
    assertClose(s.sigma, hilo(ref.outputs[1]), 1e-12, 'covariance');
  });

  const fidCases: [string, number, number, number][] = [
    ['well conditioned (n 600, dim 24)', 600, 600, 24],
    ['unequal sizes (n 300 vs 800, dim 40)', 300, 800, 40],
    ['singular covariances (n 30 < dim 64)', 30, 30, 64],
  ];
  for (const [name, n1, n2, dim] of fidCases) {
    it(`FID ${name} matches scipy sqrtm and the eigenvalue form`, { skip: noScipy }, async () => {
      const x = gaussianFeatures(n1, dim, 10 + n1, 1, 0);
      const y = gaussianFeatures(n2, dim, 20 + n2, 1.2, 0.1, 0.3);
      const r = frechetDistance(featureStats(x), featureStats(y));
      const ref = hilo((await oracle.call('fid_ref', { x: arr(x), y: arr(y) })).outputs[0]);
      const [fidSqrtm, fidEig] = ref;
      // Full rank: both references and this code are accurate to rounding.
      // Singular (rank < dim): the zero eigenvalues of S1 S2 come out of any
      // method as +-eps-sized noise whose square roots (~1e-8 each) scipy and
      // numpy add in; tr sqrt differs by that much.
      const tol = n1 > dim && n2 > dim ? 1e-9 : 1e-6;
      assert.ok(relDiff(r.value, fidEig) <= tol, `FID ${r.value} vs eigenvalue reference ${fidEig} (rel ${relDiff(r.value, fidEig).toExponential(2)})`);
      assert.ok(relDiff(r.value, fidSqrtm) <= tol, `FID ${r.value} vs sqrtm reference ${fidSqrtm} (rel ${relDiff(r.value, fidSqrtm).toExponential(2)})`);
      if (n1 <= dim) assert.equal(r.rank, n1 - 1, 'the rank of a covariance of n samples is n - 1');
    });
  }

  it('Inception Score with 10 and 3 splits (uneven) matches numpy', async () => {
    const logits = features(randomData([1003, 50], 7, 3), 1003, 50);
    for (const splits of [10, 3, 1]) {
      const r = inceptionScore(logits, { splits });
      const ref = await oracle.call('inception_score_ref', { logits: arr(logits) }, { splits });
      const [mean, std] = hilo(ref.outputs[0]);
      assertClose(r.perSplit, hilo(ref.outputs[1]), 1e-12, `per split (${splits})`);
      assert.ok(relDiff(r.mean, mean) <= 1e-12, `mean ${r.mean} vs ${mean}`);
      assert.ok(Math.abs(r.std - std) <= 1e-12 * mean, `std ${r.std} vs ${std}`);
    }
  });

  it('KID over the same subsets matches numpy (polynomial kernel, unbiased MMD^2)', async () => {
    const x = gaussianFeatures(120, 16, 31);
    const y = gaussianFeatures(150, 16, 32, 1.1, 0.2);
    const subsets = 7, size = 50, seed = 3;
    const r = await kid(x, y, { subsets, subsetSize: size, seed, gram: jsGram });
    // kid() draws the real subsets with seed 2s+1 and the fake ones with 2s+2.
    const ri = kidSubsets(x.n, size, subsets, seed * 2 + 1), fi = kidSubsets(y.n, size, subsets, seed * 2 + 2);
    const flat = (idx: Int32Array[]) => ({ shape: [idx.length, size], data: Int32Array.from(idx.flatMap((a) => [...a])) });
    const ref = await oracle.call('kid_ref', { x: arr(x), y: arr(y), ridx: flat(ri), fidx: flat(fi) });
    const perSubset = hilo(ref.outputs[1]);
    for (let s = 0; s < subsets; ++s)
      assert.ok(Math.abs(r.perSubset[s] - perSubset[s]) <= 1e-12, `subset ${s}: ${r.perSubset[s]} vs ${perSubset[s]}`);
    const [mean, std] = hilo(ref.outputs[0]);
    assert.ok(Math.abs(r.mean - mean) <= 1e-12 && Math.abs(r.std - std) <= 1e-12, `mean/std ${r.mean}/${r.std} vs ${mean}/${std}`);
  });

  it('precision/recall (k = 3 and 5) match a brute-force numpy reference exactly', async () => {
    const x = gaussianFeatures(300, 12, 41);
    const y = gaussianFeatures(250, 12, 42, 1.3, 0.15);
    for (const k of [3, 5]) {
      const r = await precisionRecall(x, y, { k, gram: jsGram });
      const ref = await oracle.call('precision_recall_ref', { x: arr(x), y: arr(y) }, { k });
      const [precision, recall] = hilo(ref.outputs[0]);
      // Counts agree exactly (hi + lo carries ~48 bits of the reference's fraction).
      assert.equal(Math.round(r.precision * y.n), Math.round(precision * y.n), `precision k=${k}`);
      assert.equal(Math.round(r.recall * x.n), Math.round(recall * x.n), `recall k=${k}`);
      assertClose(await knnRadii2(x, k, jsGram), hilo(ref.outputs[1]), 1e-12, `real radii k=${k}`);
      assert.ok(r.precision > 0.2 && r.precision < 1 && r.recall > 0.2 && r.recall < 1, `not degenerate: ${r.precision}, ${r.recall}`);
    }
  });

  it('precision/recall decide borderline distances exactly under a coarse Gram', async () => {
    // A Gram provider that is off by up to its declared bound must not change the result.
    const coarse = {
      async gram(a: Float32Array | Float64Array, na: number, b: Float32Array | Float64Array, nb: number, d: number) {
        const g = (await jsGram.gram(a, na, b, nb, d)) as Float64Array;
        for (let i = 0; i < na; ++i)
          for (let j = 0; j < nb; ++j) {
            let sa = 0, sb = 0;
            for (let k = 0; k < d; ++k) (sa += a[i * d + k] ** 2), (sb += b[j * d + k] ** 2);
            g[i * nb + j] += ((i * 7 + j * 13) % 3 - 1) * 0.9 * 1e-3 * Math.sqrt(sa * sb);
          }
        return g;
      },
      relErr: () => 1e-3,
    };
    const x = gaussianFeatures(150, 8, 51);
    const y = gaussianFeatures(140, 8, 52, 1.2, 0.1);
    const exact = await precisionRecall(x, y, { gram: jsGram });
    const approx = await precisionRecall(x, y, { gram: coarse });
    assert.deepEqual(approx, exact);
  });
});

describe('metrics: closed forms, invariants and errors', () => {
  const diagStats = (mu: number[], diag: number[]): GaussianStats => {
    const d = mu.length;
    const sigma = new Float64Array(d * d);
    diag.forEach((v, i) => (sigma[i * d + i] = v));
    return { n: 100, dim: d, mu: Float64Array.from(mu), sigma };
  };

  it('Fréchet distance of diagonal Gaussians is the closed form', () => {
    const a = diagStats([0, 1, 2, 3], [1, 4, 0.25, 9]);
    const b = diagStats([1, 1, 0, 3], [4, 1, 1, 0]);
    // |mu|^2 = 1 + 0 + 4 + 0; sum (sqrt a_i - sqrt b_i)^2 = 1 + 1 + 0.25 + 9
    const r = frechetDistance(a, b);
    assert.ok(Math.abs(r.value - (5 + 11.25)) < 1e-12, `got ${r.value}`);
  });

  it('Fréchet distance is symmetric and zero for identical statistics', () => {
    const s1 = featureStats(gaussianFeatures(200, 20, 3));
    const s2 = featureStats(gaussianFeatures(90, 20, 4, 0.7, 1));
    const d12 = frechetDistance(s1, s2).value, d21 = frechetDistance(s2, s1).value;
    assert.ok(relDiff(d12, d21) < 1e-10, `${d12} vs ${d21}`);
    const self = frechetDistance(s1, s1);
    assert.ok(self.value < 1e-10 * self.traceTerm, `self distance ${self.value}`);
  });

  it('a rotated copy of a Gaussian has the same trace sqrt (rotation invariance)', () => {
    // S2 = R S1 R^T with R a rotation in the (0, 1) plane: tr sqrt(S1 S2) computed two ways.
    const s1 = featureStats(gaussianFeatures(300, 6, 5)).sigma;
    const n = 6, c = Math.cos(0.3), s = Math.sin(0.3);
    const r = new Float64Array(n * n);
    for (let i = 0; i < n; ++i) r[i * n + i] = 1;
    r[0] = c, r[1] = -s, r[n] = s, r[n + 1] = c;
    const mul = (a: Float64Array, b: Float64Array, tb = false) => {
      const o = new Float64Array(n * n);
      for (let i = 0; i < n; ++i) for (let j = 0; j < n; ++j) for (let k = 0; k < n; ++k) o[i * n + j] += a[i * n + k] * (tb ? b[j * n + k] : b[k * n + j]);
      return o;
    };
    const s2 = mul(mul(r, s1), r, true);
    for (let i = 0; i < n; ++i) for (let j = 0; j < i; ++j) s2[i * n + j] = s2[j * n + i] = 0.5 * (s2[i * n + j] + s2[j * n + i]);
    const t12 = traceSqrtProduct(s1, s2, n).value, t21 = traceSqrtProduct(s2, s1, n).value;
    assert.ok(relDiff(t12, t21) < 1e-12, `${t12} vs ${t21}`);
    // tr sqrt(S S) = tr S for one matrix.
    let tr = 0;
    for (let i = 0; i < n; ++i) tr += s1[i * n + i];
    assert.ok(relDiff(traceSqrtProduct(s1, s1, n).value, tr) < 1e-12);
  });

  it('symmetric eigenvalues: known spectra, repeated and zero eigenvalues', () => {
    // Q diag(l) Q^T with Q a Householder reflector: eigenvalues l exactly.
    const l = [5, 5, 2, 0, 0, -1, 1e-3];
    const n = l.length;
    const v = Float64Array.from({ length: n }, (_, i) => Math.sin(i + 1));
    const vn = Math.hypot(...v);
    const q = new Float64Array(n * n);
    for (let i = 0; i < n; ++i) for (let j = 0; j < n; ++j) q[i * n + j] = (i === j ? 1 : 0) - (2 * v[i] * v[j]) / (vn * vn);
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; ++i) for (let j = 0; j < n; ++j) for (let k = 0; k < n; ++k) a[i * n + j] += q[i * n + k] * l[k] * q[j * n + k];
    const ev = symmetricEigenvalues(a, n);
    const want = [...l].sort((p, r) => p - r);
    for (let i = 0; i < n; ++i) assert.ok(Math.abs(ev[i] - want[i]) < 1e-13, `eigenvalue ${i}: ${ev[i]} vs ${want[i]}`);
    assert.deepEqual([...symmetricEigenvalues(new Float64Array([3]), 1)], [3]);
    assert.deepEqual([...symmetricEigenvalues(new Float64Array(0), 0)], []);
  });

  it('pivoted Cholesky finds the rank and rejects indefinite matrices', () => {
    // Rank 2 in 4 dimensions: u u^T + w w^T.
    const u = [1, 2, 3, 4], w = [0, 1, 0, -1];
    const a = new Float64Array(16);
    for (let i = 0; i < 4; ++i) for (let j = 0; j < 4; ++j) a[i * 4 + j] = u[i] * u[j] + w[i] * w[j];
    assert.equal(pivotedCholesky(a, 4).rank, 2);
    assert.throws(() => pivotedCholesky(new Float64Array([1, 0, 0, -1]), 2), /not positive semidefinite/);
  });

  it('StatsAccumulator in uneven batches equals one pass', () => {
    const f = gaussianFeatures(77, 9, 8, 3, 100);
    const acc = new StatsAccumulator(9);
    for (const [lo, hi] of [[0, 1], [1, 30], [30, 31], [31, 77]]) acc.add(f.data.subarray(lo * 9, hi * 9), hi - lo);
    const one = featureStats(f), many = acc.stats();
    assertClose(many.mu, one.mu, 1e-14, 'mean');
    assertClose(many.sigma, one.sigma, 1e-12, 'covariance');
    assert.equal(many.n, 77);
  });

  it('KID is near zero for two samples of one distribution and positive for different ones', async () => {
    const x = gaussianFeatures(400, 10, 61), y = gaussianFeatures(400, 10, 62), z = gaussianFeatures(400, 10, 63, 1.5, 0.5);
    const same = await kid(x, y, { subsets: 10, subsetSize: 200, gram: jsGram });
    const diff = await kid(x, z, { subsets: 10, subsetSize: 200, gram: jsGram });
    assert.ok(Math.abs(same.mean) < 3 * same.std + 0.01, `same: ${same.mean} +- ${same.std}`);
    assert.ok(diff.mean > 10 * Math.abs(same.mean) && diff.mean > 0.1, `different: ${diff.mean} vs same ${same.mean}`);
    // Deterministic for a seed.
    assert.deepEqual((await kid(x, z, { subsets: 3, subsetSize: 50, seed: 9, gram: jsGram })).perSubset, (await kid(x, z, { subsets: 3, subsetSize: 50, seed: 9, gram: jsGram })).perSubset);
  });

  it('Inception Score: uniform predictions score 1, confident distinct ones score the class count', () => {
    const n = 40, c = 4;
    assert.ok(Math.abs(inceptionScore(features(new Float32Array(n * c), n, c), { splits: 2 }).mean - 1) < 1e-12);
    const confident = new Float32Array(n * c);
    for (let i = 0; i < n; ++i) confident[i * c + (i % c)] = 60;
    const r = inceptionScore(features(confident, n, c), { splits: 2 });
    assert.ok(Math.abs(r.mean - c) < 1e-9 && r.std < 1e-9, `${r.mean} +- ${r.std}`);
  });

  it('the engine (float32 matmul) Gram gives the float64 decisions of precision/recall and KID to 1e-5', async () => {
    // 64-d features with a common offset: nearest-neighbour distances are
    // small against the norms, where float32 Gram entries are least exact.
    const x = gaussianFeatures(400, 64, 81, 1, 3);
    const y = gaussianFeatures(350, 64, 82, 1.1, 3.05);
    for (const k of [1, 3]) assert.deepEqual(await precisionRecall(x, y, { k, gram: engineGram }), await precisionRecall(x, y, { k, gram: jsGram }));
    const a = await kid(x, y, { subsets: 4, subsetSize: 300, gram: engineGram });
    const b = await kid(x, y, { subsets: 4, subsetSize: 300, gram: jsGram });
    for (let s = 0; s < 4; ++s) assert.ok(Math.abs(a.perSubset[s] - b.perSubset[s]) <= 1e-5 * Math.abs(b.perSubset[s]) + 1e-7, `${a.perSubset[s]} vs ${b.perSubset[s]}`);
  });

  it('precision and recall of a set against itself are 1', async () => {
    const x = gaussianFeatures(60, 5, 71);
    assert.deepEqual(await precisionRecall(x, x), { precision: 1, recall: 1, k: 3 });
  });

  it('bad inputs give clear errors', async () => {
    const x = gaussianFeatures(10, 4, 1), y3 = gaussianFeatures(10, 3, 2);
    assert.throws(() => features(new Float32Array(5), 2, 3), /2 x 3 needs 6 values, got 5/);
    assert.throws(() => featureStats(gaussianFeatures(1, 4, 1)), /covariance needs at least 2 samples, got 1/);
    assert.throws(() => frechetDistance(featureStats(x), featureStats(y3)), /feature dimensions differ: 4 vs 3/);
    const bad = featureStats(x);
    bad.sigma[1] += 1;
    assert.throws(() => frechetDistance(bad, featureStats(x)), /first covariance: not symmetric/);
    const nan = features(Float32Array.from(x.data, (v, i) => (i === 5 ? NaN : v)), 10, 4);
    assert.throws(() => featureStats(nan), /non-finite feature NaN in row 1/);
    assert.throws(() => inceptionScore(x, { splits: 11 }), /10 samples cannot make 11 splits/);
    assert.throws(() => inceptionScore(x, { splits: 0 }), /splits must be a positive integer/);
    await assert.rejects(kid(x, x, { subsetSize: 11 }), /subsetSize 11 exceeds the number of samples \(10 reference, 10 generated\)/);
    await assert.rejects(kid(x, y3), /feature dimensions differ/);
    await assert.rejects(precisionRecall(gaussianFeatures(3, 4, 1), x), /3 samples have no 3-th nearest neighbour/);
    await assert.rejects(precisionRecall(nan, x), /non-finite feature NaN in sample 1/);
    await assert.rejects(mmd2Unbiased(gaussianFeatures(1, 4, 1), x), /at least 2 samples/);
  });
});
