// The evaluation protocol's statistics (issue 13): every cell of the results
// table is measured on several seeds; a cell reports the mean and its 95%
// confidence interval from Student's t with n - 1 degrees of freedom, and a
// comparison of two methods reports the paired differences on the same seeds
// (the same initial noise), whose spread is what decides. Plain functions on
// numbers, no tensors.

/** Regularized incomplete beta I_x(a, b), by its continued fraction (modified Lentz). */
export function incompleteBeta(x: number, a: number, b: number): number {
  if (!(a > 0 && b > 0)) throw new RangeError(`incompleteBeta: a and b must be positive, got ${a}, ${b}`);
  if (!(x >= 0 && x <= 1)) throw new RangeError(`incompleteBeta: x must be in [0, 1], got ${x}`);
  if (x === 0 || x === 1) return x;
  // Use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges fast.
  if (x > (a + 1) / (a + b + 2)) return 1 - incompleteBeta(1 - x, b, a);
  const lnFront = a * Math.log(x) + b * Math.log(1 - x) - logBeta(a, b);
  const tiny = 1e-300;
  let c = 1, d = 1 - ((a + b) * x) / (a + 1);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1 / d;
  let f = d;
  for (let m = 1; m <= 500; ++m) {
    for (const num of [(m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m)), (-(a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))]) {
      d = 1 + num * d;
      if (Math.abs(d) < tiny) d = tiny;
      c = 1 + num / c;
      if (Math.abs(c) < tiny) c = tiny;
      d = 1 / d;
      f *= c * d;
    }
    if (Math.abs(c * d - 1) < 1e-15) break;
  }
  return (Math.exp(lnFront) * f) / a;
}

function logGamma(z: number): number {
  // Lanczos (g = 7, n = 9), accurate to ~1e-15 for z > 0.5.
  const g = 7;
  const coef = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];
  if (z < 0.5) return Math.log(Math.PI / Math.abs(Math.sin(Math.PI * z))) - logGamma(1 - z);
  z -= 1;
  let x = coef[0];
  for (let i = 1; i < g + 2; ++i) x += coef[i] / (z + i);
  const t = z + g + 0.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(x);
}

const logBeta = (a: number, b: number): number => logGamma(a) + logGamma(b) - logGamma(a + b);

/** CDF of Student's t with `dof` degrees of freedom. */
export function studentTCdf(t: number, dof: number): number {
  if (!(dof > 0)) throw new RangeError(`studentTCdf: dof must be positive, got ${dof}`);
  const x = dof / (dof + t * t);
  const tail = 0.5 * incompleteBeta(x, dof / 2, 0.5);
  return t >= 0 ? 1 - tail : tail;
}

/** The p-quantile of Student's t (0 < p < 1), by bisection on the CDF. */
export function studentTQuantile(p: number, dof: number): number {
  if (!(p > 0 && p < 1)) throw new RangeError(`studentTQuantile: p must be in (0, 1), got ${p}`);
  if (!(dof > 0)) throw new RangeError(`studentTQuantile: dof must be positive, got ${dof}`);
  if (p === 0.5) return 0;
  if (p < 0.5) return -studentTQuantile(1 - p, dof);
  let lo = 0, hi = 1;
  while (studentTCdf(hi, dof) < p) hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-12 * hi; ++i) {
    const mid = (lo + hi) / 2;
    if (studentTCdf(mid, dof) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

export interface MeanCI {
  n: number;
  mean: number;
  /** Sample standard deviation (n - 1); NaN for one value. */
  sd: number;
  /** Half width of the interval: t_{(1+level)/2, n-1} * sd / sqrt(n); NaN for one value. */
  half: number;
  lo: number;
  hi: number;
  level: number;
}

/** Mean and `level` (default 95%) confidence interval of the mean, Student's t with n - 1 dof. */
export function meanCI(values: readonly number[], level = 0.95): MeanCI {
  if (!values.length) throw new RangeError('meanCI: no values');
  if (!(level > 0 && level < 1)) throw new RangeError(`meanCI: level must be in (0, 1), got ${level}`);
  for (const v of values) if (!Number.isFinite(v)) throw new RangeError(`meanCI: non-finite value ${v}`);
  const n = values.length;
  const mean = values.reduce((s, v) => s + v, 0) / n;
  if (n === 1) return { n, mean, sd: NaN, half: NaN, lo: NaN, hi: NaN, level };
  const sd = Math.sqrt(values.reduce((s, v) => s + (v - mean) ** 2, 0) / (n - 1));
  const half = (studentTQuantile((1 + level) / 2, n - 1) * sd) / Math.sqrt(n);
  return { n, mean, sd, half, lo: mean - half, hi: mean + half, level };
}

/**
 * Paired differences a - b on the seeds both have (the same seed: the same
 * initial noise, so the seed-to-seed spread they share cancels), in seed
 * order, with their mean and interval (null when no seed is shared).
 */
export function pairedDifferences(a: ReadonlyMap<number, number>, b: ReadonlyMap<number, number>, level = 0.95): { seeds: number[]; diffs: number[]; ci: MeanCI } | null {
  const seeds = [...a.keys()].filter((s) => b.has(s)).sort((x, y) => x - y);
  if (!seeds.length) return null;
  const diffs = seeds.map((s) => a.get(s)! - b.get(s)!);
  return { seeds, diffs, ci: meanCI(diffs, level) };
}

/**
 * How the spread of a sample-based estimate shrinks with the sample count:
 * the least-squares slope of log(spread) against log(N) over measured points
 * (about -0.5 when the spread goes as 1/sqrt(N)) and the spread predicted at
 * `at` from that fit. Needs two or more distinct N.
 */
export function spreadScaling(points: readonly { n: number; spread: number }[]): { exponent: number; predict: (n: number) => number } {
  const pts = points.filter((p) => p.n > 0 && p.spread > 0);
  if (new Set(pts.map((p) => p.n)).size < 2) throw new RangeError('spreadScaling: needs positive spreads at two or more sample counts');
  const xs = pts.map((p) => Math.log(p.n)), ys = pts.map((p) => Math.log(p.spread));
  const mx = xs.reduce((s, v) => s + v, 0) / xs.length, my = ys.reduce((s, v) => s + v, 0) / ys.length;
  let sxy = 0, sxx = 0;
  xs.forEach((x, i) => {
    sxy += (x - mx) * (ys[i] - my);
    sxx += (x - mx) ** 2;
  });
  const exponent = sxy / sxx;
  return { exponent, predict: (n: number) => Math.exp(my + exponent * (Math.log(n) - mx)) };
}

/** The spread at n2 of an estimate whose spread is `spread` at n1, if it goes as 1/sqrt(N). */
export function spreadAt(spread: number, n1: number, n2: number): number {
  if (!(n1 > 0 && n2 > 0)) throw new RangeError(`spreadAt: sample counts must be positive, got ${n1}, ${n2}`);
  return spread * Math.sqrt(n1 / n2);
}

/** "mean ± half" to `digits` significant digits of the mean ("mean (1 seed)" without an interval). */
export function formatMeanCI(ci: MeanCI, digits = 3): string {
  const m = formatNum(ci.mean, digits);
  if (ci.n < 2) return `${m} (1 seed)`;
  return `${m} ± ${formatNum(ci.half, 2)}`;
}

function formatNum(v: number, digits: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 10 ** digits) return v.toFixed(0);
  if (a >= 1e-3 || a === 0) return Number(v.toPrecision(digits)).toString();
  return v.toPrecision(digits);
}
