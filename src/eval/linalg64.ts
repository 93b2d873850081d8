// Float64 linear algebra for the metrics, in plain JS over row-major
// Float64Arrays: the engine has no float64 tensors, and the Fréchet distance
// must not lose digits to float32 (it is a small difference of large traces).
//
// The one hard quantity is tr sqrt(S1 S2) for symmetric positive semidefinite
// S1, S2. S1 S2 is not symmetric, and sqrtm of it (scipy's Schur method, as
// pytorch-fid uses) can turn complex on rounding noise when the covariances
// are singular (fewer samples than dimensions). Instead: a pivoted Cholesky
// factorization P^T S1 P = L L^T (L of rank r, stopping on the rounding-noise
// floor), so that S1 S2 = (P L)(L^T P^T S2) has the same nonzero eigenvalues
// as the symmetric PSD r x r matrix M = L^T P^T S2 P L. Then
// tr sqrt(S1 S2) = sum_i sqrt(max(lambda_i(M), 0)), with the eigenvalues of M
// from a Householder reduction to tridiagonal form and Sturm-sequence
// bisection. Every step is backward stable, and no step needs S1 or S2 to be
// invertible.

const EPS = 2 ** -52;

/** A square symmetric matrix check: n x n, finite, symmetric to rounding. */
export function checkSymmetric(a: Float64Array, n: number, what: string): void {
  if (a.length !== n * n) throw new RangeError(`${what}: expected ${n}x${n} = ${n * n} values, got ${a.length}`);
  let scale = 0;
  for (let i = 0; i < a.length; ++i) {
    if (!Number.isFinite(a[i])) throw new RangeError(`${what}: non-finite value ${a[i]} at (${Math.floor(i / n)}, ${i % n})`);
    scale = Math.max(scale, Math.abs(a[i]));
  }
  const tol = 1e-9 * scale;
  for (let i = 0; i < n; ++i)
    for (let j = i + 1; j < n; ++j)
      if (Math.abs(a[i * n + j] - a[j * n + i]) > tol)
        throw new RangeError(`${what}: not symmetric: (${i}, ${j}) = ${a[i * n + j]} but (${j}, ${i}) = ${a[j * n + i]}`);
}

export interface PivotedCholesky {
  /** Row i of L (length n, entries beyond the rank are 0) belongs to original index perm[i]. */
  l: Float64Array;
  perm: Int32Array;
  rank: number;
}

/**
 * P^T A P = L L^T for symmetric positive semidefinite A (n x n), greedy
 * diagonal pivoting. Stops when the largest remaining diagonal entry is at
 * most n * eps * max(diag A) (LAPACK dpstrf's default): what is left is
 * rounding noise, or A was rank deficient. A clearly negative remaining
 * pivot (A indefinite beyond rounding) is an error.
 */
export function pivotedCholesky(a: Float64Array, n: number): PivotedCholesky {
  const l = new Float64Array(n * n);
  const perm = new Int32Array(n);
  const d = new Float64Array(n); // remaining diagonal, by position in perm
  let maxDiag = 0;
  for (let i = 0; i < n; ++i) {
    perm[i] = i;
    d[i] = a[i * n + i];
    maxDiag = Math.max(maxDiag, d[i]);
  }
  const tol = n * EPS * maxDiag;
  let rank = 0;
  for (let j = 0; j < n; ++j) {
    let p = j;
    for (let i = j + 1; i < n; ++i) if (d[i] > d[p]) p = i;
    if (!(d[p] > tol)) {
      let minD = Infinity;
      for (let i = j; i < n; ++i) minD = Math.min(minD, d[i]);
      if (minD < -Math.sqrt(tol) * Math.sqrt(maxDiag) - tol)
        throw new RangeError(`pivotedCholesky: the matrix is not positive semidefinite (remaining pivot ${minD.toExponential(3)})`);
      break;
    }
    if (p !== j) {
      [perm[j], perm[p]] = [perm[p], perm[j]];
      [d[j], d[p]] = [d[p], d[j]];
      // Swap the computed parts (columns < j) of rows j and p.
      for (let k = 0; k < j; ++k) {
        const t = l[j * n + k];
        l[j * n + k] = l[p * n + k];
        l[p * n + k] = t;
      }
    }
    const ljj = Math.sqrt(d[j]);
    l[j * n + j] = ljj;
    const pj = perm[j];
    const rowJ = j * n;
    for (let i = j + 1; i < n; ++i) {
      const rowI = i * n;
      let s = a[perm[i] * n + pj];
      for (let k = 0; k < j; ++k) s -= l[rowI + k] * l[rowJ + k];
      const v = s / ljj;
      l[rowI + j] = v;
      d[i] -= v * v;
    }
    rank = j + 1;
  }
  return { l, perm, rank };
}

