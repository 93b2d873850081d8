// `tdq-native sample`: PNGs from a checkpoint (default: the shipped
// Fashion-MNIST model) with any of the four samplers. Checks the flags, the
// memory the run needs and the output folder before loading anything, then
// writes each batch's PNGs as soon as the batch is done: only one batch (and
// the images of grid.png) is ever held, so a large --n-samples costs time only.
import path from 'node:path';
import { SingleBar, Presets } from 'cli-progress';
import type { Argv, CommandModule } from 'yargs';

import { DDIM_DISCRETIZE, type DdimDiscretize, noiseDrawsPerValue, sample } from '../../diffusion/samplers';
import type { Communicator } from '../../dist/communicator';
import { batchesOfRank, drawBatch } from '../../dist/shard';
import { readPng, saveGrid, saveImages } from '../../io/png';
import { describeProblem, refused } from '../../models/checks';
import { type LatentPlan, LatentSampleOptionError, latentTraitsOfSpec, planLatentSampling } from '../../latent_pipeline';
import { ConfigError } from '../../config/load';
import { loadLatentDiffusionConfig } from '../../models/latent_config';
import { SHIPPED_MODELS, resolveShippedModel } from '../../models/registry';
import { DEFAULT_MODEL, isLatentDiffusionConfigFile, loadLatentPipeline, loadPipeline } from '../../pipeline';
import { Generator } from '../../tensor/random';
import { fromArray } from '../../tensor/tensor';
import { type GlobalArgs, CliError } from '../index';
import { type LaunchArgs, launchOptions, rankOrLaunch } from '../launch';
import { checkCount, checkMemory, checkSamplerFlags, lineProgress, maxMemoryOption, cliDevice, deviceOption, precisionOption, peekModelConfig, probeWritableDir } from './preflight';
import type { DeviceSpec, Precision } from '../../tensor/device';

/** grid.png shows at most this many images (the first ones). */
export const MAX_GRID_IMAGES = 256;

interface SampleArgs extends GlobalArgs, LaunchArgs {
  ckpt: string;
  model?: string;
  config?: string;
  nSamples: number;
  batchSize: number;
  sampler?: 'ddpm' | 'ddim' | 'plms' | 'dpmpp';
  customSteps?: number;
  eta?: number;
  ddimDiscretize?: DdimDiscretize;
  seed: number;
  outdir: string;
  grid: boolean;
  class?: number;
  progress: boolean;
  clipDenoised?: boolean;
  maxMemory?: string;
  allowNonFinite: boolean;
  classes?: string;
  scale?: number;
  uncondClass?: number;
  vanillaSample: boolean;
  ema: boolean;
  exec?: 'int' | 'fake';
  device: DeviceSpec;
  precision: Precision;
}

