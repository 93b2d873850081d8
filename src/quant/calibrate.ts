// Calibration: run the float model along a few sampling trajectories, gather
// each activation quantizer's input statistics per timestep, and turn them
// into step sizes:
//   - per timestep: min-max, a percentile, or the MSE-optimal step ('auto',
//     the default, picks min-max at 8-bit activations and the percentile below);
//   - static quantizers (LSQ, PACT): one step from all timesteps pooled;
//   - TDQ: the MLP fitted to the per-timestep steps (the paper's
//     initialisation, and its PTQ method);
//   - weights: per output channel, by the same method (percentile -> MSE).
// Used for PTQ as is, and as the starting point of QAT.
import type { Denoiser } from '../models/diffusion';
import { backward, noGrad } from '../tensor/autograd';
import { add, detach, log, mean, relu, square, sub } from '../tensor/ops/elementwise';
import { matmul } from '../tensor/ops/linalg';
import { Adam } from '../optim/adam';
import { native } from '../tensor/native';
import { Generator } from '../tensor/random';
import { keep, tidy } from '../tensor/scope';
import { type Tensor, fromArray, runOp } from '../tensor/tensor';
import { type NoiseSchedule, type ScheduleConfig, makeSchedule } from '../diffusion/schedule';
import { type SamplerName, sample } from '../diffusion/samplers/index';
import { type QuantConfig, levels, resolveQuantConfig } from './config';
import { type StepMethod, type StepSearchOptions, type TdqTarget, type TimestepStats, StatsCollector, activationMethod, denseLogSteps, minmaxStep, mulberry32, searchStep, statsOf, statsStep, weightSteps } from './step_search';
import { type ActRange, type ActQuantizer, rangeForMin } from './quantizer';
import { QuantizedModel, quantizeModel, setOptionalBuffer } from './quantize_model';
import { encodeTimesteps, softplus, type TdqModule } from './tdq';

// ---------------------------------------------------------------------------
// TDQ fitting

export interface FitOptions {
  /** T: the MLPs are fitted on t = 0..T-1. */
  timesteps: number;
  iters?: number;
  lr?: number;
  /** Timesteps per iteration (default 64). */
  batch?: number;
  /** Seeds the timestep draws. */
  seed?: number;
}

/**
 * Fits TDQ modules so that softplus(MLP(enc(t))) matches each target's steps,
 * by least squares on log(step) over t = 0..T-1 (relative errors: steps span
 * orders of magnitude across layers and timesteps). All modules are trained
 * at once as one batched MLP (their weights stacked), then written back.
 * Returns the final RMS log error of each module.
 */
