// The library's front door for services: load a checkpoint once, generate
// images many times. Generation runs the native ops on the engine's own
// thread and yields to the event loop between steps; progress is reported and
// an AbortSignal stops it. Call dispose() to free the weights.
import fs from 'node:fs';
import path from 'node:path';

import type { Config } from './config';
import { type DdimDiscretize, type SampleOptions, noiseDrawsPerValue, sample, type SamplerName } from './diffusion/samplers';
import type { Communicator } from './dist/communicator';
import { generateBatches } from './dist/shard';
import { PixelDiffusion } from './models/diffusion';
import { LatentDiffusionPipeline } from './latent_pipeline';
import { type LoadedModel, isLatentDiffusionConfigFile, loadLatentModel, loadModel } from './models/load';
import { type ExecRequest, applyExec } from './quant/quantize_model';
import { type DeviceSpec, type Precision, applyPrecision, resolveDevice } from './tensor/device';
import { type Device, packageRoot } from './tensor/native';
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
  /**
   * Quantized checkpoints: 'int' runs quantized layers in integer arithmetic,
   * 'fake' fake-quantizes in float; 'auto' (default) is 'int' where every
   * quantized layer has an integer kernel. Ignored ('auto') or an error
   * ('int' / 'fake') for a full-precision checkpoint.
   */
  exec?: ExecRequest;
  /**
   * Where to sample: 'cpu' (default), 'cuda' (DeviceUnavailableError when no
   * GPU works) or 'auto' (cuda when a probe in a child process passes, else
   * cpu; the reason in pipeline.deviceNote).
   */
  device?: DeviceSpec;
  /**
   * On 'cuda': what matmuls and convolutions round their operands to (fp32
   * accumulation); process-wide, set when given. On 'cpu' only 'fp32'
   * (anything else throws RangeError rather than being ignored).
   */
  precision?: Precision;
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
  /**
   * (images done, images total) and (step, steps) within the current batch.
   * If it throws, or returns a promise that rejects, generation stops and
   * generate() rejects with that error (a returned promise is not waited for
   * between steps, only before generate() settles).
   */
  onProgress?: (p: { images: number; total: number; step: number; steps: number }) => unknown;
  signal?: AbortSignal;
  /** Clamp predicted x_0 to [-1, 1], all samplers (default: the config's model.params.clip_denoised, true: pixel-space data lives there). */
  clipDenoised?: boolean;
  /** ddim / plms timestep layout (default 'uniform'). */
  ddimDiscretize?: DdimDiscretize;
  /**
   * Split the batches across the ranks of this communicator (data-parallel
   * sampling, src/dist/shard.ts): each rank draws batches b = rank, rank +
   * size, ... and every rank returns all n images, equal to one process's.
   */
  comm?: Communicator;
}

export interface GeneratedImages {
  /** (n, C, H, W) values in [-1, 1], row-major. */
  data: Float32Array;
  shape: [number, number, number, number];
}

export type ProgressReport = (p: { images: number; total: number; step: number; steps: number }) => void;

/**
 * generate()'s contract for onProgress and signal around `body`: a rejected
 * onProgress promise stops sampling through the signal body gets (the
 * caller's signal is forwarded to it) and becomes the error; returned
 * progress promises are waited for before this settles.
 */
export async function runWithProgress(o: Pick<GenerateOptions, 'onProgress' | 'signal'>, body: (signal: AbortSignal, report: ProgressReport) => Promise<void>): Promise<void> {
  const stop = new AbortController();
  const forwardAbort = () => stop.abort(o.signal?.reason);
  if (o.signal?.aborted) forwardAbort();
  else o.signal?.addEventListener('abort', forwardAbort, { once: true });
  let progressError: { error: unknown } | undefined;
  const pending = new Set<Promise<unknown>>();
  const report: ProgressReport = (p) => {
    const r = o.onProgress?.(p);
    if (r && typeof (r as Promise<unknown>).then === 'function') {
      const settled: Promise<unknown> = Promise.resolve(r).then(
        (): void => void pending.delete(settled),
        (error: unknown): void => {
          pending.delete(settled);
          progressError ??= { error };
          stop.abort(error);
        },
      );
      pending.add(settled);
    }
  };
  try {
    await body(stop.signal, report);
    while (pending.size) await Promise.all(pending);
  } catch (e) {
    while (pending.size) await Promise.all(pending);
    if (progressError) throw progressError.error;
    throw e;
  } finally {
    o.signal?.removeEventListener('abort', forwardAbort);
  }
  if (progressError) throw progressError.error;
}

export class DiffusionPipeline {
  private disposed = false;
  /** `loaded`: what loadModel returned (dispose() frees it); without it, dispose() frees diffusion.unet. */
  /** A quantized model's execution ('int' or 'fake'; null for full precision), and a note when not plain 'int'. */
  exec: 'int' | 'fake' | null = null;
  execNote: string | null = null;
  /** Where the model lives and sampling runs; with device 'auto', why it is where it is. */
  device: Device = 'cpu';
  deviceNote = '';

