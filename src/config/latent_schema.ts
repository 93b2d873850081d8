// The model section of upstream-shaped latent-diffusion configs, for the
// config reader (src/config/load.ts): model.target
// ldm.models.diffusion.ddpm.LatentDiffusion (or tdq-native's name for it) and
// the keyword arguments of upstream's LatentDiffusion and DDPM __init__ as
// params. Keys that change the model act as upstream; keys that only matter
// to upstream's Lightning training or logging are listed (the reader warns);
// values tdq-native cannot run are issues naming the key, which the reader
// reports with the file, line and key path. src/models/latent_config.ts maps
// the validated node to the model's options.
import { z } from 'zod';

import { type AutoencoderSpec, parseAutoencoderConfig } from '../models/autoencoder/config';
import { condStageTargets } from '../models/latent';
import { ConfigError, type ConfigPath } from './load';
import { UNetParamsSchema } from './schema';

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
export type LatentParams = z.output<typeof ParamsSchema>;

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

/** A validated model node: what src/models/latent_config.ts maps to LatentDiffusion's options. */
export interface LatentModelNode {
  target: string;
  base_learning_rate?: number;
  params: LatentParams;
  unet: { target: string; params: LdmUNetParams };
  firstStage: AutoencoderSpec;
  firstStageCkptPath?: string;
  /** null: __is_unconditional__. */
  condStage: { target: string; params: Record<string, unknown> } | null;
  /** After upstream's rules: null for an unconditional model. */
  conditioningKey: ConditioningKey;
  /** Keys accepted and not read, relative to the file's top level (data, training, lightning) or to the node (params.monitor). */
  ignored: string[];
}

interface Issue {
  path: ConfigPath;
  message: string;
}

/** A failed check: stops the node's validation at its first issue, as upstream's asserts do. */
class NodeIssues extends Error {
  constructor(readonly issues: Issue[]) {
    super(issues.map((i) => i.message).join('; '));
  }
}

