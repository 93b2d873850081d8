// The trainer's third subject: a KL autoencoder (upstream's AutoencoderKL,
// the first stage of an LDM) with AutoencoderKLLoss (L1 or L2 + learned
// scalar logvar + kl_weight x KL; no LPIPS, no discriminator). Checkpoints
// and the export have upstream's first-stage keys (encoder.*, decoder.*,
// quant_conv.*, post_quant_conv.*) plus loss.logvar, which `reconstruct
// --base --ckpt` and an LDM's first_stage_config.ckpt_path read.
import fs from 'node:fs';
import path from 'node:path';

import type { Config } from '../config/schema';
import { ConfigError, loadTrainSections } from '../config/load';
import type { Batch } from '../data/loader';
import { readTensorFile } from '../io/checkpoint_file';
import { saveGrid } from '../io/png';
import { writeSafetensors } from '../io/safetensors';
import { AutoencoderKL, AutoencoderKLLoss, type AutoencoderSpec, buildAutoencoder, parseAutoencoderConfig } from '../models/autoencoder';
import { Module } from '../nn/module';
import { type Adam, type ParamGroupSpec, optimizerStateFromTensors, optimizerStateToTensors } from '../optim/adam';
import { noGrad } from '../tensor/autograd';
import { cat, narrow } from '../tensor/ops/shape';
import { keep } from '../tensor/scope';
import type { Generator } from '../tensor/random';
import { type Tensor, runOp1 } from '../tensor/tensor';
import type { TrainingState } from './checkpoint';
import { type Ema, withEmaWeights } from './ema';
import type { SaveParts, TrainSubject } from './subject';

export const AE_TARGETS = ['ldm.models.autoencoder.AutoencoderKL', 'tdq_native.models.autoencoder.AutoencoderKL'] as const;
export const AE_CHECKPOINT_FORMAT = 'tdq-native/ae-checkpoint@1';

