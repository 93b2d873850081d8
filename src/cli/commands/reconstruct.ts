// `tdq-native reconstruct`: a first-stage autoencoder's reconstructions of a
// folder of PNGs (encode, then decode), written under the same relative
// names, with the PSNR against the inputs.
import fs from 'node:fs';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';

import { ConfigError } from '../../config/load';
import { readPngFolder } from '../../data/png_folder';
import { encodePng } from '../../io/png';
import { writeFileAtomic } from '../../io/atomic';
import { AutoencoderKL, VQModel, VQModelInterface, buildAutoencoder, loadAutoencoderConfig, type Autoencoder } from '../../models/autoencoder';
import { loadFirstStageCheckpoint } from '../../models/latent';
import { noGrad } from '../../tensor/autograd';
import { clamp } from '../../tensor/ops/elementwise';
import { Generator } from '../../tensor/random';
import { type Tensor, fromArray } from '../../tensor/tensor';
import { type GlobalArgs, CliError } from '../index';

interface ReconstructArgs extends GlobalArgs {
  base: string;
  ckpt: string;
  images: string;
  outdir: string;
  batchSize: number;
  samplePosterior: boolean;
  seed: number;
}

/** PSNR in dB of images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE); Infinity for identical images. */
export function psnr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length || a.length === 0) throw new RangeError(`psnr: sizes ${a.length} and ${b.length}`);
  let s = 0;
  for (let i = 0; i < a.length; ++i) {
    const d = a[i] - b[i];
    s += d * d;
  }
  const mse = s / a.length;
  return mse === 0 ? Infinity : 10 * Math.log10(4 / mse);
}

/** encode -> decode: a KL posterior's mode (or a sample), a VQ model's quantized latents. */
export function reconstruct(model: Autoencoder, x: Tensor, opts: { gen?: Generator } = {}): Tensor {
  return noGrad(() => {
    if (model instanceof AutoencoderKL) {
      const post = model.encode(x);
      return model.decode(opts.gen ? post.sample(opts.gen) : post.mode());
    }
    if (model instanceof VQModelInterface) return model.decode(model.encode(x));
    if (model instanceof VQModel) return model.forward(x).dec;
    throw new TypeError('reconstruct: not a first-stage autoencoder');
  });
}

export const reconstructCommand: CommandModule<GlobalArgs, ReconstructArgs> = {
  command: 'reconstruct',
  describe: 'encode and decode a folder of PNGs with a first-stage autoencoder; write the reconstructions and print the PSNR',
  builder: (y) =>
    y
      .option('base', { type: 'string', demandOption: true, describe: 'autoencoder config YAML (CompVis configs/autoencoder shape)' })
      .option('ckpt', { type: 'string', demandOption: true, describe: 'its weights (.safetensors or a PyTorch .ckpt; upstream keys, loss.* skipped)' })
      .option('images', { type: 'string', demandOption: true, describe: 'folder of PNG images (searched recursively)' })
      .option('outdir', { alias: 'o', type: 'string', demandOption: true, describe: 'folder for the reconstructions (same relative names)' })
      .option('batch-size', { alias: 'batch_size', type: 'number', default: 16, describe: 'images per batch' })
      .option('sample-posterior', { type: 'boolean', default: false, describe: 'KL: decode a posterior sample instead of its mode' })
      .option('seed', { type: 'number', default: 0, describe: 'seed of the posterior samples (--sample-posterior)' })
      .example('$0 reconstruct --base configs/fmnist-kl-f4.yaml --ckpt ae.safetensors --images data/val --outdir rec', 'reconstructions of data/val and their PSNR') as unknown as Argv<ReconstructArgs>,
  handler: async (a) => {
    if (!Number.isInteger(a.batchSize) || a.batchSize < 1) throw new CliError(`--batch-size must be a positive integer, got ${a.batchSize}`);
    if (!Number.isSafeInteger(a.seed) || a.seed < 0) throw new CliError(`--seed must be a non-negative integer, got ${a.seed}`);
    if (!fs.existsSync(a.images) || !fs.statSync(a.images).isDirectory()) throw new CliError(`--images ${a.images}: not a folder`);
    let spec;
    try {
      spec = loadAutoencoderConfig(a.base);
    } catch (e) {
      if (e instanceof ConfigError) throw new CliError(e.message);
      throw e;
    }
    const inCh = spec.ddconfig.in_channels;
    if (inCh !== 1 && inCh !== 3) throw new CliError(`${a.base}: ddconfig.in_channels is ${inCh}; reconstruct reads PNGs as 1 or 3 channels`);
    const model = buildAutoencoder(spec);
    try {
      try {
        await loadFirstStageCheckpoint(model, a.ckpt);
      } catch (e) {
        throw new CliError(`--ckpt ${(e as Error).message.startsWith(a.ckpt) ? '' : `${a.ckpt}: `}${(e as Error).message}`);
      }
      model.eval();
      const images = readPngFolder(a.images, { channels: inCh as 1 | 3, onNote: (n) => console.error(`tdq-native: ${n}`) });
      const { height: h, width: w } = images[0];
      const down = 2 ** (spec.ddconfig.ch_mult.length - 1);
      if (h % down || w % down) throw new CliError(`${images[0].file}: ${w}x${h} is not divisible by the autoencoder's downsampling factor ${down}`);
      const gen = a.samplePosterior ? new Generator(a.seed) : undefined;
      const per = inCh * h * w;
      const scores: number[] = [];
      for (let s = 0; s < images.length; s += a.batchSize) {
        const batch = images.slice(s, s + a.batchSize);
        const data = new Float32Array(batch.length * per);
        batch.forEach((im, i) => data.set(im.data, i * per));
        const x = fromArray(data, [batch.length, inCh, h, w]);
        const y = clamp(reconstruct(model, x, { gen }), -1, 1);
        const out = (await y.data()) as Float32Array;
        x.dispose();
        y.dispose();
        for (let i = 0; i < batch.length; ++i) {
          const rec = out.subarray(i * per, (i + 1) * per);
          scores.push(psnr(rec, batch[i].data));
          const file = path.join(a.outdir, batch[i].relPath);
          fs.mkdirSync(path.dirname(file), { recursive: true });
          await writeFileAtomic(file, encodePng(rec, [inCh, h, w]), { fsync: false });
        }
      }
      const finite = scores.filter(Number.isFinite);
      const meanPsnr = finite.length ? finite.reduce((p, q) => p + q, 0) / finite.length : Infinity;
      const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : 'inf');
      console.log(`tdq-native: reconstructed ${images.length} images (${w}x${h}x${inCh}) into ${a.outdir}`);
      console.log(`PSNR: mean ${fmt(meanPsnr)} dB, min ${fmt(Math.min(...scores))} dB, max ${fmt(Math.max(...scores))} dB${finite.length < scores.length ? ` (${scores.length - finite.length} exact, left out of the mean)` : ''}`);
    } finally {
      model.dispose();
    }
  },
};