export const sampleCommand: CommandModule<GlobalArgs, SampleArgs> = {
  command: 'sample',
  describe: 'generate images from a checkpoint (default: the shipped Fashion-MNIST model)',
  builder: (y) =>
    y
      .option('ckpt', { type: 'string', default: DEFAULT_MODEL, defaultDescription: 'models/fmnist-small.safetensors', describe: 'checkpoint (.safetensors) to sample from' })
      .option('model', { type: 'string', describe: `a shipped model by name, instead of --ckpt and --base (${Object.keys(SHIPPED_MODELS).join(', ')})` })
      .option('config', { alias: 'base', type: 'string', describe: 'model YAML, for weight files without a config in their metadata; an LDM config (upstream\'s --base) samples a latent diffusion checkpoint' })
      .option('n-samples', { alias: ['n_samples', 'n'], type: 'number', default: 16, describe: 'number of images (written batch by batch)' })
      .option('batch-size', { alias: 'batch_size', type: 'number', default: 16, describe: 'images per batch' })
      .option('sampler', { choices: ['ddpm', 'ddim', 'plms', 'dpmpp'] as const, defaultDescription: 'ddim', describe: 'sampler (ddpm runs all T steps)' })
      .option('custom-steps', { alias: ['custom_steps', 'steps'], type: 'number', defaultDescription: '50', describe: 'steps for ddim / plms / dpmpp (an error with ddpm)' })
      .option('ddim-discretize', { alias: 'ddim_discretize', choices: DDIM_DISCRETIZE, defaultDescription: 'uniform', describe: "ddim / plms timestep layout: uniform (LDM's), linspace or trailing (exactly n steps for any n), quad" })
      .option('eta', { type: 'number', defaultDescription: '0', describe: 'DDIM eta (0: deterministic, 1: DDPM-like); ddim only' })
      .option('seed', { type: 'number', default: 0, describe: 'noise seed (same seed, same images)' })
      .option('outdir', { alias: ['o', 'logdir'], type: 'string', default: 'samples', describe: 'folder for the numbered PNGs and grid.png' })
      .option('grid', { type: 'boolean', default: true, describe: `also write grid.png (of the first ${MAX_GRID_IMAGES} images at most)` })
      .option('class', { type: 'number', describe: 'class label for a class-conditional model (default: cycle through classes); an error for an unconditional one' })
      .option('classes', { type: 'string', describe: 'latent models: class labels, comma-separated (e.g. 0,3,9), cycled through the images (default: every class but the unconditional one)' })
      .option('scale', { type: 'number', describe: 'latent models: classifier-free guidance scale (needs an unconditional class)' })
      .option('uncond-class', { alias: 'uncond_class', type: 'number', describe: 'latent models: the unconditional class label for --scale (default: 1000 of 1001 classes, 10 of 11)' })
      .option('vanilla-sample', { alias: 'vanilla_sample', type: 'boolean', default: false, describe: 'the ddpm sampler (upstream sample_diffusion\'s --vanilla_sample)' })
      .option('ema', { type: 'boolean', default: true, describe: 'the EMA weights when the checkpoint has them (latent models: model_ema.*, as upstream\'s use_ema); --no-ema for the raw ones' })
      .option('clip-denoised', { type: 'boolean', describe: 'clamp the predicted x_0 to [-1, 1] at every step, all samplers (default: pixel models model.params.clip_denoised of the config, true as LDM; latent models only with ddpm, as upstream)' })
      .option('max-memory', { alias: 'max_memory', ...maxMemoryOption })
      .option('device', deviceOption)
      .option('precision', precisionOption)
      .option('progress', { type: 'boolean', default: true, describe: 'show progress on stderr (a bar on a terminal, else a line per batch)' })
      .option('exec', { choices: ['int', 'fake'] as const, defaultDescription: 'int where every quantized layer has an integer kernel, else fake', describe: 'quantized checkpoints: integer kernels (int) or fake quantization in float (fake); an error for a full-precision checkpoint' })
      .options(launchOptions('ranks (processes under mpirun -np N) that split the batches: the same images as one process, written to one folder'))
      .option('allow-non-finite', { type: 'boolean', default: false, describe: 'sample even from weights with NaN/Inf or bad quantizer steps (rejected by default)' })
      .example('$0 sample --model fmnist-ldm --classes 0,7,9 --n-samples 12', 't-shirts, sneakers and ankle boots from the shipped latent diffusion model')
      .example('$0 sample --n-samples 64 --outdir out', '64 garments from the shipped model with DDIM, 50 steps')
      .example('$0 sample --sampler dpmpp --custom-steps 20 --seed 7', 'DPM-Solver++(2M), 20 steps')
      .example('$0 sample --custom-steps 37 --ddim-discretize trailing', 'DDIM with exactly 37 steps')
      .example('$0 sample --n-samples 10000 --nproc 4', '10,000 images on 4 ranks (mpirun -np 4 ... works too)')
      .example('$0 sample --ckpt runs/fmnist/w8a8.safetensors --exec fake', 'a quantized model, fake-quantized in float (default: integer kernels)')
      .example('$0 sample --ckpt runs/fmnist/model.safetensors --sampler ddim --eta 1', 'a model you trained, stochastic DDIM')
      .example('$0 sample --base cin-ldm.yaml --ckpt model.ckpt --classes 0,3,9 --scale 3 --n_samples 12', 'a class-conditional latent diffusion model, guided') as unknown as Argv<SampleArgs>,
  handler: async (a) => {
    if (a.model !== undefined) {
      if (a.ckpt !== DEFAULT_MODEL || a.config !== undefined) throw new CliError(`--model ${a.model} names the weights and the config: drop --ckpt / --base`);
      try {
        const m = resolveShippedModel(a.model);
        a.ckpt = m.ckpt;
        a.config = m.config;
      } catch (e) {
        throw new CliError(`--model: ${(e as Error).message}`);
      }
    }
    if (a.vanillaSample) {
      if (a.sampler !== undefined && a.sampler !== 'ddpm')
        throw new CliError(`--vanilla_sample is the ddpm sampler; it contradicts --sampler ${a.sampler}`);
      a.sampler = 'ddpm';
    }
    a.sampler ??= 'ddim';
    const comm = await rankOrLaunch(a);
    if (!comm) return; // the ranks ran under mpirun
    if (a.config && isLatentDiffusionConfigFile(a.config)) return sampleLatent(a as SampleArgs & { sampler: NonNullable<SampleArgs['sampler']> }, comm);
    for (const [flag, v] of [['classes', a.classes], ['scale', a.scale], ['uncond-class', a.uncondClass]] as const)
      if (v !== undefined) throw new CliError(`--${flag} applies to latent diffusion models (--base LDM_CONFIG.yaml); for a pixel model use --class`);
    const n = checkCount('n-samples', a.nSamples);
    const batchSize = Math.min(checkCount('batch-size', a.batchSize), n);
    if (!Number.isSafeInteger(a.seed) || a.seed < 0) throw new CliError(`--seed must be a non-negative integer, got ${a.seed}`);
    if (a.customSteps !== undefined && (!Number.isInteger(a.customSteps) || a.customSteps < 1)) throw new CliError(`--custom-steps must be a positive integer, got ${a.customSteps}`);
    const config = await peekModelConfig(a.ckpt, a.config);
    const gridCount = a.grid ? Math.min(n, MAX_GRID_IMAGES) : 0;
    let steps = a.customSteps ?? 50;
    if (config) {
      const mp = config.model.params as { timesteps: number; unet_config: { params: { num_classes?: number } } };
      steps = checkSamplerFlags({ sampler: a.sampler, steps: a.customSteps, eta: a.eta, ddimDiscretize: a.ddimDiscretize, stepsFlag: 'custom-steps' }, mp.timesteps);
      if (a.class !== undefined && !mp.unet_config.params.num_classes) throw new CliError(`--class ${a.class}: ${a.ckpt} is an unconditional model (no num_classes); drop --class`);
      checkMemory(`sampling ${n} images in batches of ${batchSize}`, config, batchSize, gridCount, a.maxMemory);
    }
    probeWritableDir(a.outdir, 'outdir');
    const device = cliDevice(a);
    let pipe;
    try {
      pipe = await loadPipeline(a.ckpt, { config: a.config, allowNonFinite: a.allowNonFinite, exec: a.exec ?? 'auto', noEma: !a.ema, device });
    } catch (e) {
      if (a.exec !== undefined && e instanceof RangeError && /is a full-precision checkpoint/.test(e.message)) throw new CliError(`--exec ${a.exec}: ${a.ckpt} is a full-precision checkpoint (not quantized); drop --exec`);
      throw e;
    }
    if (pipe.execNote) console.warn(`tdq-native: note: ${pipe.execNote}`);
    else if (pipe.exec) console.warn(`tdq-native: quantized model, ${pipe.exec === 'int' ? 'integer' : 'fake-quantized'} execution`);
    for (const p of refused(pipe.loaded?.report.problems ?? [])) console.warn(`tdq-native: warning: ${describeProblem(p)}`);
    // Learned steps <= 0 load (training left them so; forward uses the step floor), but not silently.
    for (const p of (pipe.loaded?.report.problems ?? []).filter((q) => q.kind === 'floored')) console.warn(`tdq-native: note: ${describeProblem(p)}`);
    const classes = pipe.numClasses;
    if (!config) {
      // No config to check against before loading (weights with --config resolved by the loader): check now.
      steps = checkSamplerFlags({ sampler: a.sampler, steps: a.customSteps, eta: a.eta, ddimDiscretize: a.ddimDiscretize, stepsFlag: 'custom-steps' }, pipe.diffusion.schedule.numTimesteps);
      checkMemory(`sampling ${n} images in batches of ${batchSize}`, pipe.config, batchSize, gridCount, a.maxMemory);
    }
    if (a.class !== undefined) {
      if (!classes) throw new CliError(`--class ${a.class}: ${a.ckpt} is an unconditional model (no num_classes); drop --class`);
      if (!Number.isInteger(a.class) || a.class < 0 || a.class >= classes) throw new CliError(`--class must be a class of this model (0..${classes - 1}), got ${a.class}`);
    }
    const sampler = a.sampler; // narrowed above
    try {
      const samplerOptions = pipe.samplerOptions({ sampler, steps: a.customSteps, eta: a.eta, ddimDiscretize: a.ddimDiscretize, clipDenoised: a.clipDenoised });
      const drawsPerImage = (await noiseDrawsPerValue(samplerOptions)) * pipe.imageShape.reduce((x, y) => x * y, 1);
      const { written, secs } = await writeSamples(a, { n, batchSize, imageShape: pipe.imageShape, gridCount, steps, drawsPerImage, comm }, async (done, bs, gen, run) => {
        const [c, h, w] = pipe.imageShape;
        const y = classes ? fromArray(Array.from({ length: bs }, (_, i) => a.class ?? (done + i) % classes), [bs], 'int32', device) : undefined;
        try {
          const x = await sample(pipe.diffusion.epsModel(y), { ...samplerOptions, shape: [bs, c, h, w], generator: gen, ...run });
          const data = (await x.data()) as Float32Array;
          x.dispose();
          return data;
        } finally {
          y?.dispose();
        }
      });
      if (comm.rank === 0)
        console.log(`tdq-native: wrote ${written} images${a.grid ? ` and grid.png${gridCount < n ? ` (first ${gridCount})` : ''}` : ''} to ${a.outdir} (${a.sampler}, ${steps} steps${ranksNote(comm)}, ${secs.toFixed(1)} s, ${(n / secs).toFixed(2)} images/s)`);
    } finally {
      pipe.dispose();
    }
  },
};

