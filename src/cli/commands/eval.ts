// `tdq-native eval`: FID, Inception Score, KID and precision/recall of
// generated images against a reference dataset, with the FID Inception
// (--inception-weights) or the shipped Fashion-MNIST classifier (FID-FMNIST).
// Prints a table, writes the full report as JSON.
import fs from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import type { CommandModule } from 'yargs';

import {
  EvalError,
  type EvalReport,
  type FeatureNetKind,
  type CheckpointSource,
  type ImageSource,
  METRIC_NAMES,
  type MetricName,
  arraySource,
  fashionMnistSource,
  folderSource,
  checkpointSource,
  formatReport,
  loadFeatureNet,
  runEval,
} from '../../eval/run';
import { DDIM_DISCRETIZE, type DdimDiscretize, type SamplerName } from '../../diffusion/samplers';
import { writeFileAtomic } from '../../io/atomic';
import { loadPipeline } from '../../pipeline';
import type { Communicator } from '../../dist/communicator';
import { CliError, type GlobalArgs, packageVersion } from '../index';
import { type LaunchArgs, launchOptions, rankOrLaunch, requestedProcs } from '../launch';
import { protocolEval, protocolProblem } from './eval_protocol';
import { checkCount, checkMemory, checkSamplerFlags, maxMemoryOption, cliDevice, deviceOption, precisionOption, peekModelConfig } from './preflight';
import type { DeviceSpec, Precision } from '../../tensor/device';

interface EvalArgs extends GlobalArgs, LaunchArgs {
  device: DeviceSpec;
  precision: Precision;
  samples?: string;
  ckpt?: string;
  config?: string;
  sampler: SamplerName;
  steps?: number;
  eta?: number;
  'ddim-discretize'?: DdimDiscretize;
  'max-memory'?: string;
  'sample-seed': number;
  dataset?: string;
  split: 'train' | 'test';
  'data-dir'?: string;
  metrics: string;
  'feature-net'?: FeatureNetKind;
  'inception-weights'?: string;
  'classifier-weights'?: string;
  resize: 'torch' | 'tf1';
  n?: number;
  'ref-n'?: number;
  'batch-size': number;
  'is-splits': number;
  'kid-subsets': number;
  'kid-subset-size'?: number;
  'pr-k': number;
  seed: number;
  out?: string;
  'cache-dir'?: string;
  'refresh-cache': boolean;
  cache: boolean;
  'allow-size-mismatch': boolean;
  progress: boolean;
  exec?: 'int' | 'fake';
  protocol: boolean;
  seeds?: string;
  'sample-batch'?: number;
}

function parseMetrics(s: string): MetricName[] {
  const list = s.split(',').map((m) => m.trim().toLowerCase()).filter(Boolean);
  const bad = list.filter((m) => !(METRIC_NAMES as readonly string[]).includes(m));
  if (bad.length) throw new CliError(`unknown metric${bad.length > 1 ? 's' : ''} ${bad.join(', ')} in --metrics (choose from ${METRIC_NAMES.join(', ')})`);
  if (!list.length) throw new CliError('--metrics is empty (choose from fid, is, kid, pr)');
  return list as MetricName[];
}

function referenceSource(a: EvalArgs): (ImageSource & { describe?: string }) | undefined {
  if (!a.dataset) return undefined;
  if (a.dataset === 'fashion-mnist' || a.dataset === 'fmnist') return fashionMnistSource({ split: a.split, dataDir: a['data-dir'] });
  return folderSource(a.dataset);
}

/** A progress bar on a terminal; a line per 10% otherwise (logs, CI). */
function progressReporter(enabled: boolean): { update: (phase: string, done: number, total: number) => void; stop: () => void } {
  if (!enabled) return { update: () => {}, stop: () => {} };
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { format: '{phase} |{bar}| {value}/{total} images | {eta_formatted} left', stream: process.stderr, hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    let phase = '';
    return {
      update: (p, done, total) => {
        if (p !== phase) {
          if (phase) bar.stop();
          phase = p;
          bar.start(total, done, { phase: p.padEnd(9) });
        } else bar.update(done, { phase: p.padEnd(9) });
      },
      stop: () => phase && bar.stop(),
    };
  }
  let last = -1;
  return {
    update: (p, done, total) => {
      const decile = Math.floor((10 * done) / Math.max(total, 1));
      if (decile !== last || done === 0) {
        last = decile;
        process.stderr.write(`${p}: ${done}/${total} images\n`);
      }
    },
    stop: () => {},
  };
}

