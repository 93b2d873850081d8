// The training loop: epsilon-prediction loss, Adam/AdamW with warm-up and a
// schedule, gradient clipping, EMA, seeded data order, atomic checkpoints and
// an exact resume: every source of randomness (timesteps, noise, dropout,
// data order) and every piece of state is in the checkpoint, so a run stopped
// at a checkpoint and resumed ends bit-for-bit where an uninterrupted run does.
import fs from 'node:fs';
import path from 'node:path';

import type { Config } from '../config/schema';
import { datasetFromConfig, loaderFromConfig } from '../data';
import type { DataLoader, LoaderState } from '../data/loader';
import { sample as runSampler } from '../diffusion/samplers';
import { saveGrid } from '../io/png';
import { buildUNet, PixelDiffusion, type Denoiser } from '../models/diffusion';
import { Dropout } from '../nn/layers';
import type { Module } from '../nn/module';
import { Adam, AdamW, type ParamGroupSpec } from '../optim/adam';
import { clipGradNorm } from '../optim/clip';
import { LambdaLinearScheduler } from '../optim/lr_schedule';
import { backward } from '../tensor/autograd';
import { tidy } from '../tensor/scope';
import { scale } from '../tensor/ops/elementwise';
import { Generator, type GeneratorState } from '../tensor/random';
import type { Tensor } from '../tensor/tensor';
import { TrainLogger } from './log';
import { loadCheckpoint, saveCheckpoint, type TrainingState } from './checkpoint';
import { Ema } from './ema';

export interface TrainOptions {
  config: Config;
  /** The run folder: checkpoints/, log files, samples/, model.safetensors. */
  outDir: string;
  /** Continue from this checkpoint file, or the newest one in this run folder. */
  resume?: string;
  /** Start from these weights (a full-precision model for QAT, or fine-tuning). */
  initCheckpoint?: string;
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
  prepare?: (unet: Denoiser) => Promise<{ model: Denoiser; groups?: (baseLr: number) => ParamGroupSpec[]; metadata?: Record<string, string> }>;
}

export interface TrainResult {
  step: number;
  checkpoint: string;
  exported: string | null;
  lastLoss: number;
  interrupted: boolean;
}

interface RunState extends TrainingState {
  gen: GeneratorState;
  dropoutGen: GeneratorState;
  loader: LoaderState;
  emaUpdates: number;
}

const CKPT_RE = /^step-(\d+)\.safetensors$/;

