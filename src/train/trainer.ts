// The training loop: epsilon-prediction loss, Adam/AdamW with warm-up and a
// schedule, gradient clipping, EMA, seeded data order, atomic checkpoints and
// an exact resume: every source of randomness (timesteps, noise, dropout,
// data order) and every piece of state is in the checkpoint, so a run stopped
// at a checkpoint and resumed ends bit-for-bit where an uninterrupted run does.
import fs from 'node:fs';
import path from 'node:path';

import type { Config } from '../config/schema';
import { dataNumClasses } from '../config/schema';
import { datasetFromConfig, loaderFromConfig } from '../data';
import { DEFAULT_BUCKET_MB, GradBuckets } from '../dist/buckets';
import { type Communicator, LocalCommunicator } from '../dist/communicator';
import { allreduceTimes, checkRanksAgree, checkWeightsAgree } from './distributed';
import type { Dataset } from '../data/dataset';
import type { Batch, DataLoader, LoaderState } from '../data/loader';
import type { NoiseSchedule } from '../diffusion/schedule';
import { writeFileAtomicSync } from '../io/atomic';
import { ClassEmbedder } from '../models/conditioning';
import { buildUNet, type Denoiser } from '../models/diffusion';
import { type LatentDenoiser, type LatentDiffusion, createLatentDiffusion, loadFirstStageCheckpoint } from '../models/latent';
import type { LatentDiffusionSpec, LatentTrainConfig } from '../models/latent_config';
import { loadModel } from '../models/load';
import { loadLatentModelFromSpec } from '../models/load_latent';
import type { CalibConditioning } from '../quant/calibrate';
import { Dropout } from '../nn/layers';
import type { Module } from '../nn/module';
import { Adam, AdamW, type ParamGroupSpec } from '../optim/adam';
import { clipGradNorm, gradNorm } from '../optim/clip';
import { LambdaLinearScheduler } from '../optim/lr_schedule';
import { backward } from '../tensor/autograd';
import { tidy } from '../tensor/scope';
import { scale } from '../tensor/ops/elementwise';
import { Generator, type GeneratorState } from '../tensor/random';
import { type DeviceSpec, type Precision, applyPrecision, resolveDevice } from '../tensor/device';
import { type Device, type Tensor, fromArray } from '../tensor/tensor';
import { TrainLogger } from './log';
import type { TrainingState } from './checkpoint';
import { LatentSubject, PixelSubject, type TrainSubject } from './subject';
import { type AutoencoderTrainConfig, AutoencoderSubject } from './subject_ae';
import { Ema } from './ema';
import type { DistillOptions } from './distill';
import { BAD_DATA_POLICIES, BadDataError, type BadDataPolicy, SkippingDataset, dataFileOf, dropBadRows } from './bad_data';
import { NAN_POLICIES, type NanPolicy, NonFiniteError, firstNonFiniteModule, nonFiniteGradient, nonFiniteParameter } from './nonfinite';
import { assertFreshRunFolder, cleanRunFolder, lockRunFolder, runFolderOfCheckpoint } from './run_dir';

export { BadDataError, type BadDataPolicy } from './bad_data';
export { NonFiniteError, type NanPolicy } from './nonfinite';

/** What a prepare hook learns of the model besides its UNet (latent models: the latent shape, the schedule, the class conditioning). */
export interface PrepareContext {
  schedule: NoiseSchedule;
  /** (C, H, W) of what the UNet denoises. */
  sampleShape: number[];
  conditioning?: CalibConditioning;
}

