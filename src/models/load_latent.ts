// The loading seam for latent diffusion models: an upstream-shaped LDM config
// (model.target ldm.models.diffusion.ddpm.LatentDiffusion or tdq-native's
// name) and a checkpoint holding the whole LatentDiffusion state dict (a
// Lightning .ckpt's `state_dict`, or a .safetensors with the same keys):
// model.diffusion_model.*, first_stage_model.*, cond_stage_model.*,
// scale_factor (with scale_by_std), model_ema.* (LitEma, used by default as
// upstream's use_ema) and DDPM's schedule buffers (checked against the config's
// schedule, then dropped). Re-exported by load.ts.
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

import { ConfigError } from '../config/load';
import { type TensorFileEntry, openTensorFile } from '../io/checkpoint_file';
import { applyEma, compareSchedule, splitLdm } from '../io/torch_ckpt/ldm';
import { Generator } from '../tensor/random';
import { type Tensor, releaseMemory } from '../tensor/tensor';
import { StateDictError } from '../nn/module';
import { type NumberProblem, CheckpointValueError, findNumberProblems, refused } from './checks';
import { ClassEmbedder } from './conditioning';
import { isQuantKey, isQuantizedCheckpoint, quantizeModel, type QuantizedModel } from '../quant/quantize_model';
import { quantConfigFromJSON } from '../quant/config';
import type { Denoiser } from './diffusion';
import { type LatentDenoiser, type LatentDiffusion, createLatentDiffusion, resolveFirstStagePath } from './latent';
import { ModelLoadError } from './load';
import { type LatentDiffusionSpec, LATENT_DIFFUSION_TARGETS, parseLatentDiffusionConfig } from './latent_config';


