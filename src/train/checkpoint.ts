// Training checkpoints: one safetensors file holding the model, its EMA and
// the optimizer moments, with everything else needed to continue exactly
// (config, step, generator and loader states) as JSON in the metadata.
// Files are written atomically (temp file, fsync, rename) by writeSafetensors.
import type { Module } from '../nn/module';
import { type AdamState, optimizerStateFromTensors, optimizerStateToTensors } from '../optim/adam';
import { writeSafetensors } from '../io/safetensors';
import { readTensorFile } from '../io/checkpoint_file';
import type { Tensor } from '../tensor/tensor';
import type { Ema } from './ema';

export const CHECKPOINT_FORMAT = 'tdq-native/checkpoint@1';

export interface TrainingState {
  step: number;
  /** Anything JSON: generator states, loader position, EMA update count, timings. */
  [key: string]: unknown;
}

export interface CheckpointContents {
  config: unknown;
  state: TrainingState | null;
  model: Map<string, Tensor>;
  ema: Map<string, Tensor> | null;
  optimizer: AdamState | null;
  metadata: Record<string, string>;
}

/** Writes a checkpoint; waits for the queued ops that produce the tensors. */
export async function saveCheckpoint(
  file: string,
  parts: { config: unknown; state?: TrainingState; model: Module; ema?: Ema | null; optimizer?: AdamState | null; extraMetadata?: Record<string, string> },
): Promise<void> {
  const tensors = new Map<string, Tensor>();
  for (const [k, t] of parts.model.stateDict()) tensors.set(`model.${k}`, t);
  if (parts.ema) for (const [k, t] of parts.ema.shadow) tensors.set(`ema.${k}`, t);
  const metadata: Record<string, string> = {
    format: CHECKPOINT_FORMAT,
    config: JSON.stringify(parts.config),
    ...(parts.state ? { state: JSON.stringify(parts.state) } : {}),
    ...(parts.ema ? { ema: JSON.stringify({ numUpdates: parts.ema.numUpdates, decay: parts.ema.decay }) } : {}),
    ...(parts.extraMetadata ?? {}),
  };
  if (parts.optimizer) {
    const o = optimizerStateToTensors(parts.optimizer, 'optimizer.');
    for (const [k, t] of o.tensors) tensors.set(k, t);
    Object.assign(metadata, o.metadata);
  }
  await writeSafetensors(file, tensors, metadata);
}

function parseJson(file: string, key: string, raw: string | undefined): unknown {
  if (raw === undefined) return undefined;
  try {
    return JSON.parse(raw);
  } catch (e) {
    throw new Error(`${file}: metadata '${key}' is not valid JSON (${(e as Error).message})`);
  }
}

/**
 * Reads a checkpoint of this project, or a plain weights file: a state dict
 * under upstream's keys, optionally behind LDM's `model.diffusion_model.`
 * prefix (then `model_ema.*` weights, stored by LitEma without dots, are the EMA).
 */
export async function loadCheckpoint(file: string): Promise<CheckpointContents> {
  const { tensors, metadata } = await readTensorFile(file);
  const meta = metadata ?? {};
  if (meta.format === CHECKPOINT_FORMAT) {
    const model = new Map<string, Tensor>(), ema = new Map<string, Tensor>(), opt = new Map<string, Tensor>();
    for (const [k, t] of tensors) {
      if (k.startsWith('model.')) model.set(k.slice(6), t);
      else if (k.startsWith('ema.')) ema.set(k.slice(4), t);
      else if (k.startsWith('optimizer.')) opt.set(k, t);
      else t.dispose();
    }
    return {
      config: parseJson(file, 'config', meta.config),
      state: (parseJson(file, 'state', meta.state) as TrainingState | undefined) ?? null,
      model,
      ema: ema.size ? ema : null,
      optimizer: meta['optimizer.json'] ? optimizerStateFromTensors(opt, meta, 'optimizer.') : null,
      metadata: meta,
    };
  }
  // A plain state dict (e.g. converted from an upstream .ckpt).
  const ldmPrefix = 'model.diffusion_model.';
  const hasLdm = [...tensors.keys()].some((k) => k.startsWith(ldmPrefix));
  const model = new Map<string, Tensor>();
  const emaRaw = new Map<string, Tensor>();
  for (const [k, t] of tensors) {
    if (hasLdm && k.startsWith(ldmPrefix)) model.set(k.slice(ldmPrefix.length), t);
    else if (hasLdm && k.startsWith('model_ema.')) emaRaw.set(k, t);
    else if (!hasLdm) model.set(k, t);
    else t.dispose();
  }
  let ema: Map<string, Tensor> | null = null;
  if (emaRaw.size) {
    ema = new Map();
    for (const k of model.keys()) {
      const t = emaRaw.get(`model_ema.diffusion_model${k.replace(/\./g, '')}`);
      if (t) ema.set(k, t);
    }
    for (const t of emaRaw.values()) if (![...ema.values()].includes(t)) t.dispose();
  }
  return { config: parseJson(file, 'config', meta.config) ?? null, state: null, model, ema, optimizer: null, metadata: meta };
}