export interface TrainOptions {
  /**
   * Where to train: 'cpu' (default), 'cuda' (DeviceUnavailableError when no
   * GPU works) or 'auto' (cuda when a probe in a child process passes, else
   * cpu, quietly: probeCuda() says why).
   */
  device?: DeviceSpec;
  /** On 'cuda': the operands' rounding of matmuls and convolutions (process-wide, set when given); on 'cpu' only 'fp32'. */
  precision?: Precision;
  /** A pixel config (src/config), or an upstream LatentDiffusion config (loadLatentTrainConfig). */
  config: Config | LatentTrainConfig | AutoencoderTrainConfig;
  /**
   * The run folder: checkpoints/, log files, samples/, model.safetensors. A
   * run that does not continue this folder's own checkpoint (no `resume`, or
   * one from elsewhere) refuses a folder that is not empty (RunFolderExistsError).
   */
  outDir: string;
  /** Continue from this checkpoint file, or the newest one in this run folder. */
  resume?: string;
  /** Use this dataset instead of the config's (tests, library use). */
  dataset?: Dataset;
  /** A sample whose file fails to read (an error with a `file` property): 'stop' (default) or 'skip'. See bad_data.ts. */
  onBadData?: BadDataPolicy;
  /** A non-finite loss or gradient norm: 'stop' (default) after a checkpoint of the last good state, or 'skip' the batch. */
  onNan?: NanPolicy;
  /** With onNan 'skip': stop (as 'stop' does) once this many steps in a row were skipped (default 10). */
  maxNanSkips?: number;
  /**
   * Data-parallel training: this process's rank among the communicator's.
   * Each rank takes its slice of every global batch (training.batch_size),
   * gradients are averaged over the ranks, rank 0 alone writes the run folder.
   */
  comm?: Communicator;
  /**
   * Data-parallel: gradient buckets of about this many MiB (default 25, the
   * first at most 1 MiB, as PyTorch DDP), each allreduced while the backward pass goes on; 0: one
   * allreduce of all gradients after the backward pass.
   */
  bucketMb?: number;
  /** Data-parallel: compare the ranks' weights every this many steps (default 100, and at the end). */
  checksumEvery?: number;
  /** Start from these weights (a full-precision model for QAT, or fine-tuning). */
  initCheckpoint?: string;
  /** Latent models: the first stage's weights, instead of first_stage_config.params.ckpt_path. */
  firstStage?: string;
  /** Latent models: where a relative first_stage_config ckpt_path is resolved (default: the working directory, as upstream). */
  baseDir?: string;
  dataDir?: string;
  /** Stop after this step even if max_steps is larger (tests, time-boxed runs). */
  stopAtStep?: number;
  /** Stops cleanly after the current step (a checkpoint is written first). */
  signal?: AbortSignal;
  print?: ((line: string) => void) | null;
  onStep?: (step: number, loss: number) => void;
  /**
   * Turns the float UNet into the one to train (quantization-aware training)
   * and says how to group its parameters. Called after the initial weights are
   * loaded and before resuming. `metadata` is stored in checkpoints.
   */
  prepare?: (unet: Denoiser, ctx?: PrepareContext) => Promise<{
    model: Denoiser; groups?: (baseLr: number) => ParamGroupSpec[]; metadata?: Record<string, string>;
    /** Writes the final model (model.safetensors) instead of saveCheckpoint (QAT: integer weights). Pixel models only: a latent model exports its whole state with upstream's keys. */
    saveExport?: (file: string, parts: { config: unknown; extraMetadata: Record<string, string> }) => Promise<void>;
    /** QAT distillation against a frozen full-precision teacher (pixel models; the trainer disposes the teacher at the end). */
    distill?: DistillOptions;
  }>;
}

export interface TrainResult {
  step: number;
  checkpoint: string;
  exported: string | null;
  lastLoss: number;
  interrupted: boolean;
  /** Samples left out for bad files, and steps left out for a non-finite loss or gradient, over the whole run. */
  skippedSamples: number;
  skippedSteps: number;
}

interface RunState extends TrainingState {
  gen: GeneratorState;
  dropoutGen: GeneratorState;
  loader: LoaderState;
  emaUpdates: number;
  skippedSamples?: number;
  skippedSteps?: number;
}

const CKPT_RE = /^step-(\d+)\.safetensors$/;

/** The newest checkpoint of a run folder, or null; removes the temporaries of interrupted writes there. */
export function latestCheckpoint(runDir: string): string | null {
  cleanRunFolder(runDir);
  const dir = path.join(runDir, 'checkpoints');
  if (!fs.existsSync(dir)) return null;
  const steps = fs.readdirSync(dir).map((f) => CKPT_RE.exec(f)).filter((m): m is RegExpExecArray => !!m).map((m) => Number(m[1]));
  if (!steps.length) return null;
  return path.join(dir, `step-${String(Math.max(...steps)).padStart(8, '0')}.safetensors`);
}

