// Key layout of latent-diffusion (CompVis) checkpoints. A Lightning
// checkpoint keeps the LatentDiffusion module's state dict under
// 'state_dict'; in it:
//   model.diffusion_model.*   the UNet (DiffusionWrapper.diffusion_model)
//   first_stage_model.*       the autoencoder
//   cond_stage_model.*        the conditioning encoder
//   model_ema.*               LitEma: one buffer per trainable parameter of
//                             `model`, named with the dots removed
//                             ('model_ema.diffusion_modelout2weight'), plus
//                             model_ema.decay and model_ema.num_updates
//   betas, alphas_cumprod, ...  the DDPM schedule buffers (register_schedule)
// These helpers work on any Map<string, T> (engine Tensors, TensorRefs, ...).
import { TorchCheckpointError } from './errors';

export const LDM_PREFIXES = {
  unet: 'model.diffusion_model.',
  firstStage: 'first_stage_model.',
  condStage: 'cond_stage_model.',
  ema: 'model_ema.',
} as const;

/** The buffers DDPM.register_schedule writes, in its order. */
export const DDPM_SCHEDULE_BUFFERS = [
  'betas', 'alphas_cumprod', 'alphas_cumprod_prev', 'sqrt_alphas_cumprod', 'sqrt_one_minus_alphas_cumprod',
  'log_one_minus_alphas_cumprod', 'sqrt_recip_alphas_cumprod', 'sqrt_recipm1_alphas_cumprod', 'posterior_variance',
  'posterior_log_variance_clipped', 'posterior_mean_coef1', 'posterior_mean_coef2',
] as const;

export interface LdmParts<T> {
  /** Keys with their prefix removed. */
  unet: Map<string, T>;
  firstStage: Map<string, T>;
  condStage: Map<string, T>;
  /** LitEma buffers by their dotless name (decay and num_updates excluded). */
  ema: Map<string, T>;
  emaDecay?: T;
  emaNumUpdates?: T;
  /** The DDPM schedule buffers present. */
  schedule: Map<string, T>;
  /** Everything else (logvar, scale_factor, ...), full keys. */
  other: Map<string, T>;
}

/** Splits an LDM state dict by component. */
export function splitLdm<T>(sd: ReadonlyMap<string, T>): LdmParts<T> {
  const parts: LdmParts<T> = { unet: new Map(), firstStage: new Map(), condStage: new Map(), ema: new Map(), schedule: new Map(), other: new Map() };
  const sched = new Set<string>(DDPM_SCHEDULE_BUFFERS);
  for (const [k, v] of sd) {
    if (k.startsWith(LDM_PREFIXES.unet)) parts.unet.set(k.slice(LDM_PREFIXES.unet.length), v);
    else if (k.startsWith(LDM_PREFIXES.firstStage)) parts.firstStage.set(k.slice(LDM_PREFIXES.firstStage.length), v);
    else if (k.startsWith(LDM_PREFIXES.condStage)) parts.condStage.set(k.slice(LDM_PREFIXES.condStage.length), v);
    else if (k === 'model_ema.decay') parts.emaDecay = v;
    else if (k === 'model_ema.num_updates') parts.emaNumUpdates = v;
    else if (k.startsWith(LDM_PREFIXES.ema)) parts.ema.set(k.slice(LDM_PREFIXES.ema.length), v);
    else if (sched.has(k)) parts.schedule.set(k, v);
    else parts.other.set(k, v);
  }
  return parts;
}

/** Removes keys starting with any of the prefixes (LatentDiffusion's ignore_keys). */
export function dropIgnoredKeys<T>(sd: ReadonlyMap<string, T>, ignoreKeys: readonly string[]): { stateDict: Map<string, T>; dropped: string[] } {
  const stateDict = new Map<string, T>(), dropped: string[] = [];
  for (const [k, v] of sd) {
    if (ignoreKeys.some((p) => k.startsWith(p))) dropped.push(k);
    else stateDict.set(k, v);
  }
  return { stateDict, dropped };
}

export interface EmaResult<T> {
  /** The state dict with model.* parameters replaced by their EMA and every model_ema.* key removed (order kept). */
  stateDict: Map<string, T>;
  /** model.* keys that took their EMA value. */
  replaced: string[];
  /** model.* keys without an EMA buffer (buffers and frozen parameters: LitEma keeps trainable parameters only). */
  missing: string[];
  /** model_ema.* buffers that match no model.* key. */
  unused: string[];
  decay?: T;
  numUpdates?: T;
}

/**
 * Maps LitEma buffers back onto the model parameters: the buffer for
 * 'model.<name>' is 'model_ema.<name without dots>'. An error when the
 * checkpoint has no EMA, or when two model keys lose their dots to the same
 * name (the mapping would be ambiguous).
 */
