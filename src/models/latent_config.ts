// A strict reader of upstream-shaped latent-diffusion configs: a whole file
// (model / data / lightning) or just the model node, with model.target
// ldm.models.diffusion.ddpm.LatentDiffusion (or tdq-native's name for it) and
// the keyword arguments of upstream's LatentDiffusion and DDPM __init__ as
// params. Keys that change the model act as upstream; keys that only matter
// to upstream's Lightning training or logging are listed in one warning;
// values tdq-native cannot run are errors naming the key. A file's data,
// lightning and training sections are accepted and not read (this reader
// builds the model only). Kept apart from
// src/config/schema.ts (the training config): the loader calls
// parseLatentDiffusionConfig / loadLatentDiffusionConfig.
import fs from 'node:fs';
import YAML from 'yaml';
import { z } from 'zod';

import { ConfigError, type ConfigIssue, loadTrainSections } from '../config/load';
import { type Config, FASHION_MNIST_TARGET, LSUN_TARGET, UNetParamsSchema, dataNumClasses } from '../config/schema';
import { type AutoencoderSpec, parseAutoencoderConfig } from './autoencoder/config';
import { condStageTargets } from './latent';

export const LATENT_DIFFUSION_TARGETS = ['ldm.models.diffusion.ddpm.LatentDiffusion', 'tdq_native.models.diffusion.LatentDiffusion'] as const;
export const LDM_UNET_TARGETS = ['ldm.modules.diffusionmodules.openaimodel.UNetModel', 'tdq_native.models.unet.UNetModel'] as const;

const posInt = z.int().min(1);
const unit = z.number().gt(0).lt(1);

/**
 * The UNet's params: the project's UNetModel keys plus the spatial-transformer
 * keys of upstream's UNetModel (cross-attention to a context). Whether the
 * UNet built can honour them is checked when the model is built.
 */
export const LdmUNetParamsSchema = UNetParamsSchema.extend({
  use_spatial_transformer: z.boolean().default(false),
  transformer_depth: posInt.default(1),
  context_dim: posInt.nullable().default(null),
  legacy: z.boolean().default(true),
  n_embed: z.null().optional(),
  use_fp16: z.boolean().optional(),
});
export type LdmUNetParams = z.output<typeof LdmUNetParamsSchema>;

const UNetNode = z.strictObject({
  target: z.enum(LDM_UNET_TARGETS),
  params: LdmUNetParamsSchema.superRefine((u, ctx) => {
    // upstream's UNetModel asserts these
    if (u.num_heads === -1 && u.num_head_channels === -1) ctx.addIssue({ code: 'custom', path: ['num_heads'], message: 'either num_heads or num_head_channels must be set' });
    if (u.out_channels !== u.in_channels) ctx.addIssue({ code: 'custom', path: ['out_channels'], message: `must equal in_channels (${u.in_channels}): learned variances are not supported` });
  }),
});

const CondStageNode = z.strictObject({ target: z.string().min(1), params: z.record(z.string(), z.unknown()).optional() });