/** Learning-rate factor at a step: linear warm-up, then constant / cosine / linear decay. */
export function lrFactor(t: Config['training'], step: number): number {
  if (t.lr_schedule === 'lambda_linear') {
    const l = t.lambda_linear;
    if (!l) throw new Error("training.lr_schedule is 'lambda_linear' but training.lambda_linear is not set");
    return new LambdaLinearScheduler({ warmUpSteps: l.warm_up_steps, fMin: l.f_min, fMax: l.f_max, fStart: l.f_start, cycleLengths: l.cycle_lengths }).factor(step - 1);
  }
  if (t.warmup_steps > 0 && step <= t.warmup_steps) return step / t.warmup_steps;
  if (t.lr_schedule === 'constant') return 1;
  const span = Math.max(1, t.max_steps - t.warmup_steps);
  const p = Math.min(1, Math.max(0, (step - t.warmup_steps) / span));
  const shape = t.lr_schedule === 'cosine' ? 0.5 * (1 + Math.cos(Math.PI * p)) : 1 - p;
  return t.min_lr_ratio + (1 - t.min_lr_ratio) * shape;
}

function dropoutModules(m: Module): Dropout[] {
  return m.namedModules().map(([, x]) => x).filter((x): x is Dropout => x instanceof Dropout);
}

/** The trained thing of a run: a pixel DDPM or a LatentDiffusion, its initial weights loaded and the prepare hook applied. */
async function buildSubject(opts: TrainOptions, resumeFrom: string | null, print: ((line: string) => void) | null): Promise<{ subject: TrainSubject; extraMetadata: Record<string, string>; dataset: Dataset }> {
  const cfg = opts.config;
  if ('kind' in cfg && cfg.kind === 'latent') return buildLatentSubject(opts, cfg, resumeFrom, print);
  if ('kind' in cfg && cfg.kind === 'autoencoder') {
    if (opts.prepare || opts.initCheckpoint || opts.firstStage) throw new Error(`${cfg.file}: an autoencoder trains from scratch in full precision (no --ckpt, --first-stage or quantization)`);
    const subject = new AutoencoderSubject(cfg, new Generator(cfg.training.seed));
    const dd = cfg.spec.ddconfig as { in_channels: number; resolution: number };
    const dataset = opts.dataset ?? datasetFromConfig({ data: cfg.data }, { dataDir: opts.dataDir, shape: { channels: dd.in_channels, size: dd.resolution } });
    return { subject, extraMetadata: {}, dataset };
  }
  const pcfg = cfg as Config;
  const t = pcfg.training;
  let unet: Denoiser;
  if (opts.initCheckpoint) {
    // The run's own config builds the model; the checkpoint only brings weights (EMA preferred).
    const init = await loadModel(opts.initCheckpoint, { config: pcfg, expect: 'float' });
    unet = init.model;
    print?.(`tdq-native: initial weights from ${opts.initCheckpoint}${init.report.ema ? ' (EMA)' : ''}`);
  } else unet = buildUNet(pcfg.model.params.unet_config, new Generator(t.seed));
  let groups: ((lr: number) => ParamGroupSpec[]) | undefined;
  let extraMetadata: Record<string, string> = {};
  let saveExport: PixelSubject['saveExport'];
  let distill: DistillOptions | undefined;
  if (opts.prepare) {
    const p = await opts.prepare(unet);
    unet = p.model;
    saveExport = p.saveExport;
    groups = p.groups;
    extraMetadata = p.metadata ?? {};
    distill = p.distill;
    if (distill) print?.(`tdq-native: distillation: loss = ${distill.weight} x MSE(eps, teacher eps) + ${1 - distill.weight} x diffusion loss`);
  }
  const subject = new PixelSubject(pcfg, unet, groups, saveExport, distill);
  const dataset = opts.dataset ?? datasetFromConfig(pcfg, { dataDir: opts.dataDir });
  return { subject, extraMetadata, dataset };
}

