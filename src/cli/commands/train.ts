// `tdq-native train`: full-precision training from a YAML config, or
// quantization-aware training (--n-bit-w / --n-bit-a / --use-dynamic) from a
// full-precision checkpoint. A fresh run gets its own folder
// (<logdir>/<timestamp>_<config name>, or <logdir>/<--name>) and refuses one
// that holds files; --resume continues a run folder exactly. SIGINT (Ctrl-C)
// and SIGTERM stop after the current step, write a checkpoint and exit
// 130 / 143.
import os from 'node:os';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';

import fs from 'node:fs';

import { type Config, loadConfig } from '../../config';
import { LATENT_DIFFUSION_TARGETS, loadLatentTrainConfig } from '../../models/latent_config';
import { isLatentDiffusionConfigFile } from '../../models/load_latent';
import { isAutoencoderTarget, loadAutoencoderTrainConfig } from '../../train/subject_ae';
import YAML from 'yaml';

/** Whether a config's model.target is an AutoencoderKL (trained by the same loop; see src/train/subject_ae.ts). */
function isAutoencoderConfigFile(file: string): boolean {
  try {
    const raw = YAML.parse(fs.readFileSync(file, 'utf8')) as { model?: { target?: unknown } } | null;
    return isAutoencoderTarget(raw?.model?.target);
  } catch {
    return false;
  }
}
import { inspectSafetensors } from '../../io/safetensors';
import { scheduleFromConfig } from '../../models/diffusion';
import { isQuantizedCheckpoint, qatPrepare, quantConfigFromJSON, resolveQuantConfig, type QuantConfig } from '../../quant';
import type { StepMethod } from '../../quant/step_search';
import { TDQ_INITS, type TdqInit } from '../../quant/calibrate';
import { loadModel } from '../../models/load';
import type { DeviceSpec, Precision } from '../../tensor/device';
import { cliDevice, deviceOption, precisionOption } from './preflight';
import { checkDistillWeight } from '../../train/distill';
import { BAD_DATA_POLICIES, type BadDataPolicy } from '../../train/bad_data';
import { NAN_POLICIES, type NanPolicy } from '../../train/nonfinite';
import { RunFolderBusyError, RunFolderExistsError, assertFreshRunFolder, runFolderOfCheckpoint, timestampedRunDir } from '../../train/run_dir';
import { broadcastString } from '../../train/distributed';
import { latestCheckpoint, train, type TrainOptions } from '../../train/trainer';
import { describeDrift, runSettingOverrides, storedPart, storedRunConfig } from './train_resume';
import { type TrainLaunchArgs, bucketMbArg, rankOrLaunch, trainLaunchOptions } from '../launch';
import { type GlobalArgs, CliError, CliExit } from '../index';

export interface TrainArgs extends GlobalArgs, TrainLaunchArgs {
  device: DeviceSpec;
  precision: Precision;
  base: string;
  ckpt?: string;
  resume?: string;
  name?: string;
  maxSteps?: number;
  batchSize?: number;
  lr?: number;
  seed?: number;
  logdir: string;
  dataDir?: string;
  set: string[];
  nBitW?: number;
  nBitA?: number;
  useDynamic: boolean;
  staticMethod: 'lsq' | 'pact';
  quantLr?: number;
  tdqLr?: number;
  tdqInit: TdqInit;
  distill: boolean;
  distillWeight?: number;
  calibSamples: number;
  calibSteps: number;
  calibMethod: StepMethod;
  weightsFormat: 'int' | 'float';
  onBadData: BadDataPolicy;
  onNan: NanPolicy;
  maxNanSkips: number;
  firstStage?: string;
  scaleLr?: string;
}

