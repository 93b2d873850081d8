// Activation statistics and step-size search, in plain JS (float64): the
// numerical core of calibration (calibrate.ts), separate so that it can be
// tested on synthetic data without a model.
import { levels } from './config';
import { type ActRange } from './quantizer';

export type StepMethod = 'auto' | 'mse' | 'minmax' | 'percentile' | 'stats';

/**
 * The method 'auto' stands for, by activation bits: min-max at 8 bits and
 * above, the 99.99th percentile below. Measured on the shipped model
 * (bench/results/tdq-ptq-lab.md): the per-timestep MSE step, searched on a
 * subsample, clips rare large activations whose one-signed error accumulates
 * along the sampling trajectory, and at 8 bits any clipping costs more than
 * the rounding it saves; at 4 bits min-max rounds too coarsely and the
 * percentile was best, for static and TDQ alike.
 */
export function activationMethod(method: StepMethod, bits: number): Exclude<StepMethod, 'auto'> {
  if (method !== 'auto') return method;
  return bits >= 8 ? 'minmax' : 'percentile';
}

// ---------------------------------------------------------------------------
// Statistics

/** What one quantizer saw at one timestep. */
export interface TimestepStats {
  t: number;
  min: number;
  max: number;
  /** Elements seen. */
  count: number;
  /** A uniform random subsample of the values (for MSE search and percentiles). */
  sample: Float32Array;
}

/** A small fast PRNG for subsampling (mulberry32): deterministic for a seed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Per quantizer and timestep: exact min/max and a random subsample. Each
 * observation (one tensor at one timestep) contributes `perObservation`
 * values, so every batch weighs the same.
 */
export class StatsCollector {
  readonly stats = new Map<string, Map<number, TimestepStats & { parts: Float32Array[] }>>();
  private readonly rand: () => number;

  constructor(readonly perObservation: number, seed = 0) {
    if (!Number.isInteger(perObservation) || perObservation < 1) throw new RangeError(`StatsCollector: perObservation must be a positive integer, got ${perObservation}`);
    this.rand = mulberry32(seed ^ 0x5bd1e995);
  }

