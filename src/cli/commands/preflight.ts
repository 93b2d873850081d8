// Checks the sampling commands (sample, eval, calibrate) run before they load
// weights or allocate: the model config read from the checkpoint header, the
// memory the run would need against the limit, the step layout of the
// sampler, the output folder. Bad input fails here, in a second, with a
// message naming the flag, instead of after minutes of loading and sampling.
import fs from 'node:fs';
import path from 'node:path';

import { type Config, ConfigError, loadConfig, parseConfig } from '../../config';
import { uniformLayout, uniformLayoutMessage, type DdimDiscretize, type SamplerName } from '../../diffusion/samplers';
import { inspectSafetensors } from '../../io/safetensors';
import { MemoryLimitError, checkRunMemory, estimateRunMemory, memoryLimit } from '../../models/memory';
import { type DeviceSpec, DEVICE_SPECS, type Precision, PRECISIONS, applyPrecision, resolveDevice } from '../../tensor/device';
import type { Device } from '../../tensor/native';
import { CliError } from '../index';

/** The --device option of train, sample, calibrate and eval. */
export const deviceOption = {
  choices: DEVICE_SPECS,
  default: 'cpu' as DeviceSpec,
  describe: "where the model runs: cpu, cuda (an error naming the reason when no GPU works) or auto (cuda when a probe in a child process passes, else cpu; the reason under --verbose and in 'tdq-native info')",
} as const;

/** The --precision option of train, sample, calibrate and eval. */
export const precisionOption = {
  choices: PRECISIONS,
  default: 'fp32' as Precision,
  describe: 'what matmuls and convolutions round their operands to on the GPU (fp32 accumulation): fp32, fp16 or bf16; the CPU computes in fp32 only (anything else is an error there)',
} as const;

/** --device resolved and --precision applied to it (CliError for a precision the device cannot honour); under --verbose the choice and its reason go to stderr. */
export function cliDevice(a: { device?: DeviceSpec; precision?: Precision; verbose: boolean }): Device {
  const device = resolveDevice(a.device ?? 'cpu', a.verbose ? (line) => console.warn(`tdq-native: ${line}`) : undefined);
  try {
    applyPrecision(device, a.precision ?? 'fp32');
  } catch (e) {
    if (e instanceof RangeError) throw new CliError(`--precision ${a.precision}: ${e.message}`);
    throw e;
  }
  return device;
}

/** The --max-memory option, shared by the commands that sample. */
export const maxMemoryOption = {
  type: 'string',
  describe: 'refuse runs estimated to need more memory than this (bytes, or e.g. 8G, 512M; default: $TDQ_MAX_MEMORY, else 80% of RAM)',
} as const;

/**
 * The model config of a checkpoint without reading its weights: --config when given, else the
 * 'config' entry of the safetensors metadata. Undefined when the file cannot be read or carries
 * no config: the loader then reports that itself.
 */
export async function peekModelConfig(ckpt: string, config?: string): Promise<Config | undefined> {
  try {
    if (config) return loadConfig(config).config;
    if (!fs.existsSync(ckpt)) return undefined;
    const header = await inspectSafetensors(ckpt);
    const text = header.metadata?.config;
    return text ? parseConfig(text, `${ckpt} (metadata 'config')`).config : undefined;
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError(e.message);
    return undefined;
  }
}

/** Refuses a run whose estimated memory exceeds the limit (CliError stating both). */
export function checkMemory(what: string, config: Config, batchSize: number, heldImages: number, maxMemory?: string): void {
  const p = config.model.params as { channels: number; image_size: number; unet_config: { target: string; params: unknown } };
  try {
    const limit = memoryLimit(maxMemory);
    checkRunMemory(what, estimateRunMemory({ unet: p.unet_config, sampleShape: [p.channels, p.image_size, p.image_size], batchSize, heldImages }), limit);
  } catch (e) {
    if (e instanceof MemoryLimitError) throw new CliError(e.message);
    throw e;
  }
}

/** A positive safe integer flag, at most `max`. */
export function checkCount(flag: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new CliError(`--${flag} must be a positive integer, got ${String(v)}`);
  if (v > max) throw new CliError(`--${flag} must be at most ${max}, got ${v}`);
  return v;
}

export interface StepFlags {
  sampler: SamplerName;
  /** --custom-steps / --steps as given (undefined: not given). */
  steps?: number;
  /** --eta as given (undefined: not given). */
  eta?: number;
  /** --ddim-discretize as given (undefined: not given). */
  ddimDiscretize?: DdimDiscretize;
  /** The flag name used for steps in messages. */
  stepsFlag: string;
  /** Whether the command has --ddim-discretize (else the messages do not offer it). Default true. */
  layoutFlag?: boolean;
}

