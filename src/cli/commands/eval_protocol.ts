// `tdq-native eval --ckpt C --protocol`: the evaluation protocol of issue 13
// (docs/protocol.md) on one checkpoint: per seed, N samples drawn exactly as a
// cell of the bench protocol (bench/tdq_protocol.ts) draws them
// (src/eval/protocol_cell.ts, the same code), their FID-FMNIST against the
// Fashion-MNIST training split, then the mean and 95% interval over seeds.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { PROTOCOL_DEFAULTS, checkProtocolSampling, protocolFid, protocolReference, sampleProtocolSeed } from '../../eval/protocol_cell';
import { meanCI } from '../../eval/protocol';
import { EvalError, loadFeatureNet } from '../../eval/run';
import { writeFileAtomic } from '../../io/atomic';
import { scheduleFromConfig } from '../../models/diffusion';
import { type LoadedModel, isLatentDiffusionConfigFile, loadModel } from '../../models/load';
import { applyExec } from '../../quant/quantize_model';
import { CliError, packageVersion } from '../index';
import { checkMemory, checkSamplerFlags, peekModelConfig } from './preflight';

/** What protocol mode reads of the eval command's arguments. */
export interface ProtocolEvalArgs {
  ckpt?: string;
  config?: string;
  n?: number;
  steps?: number;
  seeds?: string;
  'sample-batch'?: number;
  exec?: 'int' | 'fake';
  'data-dir'?: string;
  'max-memory'?: string;
  out?: string;
  'cache-dir'?: string;
  'refresh-cache': boolean;
  cache: boolean;
  progress: boolean;
  verbose?: boolean;
}

const fmnist = (v: unknown) => v === 'fashion-mnist' || v === 'fmnist';

/**
 * The eval command's flags that protocol mode fixes: when each one conflicts
 * (a value other than the protocol's; yargs fills the defaults, so a flag
 * repeating the protocol's value passes) and why it is refused.
 */
export const PROTOCOL_FIXED: [flag: string, conflicts: (v: unknown) => boolean, why: string][] = [
  ['samples', (v) => v !== undefined, 'protocol mode samples --ckpt itself'],
  ['sampler', (v) => v !== undefined && v !== 'ddim', 'the protocol samples DDIM (eta 0)'],
  ['eta', (v) => v !== undefined && v !== 0, 'the protocol samples DDIM with eta 0'],
  ['ddim-discretize', (v) => v !== undefined && v !== 'uniform', "the protocol's DDIM uses the uniform timestep layout"],
  ['sample-seed', (v) => v !== undefined && v !== 0, 'give the protocol seeds with --seeds'],
  ['dataset', (v) => v !== undefined && !fmnist(v), 'the reference is the Fashion-MNIST training split'],
  ['split', (v) => v !== undefined && v !== 'train', 'the reference is the Fashion-MNIST training split'],
  ['ref-n', (v) => v !== undefined, 'the reference is all 60,000 training images'],
  ['metrics', (v) => v !== undefined && String(v).trim().toLowerCase() !== 'fid', 'protocol mode reports FID-FMNIST only'],
  ['feature-net', (v) => v !== undefined && v !== 'fmnist', "FID-FMNIST uses the shipped Fashion-MNIST classifier's features"],
  ['inception-weights', (v) => v !== undefined, "FID-FMNIST uses the shipped Fashion-MNIST classifier's features"],
  ['classifier-weights', (v) => v !== undefined, 'FID-FMNIST uses the shipped classifier (models/fmnist-classifier.safetensors)'],
  ['batch-size', (v) => v !== undefined && v !== 50, 'the feature batch is fixed; the sampling batch is --sample-batch'],
  ['kid-subset-size', (v) => v !== undefined, 'protocol mode reports FID-FMNIST only'],
  ['allow-size-mismatch', (v) => v === true, 'FID-FMNIST compares Fashion-MNIST-sized images'],
  ['nproc', (v) => v !== undefined && v !== 1, 'a protocol run samples in one process (run different --seeds as separate commands to use more cores)'],
  ['gpus', (v) => v !== undefined, 'a protocol run samples in one process'],
];