  constructor(readonly config: Config, readonly diffusion: PixelDiffusion, readonly source: string, readonly loaded: LoadedModel | null = null) {}

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
    const classes = this.numClasses;
    const opts = this.samplerOptions(o);
    const drawsPerImage = (await noiseDrawsPerValue(opts)) * c * h * w;
    let data!: Float32Array;
    await runWithProgress(o, async (signal, report) => {
      data = await generateBatches({ n: o.n, batchSize: bs, seed: o.seed ?? 0, imageSize: c * h * w, drawsPerImage, comm: o.comm }, async (slot, gen) => {
        let y: Tensor | undefined;
        if (classes) {
          const labels = Array.from({ length: slot.count }, (_, i) => {
            const l = Array.isArray(o.labels) ? o.labels[slot.start + i] : o.labels ?? (slot.start + i) % classes;
            if (!Number.isInteger(l) || l < 0 || l >= classes) throw new RangeError(`generate: label ${l} is not a class of this model (0..${classes - 1})`);
            return l;
          });
          y = fromArray(labels, [slot.count], 'int32', this.device);
        }
        try {
          const x = await sample(this.diffusion.epsModel(y), {
            ...opts,
            shape: [slot.count, c, h, w],
            generator: gen,
            signal,
            onProgress: (step, steps) => report({ images: slot.start, total: o.n, step, steps }),
          });
          try {
            return Float32Array.from((await x.data()) as Float32Array);
          } finally {
            x.dispose();
          }
        } finally {
          y?.dispose();
        }
      });
    });
    return { data, shape: [o.n, c, h, w] };
  }

  /** The sampler options of a generate() call, without the batch's shape and generator. */
  samplerOptions(o: Omit<GenerateOptions, 'n'>): Omit<SampleOptions, 'shape'> {
    return {
      sampler: o.sampler ?? 'ddim',
      steps: o.sampler === 'ddpm' ? undefined : o.steps ?? 50,
      eta: o.eta,
      clipDenoised: o.clipDenoised ?? this.config.model.params.clip_denoised,
      ddimDiscretize: o.ddimDiscretize,
      schedule: this.diffusion.schedule,
      device: this.device,
    };
  }

  dispose(): void {
    if (!this.disposed) (this.loaded ?? this.diffusion.unet).dispose();
    this.disposed = true;
  }
}

/** Reads a checkpoint (this project's, or a plain state dict with a --config) into a pipeline. */
export async function loadPipeline(ckpt: string = DEFAULT_MODEL, opts: LoadOptions = {}): Promise<DiffusionPipeline> {
  if (ckpt === DEFAULT_MODEL && !fs.existsSync(ckpt)) throw new Error(`the default model is missing (${ckpt}); reinstall tdq-native or pass --ckpt`);
  if (opts.config && isLatentDiffusionConfigFile(opts.config))
    throw new TypeError(`${opts.config} describes a latent diffusion model: use loadLatentPipeline(${JSON.stringify(ckpt)}, { config: ${JSON.stringify(opts.config)} })`);
  const exec = opts.exec ?? 'auto';
  if (exec !== 'auto' && exec !== 'int' && exec !== 'fake') throw new RangeError(`loadPipeline: exec must be 'auto', 'int' or 'fake', got ${JSON.stringify(exec)}`);
  let deviceNote = '';
  const device = resolveDevice(opts.device ?? 'cpu', (line) => (deviceNote = line));
  if (opts.precision !== undefined) applyPrecision(device, opts.precision);
  const m = await loadModel(ckpt, opts);
  try {
    if (!m.quantized && exec !== 'auto') throw new RangeError(`exec '${exec}': ${ckpt} is a full-precision checkpoint (not quantized)`);
    const p = new DiffusionPipeline(m.config, new PixelDiffusion(m.config.model, m.model), ckpt, m);
    if (m.quantized) {
      const r = applyExec(m.quantized, exec);
      p.exec = r.exec;
      p.execNote = r.note;
    }
    if (device !== 'cpu') m.model.to(device);
    p.device = device;
    p.deviceNote = deviceNote;
    return p;
  } catch (e) {
    m.dispose();
    throw e;
  }
}

/**
 * Reads a latent diffusion model (its LDM config, upstream's --base, and a
 * whole LatentDiffusion checkpoint) into a pipeline that samples latents and
 * decodes them through the first stage.
 */
export async function loadLatentPipeline(ckpt: string, opts: LoadOptions & { config: string }): Promise<LatentDiffusionPipeline> {
  const device = resolveDevice(opts.device ?? 'cpu');
  if (opts.precision !== undefined) applyPrecision(device, opts.precision);
  const m = await loadLatentModel(ckpt, opts);
  return new LatentDiffusionPipeline(m, device);
}

/** Whether a config file describes a latent diffusion model (then loadLatentPipeline, not loadPipeline). */
export { isLatentDiffusionConfigFile };
