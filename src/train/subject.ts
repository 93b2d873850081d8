// What the trainer trains: the loss of a batch, the parameters and their
// groups, the state a checkpoint holds, the export and the preview grid. The
// loop (src/train/trainer.ts) is one; these are its two subjects:
//   PixelSubject:  a pixel-space DDPM (PixelDiffusion around a UNet); its
//                  checkpoints are this project's (model.* / ema.* / optimizer.*).
//   LatentSubject: an upstream LatentDiffusion (frozen first stage, UNet, cond
//                  stage trained when cond_stage_trainable); its checkpoints
//                  have upstream's keys (model.diffusion_model.*,
//                  first_stage_model.*, cond_stage_model.*, scale_factor,
//                  model_ema.*) plus optimizer.*, so `sample --base CONFIG
//                  --ckpt` (loadLatentModel) reads them as it reads upstream's.
import fs from 'node:fs';
import path from 'node:path';

import type { Config } from '../config/schema';
import { dataNumClasses } from '../config/schema';
import type { Batch } from '../data/loader';
import type { Communicator } from '../dist/communicator';
import { sample as drawSamples } from '../diffusion/samplers';
import { readTensorFile } from '../io/checkpoint_file';
import { saveGrid } from '../io/png';
import { writeSafetensors } from '../io/safetensors';
import { ClassEmbedder } from '../models/conditioning';
import { type Denoiser, PixelDiffusion } from '../models/diffusion';
import type { LatentDiffusion } from '../models/latent';
import type { LatentTrainConfig } from '../models/latent_config';
import { openCheckpoint } from '../models/load';
import { loadLatentStateDict } from '../models/load_latent';
import type { Module } from '../nn/module';
import { type Adam, type ParamGroupSpec, optimizerStateFromTensors, optimizerStateToTensors } from '../optim/adam';
import { noGrad } from '../tensor/autograd';
import { scale } from '../tensor/ops/elementwise';
import type { Generator } from '../tensor/random';
import { type Tensor, fromArray } from '../tensor/tensor';
import { saveCheckpoint, type TrainingState } from './checkpoint';
import { type Ema, withEmaWeights } from './ema';
import { type DistillOptions, distillLoss } from './distill';

export interface SaveParts {
  state: TrainingState;
  ema: Ema | null;
  optimizer: Adam;
  extraMetadata: Record<string, string>;
}

export interface TrainSubject {
  readonly kind: 'pixel' | 'latent' | 'autoencoder';
  /** Everything the checkpoint holds; train() / eval() / zeroGrad() go to it, its Dropout modules draw from the trainer's generator. */
  readonly module: Module;
  /** The module whose parameters the EMA averages (upstream's LitEma(self.model)). */
  readonly emaModule: Module;
  /** The learning rate before scale_lr. */
  readonly baseLearningRate: number;
  /** The optimizer's groups at this base rate. */
  paramGroups(baseLr: number): ParamGroupSpec[];
  /** The trained parameters: clipped, averaged over ranks, compared between ranks. */
  trainableParameters(): Tensor[];
  /**
   * The scalar loss of a batch, drawing its randomness from `gen`. With
   * `shard` false a data-parallel slice is treated as a whole batch (the
   * non-finite locator reruns it so).
   */
  loss(batch: Batch, gen: Generator, shard?: boolean): Tensor;
  /** Called once, with the first batch of a fresh run (not a resumed one, nor one from --ckpt weights); returns a line for the log, or null. */
  onFirstBatch?(batch: Batch, comm: Communicator): Promise<string | null>;
  /** Writes a training checkpoint. */
  save(file: string, parts: SaveParts): Promise<void>;
  /** Restores a training checkpoint into the module, the EMA and the optimizer; returns its training state. */
  restore(file: string, ema: Ema | null, optimizer: Adam): Promise<TrainingState>;
  /** Writes the final weights (the EMA's, when there is one) for sampling. */
  exportModel(file: string, ema: Ema | null, extraMetadata: Record<string, string>): Promise<void>;
  /** A grid of DDIM samples from the EMA weights. */
  sampleGrid(ema: Ema | null, file: string, n: number, seed: number): Promise<void>;
}

function notTraining(file: string): Error {
  return new Error(`${file}: not a training checkpoint (no training state or optimizer state); use --ckpt to start from its weights`);
}

// ---- Pixel diffusion ------------------------------------------------------------

export class PixelSubject implements TrainSubject {
  readonly kind = 'pixel' as const;
  readonly diffusion: PixelDiffusion;
  readonly module: Denoiser;
  readonly emaModule: Denoiser;
  readonly baseLearningRate: number;

  constructor(
    readonly config: Config, readonly unet: Denoiser, private readonly groups?: (baseLr: number) => ParamGroupSpec[],
    /** The prepare hook's writer of the final model (QAT: integer weights); default saveCheckpoint. */
    readonly saveExport?: (file: string, parts: { config: unknown; extraMetadata: Record<string, string> }) => Promise<void>,
    /** QAT distillation: the loss learns the frozen teacher's noise prediction (src/train/distill.ts). */
    readonly distill?: DistillOptions,
  ) {
    this.diffusion = new PixelDiffusion(config.model, unet);
    this.module = this.emaModule = unet;
    this.baseLearningRate = config.model.base_learning_rate;
  }