function ranksNote(comm: Communicator): string {
  return comm.size > 1 ? `, ${comm.size} ranks` : '';
}

/** --classes 0,3,9 -> [0, 3, 9] (CliError naming the entry). */
export function parseClassList(text: string): number[] {
  const parts = text.split(',').map((p) => p.trim());
  return parts.map((p) => {
    if (!/^\d+$/.test(p)) throw new CliError(`--classes must be comma-separated class labels (e.g. 0,3,9), got '${text}' ('${p}' is not a non-negative integer)`);
    return Number(p);
  });
}

/** `sample` for a latent diffusion model: latents from the sampler, decoded through the first stage, PNGs and grid.png as for pixel models. */
async function sampleLatent(a: SampleArgs & { sampler: NonNullable<SampleArgs['sampler']> }, comm: Communicator): Promise<void> {
  const configFile = a.config!;
  const n = checkCount('n-samples', a.nSamples);
  const batchSize = Math.min(checkCount('batch-size', a.batchSize), n);
  if (!Number.isSafeInteger(a.seed) || a.seed < 0) throw new CliError(`--seed must be a non-negative integer, got ${a.seed}`);
  if (a.customSteps !== undefined && (!Number.isInteger(a.customSteps) || a.customSteps < 1)) throw new CliError(`--custom-steps must be a positive integer, got ${a.customSteps}`);
  if (a.class !== undefined) throw new CliError('--class is for pixel models; a latent model takes --classes (e.g. --classes 3)');
  if (a.exec !== undefined) throw new CliError(`--exec ${a.exec} applies to quantized pixel checkpoints; latent models sample in full precision`);
  if (a.ckpt === DEFAULT_MODEL) throw new CliError(`--base ${configFile} is a latent diffusion config: pass its checkpoint with --ckpt MODEL.ckpt`);
  let spec;
  try {
    spec = loadLatentDiffusionConfig(configFile);
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError(e.message);
    throw e;
  }
  if (spec.warning) console.warn(`tdq-native: warning: ${spec.warning}`);
  const steps = checkSamplerFlags({ sampler: a.sampler, steps: a.customSteps, eta: a.eta, ddimDiscretize: a.ddimDiscretize, stepsFlag: 'custom-steps' }, spec.timesteps);
  let plan: LatentPlan;
  const opts = {
    n, classes: a.classes !== undefined ? parseClassList(a.classes) : undefined, scale: a.scale, uncondClass: a.uncondClass,
    sampler: a.sampler, steps: a.customSteps, eta: a.eta, ddimDiscretize: a.ddimDiscretize, clipDenoised: a.clipDenoised,
  };
  try {
    plan = planLatentSampling(opts, latentTraitsOfSpec(spec));
  } catch (e) {
    if (e instanceof LatentSampleOptionError) throw new CliError(e.message);
    throw e;
  }
  probeWritableDir(a.outdir, 'outdir');
  const device = cliDevice(a);
  const pipe = await loadLatentPipeline(a.ckpt, { config: configFile, allowNonFinite: a.allowNonFinite, noEma: !a.ema, device });
  try {
    for (const p of refused(pipe.loaded.report.problems)) console.warn(`tdq-native: warning: ${describeProblem(p)}`);
    const r = pipe.loaded.report;
    if (r.unexpectedKeys.length) console.warn(`tdq-native: warning: ${a.ckpt}: ${r.unexpectedKeys.length} key(s) the model of ${configFile} does not have, not loaded: ${r.unexpectedKeys.slice(0, 5).join(', ')}${r.unexpectedKeys.length > 5 ? ', ...' : ''}`);
    plan = pipe.plan(opts);
    const gridCount = a.grid ? Math.min(n, MAX_GRID_IMAGES) : 0;
    const chosen = plan;
    const drawsPerImage = await pipe.drawsPerImage(chosen);
    const { written, secs } = await writeSamples(a, { n, batchSize, imageShape: pipe.imageShape, gridCount, steps, drawsPerImage, comm }, (done, bs, gen, run) =>
      pipe.sampleImages(chosen, pipe.labels(chosen, done, bs), bs, gen, run),
    );
    const what = [plan.classes ? `classes ${plan.classes.join(',')}` : null, plan.guidance ? `scale ${plan.guidance.scale} against class ${plan.guidance.uncondClass}` : null, r.ema ? 'EMA weights' : null].filter(Boolean).join(', ');
    if (comm.rank === 0)
      console.log(`tdq-native: wrote ${written} images${a.grid ? ` and grid.png${gridCount < n ? ` (first ${gridCount})` : ''}` : ''} to ${a.outdir} (latent diffusion, ${a.sampler}, ${steps} steps${what ? `, ${what}` : ''}${ranksNote(comm)}, ${secs.toFixed(1)} s, ${(n / secs).toFixed(2)} images/s)`);
  } finally {
    pipe.dispose();
  }
}