export function fitTdqModules(mods: TdqModule[], targets: TdqTarget[], opts: FitOptions): number[] {
  if (mods.length !== targets.length) throw new RangeError(`fitTdqModules: ${mods.length} modules for ${targets.length} targets`);
  if (!mods.length) return [];
  const T = opts.timesteps, Q = mods.length;
  const iters = opts.iters ?? 800, lr = opts.lr ?? 3e-3;
  const cfg = mods[0].cfg;
  for (const m of mods)
    if (JSON.stringify(m.cfg) !== JSON.stringify(cfg)) throw new RangeError('fitTdqModules: all modules must share one TdqModuleConfig');
  const dense = targets.map((tg) => denseLogSteps(tg, T));
  // Start each MLP at its target's mean level.
  mods.forEach((m, q) => {
    let s = 0;
    for (const v of dense[q]) s += v;
    m.initConstant(Math.exp(s / T));
  });
  const nl = mods[0].mlp.layers.length;
  // Stack each layer's weights (Q, out, in) and biases (Q, 1, out).
  const Ws: Tensor[] = [], Bs: Tensor[] = [];
  for (let l = 0; l < nl; ++l) {
    const [outF, inF] = mods[0].mlp.layers[l].weight.shape;
    const w = new Float32Array(Q * outF * inF), b = new Float32Array(Q * outF);
    mods.forEach((m, q) => {
      w.set(m.mlp.layers[l].weight.dataSync() as Float32Array, q * outF * inF);
      b.set(m.mlp.layers[l].bias.dataSync() as Float32Array, q * outF);
    });
    const W = keep(fromArray(w, [Q, outF, inF])), B = keep(fromArray(b, [Q, 1, outF]));
    W.requiresGrad = B.requiresGrad = true;
    Ws.push(W);
    Bs.push(B);
  }
  const params: [string, Tensor][] = [...Ws.map((w, l): [string, Tensor] => [`w${l}`, w]), ...Bs.map((b, l): [string, Tensor] => [`b${l}`, b])];
  const opt = new Adam(params, { lr });
  // enc (M, encDim), shared by the Q stacked MLPs -> (Q, M, 1) pre-softplus outputs.
  const mlp = (enc: Tensor) => {
    let h = enc;
    for (let l = 0; l < nl; ++l) {
      h = add(matmul(h, Ws[l], { transB: true }), Bs[l]);
      if (l < nl - 1) h = relu(h);
    }
    return h;
  };
  const logError = (ts: ArrayLike<number>) => {
    const tgt = new Float32Array(Q * ts.length);
    dense.forEach((d, q) => {
      for (let i = 0; i < ts.length; ++i) tgt[q * ts.length + i] = d[ts[i]];
    });
    const enc = encodeTimesteps(fromArray(Float32Array.from(ts), [ts.length]), cfg.encDim, cfg.maxPeriod);
    return sub(log(softplus(mlp(enc))), fromArray(tgt, [Q, ts.length, 1]));
  };
  // Each iteration sees `batch` timesteps, one drawn from each of `batch`
  // equal strata of [0, T): the whole range every step at a fraction of the
  // cost of all T rows (the fit costs Q x batch rows per iteration).
  const batch = Math.min(T, opts.batch ?? 64);
  const rand = mulberry32(opts.seed ?? 0);
  const ts = new Float64Array(batch);
  for (let it = 0; it < iters; ++it) {
    // Step decay: the last fifth at a tenth of the rate settles the fit.
    for (const g of opt.paramGroups) g.lr = it < 0.8 * iters ? lr : lr / 10;
    for (let i = 0; i < batch; ++i) ts[i] = Math.min(T - 1, Math.floor(((i + rand()) * T) / batch));
    tidy(() => backward(mean(square(logError(ts)))));
    opt.step();
    for (const [, p] of params) {
      p.grad?.dispose();
      p.grad = null;
    }
    // Ops run on the stream while JS queues the next ones; without a wait the
    // whole loop would be queued at once, each iteration's temporaries alive
    // until it runs. Waiting every few iterations bounds the memory.
    if (it % 4 === 3) native().syncBlocking();
  }
  const err = noGrad(() => tidy(() => logError(Float64Array.from({ length: T }, (_, i) => i))));
  const e = err.dataSync() as Float32Array;
  err.dispose();
  const rms = Array.from({ length: Q }, (_, q) => {
    let s = 0;
    for (let i = 0; i < T; ++i) s += e[q * T + i] ** 2;
    return Math.sqrt(s / T);
  });
  // Write the fitted weights back into the modules.
  for (let l = 0; l < nl; ++l) {
    const w = Ws[l].dataSync() as Float32Array, b = Bs[l].dataSync() as Float32Array;
    const [outF, inF] = mods[0].mlp.layers[l].weight.shape;
    mods.forEach((m, q) => {
      const sw = fromArray(w.slice(q * outF * inF, (q + 1) * outF * inF), [outF, inF]);
      const sb = fromArray(b.slice(q * outF, (q + 1) * outF), [outF]);
      runOp('copy_', [m.mlp.layers[l].weight, sw]);
      runOp('copy_', [m.mlp.layers[l].bias, sb]);
      sw.dispose();
      sb.dispose();
    });
  }
  opt.dispose();
  for (const t of [...Ws, ...Bs]) t.dispose();
  return rms;
}

// ---------------------------------------------------------------------------
// From statistics to an initialised quantized model