async function buildLatentSubject(
  opts: TrainOptions, cfg: LatentTrainConfig, resumeFrom: string | null, print: ((line: string) => void) | null,
): Promise<{ subject: TrainSubject; extraMetadata: Record<string, string>; dataset: Dataset }> {
  const t = cfg.training;
  const spec: LatentDiffusionSpec = { ...cfg.spec };
  const baseDir = opts.baseDir ?? process.cwd();
  if (opts.firstStage) {
    if (!fs.existsSync(opts.firstStage)) throw new Error(`--first-stage ${opts.firstStage}: no such file`);
    spec.firstStageCkptPath = path.resolve(opts.firstStage);
  }
  let ldm: LatentDiffusion;
  if (opts.initCheckpoint) {
    // The run's config builds the model; the checkpoint brings its weights (the UNet's EMA preferred), first stage included when it has one.
    const init = await loadLatentModelFromSpec(opts.initCheckpoint, spec, { configLabel: cfg.file, baseDir });
    ldm = init.model;
    if (init.report.quantized) {
      ldm.dispose();
      throw new Error(`${opts.initCheckpoint}: a quantized checkpoint; start from full-precision weights`);
    }
    if (opts.firstStage) await loadFirstStageCheckpoint(ldm.firstStageModel, spec.firstStageCkptPath!);
    print?.(`tdq-native: initial weights from ${opts.initCheckpoint}${init.report.ema ? ' (EMA)' : ''}; first stage from ${opts.firstStage ? spec.firstStageCkptPath : init.report.firstStageFrom}`);
  } else {
    // A resumed run takes every weight, the first stage's too, from its checkpoint.
    if (!resumeFrom && !spec.firstStageCkptPath)
      throw new Error(`${cfg.file}: training a LatentDiffusion needs the first stage's trained weights: set model.params.first_stage_config.params.ckpt_path or pass --first-stage FILE`);
    ({ model: ldm } = await createLatentDiffusion(spec, { gen: new Generator(t.seed), baseDir, loadFirstStage: !resumeFrom }));
    if (!resumeFrom) print?.(`tdq-native: first stage (frozen) from ${path.resolve(baseDir, spec.firstStageCkptPath!)}`);
  }
  let groups: ((lr: number) => ParamGroupSpec[]) | undefined;
  let extraMetadata: Record<string, string> = {};
  if (opts.prepare) {
    const cs = ldm.condStageModel;
    const dataClasses = dataNumClasses(cfg.data);
    const conditioning: CalibConditioning | undefined = ldm.conditioningKey === null ? undefined : {
      numClasses: dataClasses > 0 ? dataClasses : cs instanceof ClassEmbedder ? cs.nClasses : 1,
      context: (y) => ldm.getLearnedConditioning({ class_label: y }),
    };
    const p = await opts.prepare(ldm.model.diffusionModel as unknown as Denoiser, { schedule: ldm.schedule, sampleShape: [ldm.channels, ldm.imageSize, ldm.imageSize], conditioning });
    if (p.distill) {
      p.distill.teacher.dispose();
      throw new Error(`${cfg.file}: distillation is implemented for pixel models only`);
    }
    ldm.model.replaceDiffusionModel(p.model as unknown as LatentDenoiser);
    groups = p.groups;
    extraMetadata = p.metadata ?? {};
  }
  const subject = new LatentSubject(cfg, ldm, new Generator(t.seed + 3), groups);
  const dd = spec.firstStage.ddconfig as { in_channels: number; resolution: number };
  const dataset = opts.dataset ?? datasetFromConfig({ data: cfg.data }, { dataDir: opts.dataDir, shape: { channels: dd.in_channels, size: dd.resolution } });
  return { subject, extraMetadata, dataset };
}

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const comm = opts.comm ?? new LocalCommunicator();
  const lead = comm.rank === 0;
  // Rank 0 speaks for the run; the others only throw.
  const print = !lead ? null : opts.print === undefined ? console.log : opts.print;
  const onBadData: BadDataPolicy = opts.onBadData ?? 'stop';
  const onNan: NanPolicy = opts.onNan ?? 'stop';
  if (!BAD_DATA_POLICIES.includes(onBadData)) throw new RangeError(`onBadData must be one of ${BAD_DATA_POLICIES.join(', ')}, got ${JSON.stringify(onBadData)}`);
  if (!NAN_POLICIES.includes(onNan)) throw new RangeError(`onNan must be one of ${NAN_POLICIES.join(', ')}, got ${JSON.stringify(onNan)}`);
  // Before anything is written: an unavailable 'cuda' fails here.
  const device = resolveDevice(opts.device ?? 'cpu');
  if (opts.precision !== undefined) applyPrecision(device, opts.precision);

  // The checkpoint to continue from, and whether it continues this folder's run.
  const resumeIsDir = !!opts.resume && fs.existsSync(opts.resume) && fs.statSync(opts.resume).isDirectory();
  const resumeDir = opts.resume ? (resumeIsDir ? opts.resume : runFolderOfCheckpoint(opts.resume)) : null;
  if (resumeDir && lead) for (const f of cleanRunFolder(resumeDir)) print?.(`tdq-native: removed ${f}, left by an interrupted write`);
  const resumeFrom = opts.resume ? (resumeIsDir ? latestCheckpoint(opts.resume) : opts.resume) : null;
  if (opts.resume && !resumeFrom) throw new Error(`--resume ${opts.resume}: no checkpoint found (expected ${path.join(opts.resume, 'checkpoints', 'step-*.safetensors')})`);
  const resumedRun = resumeFrom ? runFolderOfCheckpoint(resumeFrom) : null;
  const continuing = resumedRun !== null && path.resolve(resumedRun) === path.resolve(opts.outDir);
  // A fresh run (or one continued from elsewhere) never writes into another run's folder.
  // Rank 0 owns the folder; the others wait until it has checked and locked it
  // (when it fails, it exits, and the launcher stops the others).
  let unlock = () => {};
  if (lead) {
    if (!continuing) assertFreshRunFolder(opts.outDir);
    fs.mkdirSync(path.join(opts.outDir, 'checkpoints'), { recursive: true });
    unlock = lockRunFolder(opts.outDir);
  }
  await comm.barrier();
  try {
    return await trainLocked(opts, resumeFrom, print, onBadData, onNan, comm, device);
  } finally {
    unlock();
  }
}

