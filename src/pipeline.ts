// The library's front door for services: load a checkpoint once, generate
// images many times. Generation runs the native ops on the engine's own
// thread and yields to the event loop between steps; progress is reported and
// an AbortSignal stops it. Call dispose() to free the weights.
import fs from 'node:fs';
import path from 'node:path';

import type { Config } from './config';
import { sample, type SamplerName } from './diffusion/samplers';
import { PixelDiffusion } from './models/diffusion';
import { type LoadedModel, loadModel } from './models/load';
import { packageRoot } from './tensor/native';
import { Generator } from './tensor/random';
import { fromArray, type Tensor } from './tensor/tensor';

/** The Fashion-MNIST model that ships with the package. */
export const DEFAULT_MODEL = path.join(packageRoot, 'models', 'fmnist-small.safetensors');

export interface LoadOptions {
  /** A YAML config, for weight files that do not carry one in their metadata. */
  config?: string;
  /** Use the raw weights even when the checkpoint has EMA weights. */
  noEma?: boolean;
  /** Load non-finite weights or bad quantizer steps instead of rejecting the file. */
  allowNonFinite?: boolean;
}

export interface GenerateOptions {
  n: number;
  batchSize?: number;
  sampler?: SamplerName;
  steps?: number;
  eta?: number;
  seed?: number;
  /** Class label(s) of a class-conditional model: one for all, or one per image. Default: i mod classes. */
  labels?: number | number[];
  /** (images done, images total) and (step, steps) within the current batch. */
  onProgress?: (p: { images: number; total: number; step: number; steps: number }) => void;
  signal?: AbortSignal;
  /** Clamp predicted x_0 to [-1, 1] in ddpm/ddim (default true: pixel-space data lives there). */
  clipDenoised?: boolean;
}

export interface GeneratedImages {
  /** (n, C, H, W) values in [-1, 1], row-major. */
  data: Float32Array;
  shape: [number, number, number, number];
}

export class DiffusionPipeline {
  private disposed = false;
  readonly config: Config;
  readonly source: string;
  constructor(readonly loaded: LoadedModel, readonly diffusion: PixelDiffusion) {
    this.config = loaded.config;
    this.source = loaded.file;
  }

  get imageShape(): [number, number, number] {
    return this.diffusion.imageShape;
  }

  get numClasses(): number | null {
    const p = this.config.model.params.unet_config.params as { num_classes?: number };
    return p.num_classes ?? null;
  }

  async generate(o: GenerateOptions): Promise<GeneratedImages> {
    if (this.disposed) throw new Error('DiffusionPipeline: generate() after dispose()');
    if (!Number.isInteger(o.n) || o.n < 1) throw new RangeError(`generate: n must be a positive integer, got ${o.n}`);
    const bs = o.batchSize ?? Math.min(o.n, 16);
    if (!Number.isInteger(bs) || bs < 1) throw new RangeError(`generate: batchSize must be a positive integer, got ${bs}`);
    const [c, h, w] = this.imageShape;
    const out = new Float32Array(o.n * c * h * w);
    const gen = new Generator(o.seed ?? 0);
    const classes = this.numClasses;
    for (let done = 0; done < o.n; ) {
      const b = Math.min(bs, o.n - done);
      let y: Tensor | undefined;
      if (classes) {
        const labels = Array.from({ length: b }, (_, i) => {
          const l = Array.isArray(o.labels) ? o.labels[done + i] : o.labels ?? (done + i) % classes;
          if (!Number.isInteger(l) || l < 0 || l >= classes) throw new RangeError(`generate: label ${l} is not a class of this model (0..${classes - 1})`);
          return l;
        });
        y = fromArray(labels, [b], 'int32');
      }
      try {
        const x = await sample(this.diffusion.epsModel(y), {
          shape: [b, c, h, w],
          sampler: o.sampler ?? 'ddim',
          steps: o.sampler === 'ddpm' ? undefined : o.steps ?? 50,
          eta: o.eta,
          clipDenoised: o.clipDenoised ?? true,
          generator: gen,
          schedule: this.diffusion.schedule,
          signal: o.signal,
          onProgress: (step, steps) => o.onProgress?.({ images: done, total: o.n, step, steps }),
        });
        out.set((await x.data()) as Float32Array, done * c * h * w);
        x.dispose();
      } finally {
        y?.dispose();
      }
      done += b;
    }
    return { data: out, shape: [o.n, c, h, w] };
  }

  dispose(): void {
    if (!this.disposed) this.loaded.dispose();
    this.disposed = true;
  }
}

/** Reads a checkpoint (this project's, or a plain state dict with a --config) into a pipeline. */
export async function loadPipeline(ckpt: string = DEFAULT_MODEL, opts: LoadOptions = {}): Promise<DiffusionPipeline> {
  if (ckpt === DEFAULT_MODEL && !fs.existsSync(ckpt)) throw new Error(`the default model is missing (${ckpt}); reinstall tdq-native or pass --ckpt`);
  const m = await loadModel(ckpt, opts);
  try {
    return new DiffusionPipeline(m, new PixelDiffusion(m.config.model, m.model));
  } catch (e) {
    m.dispose();
    throw e;
  }
}