/** The newest checkpoint of a run folder, or null. */
export function latestCheckpoint(runDir: string): string | null {
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

export async function train(opts: TrainOptions): Promise<TrainResult> {
  const cfg = opts.config;
  const t = cfg.training;
  const print = opts.print === undefined ? console.log : opts.print;
  fs.mkdirSync(path.join(opts.outDir, 'checkpoints'), { recursive: true });

  let unet: Denoiser = buildUNet(cfg.model.params.unet_config, new Generator(t.seed));
  if (opts.initCheckpoint) {
    const init = await loadCheckpoint(opts.initCheckpoint);
    const weights = init.ema ?? init.model;
    unet.loadStateDict(weights, { strict: true });
    for (const m of [init.model, init.ema]) if (m) for (const x of m.values()) x.dispose();
    print?.(`tdq-native: initial weights from ${opts.initCheckpoint}${init.ema ? ' (EMA)' : ''}`);
  }
  let groups: ((lr: number) => ParamGroupSpec[]) | undefined;
  let extraMetadata: Record<string, string> = {};
  if (opts.prepare) {
    const p = await opts.prepare(unet);
    unet = p.model;
    groups = p.groups;
    extraMetadata = p.metadata ?? {};
  }
  const diffusion = new PixelDiffusion(cfg.model, unet);
  const dataset = datasetFromConfig(cfg, { dataDir: opts.dataDir });
  const loader: DataLoader = loaderFromConfig(cfg, dataset);
  const baseLr = cfg.model.base_learning_rate * (t.scale_lr ? t.batch_size * t.accumulate_grad_batches : 1);
  const named = unet.namedParameters();
  const specs: ParamGroupSpec[] = groups ? groups(baseLr) : [{ params: named, lr: baseLr, name: 'model' }];
  const hyper = { betas: t.optimizer.betas as [number, number], eps: t.optimizer.eps, weightDecay: t.optimizer.weight_decay };
  const optimizer = t.optimizer.type === 'adamw' ? new AdamW(specs, hyper) : new Adam(specs, hyper);
  const ema = t.ema.enabled ? new Ema(unet, t.ema.decay) : null;
  const gen = new Generator(t.seed + 1);
  const dropoutGen = new Generator(t.seed + 2);
  for (const d of dropoutModules(unet)) d.generator = dropoutGen;

  let step = 0;
  const resumeFrom = opts.resume ? (fs.existsSync(opts.resume) && fs.statSync(opts.resume).isDirectory() ? latestCheckpoint(opts.resume) : opts.resume) : null;
  if (opts.resume && !resumeFrom) throw new Error(`--resume ${opts.resume}: no checkpoint found (expected ${path.join(opts.resume, 'checkpoints', 'step-*.safetensors')})`);
  if (resumeFrom) {
    const ck = await loadCheckpoint(resumeFrom);
    const st = ck.state as RunState | null;
    if (!st || !ck.optimizer) throw new Error(`${resumeFrom}: not a training checkpoint (no training state or optimizer state); use --ckpt to start from its weights`);
    unet.loadStateDict(ck.model, { strict: true });
    if (ema && ck.ema) {
      ema.load(ck.ema);
      ema.numUpdates = st.emaUpdates;
    }
    optimizer.loadState(ck.optimizer);
    for (const m of [ck.model, ck.ema]) if (m) for (const x of m.values()) x.dispose();
    for (const p of ck.optimizer.params.values()) p.expAvg.dispose(), p.expAvgSq.dispose();
    gen.setState(st.gen);
    dropoutGen.setState(st.dropoutGen);
    loader.setState(st.loader);
    step = st.step;
    print?.(`tdq-native: resumed from ${resumeFrom} at step ${step}`);
  }

  const logger = new TrainLogger({ batchSize: t.batch_size * t.accumulate_grad_batches, every: t.log_every, dir: opts.outDir, print, maxSteps: t.max_steps, resumeStep: resumeFrom ? step : undefined });
  const params = unet.parameters();
  const endStep = Math.min(t.max_steps, opts.stopAtStep ?? Infinity);
  let lastCkpt = resumeFrom ?? '';
  let lastLoss = NaN;

  const checkpoint = async (): Promise<string> => {
    const file = path.join(opts.outDir, 'checkpoints', `step-${String(step).padStart(8, '0')}.safetensors`);
    const state: RunState = { step, gen: gen.state(), dropoutGen: dropoutGen.state(), loader: loader.state(), emaUpdates: ema?.numUpdates ?? 0 };
    await saveCheckpoint(file, { config: cfg, state, model: unet, ema, optimizer: optimizer.state(), extraMetadata });
    pruneCheckpoints(opts.outDir, t.keep_checkpoints);
    return file;
  };

  let interrupted = false;
  unet.train();
  try {
    while (step < endStep) {
      if (opts.signal?.aborted) {
        interrupted = true;
        break;
      }
      ++step;
      const factor = lrFactor(t, step);
      for (const g of optimizer.paramGroups) g.lr = g.initialLr * factor;
      // Micro-batches: each loss is scaled by 1/k, and leaf gradients add up.
      const k = t.accumulate_grad_batches;
      const losses: Tensor[] = [];
      for (let micro = 0; micro < k; ++micro) {
        const batch = loader.next();
        losses.push(
          tidy(() => {
            const { loss } = diffusion.trainingLoss(batch.x, gen, batch.y);
            backward(k > 1 ? scale(loss, 1 / k) : loss);
            return loss;
          }),
        );
        batch.x.dispose();
        batch.y?.dispose();
      }
      const norm = t.grad_clip ? clipGradNorm(params, t.grad_clip) : null;
      optimizer.step();
      unet.zeroGrad();
      if (ema && step > t.ema.start_step && step % t.ema.every === 0) ema.update(unet);
      let lossTotal = 0;
      for (const l of losses) lossTotal += await l.item();
      lastLoss = lossTotal / k;
      const gradNorm = norm ? await norm.item() : NaN;
      for (const l of losses) l.dispose();
      norm?.dispose();
      if (!Number.isFinite(lastLoss)) throw new Error(`training diverged at step ${step}: loss is ${lastLoss} (lower the learning rate or enable grad_clip)`);
      logger.step(step, { loss: lastLoss, lr: optimizer.paramGroups[0].lr, ...(norm ? { grad_norm: gradNorm } : {}) });
      opts.onStep?.(step, lastLoss);
      if (step % t.checkpoint_every === 0 || step === endStep) lastCkpt = await checkpoint();
      if (t.sample_every > 0 && step % t.sample_every === 0) await sampleGrid(diffusion, ema, cfg, path.join(opts.outDir, 'samples', `step-${String(step).padStart(8, '0')}.png`), t.sample_count, t.seed);
    }
    if (interrupted && step > 0 && !lastCkpt.endsWith(`step-${String(step).padStart(8, '0')}.safetensors`)) lastCkpt = await checkpoint();
  } finally {
    logger.close({ step });
  }
  let exported: string | null = null;
  if (!interrupted && step >= t.max_steps) {
    exported = path.join(opts.outDir, 'model.safetensors');
    if (ema) ema.swapInto(unet);
    await saveCheckpoint(exported, { config: cfg, model: unet, extraMetadata });
    if (ema) ema.swapInto(unet);
  }
  optimizer.dispose();
  ema?.dispose();
  unet.dispose();
  return { step, checkpoint: lastCkpt, exported, lastLoss, interrupted };
}

function pruneCheckpoints(runDir: string, keepN: number): void {
  const dir = path.join(runDir, 'checkpoints');
  const files = fs.readdirSync(dir).filter((f) => CKPT_RE.test(f)).sort();
  for (const f of files.slice(0, Math.max(0, files.length - keepN))) fs.rmSync(path.join(dir, f), { force: true });
}

/** A grid of samples from the EMA weights (DDIM, 50 steps), written to `file`. */
export async function sampleGrid(diffusion: PixelDiffusion, ema: Ema | null, cfg: Config, file: string, n: number, seed: number): Promise<void> {
  const unet = diffusion.unet;
  if (ema) ema.swapInto(unet);
  unet.eval();
  try {
    const [c, h, w] = diffusion.imageShape;
    const x = await runSampler(diffusion.epsModel(), { shape: [n, c, h, w], sampler: 'ddim', steps: 50, seed, schedule: diffusion.schedule });
    fs.mkdirSync(path.dirname(file), { recursive: true });
    await saveGrid(file, x);
    x.dispose();
  } finally {
    unet.train();
    if (ema) ema.swapInto(unet);
  }
  void cfg;
}