/**
 * The batch loop of both kinds of model: n images in batches, each written as
 * PNGs when it is done (so a long run holds one batch), the first gridCount
 * kept for grid.png, progress as a bar on a terminal or a line per batch
 * elsewhere, Ctrl-C aborting the sampler. `sampleBatch` returns a batch's
 * (bs, C, H, W) pixels in [-1, 1]. With ranks (--nproc), each draws its
 * batches (src/dist/shard.ts: the images of one process, whatever the rank
 * count), and rank 0 shows progress and writes grid.png from the PNGs.
 */
async function writeSamples(
  a: Pick<SampleArgs, 'outdir' | 'grid' | 'progress' | 'seed'>,
  o: { n: number; batchSize: number; imageShape: readonly number[]; gridCount: number; steps: number; drawsPerImage: number; comm: Communicator },
  sampleBatch: (done: number, bs: number, gen: Generator, run: { signal: AbortSignal; onProgress: (step: number, total: number) => void }) => Promise<Float32Array>,
): Promise<{ written: number; secs: number }> {
  const { n, batchSize, gridCount, steps, comm } = o;
  const [c, h, w] = o.imageShape;
  const slots = batchesOfRank(n, batchSize, comm.rank, comm.size);
  const lead = comm.rank === 0;
  const tty = process.stderr.isTTY === true;
  const bar = lead && a.progress && tty ? new SingleBar({ format: 'sampling [{bar}] {percentage}% | images {images}/{total} | step {step}/{steps}', stream: process.stderr }, Presets.shades_classic) : null;
  const lines = lead && a.progress && !tty ? lineProgress('sampling', slots.length) : null;
  bar?.start(slots.length * 1000, 0, { images: 0, total: n, step: 0, steps: 0 });
  const abort = new AbortController();
  const onSigint = () => abort.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  const digits = Math.max(6, String(n - 1).length);
  const grid = new Float32Array(gridCount * c * h * w);
  const gen = new Generator(a.seed);
  const base = gen.offset;
  let written = 0;
  try {
    const t0 = Date.now();
    for (const [k, slot] of slots.entries()) {
      const { start: done, count: bs } = slot;
      const data = await drawBatch(gen, base, slot, o.drawsPerImage, () =>
        sampleBatch(done, bs, gen, {
          signal: abort.signal,
          onProgress: (step, total) => bar?.update(Math.round((k + step / total) * 1000), { images: written, total: n, step, steps: total }),
        }),
      );
      await saveImages(a.outdir, { data, shape: [bs, c, h, w] }, { start: done, digits });
      written += bs;
      if (done < gridCount) grid.set(data.subarray(0, Math.min(bs, gridCount - done) * c * h * w), done * c * h * w);
      bar?.update((k + 1) * 1000, { images: written, total: n, step: steps, steps });
      lines?.(k + 1, written, n);
    }
    bar?.stop();
    if (comm.size > 1) {
      // Every rank's PNGs are on disk before rank 0 reads the grid's back (8-bit, as written: the grid equals one process's).
      await comm.barrier();
      if (lead && a.grid)
        for (let i = 0; i < gridCount; ++i) grid.set(readPng(path.join(a.outdir, `${String(i).padStart(digits, '0')}.png`), { channels: c as 1 | 3 }).data, i * c * h * w);
      written = n;
    }
    if (a.grid && lead) await saveGrid(path.join(a.outdir, 'grid.png'), { data: grid, shape: [gridCount, c, h, w] });
    return { written, secs: (Date.now() - t0) / 1000 };
  } finally {
    bar?.stop();
    process.off('SIGINT', onSigint);
  }
}