/**
 * Validates the sampler flags against the sampler and the model's T: flags a sampler does not
 * use are errors (never silently dropped), steps within [1, T], eta where it applies, and a
 * 'uniform' layout that works. Returns the number of model steps per batch that will run.
 */
export function checkSamplerFlags(f: StepFlags, T: number, warn: (msg: string) => void = (m) => process.stderr.write(`tdq-native: warning: ${m}\n`)): number {
  if (f.eta !== undefined && !(Number.isFinite(f.eta) && f.eta >= 0)) throw new CliError(`--eta must be a finite number >= 0, got ${f.eta}`);
  if (f.sampler === 'ddpm') {
    if (f.steps !== undefined && f.steps !== T) throw new CliError(`--${f.stepsFlag} does not apply to --sampler ddpm, which runs all ${T} steps of the schedule (use --sampler ddim for fewer)`);
    if (f.eta !== undefined) throw new CliError('--eta does not apply to --sampler ddpm (it is ancestral sampling; eta belongs to --sampler ddim)');
    if (f.ddimDiscretize !== undefined) throw new CliError('--ddim-discretize does not apply to --sampler ddpm (only to ddim and plms)');
    return T;
  }
  const steps = f.steps ?? 50;
  if (!Number.isSafeInteger(steps) || steps < 1 || steps > T) throw new CliError(`--${f.stepsFlag} must be an integer in [1, ${T}] for this model's ${T}-step schedule, got ${steps}`);
  if (f.sampler !== 'ddim' && f.eta !== undefined && f.eta !== 0) throw new CliError(`--eta ${f.eta} does not apply to --sampler ${f.sampler}, which is deterministic (eta belongs to --sampler ddim)`);
  if (f.sampler === 'dpmpp') {
    if (f.ddimDiscretize !== undefined) throw new CliError('--ddim-discretize does not apply to --sampler dpmpp (only to ddim and plms)');
    return steps;
  }
  const method = f.ddimDiscretize ?? 'uniform';
  if (method === 'uniform') {
    const u = uniformLayout(steps, T);
    const layouts = f.layoutFlag ?? true;
    if (!u.fits) {
      const msg = uniformLayoutMessage(steps, T);
      throw new CliError(`--${f.stepsFlag} ${steps}: ${layouts ? msg : msg.replace(/; or use ddim_discretize.*$/, '')}`);
    }
    if (u.count !== steps) {
      warn(`--${f.stepsFlag} ${steps}: the 'uniform' layout (LDM's) runs ${u.count} steps, not ${steps}${layouts ? `; --ddim-discretize linspace or trailing runs exactly ${steps}` : ''}`);
      return u.count;
    }
  }
  return steps;
}

/**
 * mkdir -p, one level at a time: fs.mkdirSync(..., { recursive: true }) can loop forever where
 * mkdir fails with ENOENT on an existing parent (e.g. under /proc on Node 20).
 */
function mkdirs(dir: string): void {
  if (fs.existsSync(dir)) return;
  const parent = path.dirname(dir);
  if (parent !== dir) mkdirs(parent);
  try {
    fs.mkdirSync(dir);
  } catch (e) {
    // Another process (a rank of the same `sample --nproc`) made it first.
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || !fs.statSync(dir).isDirectory()) throw e;
  }
}

/** Creates `dir` and writes and removes a probe file in it, so an unwritable --outdir fails before sampling. */
export function probeWritableDir(dir: string, flag: string): void {
  const probe = path.join(dir, `.tdq-native-write-probe-${process.pid}`);
  try {
    mkdirs(path.resolve(dir));
    fs.writeFileSync(probe, 'probe');
    fs.unlinkSync(probe);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CliError(`--${flag} ${dir} is not writable (${err.code ?? err.message}${err.path && err.path !== probe ? `: ${err.path}` : ''}); nothing was sampled`);
  }
}

/**
 * Progress for logs and pipes (stderr not a terminal): one line per batch while there are
 * at most 20 batches, else one per tenth of the run.
 */
export function lineProgress(label: string, totalBatches: number, write: (s: string) => void = (s) => process.stderr.write(s)): (batchesDone: number, imagesDone: number, imagesTotal: number) => void {
  let lastDecile = -1;
  return (b, done, total) => {
    const decile = Math.floor((10 * b) / totalBatches);
    if (totalBatches > 20 && decile === lastDecile && b !== totalBatches) return;
    lastDecile = decile;
    write(`${label}: batch ${b}/${totalBatches}, ${done}/${total} images (${Math.floor((100 * done) / total)}%)\n`);
  };
}
