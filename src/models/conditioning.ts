// Conditioning encoders of CompVis latent-diffusion (ldm.modules.encoders.modules)
// that turn a batch's conditioning into the UNet's cross-attention context.
// In a LatentDiffusion checkpoint they live under `cond_stage_model.`, so
// ClassEmbedder's table is `cond_stage_model.embedding.weight` there and
// `embedding.weight` here.
import { Module } from '../nn/module';
import { Embedding } from '../nn/layers';
import { Generator } from '../tensor/random';
import { reshape } from '../tensor/ops/elementwise';
import type { Tensor } from '../tensor/tensor';

export interface ClassEmbedderConfig {
  embed_dim: number;
  n_classes?: number;
  /** The batch entry holding the labels. */
  key?: string;
}

/**
 * ClassEmbedder(embed_dim, n_classes=1000, key='class'): labels (B) int32 ->
 * context (B, 1, embed_dim), one token per sample for the cross-attention.
 */
export class ClassEmbedder extends Module {
  readonly embedding: Embedding;
  readonly key: string;
  readonly nClasses: number;
  readonly embedDim: number;

  constructor(cfg: ClassEmbedderConfig, gen: Generator = new Generator(0)) {
    super();
    const { embed_dim: embedDim, n_classes: nClasses = 1000, key = 'class' } = cfg;
    if (!Number.isInteger(embedDim) || embedDim < 1) throw new RangeError(`ClassEmbedder: embed_dim must be a positive integer, got ${JSON.stringify(embedDim)}`);
    if (!Number.isInteger(nClasses) || nClasses < 1) throw new RangeError(`ClassEmbedder: n_classes must be a positive integer, got ${JSON.stringify(nClasses)}`);
    if (typeof key !== 'string' || !key) throw new TypeError(`ClassEmbedder: key must be a non-empty string, got ${JSON.stringify(key)}`);
    this.embedDim = embedDim;
    this.nClasses = nClasses;
    this.key = key;
    this.embedding = this.registerModule('embedding', new Embedding(nClasses, embedDim, { gen }));
  }

  /** labels (B) int32 in [0, n_classes) -> (B, 1, embed_dim). */
  forward(labels: Tensor): Tensor {
    if (labels.dtype !== 'int32' || labels.shape.length !== 1)
      throw new TypeError(`ClassEmbedder: labels must be a 1-D int32 tensor, got ${labels.dtype} [${labels.shape.join(', ')}]`);
    const e = this.embedding.forward(labels);
    return reshape(e, [labels.shape[0], 1, this.embedDim]);
  }

  /** Upstream's forward(batch, key=None): the labels under `key` (default this.key). */
  encode(batch: Readonly<Record<string, Tensor | undefined>>, key: string = this.key): Tensor {
    const labels = batch[key];
    if (!labels) throw new RangeError(`ClassEmbedder: the batch has no '${key}' entry (keys: ${Object.keys(batch).join(', ') || 'none'})`);
    return this.forward(labels);
  }
}