export const trainCommand: CommandModule<GlobalArgs, TrainArgs> = {
  command: 'train',
  describe: 'train a diffusion model from a YAML config',
  builder: (y) =>
    y
      .option('base', { alias: 'b', type: 'string', demandOption: true, describe: 'YAML config (see configs/)' })
      .option('ckpt', { type: 'string', describe: 'start from these weights (e.g. a full-precision model for QAT)' })
      .option('device', deviceOption)
      .option('precision', precisionOption)
      .option('resume', { alias: 'r', type: 'string', describe: 'continue a run: its folder or a checkpoint file' })
      .option('name', { alias: 'n', type: 'string', describe: 'run name (folder under --logdir, which must not hold a run yet); default: <timestamp>_<config file name>' })
      .option('max-steps', { alias: 'max_steps', type: 'number', describe: 'overrides training.max_steps' })
      .option('batch-size', { alias: 'batch_size', type: 'number', describe: 'overrides training.batch_size' })
      .option('lr', { type: 'number', describe: 'overrides model.base_learning_rate (QAT default: 2e-4)' })
      .option('seed', { type: 'number', describe: 'overrides training.seed' })
      .option('logdir', { alias: 'l', type: 'string', default: 'runs', describe: 'parent folder of run folders' })
      .option('data-dir', { alias: 'data_dir', type: 'string', describe: 'dataset folder (Fashion-MNIST idx files or PNG root)' })
      .option('set', { type: 'string', array: true, default: [], describe: 'config override key.path=value (repeatable)' })
      .option('n-bit-w', { alias: 'n_bit_w', type: 'number', describe: 'QAT: weight bits (2-8); needs --ckpt with full-precision weights' })
      .option('n-bit-a', { alias: 'n_bit_a', type: 'number', describe: 'QAT: activation bits (2-8)' })
      .option('use-dynamic', { alias: 'use_dynamic', type: 'boolean', default: false, describe: 'QAT: TDQ (step sizes from the timestep) instead of static steps' })
      .option('static-method', { choices: ['lsq', 'pact'] as const, default: 'lsq' as const, describe: 'QAT: the static activation quantizer' })
      .option('quant-lr', { type: 'number', describe: 'QAT: learning rate of the quantizer steps (weight steps, static activation steps, PACT bounds; default: the base rate / 10, as the authors)' })
      .option('tdq-lr', { type: 'number', describe: 'QAT: learning rate of the TDQ MLPs (default: the base rate, as the authors)' })
      .option('tdq-init', { choices: TDQ_INITS, default: 'constant' as TdqInit, describe: "QAT: TDQ MLPs start exactly at the static step for every t ('constant': last bias softplus^-1(step), last weights zeroed), the authors' way ('bias': last bias only, random last weights), or fitted to the calibrated per-timestep steps ('fit')" })
      .option('distill', { type: 'boolean', default: false, describe: "QAT: learn the --ckpt model's noise prediction on the same noisy input (MSE), instead of (or mixed with, --distill-weight) the diffusion loss" })
      .option('distill-weight', { type: 'number', describe: 'QAT with --distill: the distillation share w of the loss, w x distill + (1 - w) x diffusion (default 1)' })
      .option('calib-samples', { type: 'number', default: 16, describe: 'QAT: calibration trajectories that initialise the quantizers' })
      .option('calib-steps', { type: 'number', default: 50, describe: 'QAT: DDIM steps of each calibration trajectory' })
      .option('weights-format', { alias: 'weights_format', choices: ['int', 'float'] as const, default: 'int' as const, describe: 'QAT: the final model.safetensors stores int8/int4 weight levels or float32 weights (training checkpoints keep float)' })
      .option('calib-method', { choices: ['stats', 'auto', 'mse', 'minmax', 'percentile'] as const, default: 'stats' as const, describe: "QAT: how the initial step sizes come from the calibration statistics: 'stats' (the authors': (mean + 3 std) / qmax signed, (mean + 16 std) / qmax unsigned) or as calibrate --method" })
      .option('on-bad-data', { choices: BAD_DATA_POLICIES, default: 'stop' as BadDataPolicy, describe: 'a sample whose file cannot be read: stop (checkpoint, then exit naming the file) or skip it (counted, listed in <run>/skipped.jsonl)' })
      .option('on-nan', { choices: NAN_POLICIES, default: 'stop' as NanPolicy, describe: 'a NaN/Inf loss or gradient: stop (checkpoint of the last good state, then exit naming the step and layer) or skip the batch (no optimizer step; counted and listed)' })
      .option('max-nan-skips', { type: 'number', default: 10, describe: 'with --on-nan skip: stop (with a checkpoint) once this many steps in a row were non-finite' })
      .option('first-stage', { alias: 'first_stage', type: 'string', describe: 'latent models: the first stage\'s weights (.safetensors / .ckpt), instead of first_stage_config.params.ckpt_path' })
      .option('scale-lr', { alias: 'scale_lr', type: 'string', describe: 'True / False: the learning rate is base_learning_rate x batch_size x accumulate_grad_batches (upstream main.py; the default for LDM configs) or base_learning_rate as is' })
      .options(trainLaunchOptions('data-parallel ranks: runs this command under mpirun -np N (training.batch_size is the global batch, split between the ranks)'))
      .example('$0 train --base configs/fmnist-small.yaml --max-steps 2000', 'train the small Fashion-MNIST model in runs/<timestamp>_fmnist-small')
      .example('$0 train --base configs/fmnist-small.yaml --resume runs/2026-01-31T09-00-00_fmnist-small', 'continue an interrupted run exactly')
      .example('$0 train --base configs/fmnist-small.yaml --ckpt models/fmnist-small.safetensors --n-bit-w 4 --n-bit-a 4 --use-dynamic --max-steps 500 --name w4a4-tdq', 'quantization-aware training with TDQ')
      .example('$0 train --base configs/fmnist-ldm.yaml --first-stage models/first_stage_models/fmnist-kl-f4/model.safetensors --scale_lr False --max-steps 20000 --batch-size 64', 'train a latent diffusion model (upstream LDM config) on a trained first stage')
      .example('$0 train --base configs/fmnist-kl-f4.yaml --max-steps 6000 --batch-size 32 --scale_lr False --lr 1e-3', 'train the KL autoencoder (first stage) of an LDM')
      .example('$0 train --base configs/fmnist-small.yaml --nproc 2', 'data-parallel on 2 ranks (mpirun -np 2 ... works too)')
      .example('$0 train --base configs/fmnist-small.yaml --set training.batch_size=32 --set model.params.unet_config.params.dropout=0', 'override config keys') as unknown as Argv<TrainArgs>,
  handler: async (a) => {
    const bucketMb = bucketMbArg(a);
    const comm = await rankOrLaunch(a);
    if (!comm) return; // the ranks ran under mpirun
    if (comm.rank > 0) console.log = () => {}; // rank 0 speaks for the run
    const overrides = [...a.set];
    if (a.maxSteps !== undefined) overrides.push(`training.max_steps=${a.maxSteps}`);
    if (a.batchSize !== undefined) overrides.push(`training.batch_size=${a.batchSize}`);
    if (a.lr !== undefined) overrides.push(`model.base_learning_rate=${a.lr}`);
    if (a.seed !== undefined) overrides.push(`training.seed=${a.seed}`);
    if (a.scaleLr !== undefined) overrides.push(`training.scale_lr=${parseBoolFlag('--scale_lr', a.scaleLr)}`);
    const explicit = [...overrides]; // what this command line sets; QAT defaults go in front of them
    const latent = isLatentDiffusionConfigFile(a.base);
    if (a.firstStage !== undefined && !latent) throw new CliError(`--first-stage: ${a.base} is not a latent diffusion config (model.target ${LATENT_DIFFUSION_TARGETS.join(' or ')})`);
    const qat = await qatPlan(a);
    if (qat) {
      // QAT fine-tunes a trained model: the FP training rate would undo it
      // (measured in bench/results/tdq-table.md). Defaults go first so that
      // --set and --lr still win.
      if (a.lr === undefined) overrides.unshift(`model.base_learning_rate=${QAT_DEFAULTS.lr}`);
      if (!a.set.some((s) => s.startsWith('training.warmup_steps='))) overrides.unshift(`training.warmup_steps=${QAT_DEFAULTS.warmupSteps}`);
    }
    const ae = !latent && isAutoencoderConfigFile(a.base);
    if (ae && qat) throw new CliError('QAT applies to diffusion models; an autoencoder trains in full precision');
    const load = (ov: readonly string[]) =>
      latent
        ? ((c) => ({ config: c, warnings: c.warnings }))(loadLatentTrainConfig(a.base, { overrides: ov }))
        : ae
          ? ((c) => ({ config: c, warnings: c.warnings }))(loadAutoencoderTrainConfig(a.base, { overrides: ov }))
          : loadConfig(a.base, { overrides: ov });
    let { config, warnings } = load(overrides);
    if (a.resume && a.ckpt) throw new CliError('--resume and --ckpt exclude each other: --resume continues a run, --ckpt starts one from weights');
    if (a.resume) ({ config, warnings } = await keepRunSettings(a.resume, { config, warnings }, overrides, explicit, load));
    for (const w of warnings) console.warn(`tdq-native: ${w}`);
    // Rank 0 names the run folder (a timestamp differs between processes).
    const outDir = await broadcastString(comm, comm.rank === 0 ? runFolder(a, config.training.out_dir) : '');
    const prepare = qat ? qatHook(a, qat, config, outDir, comm.rank === 0) : undefined;
    const abort = new AbortController();
    const signals = stopOnSignals(abort);
    try {
      const device = cliDevice(a);
      console.log(`tdq-native: training ${path.basename(outDir)} -> ${outDir}`);
      const r = await train({ device, config, outDir, resume: a.resume, initCheckpoint: a.ckpt, firstStage: a.firstStage, dataDir: a.dataDir, signal: abort.signal, prepare, onBadData: a.onBadData, onNan: a.onNan, maxNanSkips: a.maxNanSkips, comm, bucketMb });
      console.log(`tdq-native: ${r.interrupted ? 'stopped' : 'finished'} at step ${r.step}${Number.isFinite(r.lastLoss) ? `, loss ${r.lastLoss.toFixed(5)}` : ''}; checkpoint ${r.checkpoint}${r.exported ? `; model ${r.exported}` : ''}`);
      if (r.interrupted) {
        console.log(`tdq-native: continue with --resume ${outDir}`);
        throw new CliExit(signals.exitCode ?? 130);
      }
    } catch (e) {
      if (e instanceof RunFolderExistsError || e instanceof RunFolderBusyError) throw new CliError(e.message);
      throw e;
    } finally {
      signals.dispose();
    }
  },
};

