// `tdq-native sample`: PNGs from a checkpoint (default: the shipped
// Fashion-MNIST model) with any of the four samplers.
import path from 'node:path';
import { SingleBar, Presets } from 'cli-progress';
import type { Argv, CommandModule } from 'yargs';

import { saveGrid, saveImages } from '../../io/png';
import { describeProblem, refused } from '../../models/checks';
import { DEFAULT_MODEL, loadPipeline } from '../../pipeline';
import { type GlobalArgs, CliError } from '../index';

interface SampleArgs extends GlobalArgs {
  ckpt: string;
  config?: string;
  nSamples: number;
  batchSize: number;
  sampler: 'ddpm' | 'ddim' | 'plms' | 'dpmpp';
  customSteps: number;
  eta: number;
  seed: number;
  outdir: string;
  grid: boolean;
  class?: number;
  progress: boolean;
  clipDenoised: boolean;
  allowNonFinite: boolean;
}

export const sampleCommand: CommandModule<GlobalArgs, SampleArgs> = {
  command: 'sample',
  describe: 'generate images from a checkpoint (default: the shipped Fashion-MNIST model)',
  builder: (y) =>
    y
      .option('ckpt', { type: 'string', default: DEFAULT_MODEL, defaultDescription: 'models/fmnist-small.safetensors', describe: 'checkpoint (.safetensors) to sample from' })
      .option('config', { type: 'string', describe: 'model YAML, for weight files without a config in their metadata' })
      .option('n-samples', { alias: ['n_samples', 'n'], type: 'number', default: 16, describe: 'number of images' })
      .option('batch-size', { alias: 'batch_size', type: 'number', default: 16, describe: 'images per batch' })
      .option('sampler', { choices: ['ddpm', 'ddim', 'plms', 'dpmpp'] as const, default: 'ddim' as const, describe: 'sampler (ddpm runs all T steps)' })
      .option('custom-steps', { alias: ['custom_steps', 'steps'], type: 'number', default: 50, describe: 'steps for ddim / plms / dpmpp' })
      .option('eta', { type: 'number', default: 0, describe: 'DDIM eta (0: deterministic, 1: DDPM-like)' })
      .option('seed', { type: 'number', default: 0, describe: 'noise seed (same seed, same images)' })
      .option('outdir', { alias: 'o', type: 'string', default: 'samples', describe: 'folder for the numbered PNGs and grid.png' })
      .option('grid', { type: 'boolean', default: true, describe: 'also write grid.png' })
      .option('class', { type: 'number', describe: 'class label for a class-conditional model (default: cycle through classes)' })
      .option('clip-denoised', { type: 'boolean', default: true, describe: 'ddpm/ddim: clamp the predicted x_0 to [-1, 1] (as LDM for pixel models)' })
      .option('progress', { type: 'boolean', default: true, describe: 'show a progress bar (on stderr)' })
      .option('allow-non-finite', { type: 'boolean', default: false, describe: 'sample even from weights with NaN/Inf or bad quantizer steps (rejected by default)' })
      .example('$0 sample --n-samples 64 --outdir out', '64 garments from the shipped model with DDIM, 50 steps')
      .example('$0 sample --sampler dpmpp --custom-steps 20 --seed 7', 'DPM-Solver++(2M), 20 steps')
      .example('$0 sample --ckpt runs/fmnist/model.safetensors --sampler ddim --eta 1', 'a model you trained, stochastic DDIM') as unknown as Argv<SampleArgs>,
  handler: async (a) => {
    for (const [k, v] of [['n-samples', a.nSamples], ['batch-size', a.batchSize], ['custom-steps', a.customSteps]] as const)
      if (!Number.isInteger(v) || v < 1) throw new CliError(`--${k} must be a positive integer, got ${v}`);
    if (!(a.eta >= 0)) throw new CliError(`--eta must be >= 0, got ${a.eta}`);
    const pipe = await loadPipeline(a.ckpt, { config: a.config, allowNonFinite: a.allowNonFinite });
    for (const p of refused(pipe.loaded?.report.problems ?? [])) console.warn(`tdq-native: warning: ${describeProblem(p)}`);
    const bar = a.progress && process.stderr.isTTY ? new SingleBar({ format: 'sampling [{bar}] {percentage}% | images {images}/{total} | step {step}/{steps}', stream: process.stderr }, Presets.shades_classic) : null;
    const total = Math.ceil(a.nSamples / a.batchSize);
    let batchIndex = 0, lastStep = 0;
    bar?.start(total * 1000, 0, { images: 0, total: a.nSamples, step: 0, steps: 0 });
    const abort = new AbortController();
    const onSigint = () => abort.abort(new Error('interrupted'));
    process.once('SIGINT', onSigint);
    try {
      const t0 = Date.now();
      const res = await pipe.generate({
        n: a.nSamples, batchSize: a.batchSize, sampler: a.sampler, steps: a.customSteps, eta: a.eta, seed: a.seed, labels: a.class, signal: abort.signal, clipDenoised: a.clipDenoised,
        onProgress: (p) => {
          if (p.step < lastStep) ++batchIndex;
          lastStep = p.step;
          bar?.update(Math.round(((batchIndex + p.step / p.steps) / total) * 1000), { images: p.images, total: p.total, step: p.step, steps: p.steps });
        },
      });
      bar?.update(total * 1000);
      bar?.stop();
      const files = await saveImages(a.outdir, res);
      if (a.grid) await saveGrid(path.join(a.outdir, 'grid.png'), res);
      const secs = (Date.now() - t0) / 1000;
      console.log(`tdq-native: wrote ${files.length} images${a.grid ? ' and grid.png' : ''} to ${a.outdir} (${a.sampler}, ${a.sampler === 'ddpm' ? 'all' : a.customSteps} steps, ${secs.toFixed(1)} s, ${(a.nSamples / secs).toFixed(2)} images/s)`);
    } finally {
      bar?.stop();
      process.off('SIGINT', onSigint);
      pipe.dispose();
    }
  },
};