  paramGroups(baseLr: number): ParamGroupSpec[] {
    return this.groups ? this.groups(baseLr) : [{ params: this.unet.namedParameters(), lr: baseLr, name: 'model' }];
  }

  trainableParameters(): Tensor[] {
    return this.unet.parameters();
  }

  loss(batch: Batch, gen: Generator, shard = true): Tensor {
    const s = shard && batch.start !== undefined && batch.total !== undefined ? { start: batch.start, total: batch.total } : undefined;
    if (this.distill) return distillLoss(this.diffusion, this.distill, batch.x, gen, batch.y, s).loss;
    return this.diffusion.trainingLoss(batch.x, gen, batch.y, s).loss;
  }

  async save(file: string, p: SaveParts): Promise<void> {
    await saveCheckpoint(file, { config: this.config, state: p.state, model: this.unet, ema: p.ema, optimizer: p.optimizer.state(), extraMetadata: p.extraMetadata });
  }

  async restore(file: string, ema: Ema | null, optimizer: Adam): Promise<TrainingState> {
    const ck = await openCheckpoint(file);
    try {
      const st = ck.state;
      if (!st || !ck.optimizer) throw notTraining(file);
      this.unet.loadStateDict(ck.model, { strict: true });
      if (ema && ck.ema) {
        ema.load(ck.ema);
        ema.numUpdates = st.emaUpdates as number;
      }
      optimizer.loadState(ck.optimizer);
      return st;
    } finally {
      ck.dispose();
    }
  }

  async exportModel(file: string, ema: Ema | null, extraMetadata: Record<string, string>): Promise<void> {
    await withEmaWeights(ema, this.unet, () =>
      this.saveExport ? this.saveExport(file, { config: this.config, extraMetadata }) : saveCheckpoint(file, { config: this.config, model: this.unet, extraMetadata }),
    );
  }

  async sampleGrid(ema: Ema | null, file: string, n: number, seed: number): Promise<void> {
    const unet = this.unet;
    await withEmaWeights(ema, unet, async () => {
      unet.eval();
      try {
        const [c, h, w] = this.diffusion.imageShape;
        const x = await drawSamples(this.diffusion.epsModel(), { shape: [n, c, h, w], sampler: 'ddim', steps: 50, seed, schedule: this.diffusion.schedule });
        fs.mkdirSync(path.dirname(file), { recursive: true });
        await saveGrid(file, x);
        x.dispose();
      } finally {
        unet.train();
      }
    });
  }
}

// ---- Latent diffusion -----------------------------------------------------------

/** The metadata `format` of latent training checkpoints and exports (upstream keys, see the header). */
export const LDM_CHECKPOINT_FORMAT = 'tdq-native/ldm-checkpoint@1';

/** LitEma's name of a parameter of LatentDiffusion.model: 'model_ema.' + its name without dots. */
export function litEmaKey(name: string): string {
  return `model_ema.${name.replace(/\./g, '')}`;
}

export class LatentSubject implements TrainSubject {
  readonly kind = 'latent' as const;
  readonly module: LatentDiffusion;
  readonly emaModule: Module;
  readonly baseLearningRate: number;
  /** Labels drawn for preview grids: the data's classes (the embedder's extra 'unconditional' class left out). */
  private readonly previewClasses: number;

  /**
   * `unetGroups`: the UNet's own groups (QAT: float weights and quantizers);
   * the trainable cond stage then joins as a group of its own at the base rate.
   * `scaleSeed` seeds the posterior sample of scale_by_std.
   */
  constructor(readonly config: LatentTrainConfig, readonly ldm: LatentDiffusion, private readonly scaleGen: Generator, private readonly unetGroups?: (baseLr: number) => ParamGroupSpec[]) {
    this.module = ldm;
    this.emaModule = ldm.model;
    this.baseLearningRate = config.baseLearningRate;
    const cs = ldm.condStageModel;
    const dataClasses = dataNumClasses(config.data);
    this.previewClasses = dataClasses > 0 ? dataClasses : cs instanceof ClassEmbedder ? cs.nClasses : 0;
  }

  paramGroups(baseLr: number): ParamGroupSpec[] {
    const cs = this.ldm.condStageModel && this.ldm.condStageTrainable ? this.ldm.condStageModel.namedParameters('cond_stage_model.') : [];
    if (!this.unetGroups) return [{ params: [...this.ldm.model.namedParameters('model.'), ...cs], lr: baseLr, name: 'model' }];
    const groups = this.unetGroups(baseLr);
    if (cs.length) groups.push({ params: cs, lr: baseLr, name: 'cond_stage' });
    return groups;
  }

  trainableParameters(): Tensor[] {
    return this.ldm.trainableParameters();
  }