/**
 * --resume: the settings stored in the run's checkpoint win over the YAML for
 * every key this command line does not set (train_resume.ts); each key taken
 * from the run is printed. `overrides` are this command's (defaults, then
 * `explicit`); the config is read again with the run's settings between them.
 */
async function keepRunSettings<C extends { model: unknown; data: unknown; training: unknown }>(
  resume: string, loaded: { config: C; warnings: string[] }, overrides: readonly string[], explicit: readonly string[],
  load: (ov: readonly string[]) => { config: C; warnings: string[] },
): Promise<{ config: C; warnings: string[] }> {
  const isDir = fs.existsSync(resume) && fs.statSync(resume).isDirectory();
  const file = isDir ? latestCheckpoint(resume) : resume;
  if (file === null || !fs.existsSync(file)) return loaded; // the trainer names what is missing
  const run = await storedRunConfig(file);
  if (run === null) return loaded;
  const { overrides: restore, restored, added } = runSettingOverrides(run, storedPart(loaded.config), explicit);
  for (const d of added) console.warn(`tdq-native: --resume: ${d.path} is not in the run's checkpoint; using the config's ${JSON.stringify(d.now)}`);
  if (restore.length === 0) return loaded;
  const defaults = overrides.slice(0, overrides.length - explicit.length);
  let again: { config: C; warnings: string[] };
  try {
    again = load([...defaults, ...restore, ...explicit]);
  } catch (e) {
    throw new CliError(`--resume ${resume}: the run's stored settings (${restored.map(describeDrift).join('; ')}) do not apply to the config: ${(e as Error).message.split('\n')[0]}`);
  }
  console.log(`tdq-native: --resume keeps the run's settings where ${path.basename(file)} differs from the config (set them on the command line to change them):`);
  for (const d of restored) console.log(`  ${describeDrift(d)}`);
  return again;
}