export interface AutoencoderTrainConfig {
  kind: 'autoencoder';
  file: string;
  spec: AutoencoderSpec;
  model: Record<string, unknown>;
  baseLearningRate: number;
  klWeight: number;
  logvarInit: number;
  data: Config['data'];
  training: Config['training'];
  warnings: string[];
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * An upstream autoencoder config for training: the model by the autoencoder
 * reader, data and training by src/config/load.ts. kl_weight and logvar_init
 * come from model.params.lossconfig.params (upstream's LPIPSWithDiscriminator
 * keys; its LPIPS and discriminator keys are not used). scale_lr defaults to
 * true as upstream main.py; the EMA to off (upstream's autoencoders have none).
 */
export function loadAutoencoderTrainConfig(file: string, opts: { overrides?: readonly string[] } = {}): AutoencoderTrainConfig {
  const sec = loadTrainSections(file, { overrides: opts.overrides });
  const model = sec.raw.model as Record<string, unknown>;
  const spec = parseAutoencoderConfig({ model }, file);
  if (spec.kind !== 'kl') throw new ConfigError(file, [{ path: ['model', 'target'], message: 'only AutoencoderKL trains (a VQ model needs its codebook losses)' }]);
  const lr = model.base_learning_rate;
  if (!(typeof lr === 'number' && lr > 0)) throw new ConfigError(file, [{ path: ['model', 'base_learning_rate'], message: `required for training: a positive number, got ${JSON.stringify(lr)}` }]);
  const lp = isObj(model.params) && isObj(model.params.lossconfig) && isObj(model.params.lossconfig.params) ? model.params.lossconfig.params : {};
  const num = (k: string, def: number): number => {
    const v = lp[k] ?? def;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConfigError(file, [{ path: ['model', 'params', 'lossconfig', 'params', k], message: `must be a number, got ${JSON.stringify(v)}` }]);
    return v;
  };
  const rawT = sec.raw.training as Record<string, unknown> | undefined;
  const training = {
    ...sec.training,
    scale_lr: rawT?.scale_lr === undefined ? true : sec.training.scale_lr,
    ema: isObj(rawT?.ema) && rawT.ema.enabled !== undefined ? sec.training.ema : { ...sec.training.ema, enabled: false },
  };
  const dd = spec.ddconfig as { in_channels: number; resolution: number };
  if (sec.data.target === 'tdq_native.data.FashionMNIST' && dd.in_channels !== 1)
    throw new ConfigError(file, [{ path: ['data', 'target'], message: `Fashion-MNIST images have 1 channel but the autoencoder takes ${dd.in_channels}` }]);
  return {
    kind: 'autoencoder', file, spec, model, baseLearningRate: lr, klWeight: num('kl_weight', 1), logvarInit: num('logvar_init', 0),
    data: sec.data, training, warnings: [...sec.warnings, ...spec.notes.map((n) => `${file}: ${n}`)],
  };
}

/** The autoencoder's submodules and the loss, under upstream's keys (encoder.*, ..., loss.logvar). */
class AutoencoderWithLoss extends Module {
  constructor(readonly ae: AutoencoderKL, readonly loss: AutoencoderKLLoss) {
    super();
    for (const [n, c] of ae.namedChildren()) this.registerModule(n, c);
    this.registerModule('loss', loss);
  }
}

export class AutoencoderSubject implements TrainSubject {
  readonly kind = 'autoencoder' as const;
  readonly module: AutoencoderWithLoss;
  readonly emaModule: Module;
  readonly baseLearningRate: number;
  /** The last batch's first images, for the reconstruction preview. */
  private preview: Tensor | null = null;

  constructor(readonly config: AutoencoderTrainConfig, gen: Generator) {
    const ae = buildAutoencoder(config.spec, gen);
    if (!(ae instanceof AutoencoderKL)) throw new TypeError('AutoencoderSubject: not an AutoencoderKL');
    this.module = new AutoencoderWithLoss(ae, new AutoencoderKLLoss({ klWeight: config.klWeight, logvarInit: config.logvarInit }));
    this.emaModule = this.module;
    this.baseLearningRate = config.baseLearningRate;
  }

  paramGroups(baseLr: number): ParamGroupSpec[] {
    return [{ params: this.module.namedParameters(), lr: baseLr, name: 'model' }];
  }

  trainableParameters(): Tensor[] {
    return this.module.parameters();
  }

  loss(batch: Batch, gen: Generator): Tensor {
    const { dec, posterior } = this.module.ae.forward(batch.x, { generator: gen });
    this.preview?.dispose();
    this.preview = keep(runOp1('cast', [batch.x], { dtype: 'float32' }));
    return this.module.loss.forward(batch.x, dec, posterior).loss;
  }

  private metadata(extra: Record<string, string>): Record<string, string> {
    const c = this.config;
    return { format: AE_CHECKPOINT_FORMAT, config: JSON.stringify({ model: c.model, data: c.data, training: c.training }), ...extra };
  }

  async save(file: string, p: SaveParts): Promise<void> {
    const tensors = new Map<string, Tensor>(this.module.stateDict());
    const metadata = this.metadata(p.extraMetadata);
    metadata.state = JSON.stringify(p.state);
    if (p.ema) {
      for (const [k, t] of p.ema.shadow) tensors.set(`ema.${k}`, t);
      metadata.ema = JSON.stringify({ numUpdates: p.ema.numUpdates, decay: p.ema.decay });
    }
    const o = optimizerStateToTensors(p.optimizer.state(), 'optimizer.');
    for (const [k, t] of o.tensors) tensors.set(k, t);
    Object.assign(metadata, o.metadata);
    await writeSafetensors(file, tensors, metadata);
  }

  async restore(file: string, ema: Ema | null, optimizer: Adam): Promise<TrainingState> {
    const { tensors, metadata } = await readTensorFile(file);
    try {
      if (metadata.format !== AE_CHECKPOINT_FORMAT || metadata.state === undefined || metadata['optimizer.json'] === undefined)
        throw new Error(`${file}: not an autoencoder training checkpoint (no training state or optimizer state)`);
      const st = JSON.parse(metadata.state) as TrainingState;
      const model = new Map<string, Tensor>(), opt = new Map<string, Tensor>(), em = new Map<string, Tensor>();
      for (const [k, t] of tensors) {
        if (k.startsWith('optimizer.')) opt.set(k, t);
        else if (k.startsWith('ema.')) em.set(k.slice(4), t);
        else model.set(k, t);
      }
      this.module.loadStateDict(model, { strict: true });
      if (ema && em.size) {
        ema.load(em);
        ema.numUpdates = st.emaUpdates as number;
      }
      optimizer.loadState(optimizerStateFromTensors(opt, metadata, 'optimizer.'));
      return st;
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }

  async exportModel(file: string, ema: Ema | null, extraMetadata: Record<string, string>): Promise<void> {
    await withEmaWeights(ema, this.module, () => writeSafetensors(file, new Map(this.module.stateDict()), this.metadata(extraMetadata)));
  }

  /** Inputs (top rows) and their reconstructions from the posterior mode (bottom rows) of the last batch. */
  async sampleGrid(ema: Ema | null, file: string, n: number, _seed: number): Promise<void> {
    if (!this.preview) return;
    await withEmaWeights(ema, this.module, async () => {
      this.module.eval();
      try {
        const k = Math.min(n, this.preview!.shape[0]);
        const x = k === this.preview!.shape[0] ? this.preview! : narrow(this.preview!, 0, 0, k);
        const rec = noGrad(() => this.module.ae.forward(x, { samplePosterior: false }).dec);
        const grid = cat([x, rec], 0);
        fs.mkdirSync(path.dirname(file), { recursive: true });
        await saveGrid(file, grid, { nrow: k });
        rec.dispose();
        grid.dispose();
        if (x !== this.preview) x.dispose();
      } finally {
        this.module.train();
      }
    });
  }
}

/** Whether a config file's model is an AutoencoderKL (by model.target). */
export function isAutoencoderTarget(target: unknown): boolean {
  return (AE_TARGETS as readonly unknown[]).includes(target);
}