/** Upstream's LatentDiffusion + DDPM keyword arguments. */
const ParamsSchema = z.strictObject({
  // DDPM
  unet_config: z.unknown(),
  timesteps: posInt.min(2).default(1000),
  beta_schedule: z.enum(['linear', 'cosine', 'sqrt_linear', 'sqrt']).default('linear'),
  loss_type: z.enum(['l1', 'l2']).default('l2'),
  ckpt_path: z.string().nullable().optional(),
  ignore_keys: z.array(z.string()).optional(),
  load_only_unet: z.boolean().optional(),
  monitor: z.string().nullable().optional(),
  use_ema: z.boolean().optional(),
  first_stage_key: z.string().min(1).default('image'),
  image_size: posInt.default(256),
  channels: posInt.default(3),
  log_every_t: posInt.optional(),
  clip_denoised: z.boolean().optional(),
  linear_start: unit.default(1e-4),
  linear_end: unit.default(2e-2),
  cosine_s: z.number().gt(0).default(8e-3),
  given_betas: z.null().optional(),
  original_elbo_weight: z.literal(0).default(0),
  v_posterior: z.literal(0).default(0),
  l_simple_weight: z.number().default(1),
  conditioning_key: z.string().nullable().optional(),
  parameterization: z.enum(['eps', 'x0']).default('eps'),
  scheduler_config: z.unknown().optional(),
  use_positional_encodings: z.literal(false).optional(),
  learn_logvar: z.literal(false).default(false),
  logvar_init: z.number().default(0),
  // LatentDiffusion
  first_stage_config: z.unknown(),
  cond_stage_config: z.unknown(),
  num_timesteps_cond: z.literal(1).nullable().optional(),
  cond_stage_key: z.string().min(1).default('image'),
  cond_stage_trainable: z.boolean().default(false),
  concat_mode: z.boolean().default(true),
  cond_stage_forward: z.null().optional(),
  scale_factor: z.number().gt(0).default(1),
  scale_by_std: z.boolean().default(false),
});

/** Read by upstream only for Lightning training, logging or its own checkpoint loading. */
const IGNORED = ['ckpt_path', 'ignore_keys', 'load_only_unet', 'monitor', 'use_ema', 'log_every_t', 'clip_denoised', 'scheduler_config'] as const;

const WHY_UNSUPPORTED: Record<string, string> = {
  original_elbo_weight: 'the VLB term (original_elbo_weight != 0) is not implemented; use 0',
  v_posterior: 'v_posterior != 0 is not implemented; use 0',
  learn_logvar: 'a learned per-timestep logvar (learn_logvar: true) is not implemented',
  given_betas: 'given_betas is not implemented; use beta_schedule',
  use_positional_encodings: 'positional encodings are not implemented',
  num_timesteps_cond: 'a shortened conditioning schedule (num_timesteps_cond > 1) is not implemented',
  cond_stage_forward: 'cond_stage_forward is not implemented (the cond stage is called by encode or forward)',
};

export type ConditioningKey = null | 'crossattn';

export interface LatentDiffusionSpec {
  target: string;
  baseLearningRate?: number;
  timesteps: number;
  betaSchedule: 'linear' | 'cosine' | 'sqrt_linear';
  linearStart: number;
  linearEnd: number;
  cosineS: number;
  lossType: 'l1' | 'l2';
  parameterization: 'eps' | 'x0';
  lSimpleWeight: number;
  /** upstream's fixed logvar (learn_logvar false): loss = l_simple_weight * mean(loss_t / exp(logvar_init) + logvar_init). */
  logvarInit: number;
  firstStageKey: string;
  condStageKey: string;
  imageSize: number;
  channels: number;
  condStageTrainable: boolean;
  /** After upstream's rules: null for an unconditional model. */
  conditioningKey: ConditioningKey;
  scaleFactor: number;
  scaleByStd: boolean;
  unetTarget: string;
  unet: LdmUNetParams;
  firstStage: AutoencoderSpec;
  /** first_stage_config.params.ckpt_path: weights loaded when the model is built with a base directory. */
  firstStageCkptPath?: string;
  /** null: __is_unconditional__. */
  condStage: { target: string; params: Record<string, unknown> } | null;
  /** The keys accepted and not read, in one line (null when none). */
  warning: string | null;
  /** What the first-stage reader accepted without using. */
  notes: string[];
}

type Path = (string | number)[];