async function trainLocked(
  opts: TrainOptions, resumeFrom: string | null, print: ((line: string) => void) | null, onBadData: BadDataPolicy, onNan: NanPolicy, comm: Communicator, device: Device,
): Promise<TrainResult> {
  const lead = comm.rank === 0;
  const cfg = opts.config;
  const t = cfg.training;
  const { subject, extraMetadata, dataset } = await buildSubject(opts, resumeFrom, print);
  const model = subject.module;
  // Before the optimizer and the EMA copy are made: their state follows the parameters.
  if (device !== 'cpu') {
    model.to(device);
    subject.emaModule.to(device);
  }
  for (const n of dataset.notes ?? []) print?.(`tdq-native: data: ${n}`);
  const guarded = new SkippingDataset(dataset, onBadData);
  const loader: DataLoader = loaderFromConfig(cfg, guarded.dataset, comm.size > 1 ? { rank: comm.rank, size: comm.size } : undefined);
  const baseLr = subject.baseLearningRate * (t.scale_lr ? t.batch_size * t.accumulate_grad_batches : 1);
  if (subject.kind !== 'pixel') print?.(`tdq-native: learning rate ${baseLr.toExponential(2)}${t.scale_lr ? ` = base_learning_rate ${subject.baseLearningRate.toExponential(2)} x batch ${t.batch_size} x accumulate ${t.accumulate_grad_batches} (scale_lr; --scale_lr False uses it as is)` : ' (base_learning_rate as is)'}`);
  const specs: ParamGroupSpec[] = subject.paramGroups(baseLr);
  const hyper = { betas: t.optimizer.betas as [number, number], eps: t.optimizer.eps, weightDecay: t.optimizer.weight_decay };
  const optimizer = t.optimizer.type === 'adamw' ? new AdamW(specs, hyper) : new Adam(specs, hyper);
  const ema = t.ema.enabled ? new Ema(subject.emaModule, t.ema.decay) : null;
  const gen = new Generator(t.seed + 1);
  const dropoutGen = new Generator(t.seed + 2);
  for (const d of dropoutModules(model)) d.generator = dropoutGen;

  let step = 0;
  const skipped = { samples: 0, steps: 0 };
  const maxNanSkips = opts.maxNanSkips ?? 10;
  if (!Number.isInteger(maxNanSkips) || maxNanSkips < 0) throw new RangeError(`maxNanSkips must be a non-negative integer, got ${maxNanSkips}`);
  let nanRun = 0; // non-finite steps in a row
  if (resumeFrom) {
    const st = (await subject.restore(resumeFrom, ema, optimizer)) as RunState;
    gen.setState(st.gen);
    dropoutGen.setState(st.dropoutGen);
    loader.setState(st.loader);
    step = st.step;
    skipped.samples = st.skippedSamples ?? 0;
    skipped.steps = st.skippedSteps ?? 0;
    print?.(`tdq-native: resumed from ${resumeFrom} at step ${step}`);
  }

  await checkRanksAgree(comm, { config: cfg, resume: resumeFrom && path.resolve(resumeFrom), init: opts.initCheckpoint && path.resolve(opts.initCheckpoint), step });
  const logger = new TrainLogger({ batchSize: t.batch_size * t.accumulate_grad_batches, every: t.log_every, dir: lead ? opts.outDir : undefined, print, maxSteps: t.max_steps, resumeStep: resumeFrom ? step : undefined });
  const events = new EventLog(lead ? path.join(opts.outDir, 'skipped.jsonl') : null, resumeFrom ? step : 0);
  const checksumEvery = opts.checksumEvery ?? 100;
  if (!Number.isInteger(checksumEvery) || checksumEvery < 1) throw new RangeError(`checksumEvery must be a positive integer, got ${checksumEvery}`);
  const params = subject.trainableParameters();
  const bucketMb = opts.bucketMb ?? DEFAULT_BUCKET_MB;
  if (!(bucketMb >= 0)) throw new RangeError(`bucketMb must be >= 0, got ${bucketMb}`);
  const buckets = comm.size > 1 && bucketMb > 0 ? new GradBuckets(comm, params, bucketMb * 2 ** 20) : null;
  const endStep = Math.min(t.max_steps, opts.stopAtStep ?? Infinity);
  let lastCkpt = resumeFrom ?? '';
  let lastLoss = NaN;

  const ckptFile = (s: number) => path.join(opts.outDir, 'checkpoints', `step-${String(s).padStart(8, '0')}.safetensors`);
  const checkpoint = async (): Promise<string> => {
    const file = ckptFile(step);
    const state: RunState = {
      step, gen: gen.state(), dropoutGen: dropoutGen.state(), loader: loader.state(), emaUpdates: ema?.numUpdates ?? 0,
      skippedSamples: skipped.samples, skippedSteps: skipped.steps,
    };
    if (lead) {
      await subject.save(file, { state, ema, optimizer, extraMetadata });
      pruneCheckpoints(opts.outDir, t.keep_checkpoints);
    }
    return file;
  };
  const samePath = (a: string, b: string) => a !== '' && path.resolve(a) === path.resolve(b);

  // The next batch; with --on-bad-data skip, without the samples whose files failed.
  const nextBatch = (): Batch => {
    for (let tries = 0; ; ++tries) {
      const raw = loader.nextArrays();
      const bad = guarded.take();
      for (const b of bad) {
        skipped.samples += 1;
        events.add({ step, kind: 'bad_data', file: b.file, index: b.index, message: b.message });
        print?.(`tdq-native: step ${step}: skipped sample ${b.index} (${b.file}): ${b.message} [${skipped.samples} skipped samples so far]`);
      }
      const a = dropBadRows(raw, bad);
      if (a) {
        const y = guarded.dataset.numClasses > 0 ? fromArray(a.labels, [a.labels.length], 'int32', device) : null;
        return { x: fromArray(a.data, a.shape, 'float32', device), y, labels: a.labels, indices: a.indices, epoch: a.epoch, start: a.start, total: a.total };
      }
      if (tries > dataset.length) throw new Error(`${dataset.name}: no readable sample left (every sample of the last ${tries} batches failed)`);
    }
  };

  let interrupted = false;
  let stopAgreed = false;
  await allreduceTimes(comm); // counts from here
  const firstStep = step;
  model.train();
  // scale_by_std and the like: once, on the first batch of a fresh run.
  let firstBatchPending = !resumeFrom && !opts.initCheckpoint && !!subject.onFirstBatch;
  try {
    while (step < endStep) {
      // One process stops when asked; ranks stop together, at the step they agreed on.
      if (comm.size === 1 ? opts.signal?.aborted : stopAgreed) {
        interrupted = true;
        break;
      }
      // The state before this step: what a checkpoint of the last good state holds.
      const before = { gen: gen.state(), dropoutGen: dropoutGen.state(), loader: loader.state() };
      const rollBack = () => {
        step -= 1;
        gen.setState(before.gen);
        dropoutGen.setState(before.dropoutGen);
        loader.setState(before.loader);
      };
      ++step;
      const factor = lrFactor(t, step);
      for (const g of optimizer.paramGroups) g.lr = g.initialLr * factor;
      // Micro-batches: each loss is scaled by 1/k, and leaf gradients add up.
      const k = t.accumulate_grad_batches;
      const micro: { batch: Batch; gen: GeneratorState; dropoutGen: GeneratorState; loss: Tensor }[] = [];
      const disposeMicro = () => {
        for (const m of micro) m.loss.dispose(), m.batch.x.dispose(), m.batch.y?.dispose();
      };
      try {
        for (let i = 0; i < k; ++i) {
          const g0 = gen.state(), d0 = dropoutGen.state();
          const batch = nextBatch();
          if (firstBatchPending) {
            firstBatchPending = false;
            const line = await subject.onFirstBatch!(batch, comm);
            if (line) print?.(`tdq-native: ${line}`);
          }
          const loss = tidy(() => {
            const loss = subject.loss(batch, gen);
            // The last micro-batch makes the gradients final: their buckets' allreduces start during it.
            backward(k > 1 ? scale(loss, 1 / k) : loss, undefined, buckets && i === k - 1 ? buckets.hooks() : undefined);
            return loss;
          });
          micro.push({ batch, gen: g0, dropoutGen: d0, loss });
        }
      } catch (e) {
        disposeMicro();
        model.zeroGrad();
        const file = dataFileOf(e);
        if (file === null) throw e;
        // --on-bad-data stop: the last good state is the one before this step.
        const failedStep = step;
        rollBack();
        if (!samePath(lastCkpt, ckptFile(step))) lastCkpt = await checkpoint();
        throw new BadDataError(file, failedStep, lastCkpt, e as Error);
      }
      if (comm.size > 1) {
        // The global batch's mean gradient and loss: the mean over ranks of equal
        // slices; and whether any rank was asked to stop (SIGTERM reaches each).
        const flag = fromArray([opts.signal?.aborted ? 1 : 0], [1]);
        if (buckets) {
          buckets.finish();
          comm.allreduceMean([...micro.map((m) => m.loss), flag]);
        } else comm.allreduceMean([...params.flatMap((p) => (p.grad ? [p.grad] : [])), ...micro.map((m) => m.loss), flag]);
        stopAgreed = (await flag.item()) > 0;
        flag.dispose();
      }
      const norm = t.grad_clip ? clipGradNorm(params, t.grad_clip) : gradNorm(params);
      // Read before the optimizer step: a non-finite loss or gradient must not reach the weights.
      const lossValues: number[] = [];
      for (const m of micro) lossValues.push(await m.loss.item());
      const gradNormValue = await norm.item();
      norm.dispose();
      if (!lossValues.every(Number.isFinite) || !Number.isFinite(gradNormValue)) {
        const where = await locateNonFinite(subject, micro, lossValues, gen, dropoutGen);
        disposeMicro();
        model.zeroGrad();
        nanRun += 1;
        if (onNan === 'skip' && nanRun <= maxNanSkips) {
          skipped.steps += 1;
          events.add({ step, kind: 'non_finite', where });
          print?.(`tdq-native: step ${step}: ${where}; batch skipped, no optimizer step (--on-nan skip) [${skipped.steps} skipped steps so far]`);
        } else {
          const failedStep = step;
          rollBack();
          const badParam = await nonFiniteParameter(model);
          if (badParam === null && !samePath(lastCkpt, ckptFile(step))) lastCkpt = await checkpoint();
          const ck = badParam === null ? lastCkpt || null : null;
          throw new NonFiniteError(failedStep, onNan === 'skip' ? `${where} (${nanRun} steps in a row were non-finite, more than --max-nan-skips ${maxNanSkips})` : where, ck);
        }
      } else {
        nanRun = 0;
        optimizer.step();
        model.zeroGrad();
        if (ema && step > t.ema.start_step && step % t.ema.every === 0) ema.update(subject.emaModule);
        let lossTotal = 0;
        for (const l of lossValues) lossTotal += l;
        lastLoss = lossTotal / k;
        disposeMicro();
        logger.step(step, { loss: lastLoss, lr: optimizer.paramGroups[0].lr, ...(t.grad_clip ? { grad_norm: gradNormValue } : {}) });
        opts.onStep?.(step, lastLoss);
      }
      if (step % checksumEvery === 0 || step === endStep) await checkWeightsAgree(comm, params, step);
      if (step % t.checkpoint_every === 0 || step === endStep) lastCkpt = await checkpoint();
      if (lead && t.sample_every > 0 && step % t.sample_every === 0) await subject.sampleGrid(ema, path.join(opts.outDir, 'samples', `step-${String(step).padStart(8, '0')}.png`), t.sample_count, t.seed);
    }
    if (interrupted && step > 0 && !samePath(lastCkpt, ckptFile(step))) lastCkpt = await checkpoint();
    const ar = await allreduceTimes(comm);
    if (ar && step > firstStep) {
      const per = (v: number) => (v / (step - firstStep)).toFixed(1);
      print?.(`tdq-native: allreduce per step: ${per(ar.count)} calls, ${per(ar.allreduceMs)} ms on the communication thread, ${per(ar.waitedMs)} ms waited for (${buckets ? `${buckets.buckets.length} gradient buckets during the backward pass` : 'one after the backward pass'})`);
    }
  } finally {
    logger.close({ step });
  }
  let exported: string | null = null;
  if (!interrupted && step >= t.max_steps) {
    exported = path.join(opts.outDir, 'model.safetensors');
    if (lead) await subject.exportModel(exported, ema, extraMetadata);
  }
  await comm.barrier();
  if (skipped.samples || skipped.steps) print?.(`tdq-native: skipped ${skipped.samples} bad samples and ${skipped.steps} non-finite steps (listed in ${events.file})`);
  optimizer.dispose();
  ema?.dispose();
  model.dispose();
  if (subject instanceof PixelSubject) subject.distill?.teacher.dispose();
  return { step, checkpoint: lastCkpt, exported, lastLoss, interrupted, skippedSamples: skipped.samples, skippedSteps: skipped.steps };
}