/**
 * Eigenvalues (ascending) of symmetric A (n x n; copied, not changed):
 * Householder tridiagonalization, then bisection on Sturm counts. Each
 * eigenvalue is found to within a few eps * ||A||.
 */
export function symmetricEigenvalues(a: Float64Array, n: number): Float64Array {
  const { diag, off } = tridiagonalize(a, n);
  return tridiagonalEigenvalues(diag, off);
}

/**
 * Householder reduction Q^T A Q = T (tridiagonal): returns the diagonal and
 * the n-1 off-diagonal entries. Step k maps column k below the diagonal onto
 * a multiple of e_{k+1} with H = I - 2 v v^T and updates the trailing block
 * as A - 2 (v w^T + w v^T), w = A v - (v^T A v) v. Reads and updates only
 * the lower triangle of A.
 */
export function tridiagonalize(a: Float64Array, n: number): { diag: Float64Array; off: Float64Array } {
  const m = Float64Array.from(a);
  const diag = new Float64Array(n);
  const off = new Float64Array(Math.max(n - 1, 0));
  const v = new Float64Array(n);
  const w = new Float64Array(n);
  for (let k = 0; k < n - 1; ++k) {
    const s = k + 1; // the trailing block is rows/cols s..n-1
    let norm2 = 0;
    for (let i = s; i < n; ++i) norm2 += m[i * n + k] * m[i * n + k];
    const norm = Math.sqrt(norm2);
    const x0 = m[s * n + k];
    diag[k] = m[k * n + k];
    // Nothing to eliminate below the subdiagonal: T already has this column.
    let below = 0;
    for (let i = s + 1; i < n; ++i) below = Math.max(below, Math.abs(m[i * n + k]));
    if (below === 0) {
      off[k] = x0;
      continue;
    }
    // alpha has x0's opposite sign, so v = x - alpha e1 does not cancel.
    const alpha = x0 >= 0 ? -norm : norm;
    off[k] = alpha;
    let vnorm2 = 0;
    for (let i = s; i < n; ++i) {
      v[i] = m[i * n + k] - (i === s ? alpha : 0);
      vnorm2 += v[i] * v[i];
    }
    const vinv = 1 / Math.sqrt(vnorm2);
    for (let i = s; i < n; ++i) v[i] *= vinv;
    // w = B v, B the trailing block; only its lower triangle is kept (the
    // loops below touch row segments j <= i, contiguous in memory).
    for (let i = s; i < n; ++i) w[i] = 0;
    for (let i = s; i < n; ++i) {
      const row = i * n;
      const vi = v[i];
      let acc = m[row + i] * vi;
      for (let j = s; j < i; ++j) {
        const mij = m[row + j];
        acc += mij * v[j];
        w[j] += mij * vi;
      }
      w[i] += acc;
    }
    let vtw = 0;
    for (let i = s; i < n; ++i) vtw += v[i] * w[i];
    for (let i = s; i < n; ++i) w[i] -= vtw * v[i];
    for (let i = s; i < n; ++i) {
      const row = i * n;
      const vi2 = 2 * v[i], wi2 = 2 * w[i];
      for (let j = s; j <= i; ++j) m[row + j] -= vi2 * w[j] + wi2 * v[j];
    }
  }
  if (n > 0) diag[n - 1] = m[(n - 1) * n + (n - 1)];
  return { diag, off };
}

/**
 * Eigenvalues (ascending) of the symmetric tridiagonal matrix with diagonal
 * `diag` and off-diagonal `off`, by bisection: the number of eigenvalues
 * below x is the number of negative pivots of T - x I (Sylvester's law of
 * inertia). Each eigenvalue is bracketed within the Gershgorin interval and
 * halved until the bracket is a few ulps wide.
 */