  /** upstream's shared_step: the conditioning is the batch's class labels ({ class_label }). */
  private condInput(batch: Batch): unknown {
    if (this.ldm.conditioningKey === null) return null;
    if (!batch.y) throw new TypeError('LatentDiffusion training: the model is class-conditional but the batch has no labels');
    return { class_label: batch.y };
  }

  loss(batch: Batch, gen: Generator, shard = true): Tensor {
    const s = shard && batch.start !== undefined && batch.total !== undefined ? { start: batch.start, total: batch.total } : undefined;
    return this.ldm.lossOnImages(batch.x, this.condInput(batch), gen, s).loss;
  }

  /** scale_by_std: scale_factor := 1 / std of the first global batch's latents (data-parallel: summed over the ranks' slices). */
  async onFirstBatch(batch: Batch, comm: Communicator): Promise<string | null> {
    if (!this.ldm.scaleByStd) return null;
    const sharded = comm.size > 1 && batch.start !== undefined && batch.total !== undefined;
    const v = await this.ldm.initScaleByStd(
      batch.x,
      this.scaleGen,
      sharded ? { shard: { start: batch.start!, total: batch.total! }, allreduceSum: (t) => (comm.allreduceMean([t]), scale(t, comm.size)) } : undefined,
    );
    return `scale_by_std: scale_factor = ${v} (1 / std of the first batch's latents; stored in every checkpoint)`;
  }

  private metadata(extra: Record<string, string>): Record<string, string> {
    const c = this.config;
    return { format: LDM_CHECKPOINT_FORMAT, config: JSON.stringify({ model: c.model, data: c.data, training: c.training }), ...extra };
  }

  async save(file: string, p: SaveParts): Promise<void> {
    const tensors = new Map<string, Tensor>(this.ldm.stateDict());
    const metadata = this.metadata({});
    metadata.state = JSON.stringify(p.state);
    if (p.ema) {
      for (const [k, t] of p.ema.shadow) tensors.set(litEmaKey(k), t);
      metadata.ema = JSON.stringify({ numUpdates: p.ema.numUpdates, decay: p.ema.decay });
    }
    Object.assign(metadata, p.extraMetadata);
    const o = optimizerStateToTensors(p.optimizer.state(), 'optimizer.');
    for (const [k, t] of o.tensors) tensors.set(k, t);
    Object.assign(metadata, o.metadata);
    await writeSafetensors(file, tensors, metadata);
  }

  async restore(file: string, ema: Ema | null, optimizer: Adam): Promise<TrainingState> {
    const { tensors, metadata } = await readTensorFile(file);
    try {
      if (metadata.format !== LDM_CHECKPOINT_FORMAT || metadata.state === undefined || metadata['optimizer.json'] === undefined) throw notTraining(file);
      const st = JSON.parse(metadata.state) as TrainingState;
      const model = new Map<string, Tensor>(), opt = new Map<string, Tensor>();
      for (const [k, t] of tensors) {
        if (k.startsWith('optimizer.')) opt.set(k, t);
        else if (!k.startsWith('model_ema.')) model.set(k, t);
      }
      loadLatentStateDict(this.ldm, model, { strict: true });
      if (ema) {
        const saved = new Map<string, Tensor>();
        for (const k of ema.shadow.keys()) {
          const t = tensors.get(litEmaKey(k));
          if (t) saved.set(k, t);
        }
        if (saved.size) {
          ema.load(saved);
          ema.numUpdates = st.emaUpdates as number;
        }
      }
      optimizer.loadState(optimizerStateFromTensors(opt, metadata, 'optimizer.'));
      return st;
    } finally {
      for (const t of tensors.values()) t.dispose();
    }
  }

  async exportModel(file: string, ema: Ema | null, extraMetadata: Record<string, string>): Promise<void> {
    await withEmaWeights(ema, this.ldm.model, () => writeSafetensors(file, new Map(this.ldm.stateDict()), this.metadata(extraMetadata)));
  }

  async sampleGrid(ema: Ema | null, file: string, n: number, seed: number): Promise<void> {
    const ldm = this.ldm;
    await withEmaWeights(ema, ldm.model, async () => {
      ldm.eval();
      let cond: Tensor | null = null;
      try {
        if (ldm.conditioningKey !== null) {
          const y = fromArray(Int32Array.from({ length: n }, (_, i) => i % Math.max(1, this.previewClasses)), [n], 'int32');
          cond = noGrad(() => ldm.getLearnedConditioning({ class_label: y }));
          y.dispose();
        }
        const z = await drawSamples(ldm.epsModel(cond), { shape: [n, ldm.channels, ldm.imageSize, ldm.imageSize], sampler: 'ddim', steps: 50, seed, schedule: ldm.schedule });
        const x = ldm.decode(z);
        z.dispose();
        fs.mkdirSync(path.dirname(file), { recursive: true });
        await saveGrid(file, x);
        x.dispose();
      } finally {
        cond?.dispose();
        ldm.train();
      }
    });
  }
}