export interface FromStatsOptions extends StepSearchOptions {
  /** TDQ fit iterations (default 800). */
  fitIters?: number;
  fitLr?: number;
  /** Values pooled over all timesteps for the static step (default 16384). */
  pooledSample?: number;
  seed?: number;
  /**
   * How TDQ modules start: 'fit' (default) fits each MLP to the per-timestep
   * steps (the PTQ method); 'constant' starts every MLP at the quantizer's
   * static step for every t (the authors' QAT initialisation: the last bias
   * set to softplus^-1 of the static step; here the last weights are also
   * zeroed, so that TDQ and static LSQ start from the very same model);
   * 'bias' is the authors' exactly: only the last bias set, the random last
   * weights kept (the start is near the static step and varies with t).
   */
  tdqInit?: TdqInit;
}

export const TDQ_INITS = ['constant', 'bias', 'fit'] as const;
export type TdqInit = (typeof TDQ_INITS)[number];

export interface CalibrationReport {
  /** Per activation quantizer: range rule, static step, per-timestep steps, TDQ fit error (RMS of log step). */
  quantizers: { name: string; range: ActRange; staticStep: number; t: number[]; steps: number[]; fitRmsLog?: number }[];
  /** The statistics themselves, by quantizer name (only with CalibrateOptions.keepStats). */
  stats?: Map<string, TimestepStats[]>;
}

/** Pools the per-timestep samples, `total` values with an equal share per timestep. */
function pooled(list: TimestepStats[], total: number, seed: number): Float32Array {
  const rand = mulberry32(seed);
  const per = Math.max(1, Math.floor(total / list.length));
  const out = new Float32Array(per * list.length);
  list.forEach((s, k) => {
    for (let i = 0; i < per; ++i) out[k * per + i] = s.sample.length > per ? s.sample[Math.floor(rand() * s.sample.length)] : s.sample[i % s.sample.length];
  });
  return out;
}

/**
 * Sets every quantizer of qm from activation statistics (as collected by
 * StatsCollector, keyed by quantizer name) and the model's own weights.
 */
export function calibrateFromStats(qm: QuantizedModel, stats: Map<string, TimestepStats[]>, opts: FromStatsOptions): CalibrationReport {
  const method = opts.method;
  for (const layer of qm.layers.values()) {
    const w = layer.weight.dataSync() as Float32Array;
    layer.weightQuant.setSteps(weightSteps(w, layer.weight.shape[0], layer.weightQuant.bits, method));
  }
  const report: CalibrationReport = { quantizers: [] };
  const tdqMods: TdqModule[] = [], tdqTargets: TdqTarget[] = [], tdqIdx: number[] = [];
  qm.actQuantizers().forEach((q: ActQuantizer, qi) => {
    const list = stats.get(q.name);
    if (!list || !list.length) throw new Error(`calibration: no activations were recorded for '${q.name}' (is the layer used in forward?)`);
    const gmin = Math.min(...list.map((s) => s.min)), gmax = Math.max(...list.map((s) => s.max));
    const range = rangeForMin(gmin);
    q.setRange(range);
    const steps = list.map((s) => searchStep(s.sample, s.min, s.max, q.bits, range, opts));
    // 'stats': the mean of the per-observation statistics (each timestep one), as the authors average per-sample ones.
    const staticStep = activationMethod(method, q.bits) === 'stats'
      ? statsStep(list.map((s) => statsOf(s.sample)), q.bits, range, minmaxStep(gmin, gmax, q.bits, range))
      : searchStep(pooled(list, opts.pooledSample ?? 16384, (opts.seed ?? 0) + qi), gmin, gmax, q.bits, range, opts);
    const ts = list.map((s) => s.t);
    if (q.kind === 'tdq' && opts.tdqInit === 'constant') {
      q.tdq!.startAt(staticStep);
    } else if (q.kind === 'tdq' && opts.tdqInit === 'bias') {
      q.tdq!.initConstant(staticStep);
    } else if (q.kind === 'tdq') {
      tdqMods.push(q.tdq!);
      tdqTargets.push({ t: ts, step: steps });
      tdqIdx.push(report.quantizers.length);
    } else {
      q.setStaticStep(staticStep);
    }
    setOptionalBuffer(q, 'calib_t', ts);
    setOptionalBuffer(q, 'calib_min', list.map((s) => s.min));
    setOptionalBuffer(q, 'calib_max', list.map((s) => s.max));
    setOptionalBuffer(q, 'calib_step', steps);
    report.quantizers.push({ name: q.name, range, staticStep, t: ts, steps });
  });
  if (opts.tdqInit !== undefined && !(TDQ_INITS as readonly string[]).includes(opts.tdqInit)) throw new RangeError(`tdqInit must be one of ${TDQ_INITS.join(', ')}, got ${JSON.stringify(opts.tdqInit)}`);
  if (tdqMods.length) {
    const rms = fitTdqModules(tdqMods, tdqTargets, { timesteps: qm.timesteps, iters: opts.fitIters, lr: opts.fitLr });
    rms.forEach((r, i) => (report.quantizers[tdqIdx[i]].fitRmsLog = r));
  }
  return report;
}

