// The one path from a checkpoint file (and a config) to a ready model: read
// the file (by extension, io/checkpoint_file.ts), check its numbers
// (checks.ts), pick the config (the file's metadata or a given one), build the
// UNet, wrap it in the quantized model when the file holds quantizer state,
// load the weights (EMA preferred), and hand back one object that owns it all.
import fs from 'node:fs';

import { type Config, loadConfig, parseConfig } from '../config';
import { describeConfig, quantConfigFromJSON } from '../quant/config';
import { type QuantizedModel, isQuantizedCheckpoint, loadQuantized } from '../quant/quantize_model';
import { Generator } from '../tensor/random';
import type { Tensor } from '../tensor/tensor';
import { type CheckpointContents, loadCheckpoint } from '../train/checkpoint';
import { type NumberProblem, CheckpointValueError, findNumberProblems, refused } from './checks';
import { type Denoiser, buildUNet } from './diffusion';
import { isLatentDiffusionConfigFile } from './load_latent';

/** A checkpoint cannot be made into a model: missing, no config, wrong kind, or weights that do not fit. */
export class ModelLoadError extends Error {
  constructor(readonly file: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ModelLoadError';
  }
}

export interface OpenCheckpointOptions {
  /** Load non-finite weights and bad quantizer steps instead of throwing CheckpointValueError (for inspection). */
  allowNonFinite?: boolean;
}

/** A checkpoint's parts, checked; dispose() frees every tensor. */
export interface OpenedCheckpoint extends CheckpointContents {
  readonly file: string;
  /** The bad numbers found: learned steps <= 0 ('floored', never refused), and what allowNonFinite let through. */
  readonly problems: NumberProblem[];
  dispose(): void;
}

function allTensors(ck: CheckpointContents): Map<string, Tensor> {
  const all = new Map<string, Tensor>();
  for (const [k, t] of ck.model) all.set(`model.${k}`, t);
  if (ck.ema) for (const [k, t] of ck.ema) all.set(`ema.${k}`, t);
  if (ck.optimizer) for (const [k, p] of ck.optimizer.params) all.set(`optimizer.${k}.exp_avg`, p.expAvg).set(`optimizer.${k}.exp_avg_sq`, p.expAvgSq);
  return all;
}

/** Reads and checks a checkpoint file (model, EMA, optimizer state, metadata). */
export async function openCheckpoint(file: string, opts: OpenCheckpointOptions = {}): Promise<OpenedCheckpoint> {
  if (!fs.existsSync(file)) throw new ModelLoadError(file, `checkpoint not found: ${file}`);
  const ck = await loadCheckpoint(file);
  const all = allTensors(ck);
  const dispose = () => {
    for (const t of all.values()) t.dispose();
  };
  try {
    const problems = findNumberProblems(all);
    if (refused(problems).length && !opts.allowNonFinite) throw new CheckpointValueError(file, refused(problems));
    return { ...ck, file, problems, dispose };
  } catch (e) {
    dispose();
    throw e;
  }
}

export interface LoadModelOptions extends OpenCheckpointOptions {
  /** The model's config: a YAML file or a parsed config; default: the checkpoint's metadata ('config'). */
  config?: string | Config;
  /** Use the raw weights even when the checkpoint has EMA weights. */
  noEma?: boolean;
  /** 'float' rejects a quantized checkpoint (default 'any'). */
  expect?: 'any' | 'float';
  /** Quantized TDQ models sample from the step table (default true). */
  useTable?: boolean;
}

/** What the load found besides the weights it used. */
export interface LoadReport {
  /** Whether the EMA weights were loaded. */
  ema: boolean;
  /** Keys of the model absent from the file, and keys of the file the model does not have (both empty: loads are strict). */
  missingKeys: string[];
  unexpectedKeys: string[];
  /** Learned steps <= 0 (floored in forward), and bad numbers let through by allowNonFinite. */
  problems: NumberProblem[];
}

/** A ready model and everything it owns; dispose() frees all of it. */
export class LoadedModel {
  private disposed = false;
  constructor(
    readonly file: string,
    readonly config: Config,
    /** The denoiser: the quantized wrapper for a quantized checkpoint. */
    readonly model: Denoiser,
    readonly quantized: QuantizedModel | null,
    readonly metadata: Record<string, string>,
    readonly report: LoadReport,
  ) {}

  dispose(): void {
    if (!this.disposed) this.model.dispose();
    this.disposed = true;
  }
}

function pickConfig(file: string, given: LoadModelOptions['config'], metadata: Record<string, string>): Config {
  if (typeof given === 'string' && isLatentDiffusionConfigFile(given))
    throw new ModelLoadError(file, `${given} describes a latent diffusion model (LatentDiffusion): load it with loadLatentModel(${JSON.stringify(file)}, { config: ${JSON.stringify(given)} })`);
  if (typeof given === 'string') return loadConfig(given).config;
  if (given) return given;
  if (metadata.config) return parseConfig(metadata.config, `${file} (metadata 'config')`).config;
  throw new ModelLoadError(file, `${file} carries no config in its metadata: pass the model's YAML config with --config`);
}

/** Reads `file` into a ready model (eval mode). */
export async function loadModel(file: string, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  const ck = await openCheckpoint(file, opts);
  try {
    const quantized = isQuantizedCheckpoint(ck.metadata);
    if (quantized && opts.expect === 'float')
      throw new ModelLoadError(file, `${file} is already quantized (${describeConfig(quantConfigFromJSON(ck.metadata.quant))}); a full-precision checkpoint is needed`);
    const config = pickConfig(file, opts.config, ck.metadata);
    const ema = !opts.noEma && ck.ema ? ck.ema : null;
    const unet = buildUNet(config.model.params.unet_config, new Generator(0));
    let model: Denoiser = unet, qm: QuantizedModel | null = null;
    let result;
    try {
      // A quantized checkpoint samples through its per-timestep step table.
      if (quantized) model = qm = loadQuantized(unet, ck.metadata, ck.model, ema, { useTable: opts.useTable });
      else result = unet.loadStateDict(ema ?? ck.model, { strict: true });
    } catch (e) {
      unet.dispose();
      throw new ModelLoadError(file, `${file}: the weights do not fit the model of its config: ${(e as Error).message}`, { cause: e });
    }
    model.eval();
    const report: LoadReport = { ema: !!ema, missingKeys: result?.missingKeys ?? [], unexpectedKeys: result?.unexpectedKeys ?? [], problems: ck.problems };
    return new LoadedModel(file, config, model, qm, ck.metadata, report);
  } finally {
    ck.dispose();
  }
}

// Latent diffusion models (an LDM config + a whole LatentDiffusion checkpoint): the same seam.
export { type LatentLoadReport, type LoadLatentModelOptions, LoadedLatentModel, isLatentDiffusionConfigFile, loadLatentModel } from './load_latent';