/** The problem with a protocol-mode command line (yargs' parsed arguments), or null. */
export function protocolProblem(a: ProtocolEvalArgs & Record<string, unknown>): string | null {
  if (!a.ckpt) return '--protocol needs --ckpt FILE (the model whose protocol cells are measured)';
  for (const [k, conflicts, why] of PROTOCOL_FIXED) if (conflicts(a[k])) return `--${k} ${String(a[k])} does not apply with --protocol: ${why} (docs/protocol.md)`;
  if (a.n !== undefined && (!Number.isSafeInteger(a.n) || a.n < 2)) return `--n must be an integer >= 2 with --protocol (FID needs a covariance of the samples), got ${a.n}`;
  if (a['sample-batch'] !== undefined && (!Number.isSafeInteger(a['sample-batch']) || a['sample-batch'] < 1)) return `--sample-batch must be a positive integer, got ${a['sample-batch']}`;
  try {
    parseSeeds(a.seeds ?? PROTOCOL_DEFAULTS.seeds.join(','));
  } catch (e) {
    return (e as Error).message;
  }
  return null;
}

/** "0,1,2" -> [0, 1, 2]; a clear error for anything else (empty, negative, not an integer, repeated). */
export function parseSeeds(s: string): number[] {
  const parts = s.split(',').map((x) => x.trim());
  if (!s.trim() || parts.some((p) => p === '')) throw new CliError(`--seeds expects comma-separated non-negative integers, e.g. 0,1,2; got '${s}'`);
  const seeds = parts.map((p) => {
    if (!/^\d+$/.test(p) || !Number.isSafeInteger(Number(p))) throw new CliError(`--seeds: '${p}' is not a non-negative integer (e.g. --seeds 0,1,2)`);
    return Number(p);
  });
  const dup = seeds.find((x, i) => seeds.indexOf(x) !== i);
  if (dup !== undefined) throw new CliError(`--seeds: seed ${dup} is given twice (each seed is one cell)`);
  return seeds;
}

const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(3) : 'n/a');
const finiteOrNull = (v: number) => (Number.isFinite(v) ? v : null);

