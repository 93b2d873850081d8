// One cell of the evaluation protocol (issue 13; docs/protocol.md): N samples
// of a model from one seed, drawn exactly as the protocol draws them, and
// their FID-FMNIST against the Fashion-MNIST training split. The bench
// (bench/tdq_protocol.ts) and `tdq-native eval --protocol` both go through
// these two functions, so the CLI reproduces a bench cell bit for bit.
//
// Sampling: DDIM, eta 0, x0 clipped to [-1, 1], in batches of `batch`
// (protocol: 250) whose noise is seeded by seed * 100003 + batch index: every
// model of a seed starts from the same noise (paired comparisons), and the
// noise of a batch does not depend on N beyond it.
import { type EpsModel, sample } from '../diffusion/samplers/index';
import type { NoiseSchedule } from '../diffusion/schedule';
import { type FeatureNet, type ImageSource, arraySource, fashionMnistSource, runEval } from './run';

/** The protocol's fixed settings (docs/protocol.md, "What a cell is"). */
export const PROTOCOL_DEFAULTS = {
  /** Samples per cell. */
  n: 2000,
  /** DDIM steps of the main table. */
  steps: 25,
  eta: 0,
  seeds: [0, 1, 2] as readonly number[],
  /** Sampling batch: part of the noise layout (batch b of seed s is seeded s * 100003 + b). */
  batch: 250,
  reference: 'fashion-mnist train (60,000)',
} as const;

/** The noise seed of batch `b` of evaluation seed `seed`. */
export const PROTOCOL_SEED_STRIDE = 100003;
export const protocolBatchSeed = (seed: number, b: number): number => seed * PROTOCOL_SEED_STRIDE + b;

export interface ProtocolSampling {
  /** Samples of the cell (>= 2: FID needs a covariance). */
  n: number;
  batch: number;
  /** DDIM steps. */
  steps: number;
  /** Evaluation seed (non-negative integer). */
  seed: number;
  schedule: NoiseSchedule;
  /** One sample's shape (C, H, W). */
  shape: readonly number[];
  /** After each batch: samples done so far. */
  onBatch?: (done: number, total: number) => void;
}

/** Throws a RangeError naming the bad value of a protocol cell's sampling settings. */
export function checkProtocolSampling(o: Pick<ProtocolSampling, 'n' | 'batch' | 'steps' | 'seed'>): void {
  if (!Number.isSafeInteger(o.n) || o.n < 2) throw new RangeError(`protocol: N must be an integer >= 2 (FID needs a covariance), got ${o.n}`);
  if (!Number.isSafeInteger(o.batch) || o.batch < 1) throw new RangeError(`protocol: the sampling batch must be a positive integer, got ${o.batch}`);
  if (!Number.isSafeInteger(o.steps) || o.steps < 1) throw new RangeError(`protocol: DDIM steps must be a positive integer, got ${o.steps}`);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0) throw new RangeError(`protocol: a seed must be a non-negative integer, got ${o.seed}`);
  if (!Number.isSafeInteger(protocolBatchSeed(o.seed, Math.ceil(o.n / o.batch)))) throw new RangeError(`protocol: seed ${o.seed} is too large (its batches' noise seeds seed * ${PROTOCOL_SEED_STRIDE} + b pass 2^53)`);
}

/** The N samples (N, C, H, W) in [-1, 1] of one protocol cell's seed, from `forward` (the FP or quantized model). */
export async function sampleProtocolSeed(forward: EpsModel, o: ProtocolSampling): Promise<Float32Array> {
  checkProtocolSampling(o);
  const per = o.shape.reduce((p, d) => p * d, 1);
  const out = new Float32Array(o.n * per);
  for (let b = 0, done = 0; done < o.n; ++b) {
    const n = Math.min(o.batch, o.n - done);
    const x = await sample(forward, { sampler: 'ddim', steps: o.steps, eta: 0, schedule: o.schedule, shape: [n, ...o.shape], seed: protocolBatchSeed(o.seed, b), clipDenoised: true });
    out.set(x.dataSync() as Float32Array, done * per);
    x.dispose();
    done += n;
    o.onBatch?.(done, o.n);
  }
  return out;
}

/** The protocol's reference: the 60,000 Fashion-MNIST training images. */
export function protocolReference(dataDir?: string): ImageSource & { describe?: string } {
  return fashionMnistSource({ split: 'train', dataDir });
}

/**
 * FID-FMNIST of a cell's N samples (N, C, H, W) in [-1, 1], rounded to 8 bits
 * as saved PNGs would be, against `reference` (protocolReference()) with the
 * Fashion-MNIST classifier `net` (loadFeatureNet('fmnist')).
 */
export async function protocolFid(
  x0: Float32Array,
  o: { name: string; shape: readonly number[]; net: FeatureNet; reference: ImageSource & { describe?: string }; cacheDir?: string; refresh?: boolean; noCache?: boolean; log?: (m: string) => void },
): Promise<number> {
  const per = o.shape.reduce((p, d) => p * d, 1);
  const n = x0.length / per;
  if (!Number.isInteger(n) || o.shape.length !== 3) throw new RangeError(`protocolFid: ${x0.length} floats are not whole samples of shape [${o.shape.join(', ')}]`);
  const r = await runEval({
    samples: arraySource(o.name, x0, [n, o.shape[0], o.shape[1], o.shape[2]], { quantize8: true }),
    reference: o.reference,
    metrics: ['fid'],
    net: o.net,
    cacheDir: o.cacheDir,
    refresh: o.refresh,
    noCache: o.noCache,
    log: o.log,
  });
  return r.metrics.fid!.value;
}