/**
 * The run folder. --resume with a run folder, or with a checkpoint inside one
 * (<run>/checkpoints/step-N.safetensors), continues that folder (a --name
 * naming another folder is an error). Otherwise the run is fresh: the folder
 * is training.out_dir, <logdir>/<--name>, or <logdir>/<%Y-%m-%dT%H-%M-%S>_<config
 * name> as upstream LDM's main.py names runs; it must not hold files yet.
 */
export function runFolder(a: Pick<TrainArgs, 'base' | 'resume' | 'name' | 'logdir'>, outDirFromConfig?: string, now: Date = new Date()): string {
  if (a.resume) {
    const isDir = fs.existsSync(a.resume) && fs.statSync(a.resume).isDirectory();
    const runDir = isDir ? a.resume : runFolderOfCheckpoint(a.resume);
    if (runDir !== null) {
      if (a.name !== undefined && path.resolve(a.logdir, a.name) !== path.resolve(runDir)) {
        throw new CliError(`--resume ${a.resume} continues the run in ${runDir}; --name ${a.name} names another folder (${path.join(a.logdir, a.name)}): leave --name out`);
      }
      return runDir;
    }
  }
  const configName = path.basename(a.base).replace(/\.ya?ml$/, '');
  const dir = outDirFromConfig ?? (a.name !== undefined ? path.join(a.logdir, a.name) : timestampedRunDir(a.logdir, configName, now));
  try {
    assertFreshRunFolder(dir);
  } catch (e) {
    if (e instanceof RunFolderExistsError) throw new CliError(e.message);
    throw e;
  }
  return dir;
}