export async function protocolEval(a: ProtocolEvalArgs): Promise<void> {
  const ckpt = a.ckpt!;
  const seeds = parseSeeds(a.seeds ?? PROTOCOL_DEFAULTS.seeds.join(','));
  const n = a.n ?? PROTOCOL_DEFAULTS.n;
  const batch = a['sample-batch'] ?? PROTOCOL_DEFAULTS.batch;
  if (a.config && isLatentDiffusionConfigFile(a.config)) throw new CliError(`--protocol: ${a.config} describes a latent diffusion model; the protocol measures pixel-space Fashion-MNIST models`);
  const config = await peekModelConfig(ckpt, a.config);
  const steps = a.steps ?? PROTOCOL_DEFAULTS.steps;
  if (config) {
    // Validation (and its warning when the uniform layout runs another count); the sampler gets --steps as the bench passes it.
    checkSamplerFlags({ sampler: 'ddim', steps, eta: 0, stepsFlag: 'steps' }, (config.model.params as { timesteps: number }).timesteps);
    checkMemory(`sampling ${n} images per seed for the protocol`, config, Math.min(batch, n), n, a['max-memory']);
  }
  for (const seed of seeds) {
    try {
      checkProtocolSampling({ n, batch, steps, seed });
    } catch (e) {
      throw new CliError(`--protocol: ${(e as Error).message.replace(/^protocol: /, '')}`);
    }
  }
  const say = (m: string) => a.progress && process.stderr.write(`${m}\n`);
  // The feature network and the reference first: missing weights or data fail before any sampling.
  const net = await loadFeatureNet('fmnist').catch((e) => {
    throw e instanceof EvalError ? new CliError(e.message) : e;
  });
  let m: LoadedModel | undefined;
  try {
    const reference = protocolReference(a['data-dir']);
    try {
      m = await loadModel(ckpt, { config: a.config });
    } catch (e) {
      throw new CliError((e as Error).message);
    }
    const p = m.config.model.params;
    const shape = [p.channels, p.image_size, p.image_size];
    const schedule = scheduleFromConfig(p);
    let exec = 'fp32', execNote: string | null = null;
    if (m.quantized) {
      const r = applyExec(m.quantized, a.exec ?? 'auto');
      exec = r.exec;
      execNote = r.note;
      console.warn(execNote ? `tdq-native: note: ${execNote}` : `tdq-native: quantized model, ${exec === 'int' ? 'integer' : 'fake-quantized'} execution`);
    } else if (a.exec !== undefined) throw new CliError(`--exec ${a.exec}: ${ckpt} is a full-precision checkpoint (not quantized); drop --exec`);
    const model = m.model;
    const sha256 = crypto.createHash('sha256').update(fs.readFileSync(ckpt)).digest('hex');
    say(`protocol: ${ckpt}, N = ${n} per seed, DDIM ${steps} steps (eta 0), batches of ${batch}, seeds ${seeds.join(',')}, ${exec}`);
    const cells: { seed: number; fid: number; seconds: number }[] = [];
    for (const seed of seeds) {
      const t0 = Date.now();
      const x0 = await sampleProtocolSeed((x, t) => model.forward(x, t), {
        n, batch, steps, seed, schedule, shape,
        onBatch: (done, total) => say(`seed ${seed}: sampled ${done}/${total}`),
      });
      let fid: number;
      try {
        fid = await protocolFid(x0, {
          name: `samples of ${path.resolve(ckpt)} seed ${seed}`, shape, net, reference,
          cacheDir: a['cache-dir'], refresh: a['refresh-cache'], noCache: !a.cache, log: (msg) => a.verbose && process.stderr.write(`${msg}\n`),
        });
      } catch (e) {
        throw e instanceof EvalError ? new CliError(e.message) : e;
      }
      const seconds = (Date.now() - t0) / 1000;
      cells.push({ seed, fid, seconds });
      process.stdout.write(`seed ${seed}: FID-FMNIST ${fmt(fid)} (N = ${n}, ${seconds.toFixed(0)} s)\n`);
    }
    const ci = meanCI(cells.map((c) => c.fid));
    process.stdout.write(
      ci.n < 2
        ? `mean FID-FMNIST ${fmt(ci.mean)} (one seed: no interval)\n`
        : `mean FID-FMNIST ${fmt(ci.mean)} ± ${fmt(ci.half)} (95% interval [${fmt(ci.lo)}, ${fmt(ci.hi)}], Student t, ${ci.n - 1} dof, ${ci.n} seeds)\n`,
    );
    const out = a.out ?? `eval-protocol-${new Date().toISOString().replace(/[:.]/g, '-')}.json`;
    const json = {
      tool: `tdq-native ${packageVersion()}`,
      date: new Date().toISOString(),
      protocol: {
        ckpt: path.resolve(ckpt), sha256, n, steps, sampler: 'ddim', eta: 0, clipDenoised: true, batch,
        noise: `batch b of seed s seeded s * 100003 + b`, seeds, exec, ...(execNote ? { execNote } : {}),
        reference: PROTOCOL_DEFAULTS.reference, featureNet: net.id, metric: 'FID-FMNIST',
      },
      cells,
      fid: { mean: ci.mean, sd: finiteOrNull(ci.sd), half: finiteOrNull(ci.half), lo: finiteOrNull(ci.lo), hi: finiteOrNull(ci.hi), level: ci.level, seeds: ci.n },
    };
    await fs.promises.mkdir(path.dirname(path.resolve(out)), { recursive: true });
    await writeFileAtomic(out, JSON.stringify(json, null, 2) + '\n');
    process.stdout.write(`report: ${out}\n`);
  } finally {
    m?.dispose();
    net.dispose();
  }
}