/** Reads a YAML file's top-level mapping; null when it is not a readable mapping. */
function readYaml(file: string): Record<string, unknown> | null {
  try {
    const v: unknown = YAML.parse(fs.readFileSync(file, 'utf8'));
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** Whether a config file's model is a LatentDiffusion (by its model.target; a whole file or the model node). */
export function isLatentDiffusionConfigFile(file: string): boolean {
  const raw = readYaml(file);
  if (!raw) return false;
  const node = (raw.model && typeof raw.model === 'object' ? raw.model : raw) as Record<string, unknown>;
  return (LATENT_DIFFUSION_TARGETS as readonly string[]).includes(node.target as string);
}

export interface LoadLatentModelOptions {
  /** The LDM config (YAML; upstream's --base). Required: upstream checkpoints carry none. */
  config: string;
  /** Use the raw UNet weights even when the checkpoint has model_ema.* (upstream's use_ema: False). */
  noEma?: boolean;
  /** Load non-finite weights instead of refusing the file. */
  allowNonFinite?: boolean;
  /** Where a first_stage_config ckpt_path is resolved when the checkpoint lacks first_stage_model.* (default: the working directory). */
  baseDir?: string;
}

export interface LatentLoadReport {
  /** Whether the UNet took the model_ema.* weights. */
  ema: boolean;
  /** Keys of the model the file did not have (the load fails when any; listed for completeness). */
  missingKeys: string[];
  /** Keys of the file the model does not have (upstream's init_from_ckpt loads with strict=False and lists them too). */
  unexpectedKeys: string[];
  /** Keys read and deliberately not loaded: the schedule buffers (checked), LitEma's decay / num_updates, unused EMA with noEma. */
  ignoredKeys: string[];
  /** Where the first stage's weights came from: the checkpoint, or first_stage_config.params.ckpt_path. */
  firstStageFrom: 'checkpoint' | string;
  problems: NumberProblem[];
  /** The config reader's one-line warning of accepted-and-unread keys, if any. */
  configWarning: string | null;
  /** Whether the UNet is quantized (the checkpoint's metadata has 'quant'). */
  quantized: boolean;
}

/** A ready LatentDiffusion (eval mode) and everything it owns; dispose() frees all of it. */
export class LoadedLatentModel {
  readonly kind = 'latent' as const;
  private disposed = false;
  constructor(
    readonly file: string,
    readonly configFile: string,
    readonly spec: LatentDiffusionSpec,
    readonly model: LatentDiffusion,
    readonly report: LatentLoadReport,
  ) {}

  /** The class embedder's classes (all of them, the unconditional one included); null without a class-label cond stage. */
  get numClasses(): number | null {
    const cs = this.model.condStageModel;
    return cs instanceof ClassEmbedder ? cs.nClasses : null;
  }

  dispose(): void {
    if (!this.disposed) this.model.dispose();
    this.disposed = true;
  }
}

/** The config's `use_ema` (upstream's default True). */
function configUseEma(file: string): boolean {
  const raw = readYaml(file);
  const node = (raw?.model && typeof raw.model === 'object' ? raw.model : raw) as Record<string, unknown> | null;
  const p = node?.params as Record<string, unknown> | undefined;
  return p?.use_ema !== false;
}

async function readFloats(t: Tensor): Promise<Float32Array> {
  return Float32Array.from((await t.data()) as ArrayLike<number>);
}

/** Reads an LDM config and checkpoint into a ready LatentDiffusion. */
export async function loadLatentModel(file: string, opts: LoadLatentModelOptions): Promise<LoadedLatentModel> {
  if (!fs.existsSync(file)) throw new ModelLoadError(file, `checkpoint not found: ${file}`);
  if (!opts.config) throw new ModelLoadError(file, `${file}: a latent diffusion checkpoint needs its config (--base CONFIG.yaml)`);
  const spec = (() => {
    if (!fs.existsSync(opts.config)) throw new ModelLoadError(file, `config not found: ${opts.config}`);
    const raw = readYaml(opts.config);
    if (!raw) throw new ConfigError(opts.config, [{ path: [], message: 'not a YAML mapping' }]);
    return parseLatentDiffusionConfig(raw, opts.config);
  })();
  const loaded = await loadLatentModelFromSpec(file, spec, { ...opts, configLabel: opts.config, useEma: configUseEma(opts.config) });
  return new LoadedLatentModel(file, opts.config, spec, loaded.model, loaded.report);
}

/**
 * Loads a LatentDiffusion state dict whose UNet may be quantized: the UNet's
 * part (model.diffusion_model.*) through the UNet's own loadStateDict (a
 * QuantizedModel creates its optional buffers and refreshes its ranges
 * there), the rest through the model's. Strict: every key on both sides.
 */
export function loadLatentStateDict(model: LatentDiffusion, dict: ReadonlyMap<string, Tensor>, opts: { strict?: boolean } = {}): void {
  const strict = opts.strict ?? true;
  const pre = 'model.diffusion_model.';
  const unet = new Map<string, Tensor>(), rest = new Map<string, Tensor>();
  for (const [k, t] of dict) (k.startsWith(pre) ? unet.set(k.slice(pre.length), t) : rest.set(k, t));
  const r = model.loadStateDict(rest, { strict: false });
  const missing = r.missingKeys.filter((k) => !k.startsWith(pre));
  if (strict && (missing.length || r.unexpectedKeys.length))
    throw new Error(`the LatentDiffusion state dict ${missing.length ? `lacks ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}` : ''}${missing.length && r.unexpectedKeys.length ? ' and ' : ''}${r.unexpectedKeys.length ? `has unexpected keys ${r.unexpectedKeys.slice(0, 5).join(', ')}` : ''}`);
  model.model.diffusionModel.loadStateDict(unet, { strict });
}

export interface LoadFromSpecOptions extends Omit<LoadLatentModelOptions, 'config'> {
  /** Names the config in messages. */
  configLabel: string;
  /** Take the UNet's weights from model_ema.* when the file has them (default true). */
  useEma?: boolean;
  /** A quantized TDQ UNet samples from its step table (default true). */
  useTable?: boolean;
}

/**
 * loadLatentModel with the config already read (training reads its config
 * with --set overrides applied). A quantized checkpoint (metadata 'quant', as
 * calibrate and QAT write) gets a quantized UNet. The model is in eval mode.
 */
export async function loadLatentModelFromSpec(file: string, spec: LatentDiffusionSpec, opts: LoadFromSpecOptions): Promise<{ model: LatentDiffusion; report: LatentLoadReport }> {
  if (!fs.existsSync(file)) throw new ModelLoadError(file, `checkpoint not found: ${file}`);
  const cfgName = opts.configLabel;
  // The file's tensors are listed first and read one at a time into the
  // model's parameters (each freed once copied): the weights are held once.
  const src = await openTensorFile(file);
  const tensors: ReadonlyMap<string, TensorFileEntry> = src.entries;
  const metadata = src.metadata;
  let model: LatentDiffusion | undefined;
  try {
    const problems: NumberProblem[] = [];
    // Every tensor read is checked for NaN / Inf before it is used.
    const checkNumbers = (read: Map<string, Tensor>) => {
      problems.push(...findNumberProblems(read));
      if (refused(problems).length && !opts.allowNonFinite) throw new CheckpointValueError(file, refused(problems));
    };
    const parts = splitLdm(tensors);
    if (!parts.unet.size)
      throw new ModelLoadError(file, `${file} has no model.diffusion_model.* weights: not a LatentDiffusion checkpoint (keys start: ${[...tensors.keys()].slice(0, 5).join(', ') || 'none'})`);
    const hasFirstStage = parts.firstStage.size > 0;
    if (!hasFirstStage && !spec.firstStageCkptPath)
      throw new ModelLoadError(file, `${file} has no first_stage_model.* weights and ${cfgName} sets no first_stage_config.params.ckpt_path`);
    ({ model } = await createLatentDiffusion(spec, { gen: new Generator(0), baseDir: opts.baseDir, loadFirstStage: !hasFirstStage }));
    // A quantized UNet (calibrate, or QAT): the quantizers' structure first, their state comes with the weights.
    let qm: QuantizedModel | null = null;
    if (isQuantizedCheckpoint(metadata)) {
      const T = Number(metadata.quant_timesteps);
      if (!Number.isInteger(T) || T < 1) throw new ModelLoadError(file, `${file}: metadata 'quant_timesteps' must be a positive integer, got ${JSON.stringify(metadata.quant_timesteps)}`);
      qm = quantizeModel(model.model.diffusionModel as unknown as Denoiser, quantConfigFromJSON(metadata.quant), { timesteps: T, gen: new Generator(0) });
      model.model.replaceDiffusionModel(qm as unknown as LatentDenoiser);
    }

    // The schedule buffers must be the config's schedule: a checkpoint trained with another one samples wrongly.
    const ignoredKeys: string[] = [];
    if (parts.schedule.size) {
      const got = new Map<string, Float32Array>();
      for (const k of parts.schedule.keys()) {
        const t = await src.read(k);
        try {
          checkNumbers(new Map([[k, t]]));
          got.set(k, await readFloats(t));
        } finally {
          t.dispose();
        }
      }
      const bad = compareSchedule(got, model.schedule.betas, { rtol: 1e-4, atol: 1e-6 });
      if (bad.length) {
        const b = bad[0];
        throw new ModelLoadError(file, `${file}: its schedule buffer '${b.name}' ${b.index < 0 ? `has ${b.got} entries, the config's schedule ${b.want}` : `is ${b.got} at t=${b.index}, the config's schedule gives ${b.want}`}: ${cfgName} does not describe this checkpoint (timesteps, beta_schedule, linear_start, linear_end)`);
      }
      ignoredKeys.push(...parts.schedule.keys());
    }

    // EMA as upstream's use_ema: the UNet's parameters from model_ema.*.
    let dict: Map<string, TensorFileEntry> = new Map(tensors);
    let ema = false;
    const useEma = !opts.noEma && (opts.useEma ?? true) && parts.ema.size > 0;
    if (useEma) {
      const r = applyEma(tensors, file);
      if (r.missing.length)
        throw new ModelLoadError(file, `${file}: model_ema.* has no average for ${r.missing.length} UNet weight(s) (${r.missing.slice(0, 3).join(', ')}${r.missing.length > 3 ? ', ...' : ''}); load with noEma (--no-ema) to use the raw weights`);
      dict = r.stateDict;
      ema = true;
      ignoredKeys.push(...r.unused);
      if (r.decay) ignoredKeys.push('model_ema.decay');
      if (r.numUpdates) ignoredKeys.push('model_ema.num_updates');
    } else {
      for (const k of [...dict.keys()]) if (k.startsWith('model_ema.')) (dict.delete(k), ignoredKeys.push(k));
    }
    for (const k of parts.schedule.keys()) dict.delete(k);
    // Without scale_by_std upstream's scale_factor is a number from the config, not state.
    if (!spec.scaleByStd && dict.has('scale_factor')) (dict.delete('scale_factor'), ignoredKeys.push('scale_factor'));

    const own = model.stateDict();
    // Without first_stage_model.* the first stage already holds ckpt_path's weights.
    const missingKeys = [...own.keys()].filter((k) => !dict.has(k) && (hasFirstStage || !k.startsWith('first_stage_model.')));
    // A quantized UNet creates its optional buffers (TDQ table, calibration statistics) when it loads them.
    const optionalQuant = (k: string) => qm !== null && k.startsWith('model.diffusion_model.') && isQuantKey(k.slice('model.diffusion_model.'.length));
    const unexpectedKeys = [...dict.keys()].filter((k) => !own.has(k) && !optionalQuant(k));
    if (missingKeys.length)
      throw new ModelLoadError(file, `${file}: the model of ${cfgName} needs ${missingKeys.length} weight(s) the checkpoint lacks: ${missingKeys.slice(0, 8).join(', ')}${missingKeys.length > 8 ? ', ...' : ''}`);
    for (const k of unexpectedKeys) dict.delete(k);
    try {
      if (qm) {
        // A quantized UNet creates its optional quantizer buffers as it loads them (not in stateDict() before):
        // read whole, through the UNet's own loadStateDict. Quantized models are the small ones.
        const all = new Map<string, Tensor>();
        try {
          for (const [k, e] of dict) all.set(k, await src.read(e.name));
          checkNumbers(all);
          loadLatentStateDict(model, all, { strict: hasFirstStage });
        } finally {
          for (const t of all.values()) t.dispose();
        }
      } else await loadStreamed(model, dict, src.read.bind(src), checkNumbers);
    } catch (e) {
      if (e instanceof CheckpointValueError) throw e;
      throw new ModelLoadError(file, `${file}: the weights do not fit the model of ${cfgName}: ${(e as Error).message}`, { cause: e });
    }
    model.eval();
    if (qm && qm.config.useDynamic && (opts.useTable ?? true)) {
      if (ema || !qm.hasTable) qm.buildTable();
      qm.useTable(true);
    }
    const report: LatentLoadReport = {
      ema, missingKeys, unexpectedKeys, ignoredKeys, problems, configWarning: spec.warning, quantized: qm !== null,
      firstStageFrom: hasFirstStage ? 'checkpoint' : resolveFirstStagePath(spec.firstStageCkptPath!, opts.baseDir),
    };
    const loaded = { model, report };
    model = undefined;
    return loaded;
  } catch (e) {
    model?.dispose();
    if (e instanceof ModelLoadError || e instanceof CheckpointValueError || e instanceof ConfigError) throw e;
    throw new ModelLoadError(file, `${file}: ${(e as Error).message}`, { cause: e });
  } finally {
    await src.close();
  }
}

/** Tensors read per loadStateDict call: bounds what is held besides the model. */
const LOAD_BATCH_BYTES = 4 << 20;

/**
 * Copies the file's tensors into the model's (every key of `dict` is one of
 * the model's), a batch of at most LOAD_BATCH_BYTES at a time, each freed once
 * copied. Shapes and dtypes are checked against the model before anything
 * is read.
 */
async function loadStreamed(
  model: LatentDiffusion,
  dict: ReadonlyMap<string, TensorFileEntry>,
  read: (name: string) => Promise<Tensor>,
  checkNumbers: (read: Map<string, Tensor>) => void,
): Promise<void> {
  const own = model.stateDict();
  const mismatches: StateDictError['mismatches'] = [];
  const typeErrors: string[] = [];
  for (const [k, e] of dict) {
    const dst = own.get(k)!;
    if (e.shape.join() !== dst.shape.join()) mismatches.push({ key: k, expected: dst.shape, got: e.shape });
    else if (e.dtype !== dst.dtype && !(FLOATS.has(e.dtype) && FLOATS.has(dst.dtype))) typeErrors.push(`${k}: expected dtype ${dst.dtype}, got ${e.dtype}`);
  }
  if (typeErrors.length) throw new TypeError(`error(s) loading the state dict of ${model.constructor.name}:\n  ${typeErrors.join('\n  ')}`);
  if (mismatches.length) throw new StateDictError(model.constructor.name, [], [], mismatches);
  const batch = new Map<string, Tensor>(), byFileKey = new Map<string, Tensor>();
  let bytes = 0;
  const flush = async () => {
    try {
      checkNumbers(byFileKey);
      model.loadStateDict(batch, { strict: false });
    } finally {
      for (const t of batch.values()) t.dispose(); // a queued copy keeps its source until it has run
      batch.clear();
      byFileKey.clear();
      bytes = 0;
    }
    // The copies (and, at first, the model's random init) run on the engine's
    // thread: wait for them, or reading ahead piles up batches in memory; and
    // give the freed read buffers back (the engine caches freed buffers for
    // reuse by size, and the file's many sizes would add up).
    await releaseMemory();
  };
  try {
    for (const [k, e] of dict) {
      const t = await read(e.name);
      batch.set(k, t);
      byFileKey.set(e.name, t);
      bytes += e.bytes;
      if (bytes >= LOAD_BATCH_BYTES) await flush();
    }
    await flush();
  } finally {
    for (const t of batch.values()) t.dispose();
  }
}

const FLOATS = new Set(['float32', 'float16']);