/**
 * SIGINT and SIGTERM: the first stops training after the current step (the
 * trainer writes a checkpoint); a second one only says that the stop is under
 * way, so it cannot cut the checkpoint short; a third quits at once (atomic
 * writes leave the checkpoints already written intact, and the next start
 * removes the temporary). The exit code is 128 + the first signal's number.
 */
function stopOnSignals(abort: AbortController): { readonly exitCode: number | null; dispose(): void } {
  const names = ['SIGINT', 'SIGTERM'] as const;
  let count = 0;
  let first: NodeJS.Signals | null = null;
  const code = (s: NodeJS.Signals) => 128 + os.constants.signals[s];
  const handler = (sig: NodeJS.Signals) => {
    count += 1;
    if (count === 1) {
      first = sig;
      console.error(`tdq-native: ${sig}: stopping after this step and writing a checkpoint`);
      abort.abort();
    } else if (count === 2) {
      console.error(`tdq-native: ${sig}: already stopping; the checkpoint is being written (send a third signal to quit at once without it)`);
    } else {
      console.error(`tdq-native: ${sig}: quitting at once; the last complete checkpoint stays`);
      process.exit(code(first ?? sig));
    }
  };
  for (const s of names) process.on(s, handler);
  return {
    get exitCode() {
      return first ? code(first) : null;
    },
    dispose() {
      for (const s of names) process.off(s, handler);
    },
  };
}

/**
 * QAT's defaults where the config and the flags are silent: the authors'
 * recipe (their code, ldm/models/diffusion/ddpm.py configure_optimizers, and
 * cifar10-ddpm.yaml): weights and TDQ MLPs at 2e-4, the quantizer steps at a
 * tenth of it, no warm-up. (The earlier defaults, weights 2e-5 and
 * quantizers 2e-4, were chosen on 200-step runs: bench/results/tdq-table.md.)
 */
export const QAT_DEFAULTS = { lr: 2e-4, quantLrFactor: 0.1, tdqLrFactor: 1, warmupSteps: 0 };

/** The run folder's copy of the distillation teacher (the --ckpt weights), so that a resumed run needs nothing outside it. */
export const TEACHER_FILE = 'teacher.safetensors';

interface QatPlan {
  cfg: QuantConfig;
  /** false when resuming: the checkpoint restores every quantizer. */
  calibrate: boolean;
  /** Distillation's weight w, or null without distillation (resuming: the run's own, from its checkpoint). */
  distill: number | null;
  /** Resuming: the quantizer / TDQ MLP rates the run was started with explicitly (--quant-lr, --tdq-lr), from its checkpoint. */
  lrs: { quant?: number; tdq?: number };
}