function zodIssues(err: z.ZodError, prefix: Path): ConfigIssue[] {
  return err.issues.map((i) => {
    const path = [...prefix, ...i.path.filter((k): k is string | number => typeof k !== 'symbol')];
    const key = String(path[path.length - 1]);
    let message = i.code === 'unrecognized_keys' ? `unknown key(s) ${i.keys.join(', ')}` : i.message;
    if (WHY_UNSUPPORTED[key] && i.code !== 'unrecognized_keys') message = `${WHY_UNSUPPORTED[key]} (${message})`;
    return { path, message };
  });
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Validates a parsed LDM config (a whole file with `model:` or the model node
 * {target, params, base_learning_rate?}) and returns what LatentDiffusion
 * takes. Throws ConfigError naming `file` and the key path.
 */
export function parseLatentDiffusionConfig(raw: unknown, file = '(latent diffusion config)'): LatentDiffusionSpec {
  const fail = (path: Path, message: string): never => {
    throw new ConfigError(file, [{ path, message }]);
  };
  const ignored: string[] = [];
  let node: unknown = raw;
  let prefix: Path = [];
  if (isObj(raw) && 'model' in raw) {
    for (const k of Object.keys(raw)) {
      if (k === 'model') continue;
      if (k === 'data' || k === 'lightning' || k === 'training') ignored.push(k);
      else fail([k], `unknown key ${k} (expected model, data, lightning, training)`);
    }
    node = raw.model;
    prefix = ['model'];
  }
  if (!isObj(node)) return fail(prefix, 'expected a mapping with target and params');
  for (const k of Object.keys(node))
    if (!['target', 'params', 'base_learning_rate'].includes(k)) fail([...prefix, k], `unknown key ${k} (expected target, params, base_learning_rate)`);
  if (!(LATENT_DIFFUSION_TARGETS as readonly string[]).includes(node.target as string))
    fail([...prefix, 'target'], `expected ${LATENT_DIFFUSION_TARGETS.join(' or ')}, got ${JSON.stringify(node.target)}`);
  const lr = node.base_learning_rate;
  if (lr !== undefined && !(typeof lr === 'number' && lr > 0)) fail([...prefix, 'base_learning_rate'], `must be a positive number, got ${JSON.stringify(lr)}`);
  const pp: Path = [...prefix, 'params'];
  const r = ParamsSchema.safeParse(node.params ?? {});
  if (!r.success) throw new ConfigError(file, zodIssues(r.error, pp));
  const p = r.data;
  for (const k of IGNORED) if ((p as Record<string, unknown>)[k] !== undefined && (p as Record<string, unknown>)[k] !== null) ignored.push(`params.${k}`);
  if (p.beta_schedule === 'sqrt') fail([...pp, 'beta_schedule'], "beta_schedule 'sqrt' is not implemented (use linear, sqrt_linear or cosine)");

  // unet_config
  if (p.unet_config === undefined) fail([...pp, 'unet_config'], 'required');
  const u = UNetNode.safeParse(p.unet_config);
  if (!u.success) throw new ConfigError(file, zodIssues(u.error, [...pp, 'unet_config']));
  const unet = u.data.params;
  if (unet.use_fp16 !== undefined) ignored.push('params.unet_config.params.use_fp16');

  // first_stage_config
  if (p.first_stage_config === undefined) fail([...pp, 'first_stage_config'], 'required');
  const fsRaw = p.first_stage_config;
  let firstStageCkptPath: string | undefined;
  if (isObj(fsRaw) && isObj(fsRaw.params) && typeof fsRaw.params.ckpt_path === 'string') firstStageCkptPath = fsRaw.params.ckpt_path;
  let firstStage: AutoencoderSpec;
  try {
    firstStage = parseAutoencoderConfig(fsRaw, file);
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(file, e.issues.map((i) => ({ ...i, path: [...pp, 'first_stage_config', ...i.path] })));
    throw e;
  }
  if (firstStage.kind === 'vq') fail([...pp, 'first_stage_config', 'target'], 'LatentDiffusion takes a VQModelInterface (ldm.models.autoencoder.VQModelInterface) as its VQ first stage, not VQModel');
  const notes = firstStage.notes.filter((n) => !n.endsWith('params.ckpt_path: ignored')).map((n) => `first_stage_config.${n}`);

  // cond_stage_config and the conditioning key, as upstream's __init__
  if (p.cond_stage_config === undefined) fail([...pp, 'cond_stage_config'], "required ('__is_unconditional__' or {target, params})");
  let conditioningKey: string | null = p.conditioning_key ?? null;
  if (conditioningKey === null) conditioningKey = p.concat_mode ? 'concat' : 'crossattn';
  let condStage: LatentDiffusionSpec['condStage'] = null;
  const cs = p.cond_stage_config;
  if (cs === '__is_unconditional__') {
    conditioningKey = null;
    if (p.cond_stage_trainable) fail([...pp, 'cond_stage_trainable'], 'an unconditional model (__is_unconditional__) has no trainable cond stage (upstream asserts this)');
  } else if (cs === '__is_first_stage__') {
    fail([...pp, 'cond_stage_config'], "'__is_first_stage__' (the first stage as cond stage) is not implemented");
  } else {
    const c = CondStageNode.safeParse(cs);
    if (!c.success) throw new ConfigError(file, zodIssues(c.error, [...pp, 'cond_stage_config']));
    const known = condStageTargets();
    if (!known.includes(c.data.target))
      fail([...pp, 'cond_stage_config', 'target'], `cond stage '${c.data.target}' is not implemented (implemented: ${known.join(', ') || 'none'}; or '__is_unconditional__')`);
    condStage = { target: c.data.target, params: c.data.params ?? {} };
  }
  if (conditioningKey !== null && conditioningKey !== 'crossattn') {
    const how = p.conditioning_key == null ? ' (upstream picks it when conditioning_key is unset and concat_mode is true; set conditioning_key: crossattn)' : '';
    fail([...pp, 'conditioning_key'], `conditioning_key '${conditioningKey}' is not implemented${how}: only crossattn and unconditional (null) models run`);
  }
  if (conditioningKey === 'crossattn' && !unet.use_spatial_transformer)
    fail([...pp, 'unet_config', 'params', 'use_spatial_transformer'], 'conditioning_key crossattn needs a UNet with cross-attention (use_spatial_transformer: true and context_dim)');
  if (unet.use_spatial_transformer && unet.context_dim == null)
    fail([...pp, 'unet_config', 'params', 'context_dim'], 'use_spatial_transformer needs context_dim (the width of the cross-attention context)');

  // Shapes that upstream would only find at run time.
  if (unet.in_channels !== firstStage.embedDim)
    fail([...pp, 'unet_config', 'params', 'in_channels'], `must equal first_stage_config.params.embed_dim (${firstStage.embedDim}), the latents' channels; got ${unet.in_channels}`);
  if (unet.out_channels !== firstStage.embedDim)
    fail([...pp, 'unet_config', 'params', 'out_channels'], `must equal first_stage_config.params.embed_dim (${firstStage.embedDim}); got ${unet.out_channels}`);
  if (p.scale_by_std && p.scale_factor !== 1)
    fail([...pp, 'scale_factor'], `scale_by_std sets the scale factor from the data; scale_factor must stay 1 (upstream asserts this), got ${p.scale_factor}`);

  return {
    target: node.target as string,
    baseLearningRate: lr as number | undefined,
    timesteps: p.timesteps,
    betaSchedule: p.beta_schedule as LatentDiffusionSpec['betaSchedule'],
    linearStart: p.linear_start,
    linearEnd: p.linear_end,
    cosineS: p.cosine_s,
    lossType: p.loss_type,
    parameterization: p.parameterization,
    lSimpleWeight: p.l_simple_weight,
    logvarInit: p.logvar_init,
    firstStageKey: p.first_stage_key,
    condStageKey: p.cond_stage_key,
    imageSize: p.image_size,
    channels: p.channels,
    condStageTrainable: p.cond_stage_trainable,
    conditioningKey: conditioningKey as ConditioningKey,
    scaleFactor: p.scale_factor,
    scaleByStd: p.scale_by_std,
    unetTarget: u.data.target,
    unet,
    firstStage,
    firstStageCkptPath,
    condStage,
    warning: ignored.length ? `${file}: accepted and not read by the latent-diffusion model reader: ${ignored.join(', ')}` : null,
    notes,
  };
}

/** Reads and validates a YAML file (see parseLatentDiffusionConfig). */
export function loadLatentDiffusionConfig(file: string): LatentDiffusionSpec {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [{ path: [], message: `cannot read the file: ${(e as Error).message}` }]);
  }
  const doc = YAML.parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length) throw new ConfigError(file, doc.errors.map((e) => ({ path: [], message: `YAML: ${e.message}` })));
  return parseLatentDiffusionConfig(doc.toJS(), file);
}