/**
 * Names where a step's non-finite loss or gradient comes from: reruns the
 * forward of the first micro-batch whose loss is not finite (or of each,
 * when only the gradient is) with per-module checks, from the generator
 * states it started with; the generators are left as they were.
 */
async function locateNonFinite(
  subject: TrainSubject,
  micro: { batch: Batch; gen: GeneratorState; dropoutGen: GeneratorState }[],
  losses: number[],
  gen: Generator,
  dropoutGen: Generator,
): Promise<string> {
  const what = losses.every(Number.isFinite) ? 'the gradient norm is not finite' : `loss is ${losses.find((l) => !Number.isFinite(l))}`;
  const badParam = await nonFiniteParameter(subject.module);
  if (badParam !== null) return `${what}: parameter '${badParam}' is already not finite`;
  const after = { gen: gen.state(), dropoutGen: dropoutGen.state() };
  try {
    for (let i = 0; i < micro.length; ++i) {
      if (Number.isFinite(losses[i]) && !losses.every(Number.isFinite)) continue;
      const m = micro[i];
      gen.setState(m.gen);
      dropoutGen.setState(m.dropoutGen);
      const first = await firstNonFiniteModule(subject.module, [m.batch.x], () => subject.loss(m.batch, gen, false));
      if (first !== null) return `${what}; first non-finite output: ${first}`;
    }
  } finally {
    gen.setState(after.gen);
    dropoutGen.setState(after.dropoutGen);
  }
  const badGrad = await nonFiniteGradient(subject.module);
  if (badGrad !== null) return `${what}; every module output is finite, the gradient of '${badGrad}' is not`;
  return `${what}; every module output is finite (the loss itself overflows)`;
}

/** skipped.jsonl: one line per skipped sample or step; on resume, the lines after the resumed step are dropped. */
class EventLog {
  /** null: record nothing (ranks other than 0). */
  constructor(readonly file: string | null, resumeStep: number) {
    if (!file || !fs.existsSync(file)) return;
    const kept = fs.readFileSync(file, 'utf8').split('\n').filter((l) => {
      if (!l.trim()) return false;
      try {
        return (JSON.parse(l) as { step: number }).step <= resumeStep;
      } catch {
        return false; // a line cut by a kill
      }
    });
    writeFileAtomicSync(file, kept.map((l) => l + '\n').join(''));
  }

  add(rec: Record<string, unknown>): void {
    if (this.file) fs.appendFileSync(this.file, JSON.stringify(rec) + '\n');
  }
}

function pruneCheckpoints(runDir: string, keepN: number): void {
  const dir = path.join(runDir, 'checkpoints');
  const files = fs.readdirSync(dir).filter((f) => CKPT_RE.test(f)).sort();
  for (const f of files.slice(0, Math.max(0, files.length - keepN))) fs.rmSync(path.join(dir, f), { force: true });
}