/**
 * Whether this is a QAT run, and its quantization config: from the flags
 * when starting (the quantizers are calibrated on the --ckpt weights), or
 * from the checkpoint's own config when resuming a QAT run.
 */
async function qatPlan(a: TrainArgs): Promise<QatPlan | null> {
  const wantsQuant = a.nBitW !== undefined || a.nBitA !== undefined || a.useDynamic;
  if (a.resume) {
    const file = fs.existsSync(a.resume) && fs.statSync(a.resume).isDirectory() ? latestCheckpoint(a.resume) : a.resume;
    if (!file) return null;
    const meta = (await inspectSafetensors(file)).metadata ?? {};
    if (isQuantizedCheckpoint(meta)) {
      const distill = meta.distill_weight !== undefined ? Number(meta.distill_weight) : null;
      if ((a.distill || a.distillWeight !== undefined) && (distill === null || (a.distillWeight !== undefined && a.distillWeight !== distill)))
        throw new CliError(`--resume ${a.resume}: that run ${distill === null ? 'trains without distillation' : `distills with weight ${distill}`}; a resumed run keeps its loss (leave --distill / --distill-weight out)`);
      const rate = (k: string) => (meta[k] !== undefined && Number.isFinite(Number(meta[k])) ? Number(meta[k]) : undefined);
      return { cfg: quantConfigFromJSON(meta.quant), calibrate: false, distill, lrs: { quant: rate(QAT_LR_KEYS.quant), tdq: rate(QAT_LR_KEYS.tdq) } };
    }
    if (wantsQuant) throw new CliError(`--resume ${a.resume}: that run is not quantized; start QAT with --ckpt and the --n-bit flags`);
    return null;
  }
  if (!wantsQuant) {
    if (a.distill || a.distillWeight !== undefined) throw new CliError('--distill applies to QAT (--n-bit-w, --n-bit-a)');
    return null;
  }
  if (a.nBitW === undefined || a.nBitA === undefined) throw new CliError('QAT needs both --n-bit-w and --n-bit-a');
  if (a.distillWeight !== undefined && !a.distill) throw new CliError('--distill-weight needs --distill');
  let distill: number | null = null;
  if (a.distill) {
    try {
      distill = checkDistillWeight(a.distillWeight ?? 1);
    } catch (e) {
      throw new CliError(`--distill-weight: ${(e as Error).message}`);
    }
  }
  if (!a.ckpt) throw new CliError('QAT starts from full-precision weights: pass them with --ckpt');
  try {
    return { cfg: resolveQuantConfig({ nBitW: a.nBitW, nBitA: a.nBitA, useDynamic: a.useDynamic, staticMethod: a.staticMethod }), calibrate: true, distill, lrs: {} };
  } catch (e) {
    throw new CliError((e as Error).message);
  }
}

/** The trainer's prepare hook for a QAT run. */
/** Checkpoint metadata keys of the QAT rates given explicitly, so that --resume keeps them. */
const QAT_LR_KEYS = { quant: 'qat_quant_lr', tdq: 'qat_tdq_lr' } as const;