// ---------------------------------------------------------------------------
// End to end

export interface CalibrateOptions extends StepSearchOptions {
  /** The noise schedule (its T sizes the TDQ table). */
  schedule: NoiseSchedule | ScheduleConfig;
  /** Sampler of the calibration trajectories (default 'ddim'). */
  sampler?: SamplerName;
  /** Sampler steps (default 50); each is a calibration timestep. */
  steps?: number;
  /** Trajectories (samples) in all. */
  nSamples: number;
  /** Trajectories per batch (default min(nSamples, 16)). */
  batchSize?: number;
  seed: number;
  /** (C, H, W) of a sample; default from the model's config (in_channels, image_size). */
  sampleShape?: number[];
  /** Draws class labels for a class-conditional model (default: from the model's config num_classes). */
  numClasses?: number;
  /** Subsample size per quantizer and timestep (default 4096). */
  samplePerTimestep?: number;
  fitIters?: number;
  fitLr?: number;
  /** Initialises the TDQ MLPs before fitting (default Generator(seed)). */
  gen?: Generator;
  /** TDQ modules: fitted to the per-timestep steps ('fit', default) or started at the static step ('constant', 'bias'); see FromStatsOptions. */
  tdqInit?: TdqInit;
  onProgress?: (phase: 'sampling' | 'fitting', done: number, total: number) => void;
  /** Return the per-timestep statistics in the report (for analyses such as bench/tdq_ptq_lab). */
  keepStats?: boolean;
  /** Conditioning by a context instead of the UNet's class input (latent diffusion). */
  conditioning?: CalibConditioning;
}

/**
 * Class conditioning through a context (latent diffusion's cross-attention):
 * each trajectory's label is drawn from [0, numClasses) and the UNet gets
 * context(labels) as its 4th argument instead of the labels as y.
 */
export interface CalibConditioning {
  numClasses: number;
  context: (labels: Tensor) => Tensor;
}

interface UNetLikeConfig {
  in_channels?: number;
  image_size?: number;
  num_classes?: number | null;
}

/**
 * PTQ calibration (and QAT initialisation): quantizes `model` in place with
 * cfg, runs nSamples sampling trajectories of the float model, records every
 * activation quantizer's input per timestep, and sets all steps (see the
 * header). Returns the initialised QuantizedModel (in eval mode) and a report.
 */
