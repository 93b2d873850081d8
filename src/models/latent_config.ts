// Latent-diffusion configs as LatentDiffusion's options. The config reader
// (src/config/load.ts with the model schema of src/config/latent_schema.ts)
// parses and validates the whole file, the model section included, and names
// file:line and key path in its errors; this maps the validated model node to
// a LatentDiffusionSpec, and for training checks what joins the model to the
// data section.
import { ConfigError, type ConfigPath, loadTrainSections, loadWithSchema, validateWithSchema } from '../config/load';
import { type ConditioningKey, type LatentModelNode, type LdmUNetParams, LatentDiffusionSchema } from '../config/latent_schema';
import { type Config, FASHION_MNIST_TARGET, LSUN_TARGET, dataNumClasses } from '../config/schema';
import type { AutoencoderSpec } from './autoencoder/config';

export { type ConditioningKey, LATENT_DIFFUSION_TARGETS, LDM_UNET_TARGETS, type LdmUNetParams, LdmUNetParamsSchema } from '../config/latent_schema';

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

/** The spec of a validated model node; `file` names it in the warning. */
function toSpec(n: LatentModelNode, file: string): LatentDiffusionSpec {
  const p = n.params;
  return {
    target: n.target,
    baseLearningRate: n.base_learning_rate,
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
    conditioningKey: n.conditioningKey,
    scaleFactor: p.scale_factor,
    scaleByStd: p.scale_by_std,
    unetTarget: n.unet.target,
    unet: n.unet.params,
    firstStage: n.firstStage,
    firstStageCkptPath: n.firstStageCkptPath,
    condStage: n.condStage,
    warning: n.ignored.length ? `${file}: accepted and not read by the latent-diffusion model reader: ${n.ignored.join(', ')}` : null,
    notes: n.firstStage.notes.filter((x) => !x.endsWith('params.ckpt_path: ignored')).map((x) => `first_stage_config.${x}`),
  };
}

/**
 * Validates a parsed LDM config (a whole file with `model:` or the model node
 * {target, params, base_learning_rate?}) and returns what LatentDiffusion
 * takes. Throws ConfigError naming `file` and the key path.
 */
export function parseLatentDiffusionConfig(raw: unknown, file = '(latent diffusion config)'): LatentDiffusionSpec {
  return toSpec(validateWithSchema(LatentDiffusionSchema, raw, file), file);
}

/** Reads and validates a YAML file (see parseLatentDiffusionConfig); errors name file:line and key path. */
export function loadLatentDiffusionConfig(file: string): LatentDiffusionSpec {
  return toSpec(loadWithSchema(LatentDiffusionSchema, file), file);
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
  const sec = loadTrainSections(file, { overrides: opts.overrides }, LatentDiffusionSchema);
  const spec = toSpec(sec.model, file);
  const fail = (path: ConfigPath, message: string): never => {
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
  // The model reader lists the data / training / lightning sections as unread: here they are read.
  const unread = spec.warning?.replace(/^.*?: accepted and not read by the latent-diffusion model reader: /, '').split(', ').filter((k) => !['data', 'training', 'lightning'].includes(k)) ?? [];
  const warnings = [...sec.warnings, ...(unread.length ? [`${file}: accepted and not read (upstream Lightning / logging keys): ${unread.join(', ')}`] : [])];
  return { kind: 'latent', file, spec, model: sec.raw.model as Record<string, unknown>, baseLearningRate: spec.baseLearningRate!, data: d, training, warnings };
}
