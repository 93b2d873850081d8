// Reading first-stage configs in the shapes CompVis publishes them:
// configs/autoencoder/autoencoder_kl_*.yaml and
// models/first_stage_models/*/config.yaml (a file with model/data/lightning
// sections), or just the {target, params} node (a first_stage_config). Strict:
// an unknown key is an error naming its path. Keys that only matter to
// upstream's training (lossconfig, monitor, ...) are accepted and reported in
// `notes`, never silently used. Not yet wired into src/config/schema.ts.
import fs from 'node:fs';
import YAML from 'yaml';
import { z } from 'zod';

import { ConfigError, type ConfigIssue } from '../../config/load';
import { Generator } from '../../tensor/random';
import { AutoencoderKL } from './kl';
import type { DDConfig } from './model';
import { VQModel, VQModelInterface } from './vq';

export const AUTOENCODER_TARGETS = {
  kl: ['ldm.models.autoencoder.AutoencoderKL', 'tdq_native.models.autoencoder.AutoencoderKL'],
  vq: ['ldm.models.autoencoder.VQModel', 'tdq_native.models.autoencoder.VQModel'],
  'vq-interface': ['ldm.models.autoencoder.VQModelInterface', 'tdq_native.models.autoencoder.VQModelInterface'],
} as const;

export type AutoencoderKind = keyof typeof AUTOENCODER_TARGETS;

const posInt = z.int().min(1);

export const DDConfigSchema = z
  .strictObject({
    double_z: z.boolean().default(true),
    z_channels: posInt,
    resolution: posInt,
    in_channels: posInt,
    out_ch: posInt,
    ch: posInt,
    ch_mult: z.array(posInt).min(1),
    num_res_blocks: posInt,
    attn_resolutions: z.array(posInt),
    dropout: z.number().min(0).lt(1).default(0),
    resamp_with_conv: z.boolean().default(true),
    attn_type: z.enum(['vanilla', 'none', 'linear']).default('vanilla'),
    use_linear_attn: z.boolean().default(false),
    give_pre_end: z.boolean().default(false),
    tanh_out: z.boolean().default(false),
    /** tdq-native's extension (upstream hard-codes 32). */
    norm_num_groups: posInt.default(32),
  })
  .superRefine((d, ctx) => {
    if (d.attn_type === 'linear' || d.use_linear_attn)
      ctx.addIssue({ code: 'custom', path: [d.use_linear_attn ? 'use_linear_attn' : 'attn_type'], message: 'linear attention (LinAttnBlock) is not supported; use attn_type vanilla or none' });
    for (const m of [1, ...d.ch_mult])
      if ((d.ch * m) % d.norm_num_groups !== 0) {
        ctx.addIssue({ code: 'custom', path: ['ch'], message: `${d.ch * m} channels (ch ${d.ch} x ${m}) are not divisible into ${d.norm_num_groups} GroupNorm groups (norm_num_groups)` });
        break;
      }
  });

const lossConfig = z.strictObject({ target: z.string(), params: z.record(z.string(), z.unknown()).optional() });

/** Accepted, not used by the model (upstream training or logging options). */
const IGNORED_PARAMS = ['lossconfig', 'monitor', 'image_key', 'ignore_keys', 'colorize_nlabels', 'batch_resize_range', 'scheduler_config', 'lr_g_factor', 'use_ema', 'ckpt_path'] as const;

const commonParams = {
  ddconfig: DDConfigSchema,
  embed_dim: posInt,
  lossconfig: lossConfig.optional(),
  ckpt_path: z.string().min(1).optional(),
  ignore_keys: z.array(z.string()).optional(),
  image_key: z.string().optional(),
  colorize_nlabels: z.int().nullable().optional(),
  monitor: z.string().optional(),
};

const vqParams = {
  ...commonParams,
  n_embed: posInt,
  remap: z.unknown().optional(),
  sane_index_shape: z.boolean().default(false),
  batch_resize_range: z.unknown().optional(),
  scheduler_config: z.unknown().optional(),
  lr_g_factor: z.number().optional(),
  use_ema: z.boolean().optional(),
};

function noRemap(p: { remap?: unknown }, ctx: z.RefinementCtx): void {
  if (p.remap !== undefined && p.remap !== null)
    ctx.addIssue({ code: 'custom', path: ['remap'], message: 'remapping codebook indices (remap) is not supported; leave it unset' });
}

const node = <T extends z.ZodType>(targets: readonly string[], params: T) =>
  z.strictObject({ target: z.enum(targets as unknown as [string, ...string[]]), params });

/** The {target, params} node of each kind (the target picks the schema, so errors name the right keys). */
export const AutoencoderNodeSchemas = {
  kl: node(AUTOENCODER_TARGETS.kl, z.strictObject(commonParams).superRefine((p, ctx) => {
    if (!p.ddconfig.double_z) ctx.addIssue({ code: 'custom', path: ['ddconfig', 'double_z'], message: 'AutoencoderKL needs double_z: true' });
  })),
  vq: node(AUTOENCODER_TARGETS.vq, z.strictObject(vqParams).superRefine(noRemap)),
  'vq-interface': node(AUTOENCODER_TARGETS['vq-interface'], z.strictObject(vqParams).superRefine(noRemap)),
} as const;