export const evalCommand: CommandModule<GlobalArgs, EvalArgs> = {
  command: 'eval',
  describe: 'Score generated images: FID, IS, KID, precision/recall (Inception or Fashion-MNIST features)',
  builder: (y) =>
    y
      .option('samples', { type: 'string', describe: 'Folder of generated PNG images (searched recursively)' })
      .option('ckpt', { type: 'string', describe: 'Or: a diffusion checkpoint to generate --n images from (held in memory, rounded to 8 bits as PNGs would be)' })
      .option('config', { type: 'string', describe: 'Model YAML for a --ckpt without a config in its metadata' })
      .option('sampler', { choices: ['ddpm', 'ddim', 'plms', 'dpmpp'] as const, default: 'ddim' as const, describe: 'Sampler for --ckpt' })
      .option('steps', { type: 'number', defaultDescription: '50 (--protocol: 25)', describe: 'Sampling steps for --ckpt (ddim / plms / dpmpp; an error with ddpm)' })
      .option('eta', { type: 'number', defaultDescription: '0', describe: 'DDIM eta for --ckpt (ddim only)' })
      .option('ddim-discretize', { choices: DDIM_DISCRETIZE, defaultDescription: 'uniform', describe: 'ddim / plms timestep layout for --ckpt: uniform, linspace or trailing (exactly --steps for any count), quad' })
      .option('max-memory', maxMemoryOption)
      .option('device', { ...deviceOption, describe: `${deviceOption.describe}; for sampling --ckpt (the feature network runs on the CPU)` })
      .option('precision', precisionOption)
      .option('exec', { choices: ['int', 'fake'] as const, defaultDescription: 'int where every quantized layer has an integer kernel, else fake', describe: 'Quantized --ckpt: integer kernels (int) or fake quantization in float (fake), as sample --exec' })
      .option('sample-seed', { type: 'number', default: 0, describe: 'Noise seed for --ckpt' })
      .option('dataset', { type: 'string', describe: "Reference images: a folder of PNGs, or 'fashion-mnist'" })
      .option('split', { choices: ['train', 'test'] as const, default: 'train' as const, describe: 'Fashion-MNIST split of the reference' })
      .option('data-dir', { type: 'string', describe: 'Folder with the Fashion-MNIST idx files (default: the Debian package\'s)' })
      .option('metrics', { type: 'string', default: 'fid', describe: 'Comma-separated: fid, is, kid, pr' })
      .option('feature-net', {
        choices: ['inception', 'fmnist'] as const,
        describe: 'inception: the FID InceptionV3 (needs --inception-weights); fmnist: the shipped Fashion-MNIST classifier (FID-FMNIST). Default: fmnist for --dataset fashion-mnist, else inception',
      })
      .option('inception-weights', { type: 'string', describe: 'FID Inception weights (.safetensors from scripts/convert-inception.py)' })
      .option('classifier-weights', { type: 'string', describe: 'Fashion-MNIST classifier weights (default: the shipped models/fmnist-classifier.safetensors)' })
      .option('resize', { choices: ['torch', 'tf1'] as const, default: 'torch' as const, describe: "Inception's resize to 299: torch bilinear (pytorch-fid) or TF1's" })
      .option('n', { type: 'number', describe: 'Generated images to use (default: all; with --ckpt: 1000; per seed with --protocol: 2000)' })
      .option('ref-n', { type: 'number', describe: 'Reference images to use (default: all)' })
      .option('batch-size', { type: 'number', default: 50, describe: 'Images per feature-network batch' })
      .option('is-splits', { type: 'number', default: 10 })
      .option('kid-subsets', { type: 'number', default: 100 })
      .option('kid-subset-size', { type: 'number', describe: 'Default: min(1000, both set sizes)' })
      .option('pr-k', { type: 'number', default: 3, describe: 'k of the k-NN manifolds of precision/recall' })
      .option('seed', { type: 'number', default: 0, describe: 'Seed of the KID subsets' })
      .option('out', { type: 'string', describe: 'JSON report (default: eval-<time>.json in the samples folder, or here with --ckpt)' })
      .option('cache-dir', { type: 'string', describe: 'Reference statistics cache (default: $TDQ_CACHE_DIR/eval-stats or ~/.cache/tdq-native/eval-stats)' })
      .option('refresh-cache', { type: 'boolean', default: false, describe: 'Recompute the reference statistics even when cached' })
      .option('cache', { type: 'boolean', default: true, describe: 'Read and write the reference statistics cache (--no-cache: neither)' })
      .option('allow-size-mismatch', { type: 'boolean', default: false, describe: 'Compare sets of different image sizes' })
      .option('progress', { type: 'boolean', default: true, describe: 'Show progress on stderr' })
      .options(launchOptions('ranks (processes under mpirun -np N) that split the sampling of --ckpt; rank 0 scores the images and writes the one report'))
      .option('protocol', { type: 'boolean', default: false, describe: 'With --ckpt: the evaluation protocol (docs/protocol.md): per seed N samples (--n, default 2000) by DDIM (--steps, default 25; eta 0) drawn as a bench protocol cell, FID-FMNIST against the Fashion-MNIST training split, then mean and 95% interval' })
      .option('seeds', { type: 'string', defaultDescription: '0,1,2', describe: '--protocol: evaluation seeds (one cell each)' })
      .option('sample-batch', { type: 'number', defaultDescription: '250', describe: "--protocol: sampling batch (part of the protocol's noise layout: batch b of seed s is seeded s * 100003 + b)" })
      .check((a) => {
        if (a.protocol) {
          const p = protocolProblem(a as unknown as Parameters<typeof protocolProblem>[0]);
          if (p) return p;
        } else for (const k of ['seeds', 'sample-batch'] as const) if (a[k] !== undefined) return `--${k} applies to --protocol only`;
        if (a.samples && requestedProcs(a) > 1) return '--nproc splits the sampling of --ckpt across ranks; images in --samples are scored in one process';
        if (!a.samples && !a.ckpt) return 'eval needs --samples DIR (a folder of generated PNG images) or --ckpt FILE (a model to sample from)';
        if (a.samples && a.ckpt) return 'pass either --samples or --ckpt, not both';
        if (a.samples) for (const k of ['steps', 'eta', 'ddim-discretize', 'sample-seed', 'exec'] as const) if (a[k] !== undefined && !(k === 'sample-seed' && a[k] === 0)) return `--${k} applies to --ckpt only (images in --samples are not generated here)`;
        for (const k of ['n', 'ref-n', 'batch-size', 'is-splits', 'kid-subsets', 'kid-subset-size', 'pr-k', 'steps'] as const) {
          const v = a[k];
          if (v !== undefined && (!Number.isInteger(v) || (v as number) < 1)) return `--${k} must be a positive integer, got ${String(v)}`;
        }
        return true;
      }),
  handler: async (a) => {
    if (a.protocol) return protocolEval(a);
    const metrics = parseMetrics(a.metrics);
    const comm = await rankOrLaunch(a);
    if (!comm) return; // the ranks ran under mpirun
    if (!a.dataset && metrics.some((m) => m !== 'is')) throw new CliError(`--metrics ${metrics.join(',')} needs reference images (--dataset DIR or fashion-mnist)`);
    let sampleN: number | undefined;
    if (a.n !== undefined) checkCount('n', a.n);
    if (a['ref-n'] !== undefined) checkCount('ref-n', a['ref-n']);
    if (a.ckpt) {
      // Generated images are all held in memory: check the flags and the bytes before loading anything.
      sampleN = a.n ?? 1000;
      if (!Number.isSafeInteger(a['sample-seed']) || a['sample-seed'] < 0) throw new CliError(`--sample-seed must be a non-negative integer, got ${a['sample-seed']}`);
      const config = await peekModelConfig(a.ckpt, a.config);
      if (config) {
        checkSamplerFlags({ sampler: a.sampler, steps: a.steps, eta: a.eta, ddimDiscretize: a['ddim-discretize'], stepsFlag: 'steps' }, (config.model.params as { timesteps: number }).timesteps);
        checkMemory(`generating ${sampleN} images for eval`, config, Math.min(a['batch-size'], sampleN), sampleN, a['max-memory']);
      }
    }
    const reporter = progressReporter(a.progress && comm.rank === 0);
    try {
      const reference = referenceSource(a);
      const folder = a.samples ? folderSource(a.samples) : undefined;
      // The feature network first: missing weights fail before any sampling.
      const kind: FeatureNetKind = a['feature-net'] ?? (a.dataset === 'fashion-mnist' || a.dataset === 'fmnist' ? 'fmnist' : 'inception');
      const net = await loadFeatureNet(kind, { inceptionWeights: a['inception-weights'], classifierWeights: a['classifier-weights'], resize: a.resize });
      let report: EvalReport;
      let generation: Record<string, unknown> | undefined;
      try {
        let samples: ImageSource;
        if (folder) samples = folder;
        else {
          const n = sampleN ?? 1000;
          const gen = await sampleCheckpoint(a, n, reporter.update, comm);
          samples = gen;
          if (comm.rank > 0) return; // rank 0 scores the gathered images and writes the report
          generation = { ckpt: path.resolve(a.ckpt!), ...(gen.exec ? { exec: gen.exec } : {}), n, sampler: a.sampler, steps: a.sampler === 'ddpm' ? null : a.steps ?? 50, eta: a.eta ?? 0, seed: a['sample-seed'], ...(a['ddim-discretize'] ? { ddimDiscretize: a['ddim-discretize'] } : {}) };
        }
        report = await runEval({
          samples,
          reference,
          metrics,
          net,
          n: a.n,
          refN: a['ref-n'],
          batchSize: a['batch-size'],
          isSplits: a['is-splits'],
          kidSubsets: a['kid-subsets'],
          kidSubsetSize: a['kid-subset-size'],
          prK: a['pr-k'],
          seed: a.seed,
          cacheDir: a['cache-dir'],
          refresh: a['refresh-cache'],
          noCache: !a.cache,
          allowSizeMismatch: a['allow-size-mismatch'],
          progress: reporter.update,
          log: (m) => a.verbose && process.stderr.write(`${m}\n`),
        });
      } finally {
        reporter.stop();
        net.dispose();
      }
      process.stdout.write(formatReport(report, net.suffix) + '\n');
      const stamp = `eval-${new Date().toISOString().replace(/[:.]/g, '-')}.json`;
      const out = a.out ?? (a.samples ? path.join(path.resolve(a.samples), stamp) : stamp);
      const json = { tool: `tdq-native ${packageVersion()}`, date: new Date().toISOString(), metricNames: metricNames(net.suffix), generation, ...report };
      await fs.promises.mkdir(path.dirname(path.resolve(out)), { recursive: true });
      await writeFileAtomic(out, JSON.stringify(json, null, 2) + '\n');
      process.stdout.write(`report: ${out}\n`);
    } catch (e) {
      if (e instanceof EvalError) throw new CliError(e.message);
      throw e;
    }
  },
};