export function tridiagonalEigenvalues(diag: Float64Array, off: Float64Array): Float64Array {
  const n = diag.length;
  const out = new Float64Array(n);
  if (n === 0) return out;
  const off2 = new Float64Array(Math.max(n - 1, 0));
  let lo = Infinity, hi = -Infinity, norm = 0;
  for (let i = 0; i < n; ++i) {
    const r = (i > 0 ? Math.abs(off[i - 1]) : 0) + (i < n - 1 ? Math.abs(off[i]) : 0);
    lo = Math.min(lo, diag[i] - r);
    hi = Math.max(hi, diag[i] + r);
    norm = Math.max(norm, Math.abs(diag[i]) + r);
    if (i < n - 1) off2[i] = off[i] * off[i];
  }
  // A zero pivot is nudged off zero by this much, which moves the count by at most one ulp of the bracket.
  const pivmin = Math.max(norm * EPS * EPS, Number.MIN_VALUE * 1e10);
  const below = (x: number): number => {
    let count = 0;
    let q = diag[0] - x;
    if (Math.abs(q) < pivmin) q = -pivmin;
    if (q < 0) ++count;
    for (let i = 1; i < n; ++i) {
      q = diag[i] - x - off2[i - 1] / q;
      if (Math.abs(q) < pivmin) q = -pivmin;
      if (q < 0) ++count;
    }
    return count;
  };
  lo -= 2 * EPS * norm + pivmin;
  hi += 2 * EPS * norm + pivmin;
  const tol = 2 * EPS * norm;
  // Eigenvalue k (0-based) is the x where below(x) passes from <= k to > k.
  for (let k = 0; k < n; ++k) {
    let a = k > 0 ? Math.max(lo, out[k - 1]) : lo;
    let b = hi;
    while (b - a > tol + 2 * EPS * Math.max(Math.abs(a), Math.abs(b))) {
      const mid = 0.5 * (a + b);
      if (mid <= a || mid >= b) break;
      if (below(mid) > k) b = mid;
      else a = mid;
    }
    out[k] = 0.5 * (a + b);
  }
  return out;
}

export interface TraceSqrtResult {
  /** tr sqrt(S1 S2). */
  value: number;
  /** The numerical rank of S1 used (the size of M). */
  rank: number;
  /** The most negative eigenvalue of M, clamped to 0 (rounding noise; 0 when none). */
  minEigenvalue: number;
}

/** tr sqrt(S1 S2) for symmetric PSD n x n S1, S2, in float64 (see the file comment). */
export function traceSqrtProduct(s1: Float64Array, s2: Float64Array, n: number): TraceSqrtResult {
  const { l, perm, rank: r } = pivotedCholesky(s1, n);
  if (r === 0) return { value: 0, rank: 0, minEigenvalue: 0 };
  // B = (P^T S2 P) L, n x r. Row m of L is zero beyond column m (and beyond
  // the rank), so groups of four rows of L run up to the group's last row.
  const b = new Float64Array(n * r);
  const s2row = new Float64Array(n);
  const zero = new Float64Array(n);
  const lrow = (m: number) => (m < n ? l.subarray(m * n, m * n + n) : zero);
  for (let i = 0; i < n; ++i) {
    const src = perm[i] * n;
    for (let m = 0; m < n; ++m) s2row[m] = s2[src + perm[m]];
    const bi = b.subarray(i * r, i * r + r);
    for (let m = 0; m < n; m += 4) {
      const c0 = s2row[m], c1 = m + 1 < n ? s2row[m + 1] : 0, c2 = m + 2 < n ? s2row[m + 2] : 0, c3 = m + 3 < n ? s2row[m + 3] : 0;
      const l0 = lrow(m), l1 = lrow(m + 1), l2 = lrow(m + 2), l3 = lrow(m + 3);
      const kmax = Math.min(m + 4, r);
      for (let k = 0; k < kmax; ++k) bi[k] += c0 * l0[k] + c1 * l1[k] + c2 * l2[k] + c3 * l3[k];
    }
  }
  // M = L^T B (r x r, symmetric): the upper triangle, four rows of L at a time, then mirrored.
  const mm = new Float64Array(r * r);
  const zr = new Float64Array(r);
  const brow = (i: number) => (i < n ? b.subarray(i * r, i * r + r) : zr);
  for (let i = 0; i < n; i += 4) {
    const b0 = brow(i), b1 = brow(i + 1), b2 = brow(i + 2), b3 = brow(i + 3);
    const l0 = lrow(i), l1 = lrow(i + 1), l2 = lrow(i + 2), l3 = lrow(i + 3);
    const kmax = Math.min(i + 4, r);
    for (let k = 0; k < kmax; ++k) {
      const a0 = l0[k], a1 = l1[k], a2 = l2[k], a3 = l3[k];
      const mrow = k * r;
      for (let j = k; j < r; ++j) mm[mrow + j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
    }
  }
  for (let i = 0; i < r; ++i) for (let j = 0; j < i; ++j) mm[i * r + j] = mm[j * r + i];
  const ev = symmetricEigenvalues(mm, r);
  let value = 0;
  let minEigenvalue = 0;
  for (const e of ev) {
    if (e > 0) value += Math.sqrt(e);
    else minEigenvalue = Math.min(minEigenvalue, e);
  }
  return { value, rank: r, minEigenvalue };
}