function zodIssues(err: z.ZodError, prefix: ConfigPath): Issue[] {
  return err.issues.map((i) => {
    const path = [...prefix, ...i.path.filter((k): k is string | number => typeof k !== 'symbol')];
    const key = String(path[path.length - 1]);
    let message = i.code === 'unrecognized_keys' ? `unknown key(s) ${i.keys.join(', ')}` : i.message;
    if (WHY_UNSUPPORTED[key] && i.code !== 'unrecognized_keys') message = `${WHY_UNSUPPORTED[key]} (${message})`;
    return { path, message };
  });
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function checkNode(raw: unknown): LatentModelNode {
  const fail = (path: ConfigPath, message: string): never => {
    throw new NodeIssues([{ path, message }]);
  };
  const parse = <S extends z.ZodType>(schema: S, value: unknown, prefix: ConfigPath): z.output<S> => {
    const r = schema.safeParse(value);
    if (!r.success) throw new NodeIssues(zodIssues(r.error, prefix));
    return r.data;
  };
  const ignored: string[] = [];
  let node: unknown = raw;
  let prefix: ConfigPath = [];
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
  const pp: ConfigPath = [...prefix, 'params'];
  const p = parse(ParamsSchema, node.params ?? {}, pp);
  for (const k of IGNORED) if (p[k] !== undefined && p[k] !== null) ignored.push(`params.${k}`);
  // The data section gives the images: upstream's batch key is never looked up.
  const given = isObj(node.params) ? node.params : {};
  if (given.first_stage_key !== undefined) ignored.push('params.first_stage_key');
  if (p.beta_schedule === 'sqrt') fail([...pp, 'beta_schedule'], "beta_schedule 'sqrt' is not implemented (use linear, sqrt_linear or cosine)");

  // unet_config
  if (p.unet_config === undefined) fail([...pp, 'unet_config'], 'required');
  const unet = parse(UNetNode, p.unet_config, [...pp, 'unet_config']);
  if (unet.params.use_fp16 !== undefined) ignored.push('params.unet_config.params.use_fp16');

  // first_stage_config
  if (p.first_stage_config === undefined) fail([...pp, 'first_stage_config'], 'required');
  const fsRaw = p.first_stage_config;
  let firstStageCkptPath: string | undefined;
  if (isObj(fsRaw) && isObj(fsRaw.params) && typeof fsRaw.params.ckpt_path === 'string') firstStageCkptPath = fsRaw.params.ckpt_path;
  let firstStage: AutoencoderSpec;
  try {
    firstStage = parseAutoencoderConfig(fsRaw);
  } catch (e) {
    if (e instanceof ConfigError) throw new NodeIssues(e.issues.map((i) => ({ path: [...pp, 'first_stage_config', ...i.path], message: i.message })));
    throw e;
  }
  if (firstStage.kind === 'vq') fail([...pp, 'first_stage_config', 'target'], 'LatentDiffusion takes a VQModelInterface (ldm.models.autoencoder.VQModelInterface) as its VQ first stage, not VQModel');

  // cond_stage_config and the conditioning key, as upstream's __init__
  if (p.cond_stage_config === undefined) fail([...pp, 'cond_stage_config'], "required ('__is_unconditional__' or {target, params})");
  let conditioningKey: string | null = p.conditioning_key ?? null;
  if (conditioningKey === null) conditioningKey = p.concat_mode ? 'concat' : 'crossattn';
  let condStage: LatentModelNode['condStage'] = null;
  const cs = p.cond_stage_config;
  if (cs === '__is_unconditional__') {
    conditioningKey = null;
    if (p.cond_stage_trainable) fail([...pp, 'cond_stage_trainable'], 'an unconditional model (__is_unconditional__) has no trainable cond stage (upstream asserts this)');
  } else if (cs === '__is_first_stage__') {
    fail([...pp, 'cond_stage_config'], "'__is_first_stage__' (the first stage as cond stage) is not implemented");
  } else {
    const c = parse(CondStageNode, cs, [...pp, 'cond_stage_config']);
    const known = condStageTargets();
    if (!known.includes(c.target)) fail([...pp, 'cond_stage_config', 'target'], `cond stage '${c.target}' is not implemented (implemented: ${known.join(', ') || 'none'}; or '__is_unconditional__')`);
    condStage = { target: c.target, params: c.params ?? {} };
  }
  if (conditioningKey !== null && conditioningKey !== 'crossattn') {
    const how = p.conditioning_key == null ? ' (upstream picks it when conditioning_key is unset and concat_mode is true; set conditioning_key: crossattn)' : '';
    fail([...pp, 'conditioning_key'], `conditioning_key '${conditioningKey}' is not implemented${how}: only crossattn and unconditional (null) models run`);
  }
  const u = unet.params;
  if (conditioningKey === 'crossattn' && !u.use_spatial_transformer)
    fail([...pp, 'unet_config', 'params', 'use_spatial_transformer'], 'conditioning_key crossattn needs a UNet with cross-attention (use_spatial_transformer: true and context_dim)');
  if (u.use_spatial_transformer && u.context_dim == null)
    fail([...pp, 'unet_config', 'params', 'context_dim'], 'use_spatial_transformer needs context_dim (the width of the cross-attention context)');

  // Shapes that upstream would only find at run time.
  if (u.in_channels !== firstStage.embedDim)
    fail([...pp, 'unet_config', 'params', 'in_channels'], `must equal first_stage_config.params.embed_dim (${firstStage.embedDim}), the latents' channels; got ${u.in_channels}`);
  if (u.out_channels !== firstStage.embedDim)
    fail([...pp, 'unet_config', 'params', 'out_channels'], `must equal first_stage_config.params.embed_dim (${firstStage.embedDim}); got ${u.out_channels}`);
  if (p.scale_by_std && p.scale_factor !== 1)
    fail([...pp, 'scale_factor'], `scale_by_std sets the scale factor from the data; scale_factor must stay 1 (upstream asserts this), got ${p.scale_factor}`);

  // Read only for conditional training (the data's class labels); an unconditional model has no conditioning input.
  if (conditioningKey === null && given.cond_stage_key !== undefined) ignored.push('params.cond_stage_key');

  return {
    target: node.target as string, base_learning_rate: lr as number | undefined, params: p, unet, firstStage, firstStageCkptPath, condStage,
    conditioningKey: conditioningKey as ConditioningKey, ignored,
  };
}

/**
 * A whole LDM file (model with data / lightning / training, these not read) or
 * just the model node {target, params, base_learning_rate?}: validated as
 * upstream's LatentDiffusion would take it. As the `model` of a file the
 * reader validates (training), the node alone.
 */
export const LatentDiffusionSchema = z.unknown().transform((raw, ctx): LatentModelNode => {
  try {
    return checkNode(raw);
  } catch (e) {
    if (!(e instanceof NodeIssues)) throw e;
    for (const i of e.issues) ctx.addIssue({ code: 'custom', path: i.path, message: i.message, input: raw });
    return z.NEVER;
  }
});