/** n images from a checkpoint, in memory, rounded to 8 bits as saved PNGs would be. */
async function sampleCheckpoint(a: EvalArgs, n: number, progress: (phase: string, done: number, total: number) => void, comm: Communicator): Promise<CheckpointSource> {
  let src: CheckpointSource;
  try {
    src = await checkpointSource(a.ckpt!, {
      device: cliDevice(a),
      config: a.config,
      exec: a.exec ?? 'auto',
      n,
      batchSize: a['batch-size'],
      sampler: a.sampler,
      steps: a.steps ?? 50,
      eta: a.eta,
      ddimDiscretize: a['ddim-discretize'],
      seed: a['sample-seed'],
      comm,
      onProgress: (p) => progress('sampling', p.images, p.total),
    });
  } catch (e) {
    if (a.exec !== undefined && e instanceof RangeError && /is a full-precision checkpoint/.test(e.message)) throw new CliError(`--exec ${a.exec}: ${a.ckpt} is a full-precision checkpoint (not quantized); drop --exec`);
    if (e instanceof CliError || e instanceof EvalError || (e as Error).name === 'AbortError') throw e;
    throw new CliError((e as Error).message);
  }
  progress('sampling', n, n);
  if (comm.rank > 0) return src;
  if (src.execNote) console.warn(`tdq-native: note: ${src.execNote}`);
  else if (src.exec) console.warn(`tdq-native: quantized model, ${src.exec === 'int' ? 'integer' : 'fake-quantized'} execution`);
  return src;
}

function metricNames(suffix: string): Record<string, string> {
  return { fid: `FID${suffix}`, kid: `KID${suffix}`, is: `IS${suffix}`, pr: 'precision/recall' };
}