  /** Adds the values of one tensor seen by quantizer `name` at timestep t. */
  add(name: string, t: number, values: ArrayLike<number>): void {
    let byT = this.stats.get(name);
    if (!byT) this.stats.set(name, (byT = new Map()));
    let s = byT.get(t);
    if (!s) byT.set(t, (s = { t, min: Infinity, max: -Infinity, count: 0, sample: new Float32Array(0), parts: [] }));
    const n = values.length;
    let lo = s.min, hi = s.max, sum = 0;
    for (let i = 0; i < n; ++i) {
      const v = values[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
      sum += v; // NaN and infinities end up here, where min/max comparisons would skip them
    }
    if (!Number.isFinite(sum) || !Number.isFinite(lo) || !Number.isFinite(hi)) throw new RangeError(`calibration: quantizer '${name}' saw a non-finite activation at t = ${t}`);
    s.min = lo;
    s.max = hi;
    s.count += n;
    const m = Math.min(n, this.perObservation);
    const part = new Float32Array(m);
    if (m === n) part.set(values as ArrayLike<number>);
    else for (let i = 0; i < m; ++i) part[i] = values[Math.floor(this.rand() * n)];
    s.parts.push(part);
  }

  /** The statistics of each quantizer, timesteps ascending. */
  result(): Map<string, TimestepStats[]> {
    const out = new Map<string, TimestepStats[]>();
    for (const [name, byT] of this.stats) {
      const list: TimestepStats[] = [];
      for (const s of byT.values()) {
        const total = s.parts.reduce((a, p) => a + p.length, 0);
        const sample = new Float32Array(total);
        let o = 0;
        for (const p of s.parts) {
          sample.set(p, o);
          o += p.length;
        }
        list.push({ t: s.t, min: s.min, max: s.max, count: s.count, sample });
      }
      list.sort((a, b) => a.t - b.t);
      out.set(name, list);
    }
    return out;
  }
}

// ---------------------------------------------------------------------------
// Step search

export interface StepSearchOptions {
  method: StepMethod;
  /** For 'percentile': the percentile of |x| (signed) or x - zeroPoint (unsigned) kept unclipped. Default 99.99. */
  percentile?: number;
}

/** Mean squared error of fake-quantizing `x` with step s (float64, round half to even as the kernel). */
export function quantMse(x: ArrayLike<number>, s: number, bits: number, range: ActRange): number {
  const { qmin, qmax } = levels(bits, range.signed);
  const z = range.zeroPoint;
  let acc = 0;
  for (let i = 0; i < x.length; ++i) {
    const v = x[i] - z;
    const r = v / s;
    let q = Math.round(r);
    if (q - r === 0.5 && q % 2 !== 0) q -= 1; // half to even
    if (q < qmin) q = qmin;
    else if (q > qmax) q = qmax;
    const d = q * s - v;
    acc += d * d;
  }
  return acc / Math.max(1, x.length);
}

/** The interval [lo, hi] of inputs that a step represents without clipping. */
export function coveredRangeOf(step: number, bits: number, range: ActRange): [number, number] {
  const { qmin, qmax } = levels(bits, range.signed);
  return [qmin * step + range.zeroPoint, qmax * step + range.zeroPoint];
}

/** The step that covers [min, max] exactly (no clipping). */
export function minmaxStep(min: number, max: number, bits: number, range: ActRange): number {
  const { qmin, qmax } = levels(bits, range.signed);
  const hi = max - range.zeroPoint, lo = min - range.zeroPoint;
  const s = range.signed ? Math.max(hi / qmax, lo / qmin) : hi / qmax;
  // An all-zero (or constant at the zero point) input: any step works; keep it tiny but positive.
  return s > 0 && Number.isFinite(s) ? s : 1e-8;
}

function percentileOf(values: ArrayLike<number>, p: number): number {
  const a = Float64Array.from(values).sort();
  if (!a.length) return 0;
  const pos = (p / 100) * (a.length - 1);
  const k = Math.floor(pos);
  return k + 1 < a.length ? a[k] + (a[k + 1] - a[k]) * (pos - k) : a[k];
}

/**
 * The step for values `x` (a sample) whose exact extremes are min and max:
 *   minmax: covers [min, max];
 *   percentile: covers the p-th percentile of |x| (signed) / x - zeroPoint (unsigned);
 *   stats: the authors' QAT initialisation from the mean and standard
 *          deviation (statsStep);
 *   mse: minimises the quantization MSE over the sample: 25 clipping ratios
 *        r = 0.04 .. 1 of the min-max step, then a golden-section refinement
 *        between the best ratio's neighbours (to about 1e-4 of the step).
 */
export function searchStep(x: ArrayLike<number>, min: number, max: number, bits: number, range: ActRange, opts: StepSearchOptions): number {
  const sMax = minmaxStep(min, max, bits, range);
  const method = activationMethod(opts.method, bits);
  if (method === 'minmax' || sMax <= 1e-8) return sMax;
  if (method === 'percentile') {
    const p = opts.percentile ?? 99.99;
    if (!(p > 0 && p <= 100)) throw new RangeError(`percentile must be in (0, 100], got ${p}`);
    const { qmax } = levels(bits, range.signed);
    const mags = Float64Array.from(x, (v) => (range.signed ? Math.abs(v) : v - range.zeroPoint));
    const c = percentileOf(mags, p);
    return c > 0 ? Math.min(c / qmax, sMax) : sMax;
  }
  if (method === 'stats') return statsStep([statsOf(x)], bits, range, sMax);
  if (method !== 'mse') throw new RangeError(`unknown step method '${String(opts.method)}' (auto, mse, minmax, percentile, stats)`);
  const N = 25;
  let best = 1, bestErr = Infinity;
  for (let i = 1; i <= N; ++i) {
    const r = i / N;
    const e = quantMse(x, r * sMax, bits, range);
    if (e < bestErr) {
      bestErr = e;
      best = r;
    }
  }
  let a = Math.max(best - 1 / N, 0.5 / N), b = Math.min(best + 1 / N, 1);
  const g = (Math.sqrt(5) - 1) / 2;
  let c = b - g * (b - a), d = a + g * (b - a);
  let fc = quantMse(x, c * sMax, bits, range), fd = quantMse(x, d * sMax, bits, range);
  for (let it = 0; it < 14; ++it) {
    if (fc < fd) {
      b = d;
      d = c;
      fd = fc;
      c = b - g * (b - a);
      fc = quantMse(x, c * sMax, bits, range);
    } else {
      a = c;
      c = d;
      fc = fd;
      d = a + g * (b - a);
      fd = quantMse(x, d * sMax, bits, range);
    }
  }
  const r = fc < fd ? c : d;
  return (Math.min(fc, fd) < bestErr ? r : best) * sMax;
}

/** Mean and standard deviation (population) of a sample, in float64. */
export function statsOf(x: ArrayLike<number>): { mean: number; std: number } {
  let m = 0;
  for (let i = 0; i < x.length; ++i) m += x[i];
  m /= Math.max(1, x.length);
  let v = 0;
  for (let i = 0; i < x.length; ++i) v += (x[i] - m) ** 2;
  return { mean: m, std: Math.sqrt(v / Math.max(1, x.length)) };
}

/**
 * The activation step of the authors' QAT initialisation (TDQ code, lsq.py
 * `_QuantAct.initialize`): from the mean over observations of each one's mean
 * and standard deviation, step = (mean + 3 std) / qmax for signed inputs and
 * (mean + 16 std) / qmax for unsigned ones (SiLU outputs, non-negative
 * inputs): the grid reaches a few deviations above the mean and lets the
 * rare larger values clip. The authors' observations are per sample of
 * training batches at random t; here each is one calibration timestep (its
 * subsample pools that step's samples, which share t). A non-positive
 * result (a negative mean) falls back to `fallback` (the min-max step).
 */
export function statsStep(obs: { mean: number; std: number }[], bits: number, range: ActRange, fallback: number): number {
  if (!obs.length) return fallback;
  let m = 0, sd = 0;
  for (const o of obs) {
    m += o.mean;
    sd += o.std;
  }
  m /= obs.length;
  sd /= obs.length;
  const { qmax } = levels(bits, range.signed);
  const c = m + (range.signed ? 3 : 16) * sd;
  return c > 0 && Number.isFinite(c) ? c / qmax : fallback;
}

/** Per-output-channel weight steps, w laid out (O, ...). */
export function weightSteps(w: ArrayLike<number>, outChannels: number, bits: number, method: StepMethod): Float32Array {
  const per = w.length / outChannels;
  const out = new Float32Array(outChannels);
  const range: ActRange = { signed: true, zeroPoint: 0 };
  for (let o = 0; o < outChannels; ++o) {
    const row = Float32Array.prototype.slice.call(w, o * per, (o + 1) * per) as Float32Array;
    let lo = Infinity, hi = -Infinity;
    for (const v of row) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    // 'stats': the authors' weight init is the max over the step count (per layer there; per channel here).
    out[o] = searchStep(row, lo, hi, bits, range, { method: method === 'minmax' || method === 'stats' ? 'minmax' : 'mse' });
  }
  return out;
}

// ---------------------------------------------------------------------------
// TDQ targets

export interface TdqTarget {
  /** Calibrated timesteps (ascending) and their steps. */
  t: number[];
  step: number[];
}

/**
 * The log-step curve over t = 0..T-1: linear interpolation of log(step)
 * between calibrated timesteps, constant beyond the first and last. Fitting
 * this dense curve (rather than the few calibrated points) keeps the MLP
 * smooth between them: its encoding has frequencies up to 1 rad per timestep.
 */
export function denseLogSteps(target: TdqTarget, T: number): Float64Array {
  const { t, step } = target;
  if (!t.length || t.length !== step.length) throw new RangeError('TDQ fit: a target needs as many steps as timesteps (at least one)');
  const out = new Float64Array(T);
  let j = 0;
  for (let i = 0; i < T; ++i) {
    while (j + 1 < t.length && t[j + 1] <= i) j++;
    if (i <= t[0]) out[i] = Math.log(step[0]);
    else if (j + 1 >= t.length) out[i] = Math.log(step[t.length - 1]);
    else {
      const f = (i - t[j]) / (t[j + 1] - t[j]);
      out[i] = Math.log(step[j]) * (1 - f) + Math.log(step[j + 1]) * f;
    }
  }
  return out;
}


// ---------------------------------------------------------------------------
// Smoothing across timesteps

export interface SmoothStepOptions {
  /**
   * Weight of the smoothness term: the cost of a jump of 1 in log(step)
   * between neighbouring calibration timesteps, in units of "the whole MSE
   * of one timestep". 0 gives each timestep its own best grid step.
   */
  lambda: number;
  /** Candidate steps, log-spaced (default 96). */
  grid?: number;
}

/**
 * Per-timestep steps chosen jointly: minimises
 *   sum_k mse_k(s_k) / min_s mse_k(s)  +  lambda * sum_k (log s_k - log s_{k-1})^2
 * over a shared log-spaced grid of candidate steps, exactly, by dynamic
 * programming (Viterbi). At 4 bits the MSE of one timestep is flat around
 * its minimum and often has two basins (clip the tail or cover it), so the
 * independent argmins jump between them from one timestep to the next; this
 * keeps the path in one basin unless leaving it pays. Timesteps are given in
 * order; `lists[k]` is timestep k's sample and extremes.
 */
export function smoothSteps(lists: { sample: ArrayLike<number>; min: number; max: number }[], bits: number, range: ActRange, opts: SmoothStepOptions): number[] {
  const K = lists.length;
  if (!K) return [];
  if (!(opts.lambda >= 0) || !Number.isFinite(opts.lambda)) throw new RangeError(`smoothSteps: lambda must be a finite number >= 0, got ${opts.lambda}`);
  const G = opts.grid ?? 96;
  if (!Number.isInteger(G) || G < 2) throw new RangeError(`smoothSteps: grid must be an integer >= 2, got ${G}`);
  const sMax = lists.map((l) => minmaxStep(l.min, l.max, bits, range));
  const hi = Math.max(...sMax), lo = Math.min(...sMax) * 0.02;
  if (!(hi > 1e-8)) return sMax;
  const logGrid = Float64Array.from({ length: G }, (_, g) => Math.log(lo) + ((Math.log(hi) - Math.log(lo)) * g) / (G - 1));
  // cost[k][g]: timestep k's MSE at grid step g, relative to its best.
  const cost = lists.map((l) => {
    const c = Float64Array.from(logGrid, (ls) => quantMse(l.sample, Math.exp(ls), bits, range));
    const best = Math.max(Math.min(...c), 1e-30);
    return c.map((v) => v / best);
  });
  return smoothestPath(cost, logGrid, opts.lambda).map((g) => Math.exp(logGrid[g]));
}

/**
 * The grid path g_0..g_{K-1} minimising sum_k cost[k][g_k] + lambda *
 * sum_k (grid[g_k] - grid[g_{k-1}])^2, exactly (Viterbi, O(K G^2)).
 */
export function smoothestPath(cost: ArrayLike<number>[], grid: ArrayLike<number>, lambda: number): number[] {
  const K = cost.length, G = grid.length;
  if (!K) return [];
  let acc = Float64Array.from(cost[0]);
  const from: Int32Array[] = [];
  for (let k = 1; k < K; ++k) {
    const next = new Float64Array(G), arg = new Int32Array(G);
    for (let g = 0; g < G; ++g) {
      let b = Infinity, bi = 0;
      for (let h = 0; h < G; ++h) {
        const d = grid[g] - grid[h];
        const v = acc[h] + lambda * d * d;
        if (v < b) {
          b = v;
          bi = h;
        }
      }
      next[g] = b + cost[k][g];
      arg[g] = bi;
    }
    from.push(arg);
    acc = next;
  }
  let g = 0;
  for (let i = 1; i < G; ++i) if (acc[i] < acc[g]) g = i;
  const path = new Array<number>(K);
  for (let k = K - 1; k >= 0; --k) {
    path[k] = g;
    if (k > 0) g = from[k - 1][g];
  }
  return path;
}