export function applyEma<T>(sd: ReadonlyMap<string, T>, file = '(state dict)'): EmaResult<T> {
  const emaKeys = [...sd.keys()].filter((k) => k.startsWith(LDM_PREFIXES.ema) && k !== 'model_ema.decay' && k !== 'model_ema.num_updates');
  if (!emaKeys.length) throw new TorchCheckpointError(file, 'no model_ema.* weights: the checkpoint was saved without EMA (use_ema: False)');
  const byShort = new Map<string, string>();
  for (const k of sd.keys()) {
    if (!k.startsWith('model.')) continue;
    const s = k.slice('model.'.length).replace(/\./g, '');
    const prev = byShort.get(s);
    if (prev !== undefined) throw new TorchCheckpointError(file, `'${prev}' and '${k}' both map to the EMA name 'model_ema.${s}'; the EMA mapping is ambiguous`);
    byShort.set(s, k);
  }
  const emaFor = new Map<string, string>(), unused: string[] = [];
  for (const e of emaKeys) {
    const m = byShort.get(e.slice(LDM_PREFIXES.ema.length));
    if (m === undefined) unused.push(e);
    else emaFor.set(m, e);
  }
  const stateDict = new Map<string, T>(), replaced: string[] = [], missing: string[] = [];
  for (const [k, v] of sd) {
    if (k.startsWith(LDM_PREFIXES.ema)) continue;
    const e = emaFor.get(k);
    if (e !== undefined) {
      stateDict.set(k, sd.get(e)!);
      replaced.push(k);
    } else {
      if (k.startsWith('model.')) missing.push(k);
      stateDict.set(k, v);
    }
  }
  return { stateDict, replaced, missing, unused, decay: sd.get('model_ema.decay'), numUpdates: sd.get('model_ema.num_updates') };
}

/** The schedule buffers DDPM.register_schedule derives from betas (v_posterior as in the config, default 0), in float64. */
export function expectedSchedule(betas: ArrayLike<number>, vPosterior = 0): Record<(typeof DDPM_SCHEDULE_BUFFERS)[number], Float64Array> {
  const T = betas.length;
  const f = (fn: (i: number) => number) => Float64Array.from({ length: T }, (_, i) => fn(i));
  const b = f((i) => betas[i]);
  const acp = new Float64Array(T);
  for (let i = 0, p = 1; i < T; ++i) acp[i] = p *= 1 - b[i];
  const prev = f((i) => (i === 0 ? 1 : acp[i - 1]));
  const pv = f((i) => ((1 - vPosterior) * b[i] * (1 - prev[i])) / (1 - acp[i]) + vPosterior * b[i]);
  return {
    betas: b,
    alphas_cumprod: acp,
    alphas_cumprod_prev: prev,
    sqrt_alphas_cumprod: f((i) => Math.sqrt(acp[i])),
    sqrt_one_minus_alphas_cumprod: f((i) => Math.sqrt(1 - acp[i])),
    log_one_minus_alphas_cumprod: f((i) => Math.log(1 - acp[i])),
    sqrt_recip_alphas_cumprod: f((i) => Math.sqrt(1 / acp[i])),
    sqrt_recipm1_alphas_cumprod: f((i) => Math.sqrt(1 / acp[i] - 1)),
    posterior_variance: pv,
    posterior_log_variance_clipped: f((i) => Math.log(Math.max(pv[i], 1e-20))),
    posterior_mean_coef1: f((i) => (b[i] * Math.sqrt(prev[i])) / (1 - acp[i])),
    posterior_mean_coef2: f((i) => ((1 - prev[i]) * Math.sqrt(1 - b[i])) / (1 - acp[i])),
  };
}

export interface ScheduleMismatch {
  name: string;
  /** -1 when the lengths differ. */
  index: number;
  got: number;
  want: number;
}

/**
 * Compares schedule buffers from a checkpoint (values as float arrays) with
 * those a config's betas give. The checkpoint stores float32, so the default
 * tolerance is relative 1e-5 (plus 1e-7 absolute). Returns the first
 * mismatch of each buffer; empty when they agree.
 */
export function compareSchedule(
  actual: ReadonlyMap<string, ArrayLike<number>>,
  betas: ArrayLike<number>,
  opts: { vPosterior?: number; rtol?: number; atol?: number } = {},
): ScheduleMismatch[] {
  const want = expectedSchedule(betas, opts.vPosterior ?? 0);
  const rtol = opts.rtol ?? 1e-5, atol = opts.atol ?? 1e-7;
  const out: ScheduleMismatch[] = [];
  for (const [name, got] of actual) {
    const w = want[name as keyof typeof want];
    if (!w) continue;
    if (got.length !== w.length) {
      out.push({ name, index: -1, got: got.length, want: w.length });
      continue;
    }
    for (let i = 0; i < w.length; ++i) {
      // log buffers reach -inf-ish values; compare those on their own scale
      if (!(Math.abs(got[i] - w[i]) <= atol + rtol * Math.abs(w[i]))) {
        out.push({ name, index: i, got: got[i], want: w[i] });
        break;
      }
    }
  }
  return out;
}