/** A whole CompVis autoencoder config file; data and lightning are accepted and ignored. */
const FileSchema = z.strictObject({
  model: z.looseObject({ base_learning_rate: z.number().optional(), target: z.string(), params: z.unknown() }),
  data: z.unknown().optional(),
  lightning: z.unknown().optional(),
  /** Read by `train` (src/train/subject_ae.ts), not by this reader. */
  training: z.unknown().optional(),
});

export interface AutoencoderSpec {
  kind: AutoencoderKind;
  target: string;
  ddconfig: DDConfig;
  embedDim: number;
  /** VQ only. */
  nEmbed?: number;
  saneIndexShape?: boolean;
  /** What was accepted but is not used, one line each. */
  notes: string[];
}

function kindOf(target: string): AutoencoderKind | undefined {
  for (const [k, names] of Object.entries(AUTOENCODER_TARGETS)) if ((names as readonly string[]).includes(target)) return k as AutoencoderKind;
  return undefined;
}

function issuesOf(err: z.ZodError, prefix: (string | number)[]): ConfigIssue[] {
  return err.issues.map((i) => ({
    path: [...prefix, ...i.path.filter((k): k is string | number => typeof k !== 'symbol')],
    message: i.code === 'unrecognized_keys' ? `unknown key(s) ${i.keys.join(', ')}` : i.message,
  }));
}

/**
 * Validates a parsed config (a whole file with `model:` or the
 * {target, params} node) and returns what the model constructors take.
 * Throws ConfigError naming `file` and the key path.
 */
export function parseAutoencoderConfig(raw: unknown, file = '(autoencoder config)'): AutoencoderSpec {
  const notes: string[] = [];
  let nodeRaw: unknown = raw;
  let prefix: (string | number)[] = [];
  if (raw && typeof raw === 'object' && 'model' in raw) {
    const f = FileSchema.safeParse(raw);
    if (!f.success) throw new ConfigError(file, issuesOf(f.error, []));
    if (f.data.data !== undefined) notes.push('data: ignored (the autoencoder config reader builds the model only)');
    if (f.data.lightning !== undefined) notes.push('lightning: ignored');
    if (f.data.training !== undefined) notes.push('training: ignored (read by train)');
    if (f.data.model.base_learning_rate !== undefined) notes.push('model.base_learning_rate: ignored (set the learning rate in the trainer)');
    const { base_learning_rate: _lr, ...rest } = f.data.model;
    nodeRaw = rest;
    prefix = ['model'];
  }
  const target = (nodeRaw as { target?: unknown } | null)?.target;
  if (typeof target !== 'string' || !kindOf(target)) {
    const all = Object.values(AUTOENCODER_TARGETS).flat().join(', ');
    throw new ConfigError(file, [{ path: [...prefix, 'target'], message: `expected one of ${all}, got ${JSON.stringify(target)}` }]);
  }
  const kind = kindOf(target)!;
  const r = AutoencoderNodeSchemas[kind].safeParse(nodeRaw);
  if (!r.success) throw new ConfigError(file, issuesOf(r.error, prefix));
  const p = r.data.params as z.infer<z.ZodObject<typeof vqParams>> & { n_embed?: number };
  for (const k of IGNORED_PARAMS)
    if ((p as Record<string, unknown>)[k] !== undefined) {
      const what = k === 'lossconfig' ? `ignored: the upstream loss (${p.lossconfig?.target}) is not built; train with AutoencoderKLLoss (no LPIPS, no discriminator)` : 'ignored';
      notes.push(`${[...prefix, 'params', k].join('.')}: ${what}`);
    }
  const { use_linear_attn: _ula, attn_type, ...dd } = p.ddconfig;
  const ddconfig: DDConfig = { ...dd, attn_type: attn_type as 'vanilla' | 'none' };
  const spec: AutoencoderSpec = { kind, target: r.data.target, ddconfig, embedDim: p.embed_dim, notes };
  if (kind !== 'kl') {
    spec.nEmbed = p.n_embed;
    spec.saneIndexShape = p.sane_index_shape;
  }
  return spec;
}

/** Reads and validates a YAML file (see parseAutoencoderConfig). */
export function loadAutoencoderConfig(file: string): AutoencoderSpec {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [{ path: [], message: `cannot read the file: ${(e as Error).message}` }]);
  }
  const doc = YAML.parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length) throw new ConfigError(file, doc.errors.map((e) => ({ path: [], message: `YAML: ${e.message}` })));
  return parseAutoencoderConfig(doc.toJS(), file);
}

export type Autoencoder = AutoencoderKL | VQModel | VQModelInterface;

/** The model a spec describes, with fresh weights (load a checkpoint with loadFirstStageStateDict). */
export function buildAutoencoder(spec: AutoencoderSpec, gen: Generator = new Generator(0)): Autoencoder {
  if (spec.kind === 'kl') return new AutoencoderKL({ ddconfig: spec.ddconfig, embed_dim: spec.embedDim }, gen);
  const cfg = { ddconfig: spec.ddconfig, embed_dim: spec.embedDim, n_embed: spec.nEmbed!, sane_index_shape: spec.saneIndexShape };
  return spec.kind === 'vq' ? new VQModel(cfg, gen) : new VQModelInterface(cfg, gen);
}