function qatHook(a: TrainArgs, { cfg, calibrate, distill, lrs }: QatPlan, config: TrainOptions['config'], outDir: string, lead: boolean): TrainOptions['prepare'] {
  if ('kind' in config && config.kind === 'autoencoder') throw new CliError('QAT applies to diffusion models');
  const latent = 'kind' in config && config.kind === 'latent';
  const lr = latent ? config.baseLearningRate : (config as Config).model.base_learning_rate;
  // A latent model's schedule (the trainer also passes it, with the latent shape and conditioning).
  const schedule = latent
    ? scheduleFromConfig({ beta_schedule: config.spec.betaSchedule, timesteps: config.spec.timesteps, linear_start: config.spec.linearStart, linear_end: config.spec.linearEnd, cosine_s: config.spec.cosineS })
    : scheduleFromConfig((config as Config).model.params);
  // Explicit rates: this command line's, else those the resumed run was started with.
  const quantGiven = a.quantLr ?? lrs.quant, tdqGiven = a.tdqLr ?? lrs.tdq;
  const quantLr = quantGiven ?? QAT_DEFAULTS.quantLrFactor * lr;
  const tdqLr = tdqGiven ?? QAT_DEFAULTS.tdqLrFactor * lr;
  console.log(`tdq-native: quantization-aware training W${cfg.nBitW}A${cfg.nBitA} ${cfg.useDynamic ? 'TDQ' : `static ${cfg.staticMethod.toUpperCase()}`} -> ${outDir}`);
  console.log(`tdq-native: QAT learning rates: weights ${lr.toExponential(1)}, quantizer steps ${quantLr.toExponential(1)}${cfg.useDynamic ? `, TDQ MLPs ${tdqLr.toExponential(1)}` : ''}; warm-up ${config.training.warmup_steps} steps (--lr, --quant-lr, --tdq-lr, --set training.warmup_steps=N)`);
  if (calibrate) console.log(`tdq-native: QAT initial step sizes: ${a.calibMethod} on ${a.calibSamples} calibration trajectories of ${a.calibSteps} DDIM steps${cfg.useDynamic ? `; TDQ MLPs ${{ constant: 'start at the static step', bias: 'start near the static step (last bias only)', fit: 'fitted to the per-timestep steps' }[a.tdqInit]}` : ''} (--calib-method, --calib-samples, --calib-steps, --tdq-init)`);
  if (distill !== null && latent) throw new CliError('--distill: implemented for pixel models only');
  const prepare = qatPrepare(cfg, {
    schedule,
    nSamples: a.calibSamples,
    steps: a.calibSteps,
    method: a.calibMethod,
    seed: config.training.seed,
    // Functions of the trainer's base rate, which scale_lr may multiply.
    quantLr: quantGiven ?? ((base) => QAT_DEFAULTS.quantLrFactor * base),
    tdqLr: tdqGiven ?? ((base) => QAT_DEFAULTS.tdqLrFactor * base),
    tdqInit: a.tdqInit,
    calibrate,
    weightsFormat: a.weightsFormat,
  });
  const rateMeta: Record<string, string> = {};
  if (quantGiven !== undefined) rateMeta[QAT_LR_KEYS.quant] = String(quantGiven);
  if (tdqGiven !== undefined) rateMeta[QAT_LR_KEYS.tdq] = String(tdqGiven);
  const prepareWithRates = (async (...args: Parameters<typeof prepare>) => {
    const p = await prepare(...args);
    return { ...p, metadata: { ...p.metadata, ...rateMeta } };
  }) as typeof prepare;
  if (distill === null) return prepareWithRates as TrainOptions['prepare'];
  // Distillation: the teacher is the --ckpt weights; a fresh run keeps a copy in its folder for resuming.
  const teacherCopy = path.join(outDir, TEACHER_FILE);
  return (async (unet: Parameters<typeof prepare>[0]) => {
    const source = calibrate ? a.ckpt! : teacherCopy;
    if (!fs.existsSync(source)) throw new CliError(`--resume: the run distills, and its teacher ${teacherCopy} is missing`);
    const teacher = (await loadModel(source, { config: config as Config, expect: 'float' })).model;
    teacher.eval();
    const p = await prepareWithRates(unet);
    if (calibrate && lead) fs.copyFileSync(a.ckpt!, teacherCopy);
    console.log(`tdq-native: QAT distillation teacher: ${source}`);
    return { ...p, metadata: { ...p.metadata, distill_weight: String(distill) }, distill: { teacher, weight: distill } };
  }) as TrainOptions['prepare'];
}

/** A True / False flag as upstream's argparse str2bool reads it (yes/no, true/false, t/f, y/n, 1/0, any case). */
export function parseBoolFlag(flag: string, v: string): boolean {
  const s = String(v).toLowerCase();
  if (['yes', 'true', 't', 'y', '1'].includes(s)) return true;
  if (['no', 'false', 'f', 'n', '0'].includes(s)) return false;
  throw new CliError(`${flag}: expected a boolean (True / False), got ${JSON.stringify(v)}`);
}