// ---- Training an LDM -------------------------------------------------------------

/**
 * What `train` needs of an LDM config: the model (this reader) and the data
 * and training sections (src/config/load.ts, the same reader and upstream
 * mapping as pixel configs; there is no third one).
 */
export interface LatentTrainConfig {
  kind: 'latent';
  file: string;
  spec: LatentDiffusionSpec;
  /** The model section after overrides (stored in checkpoints' metadata). */
  model: Record<string, unknown>;
  /** The learning rate before scale_lr. */
  baseLearningRate: number;
  data: Config['data'];
  training: Config['training'];
  warnings: string[];
}

/**
 * Reads an LDM config for training: --set overrides apply to every section.
 * training.scale_lr defaults to true, as upstream main.py's --scale_lr (the
 * rate is base_learning_rate x batch_size x accumulate_grad_batches) unless
 * the file or an override sets it.
 */
export function loadLatentTrainConfig(file: string, opts: { overrides?: readonly string[] } = {}): LatentTrainConfig {
  const sec = loadTrainSections(file, { overrides: opts.overrides });
  const spec = parseLatentDiffusionConfig(sec.raw, file);
  const fail = (path: Path, message: string): never => {
    throw new ConfigError(file, [{ path, message }]);
  };
  if (spec.baseLearningRate === undefined) fail(['model', 'base_learning_rate'], 'required for training (upstream: the rate before scale_lr)');
  const rawTraining = sec.raw.training as Record<string, unknown> | undefined;
  const training = { ...sec.training, scale_lr: rawTraining?.scale_lr === undefined ? true : sec.training.scale_lr };
  // The images the data gives must be the first stage's input.
  const dd = spec.firstStage.ddconfig as { in_channels: number; resolution: number };
  const d = sec.data;
  if (d.target === FASHION_MNIST_TARGET && dd.in_channels !== 1)
    fail(['data', 'target'], `Fashion-MNIST images have 1 channel but the first stage takes ${dd.in_channels}`);
  if (d.target === LSUN_TARGET) {
    if (dd.in_channels !== 3) fail(['data', 'target'], `LSUN images are RGB but the first stage takes ${dd.in_channels} channels`);
    if (d.params.size !== dd.resolution) fail(['data', 'params', 'size'], `must equal the first stage's resolution ${dd.resolution}`);
  }
  if (spec.conditioningKey !== null && spec.condStageKey !== 'class_label')
    fail(['model', 'params', 'cond_stage_key'], `training conditions on the data's class labels only (cond_stage_key: class_label), got '${spec.condStageKey}'`);
  if (spec.conditioningKey !== null && dataNumClasses(d) === 0)
    fail(['data', 'target'], `the model is class-conditional (cond_stage_key class_label) but ${d.target} gives no labels`);
  const warnings = [...sec.warnings, ...(spec.warning ? [spec.warning] : [])];
  return { kind: 'latent', file, spec, model: sec.raw.model as Record<string, unknown>, baseLearningRate: spec.baseLearningRate!, data: d, training, warnings };
}