export async function calibrateWithReport(model: Denoiser, cfgIn: QuantConfig, opts: CalibrateOptions): Promise<{ model: QuantizedModel; report: CalibrationReport }> {
  const cfg = resolveQuantConfig(cfgIn);
  if (!opts || typeof opts !== 'object') throw new TypeError('calibrate: options are required');
  if (!Number.isInteger(opts.nSamples) || opts.nSamples < 1) throw new RangeError(`calibrate: nSamples must be a positive integer, got ${opts.nSamples}`);
  if (!Number.isSafeInteger(opts.seed) || opts.seed < 0) throw new RangeError(`calibrate: seed must be a non-negative integer, got ${opts.seed}`);
  const schedule = makeSchedule(opts.schedule);
  const mc = (model as unknown as { config?: UNetLikeConfig }).config ?? {};
  const shape = opts.sampleShape ?? (mc.in_channels && mc.image_size ? [mc.in_channels, mc.image_size, mc.image_size] : undefined);
  if (!shape) throw new TypeError('calibrate: sampleShape (C, H, W) is required for a model without config.in_channels / image_size');
  const numClasses = opts.conditioning ? opts.conditioning.numClasses : opts.numClasses ?? mc.num_classes ?? undefined;
  const batchSize = opts.batchSize ?? Math.min(opts.nSamples, 16);
  const nBatches = Math.ceil(opts.nSamples / batchSize);
  const perObs = Math.ceil((opts.samplePerTimestep ?? 4096) / nBatches);

  const qm = quantizeModel(model, cfg, { timesteps: schedule.numTimesteps, gen: opts.gen ?? new Generator(opts.seed) });
  qm.eval();
  const collector = new StatsCollector(perObs, opts.seed);
  const pending: { name: string; x: Tensor; t: number }[] = [];
  qm.ctx.mode = 'observe';
  qm.ctx.observer = (q, x, tv) => {
    // Every sample of a sampling batch is at the same timestep. A copy, read
    // once the step has run: x itself may be a tensor the sampler owns.
    pending.push({ name: q.name, x: keep(detach(x)), t: tv[0] });
  };
  const flush = () => {
    for (const p of pending.splice(0)) {
      collector.add(p.name, p.t, p.x.dataSync() as Float32Array);
      p.x.dispose();
    }
  };
  const steps = opts.steps ?? 50;
  // The trajectories run where the model is (the caller moves it: model.to('cuda')).
  const device = qm.device();
  try {
    for (let b = 0; b < nBatches; ++b) {
      const n = Math.min(batchSize, opts.nSamples - b * batchSize);
      const labelGen = new Generator(opts.seed + 7919 * (b + 1));
      const y = numClasses ? fromArray(Int32Array.from({ length: n }, () => labelGen.randint(numClasses)), [n], 'int32', device) : undefined;
      const context = opts.conditioning && y ? keep(noGrad(() => opts.conditioning!.context(y))) : undefined;
      const out = await sample((x, t) => (context ? qm.forward(x, t, undefined, context) : qm.forward(x, t, y)), {
        sampler: opts.sampler ?? 'ddim',
        steps: (opts.sampler ?? 'ddim') === 'ddpm' ? undefined : steps,
        schedule,
        shape: [n, ...shape],
        seed: opts.seed + b,
        device,
        onProgress: (i, total) => {
          flush();
          opts.onProgress?.('sampling', b * total + i, nBatches * total);
        },
      });
      out.dispose();
      y?.dispose();
      context?.dispose();
    }
  } finally {
    for (const p of pending.splice(0)) p.x.dispose();
    qm.ctx.mode = 'quant';
    qm.ctx.observer = null;
  }
  opts.onProgress?.('fitting', 0, 1);
  const stats = collector.result();
  // The fit (small MLPs on per-timestep statistics) runs on the CPU; the model goes back after.
  if (device !== 'cpu') qm.to('cpu');
  const report = calibrateFromStats(qm, stats, {
    method: opts.method,
    percentile: opts.percentile,
    fitIters: opts.fitIters,
    fitLr: opts.fitLr,
    seed: opts.seed,
    tdqInit: opts.tdqInit,
  });
  if (device !== 'cpu') qm.to(device);
  opts.onProgress?.('fitting', 1, 1);
  if (opts.keepStats) report.stats = stats;
  return { model: qm, report };
}

/** calibrateWithReport without the report: the contract the trainer and the CLI use. */
export async function calibrate(model: Denoiser, cfg: QuantConfig, opts: CalibrateOptions): Promise<QuantizedModel> {
  return (await calibrateWithReport(model, cfg, opts)).model;
}
