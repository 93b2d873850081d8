// The evaluation pipeline behind `tdq-native eval`: images from a folder, a
// dataset or memory -> features from a feature network (the FID Inception or
// the Fashion-MNIST classifier) -> FID, Inception Score, KID and
// precision/recall, with the reference set's statistics cached per dataset.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { FashionMnistDataset, defaultFashionMnistDir, findMnistFiles } from '../data/fashion_mnist';
import { listPngFiles } from '../data/image_folder';
import { readPng, readPngHeader } from '../io/png';
import { readSafetensors } from '../io/safetensors';
import { StateDictError } from '../nn/module';
import { type GenerateOptions, type LoadOptions, loadPipeline } from '../pipeline';
import { narrow } from '../tensor/ops/shape';
import type { ResizeMode } from '../tensor/ops/pool';
import { tidy } from '../tensor/scope';
import { type Tensor, fromArray } from '../tensor/tensor';
import { FMNIST_FEATURE_DIM, FMNIST_NUM_CLASSES, FmnistClassifier, defaultFmnistClassifierPath } from './fmnist_classifier';
import { INCEPTION_FEATURE_DIM, INCEPTION_NUM_CLASSES, InceptionV3 } from './inception';
import {
  type Features,
  type GaussianStats,
  StatsAccumulator,
  features as makeFeatures,
  frechetDistance,
  inceptionScore,
  kid,
  precisionRecall,
} from './metrics';
import { fingerprintFiles, loadOrComputeStats } from './stats_cache';

/** An expected failure (bad input, missing weights): the CLI prints its message without a stack. */
export class EvalError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EvalError';
  }
}

// ---------------------------------------------------------------- images

/** A sequence of same-sized planar images in [-1, 1]. */
export interface ImageSource {
  /** For messages and the report. */
  readonly name: string;
  readonly count: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  /** Writes images [start, start + n) into out (n * C * H * W floats). */
  read(start: number, n: number, out: Float32Array): void;
  /** Changes whenever the images do (for the statistics cache). */
  fingerprint(): string;
}

/**
 * Every *.png under dir (sorted by path). All must have one size; gray and
 * RGB may mix (gray is then replicated to RGB).
 */
export function folderSource(dir: string): ImageSource {
  const root = path.resolve(dir);
  if (!fs.existsSync(root)) throw new EvalError(`image folder not found: ${root}`);
  if (!fs.statSync(root).isDirectory()) throw new EvalError(`${root} is not a folder of PNG images`);
  const files = listPngFiles(root);
  if (files.length === 0) throw new EvalError(`no *.png images under ${root}`);
  let first: { file: string; h: number; w: number } | null = null;
  let channels = 1;
  for (const f of files) {
    let h;
    try {
      h = readPngHeader(f);
    } catch (e) {
      throw new EvalError(`unreadable image ${f}: ${(e as Error).message.replace(`${f}: `, '')}`);
    }
    if (!first) first = { file: f, h: h.height, w: h.width };
    else if (h.height !== first.h || h.width !== first.w)
      throw new EvalError(`images in ${root} differ in size: ${path.relative(root, f)} is ${h.width}x${h.height} but ${path.relative(root, first.file)} is ${first.w}x${first.h}; all images of a set must have one size`);
    channels = Math.max(channels, h.channels);
  }
  const [height, width] = [first!.h, first!.w];
  const size = channels * height * width;
  return {
    name: root,
    count: files.length,
    channels,
    height,
    width,
    read(start, n, out) {
      for (let i = 0; i < n; ++i) {
        const img = readPng(files[start + i], { channels: channels as 1 | 3 });
        out.set(img.data, i * size);
      }
    },
    fingerprint: () => fingerprintFiles(files, { root }),
  };
}

/** Fashion-MNIST (28 x 28 gray) from its idx files. */
export function fashionMnistSource(opts: { split?: 'train' | 'test'; dataDir?: string } = {}): ImageSource {
  const split = opts.split ?? 'train';
  const dataDir = opts.dataDir ?? defaultFashionMnistDir();
  let ds: FashionMnistDataset;
  try {
    ds = new FashionMnistDataset({ split, dataDir });
  } catch (e) {
    throw new EvalError((e as Error).message);
  }
  const files = findMnistFiles(dataDir, split);
  return {
    name: `fashion-mnist ${split}`,
    count: ds.length,
    channels: 1,
    height: ds.height,
    width: ds.width,
    read(start, n, out) {
      for (let i = 0; i < n; ++i) ds.get(start + i, out, i * ds.height * ds.width);
    },
    fingerprint: () => fingerprintFiles([files.images, files.labels], { content: true }),
  };
}

/**
 * Images held in memory (N, C, H, W), e.g. fresh samples. With quantize8 the
 * values are rounded to the 256 levels a PNG would store, so in-memory
 * samples score as their saved files would.
 */
export function arraySource(name: string, data: Float32Array, shape: readonly [number, number, number, number], opts: { quantize8?: boolean } = {}): ImageSource {
  const [n, c, h, w] = shape;
  if (data.length !== n * c * h * w) throw new RangeError(`arraySource: ${data.length} values for shape [${shape.join(', ')}]`);
  const src = opts.quantize8 ? Float32Array.from(data, (v) => (v > -1 ? (v >= 1 ? 255 : Math.round((v + 1) * 127.5)) : 0) / 127.5 - 1) : data;
  const size = c * h * w;
  return {
    name,
    count: n,
    channels: c,
    height: h,
    width: w,
    read(start, k, out) {
      out.set(src.subarray(start * size, (start + k) * size));
    },
    fingerprint: () => crypto.createHash('sha256').update(new Uint8Array(src.buffer, src.byteOffset, src.byteLength)).digest('hex'),
  };
}

/** What checkpointSource reports beside the images. */
export interface CheckpointSource extends ImageSource {
  /** How a quantized model ran ('int' or 'fake'); null for a full-precision checkpoint. */
  exec: 'int' | 'fake' | null;
  /** Why a quantized model did not run plainly in integer arithmetic, if so. */
  execNote: string | null;
}

/**
 * n images generated from a checkpoint (loadPipeline, then generate), held
 * in memory and rounded to 8 bits as saved PNGs would be: what `eval --ckpt`
 * scores. exec as for loadPipeline: quantized checkpoints run in integer
 * arithmetic by default ('auto'), 'fake' fake-quantizes in float.
 */
export async function checkpointSource(ckpt: string, opts: GenerateOptions & Pick<LoadOptions, 'config' | 'exec' | 'noEma' | 'device'>): Promise<CheckpointSource> {
  const { config, exec, noEma, device, ...gen } = opts;
  const pipe = await loadPipeline(ckpt, { config, exec, noEma, device });
  try {
    const res = await pipe.generate(gen);
    return { ...arraySource(`samples of ${path.resolve(ckpt)}`, res.data, res.shape, { quantize8: true }), exec: pipe.exec, execNote: pipe.execNote };
  } finally {
    pipe.dispose();
  }
}

// ---------------------------------------------------------------- feature networks

export type FeatureNetKind = 'inception' | 'fmnist';

export interface FeatureNet {
  readonly kind: FeatureNetKind;
  /** Metric name suffix: '' for Inception (FID, KID, IS), '-FMNIST' for the classifier. */
  readonly suffix: string;
  readonly dim: number;
  readonly classes: number;
  /** What the features depend on (cache key, report). */
  readonly id: Record<string, string>;
  /** Images (N, C, H, W) in [-1, 1] -> features (N, dim) and logits for IS (N, classes). */
  run(x: Tensor): { features: Tensor; logits: Tensor };
  dispose(): void;
}

function sha256File(file: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(1 << 22);
    let n: number;
    while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

async function loadWeights(file: string, what: string): Promise<Map<string, Tensor>> {
  if (!fs.existsSync(file)) throw new EvalError(`${what} not found: ${file}`);
  try {
    return (await readSafetensors(file)).tensors;
  } catch (e) {
    throw new EvalError(`cannot read ${what} ${file}: ${(e as Error).message}`);
  }
}

export interface FeatureNetOptions {
  inceptionWeights?: string;
  classifierWeights?: string;
  /** Inception's resize to 299: torch's bilinear (pytorch-fid; default) or TF1's. */
  resize?: 'torch' | 'tf1';
}

export async function loadFeatureNet(kind: FeatureNetKind, opts: FeatureNetOptions = {}): Promise<FeatureNet> {
  if (kind === 'inception') {
    const file = opts.inceptionWeights;
    if (!file)
      throw new EvalError(
        'the Inception feature network needs its weights: pass --inception-weights FILE, a safetensors file made from ' +
          "pytorch-fid's pt_inception-2015-12-05-6726825d.pth with scripts/convert-inception.py (the weights cannot be downloaded here); " +
          'or use --feature-net fmnist for FID-FMNIST, which needs no external weights',
      );
    const resizeMode: ResizeMode = opts.resize === 'tf1' ? 'asymmetric' : 'half_pixel';
    const net = new InceptionV3({ resizeMode });
    const dict = await loadWeights(file, 'Inception weights');
    try {
      net.loadStateDict(dict);
    } catch (e) {
      net.dispose();
      throw new EvalError(`${file} does not hold the FID Inception weights (pt_inception-2015-12-05): ${(e as Error).message}`);
    } finally {
      for (const t of dict.values()) t.dispose();
    }
    return {
      kind,
      suffix: '',
      dim: INCEPTION_FEATURE_DIM,
      classes: INCEPTION_NUM_CLASSES,
      id: { net: 'inception-v3-fid-2015-12-05', weights: path.resolve(file), sha256: sha256File(file), resize: opts.resize ?? 'torch' },
      run: (x) => {
        const o = net.forward(x);
        o.logits.dispose();
        // IS from the bias-free logits, as the original IS code and torch-fidelity.
        return { features: o.pool3, logits: o.logitsUnbiased };
      },
      dispose: () => net.dispose(),
    };
  }
  const file = opts.classifierWeights ?? defaultFmnistClassifierPath();
  const net = new FmnistClassifier();
  const dict = await loadWeights(file, 'Fashion-MNIST classifier weights');
  try {
    net.loadStateDict(dict);
  } catch (e) {
    net.dispose();
    throw new EvalError(`${file} does not hold Fashion-MNIST classifier weights: ${(e as StateDictError).message}`);
  } finally {
    for (const t of dict.values()) t.dispose();
  }
  return {
    kind,
    suffix: '-FMNIST',
    dim: FMNIST_FEATURE_DIM,
    classes: FMNIST_NUM_CLASSES,
    id: { net: 'fmnist-classifier-v1', weights: path.resolve(file), sha256: sha256File(file) },
    run: (x) => net.outputs(x),
    dispose: () => net.dispose(),
  };
}

// ---------------------------------------------------------------- features

export interface Extracted {
  features: Features;
  logits: Features;
}

/**
 * Runs the feature net over the first n images in batches. `crop` (H, W)
 * centre-crops each image first (generated images with the padding border
 * their training data had).
 */
export async function extractFeatures(
  net: FeatureNet,
  src: ImageSource,
  n: number,
  opts: { batchSize?: number; crop?: [number, number]; progress?: (done: number, total: number) => void } = {},
): Promise<Extracted> {
  const bs = opts.batchSize ?? 50;
  const { channels: c, height: h, width: w } = src;
  const feats = new Float32Array(n * net.dim);
  const logits = new Float32Array(n * net.classes);
  const buf = new Float32Array(bs * c * h * w);
  opts.progress?.(0, n);
  for (let start = 0; start < n; start += bs) {
    const k = Math.min(bs, n - start);
    src.read(start, k, buf);
    const out = tidy(() => {
      let x = fromArray(buf.subarray(0, k * c * h * w), [k, c, h, w]);
      if (opts.crop && (opts.crop[0] !== h || opts.crop[1] !== w)) {
        const [ch, cw] = opts.crop;
        x = narrow(narrow(x, 2, (h - ch) / 2, ch), 3, (w - cw) / 2, cw);
      }
      return net.run(x);
    });
    const [f, l] = await Promise.all([out.features.data(), out.logits.data()]);
    out.features.dispose();
    out.logits.dispose();
    for (let i = 0; i < f.length; ++i)
      if (!Number.isFinite(f[i])) throw new EvalError(`${src.name}: image ${start + Math.floor(i / net.dim)} gives non-finite features (NaN or infinite pixels?)`);
    feats.set(f as Float32Array, start * net.dim);
    logits.set(l as Float32Array, start * net.classes);
    opts.progress?.(start + k, n);
  }
  return { features: makeFeatures(feats, n, net.dim), logits: makeFeatures(logits, n, net.classes) };
}

// ---------------------------------------------------------------- evaluation

export type MetricName = 'fid' | 'is' | 'kid' | 'pr';
export const METRIC_NAMES: readonly MetricName[] = ['fid', 'is', 'kid', 'pr'];

export interface EvalOptions {
  samples: ImageSource;
  /** The reference images; not needed when only IS is asked for. */
  reference?: ImageSource & { describe?: string };
  metrics: MetricName[];
  net: FeatureNet;
  /** Generated images to use (default all). */
  n?: number;
  /** Reference images to use (default all). */
  refN?: number;
  batchSize?: number;
  /** Allow sample and reference sizes that differ (each is resized by the net on its own). */
  allowSizeMismatch?: boolean;
  isSplits?: number;
  kidSubsets?: number;
  /** Default min(1000, both set sizes). */
  kidSubsetSize?: number;
  prK?: number;
  seed?: number;
  cacheDir?: string;
  /** Ignore cached reference statistics (recompute and rewrite them). */
  refresh?: boolean;
  noCache?: boolean;
  progress?: (phase: string, done: number, total: number) => void;
  log?: (msg: string) => void;
}

export interface EvalReport {
  featureNet: Record<string, string>;
  samples: { source: string; n: number; size: [number, number, number] };
  reference?: { source: string; n: number; size: [number, number, number]; statsCache?: string; cached?: boolean };
  metrics: {
    fid?: { value: number; rank: number };
    is?: { mean: number; std: number; splits: number };
    kid?: { mean: number; std: number; subsets: number; subsetSize: number };
    pr?: { precision: number; recall: number; k: number };
  };
  notes: string[];
  seconds: number;
}

function sizeOf(s: ImageSource): [number, number, number] {
  return [s.channels, s.height, s.width];
}

/** The crop that maps generated images onto the reference size, or null when none is needed. */
function matchSizes(gen: ImageSource, ref: ImageSource, allow: boolean): [number, number] | undefined {
  if (gen.height === ref.height && gen.width === ref.width) return undefined;
  const dh = gen.height - ref.height, dw = gen.width - ref.width;
  // A model trained on padded data (Fashion-MNIST 28 -> 32) generates the padding too.
  if (dh >= 0 && dw >= 0 && dh % 2 === 0 && dw % 2 === 0 && dh <= 8 && dw <= 8) return [ref.height, ref.width];
  if (allow) return undefined;
  throw new EvalError(
    `generated images are ${gen.width}x${gen.height} but the reference images are ${ref.width}x${ref.height}; ` +
      'compare sets of one size (pass --allow-size-mismatch to let the feature network resize each set on its own)',
  );
}

export async function runEval(o: EvalOptions): Promise<EvalReport> {
  const t0 = Date.now();
  const log = o.log ?? (() => {});
  const notes: string[] = [];
  const metrics = [...new Set(o.metrics)];
  if (metrics.length === 0) throw new EvalError('no metric asked for (--metrics fid,is,kid,pr)');
  const needRef = metrics.some((m) => m !== 'is');
  if (needRef && !o.reference) throw new EvalError(`--metrics ${metrics.join(',')} needs reference images (--dataset)`);
  const nGen = o.n ?? o.samples.count;
  const checkN = (n: number, have: number, what: string, flag: string) => {
    if (!Number.isInteger(n) || n < 1) throw new EvalError(`${flag} must be a positive integer, got ${n}`);
    if (n > have) throw new EvalError(`${flag} ${n} asks for more ${what} than there are: ${have} in ${what === 'generated images' ? o.samples.name : o.reference!.name}`);
  };
  checkN(nGen, o.samples.count, 'generated images', '--n');
  const net = o.net;
  const isSplits = o.isSplits ?? 10;
  const prK = o.prK ?? 3;
  // Minimum counts, before any expensive work.
  const need = (n: number, min: number, why: string, which: string) => {
    if (n < min) throw new EvalError(`too few ${which} images: ${n}, ${why} needs at least ${min}`);
  };
  if (metrics.includes('fid')) need(nGen, 2, 'FID (a covariance)', 'generated');
  if (metrics.includes('is')) need(nGen, isSplits, `IS with ${isSplits} splits`, 'generated');
  if (metrics.includes('pr')) need(nGen, prK + 1, `precision/recall with k=${prK}`, 'generated');
  if (metrics.includes('kid')) need(nGen, 2, 'KID', 'generated');
  let refN = 0;
  let crop: [number, number] | undefined;
  if (needRef) {
    const ref = o.reference!;
    refN = o.refN ?? ref.count;
    checkN(refN, ref.count, 'reference images', '--ref-n');
    if (metrics.includes('fid')) need(refN, 2, 'FID (a covariance)', 'reference');
    if (metrics.includes('pr')) need(refN, prK + 1, `precision/recall with k=${prK}`, 'reference');
    if (metrics.includes('kid')) need(refN, 2, 'KID', 'reference');
    crop = matchSizes(o.samples, ref, o.allowSizeMismatch ?? false);
    if (crop) notes.push(`generated ${o.samples.width}x${o.samples.height} images were centre-cropped to the reference ${crop[1]}x${crop[0]}`);
  }
  if (metrics.includes('fid') && (nGen <= net.dim || refN <= net.dim))
    notes.push(`FID from ${Math.min(nGen, refN)} images in ${net.dim} dimensions: the covariances are singular and FID is strongly biased upwards at small N; compare only values computed with the same N`);

  // Reference: statistics (and features, for KID/PR) from the cache or computed.
  let refStats: GaussianStats | undefined;
  let refFeatures: Features | undefined;
  let report: EvalReport['reference'];
  if (needRef) {
    const ref = o.reference!;
    const needFeatures = metrics.includes('kid') || metrics.includes('pr');
    const compute = async () => {
      const ex = await extractFeatures(net, ref, refN, { batchSize: o.batchSize, progress: (d, t) => o.progress?.('reference', d, t) });
      const acc = new StatsAccumulator(net.dim);
      acc.add(ex.features.data, refN);
      return { stats: acc.stats(), features: ex.features };
    };
    if (o.noCache) {
      const r = await compute();
      [refStats, refFeatures] = [r.stats, r.features];
      report = { source: ref.name, n: refN, size: sizeOf(ref) };
    } else {
      const c = await loadOrComputeStats({
        cacheDir: o.cacheDir,
        name: `${path.basename(ref.name).replace(/\s+/g, '-')}-${net.kind}`,
        fingerprint: ref.fingerprint(),
        config: { ...net.id, n: refN, size: sizeOf(ref), version: 1 },
        needFeatures,
        refresh: o.refresh,
        compute,
        log,
      });
      [refStats, refFeatures] = [c.stats, c.features];
      report = { source: ref.name, n: refN, size: sizeOf(ref), statsCache: c.file, cached: c.cached };
    }
  }

  const gen = await extractFeatures(net, o.samples, nGen, { batchSize: o.batchSize, crop, progress: (d, t) => o.progress?.('generated', d, t) });
  const out: EvalReport['metrics'] = {};
  if (metrics.includes('fid')) {
    const acc = new StatsAccumulator(net.dim);
    acc.add(gen.features.data, nGen);
    const r = frechetDistance(acc.stats(), refStats!);
    out.fid = { value: r.value, rank: r.rank };
  }
  if (metrics.includes('is')) {
    const r = inceptionScore(gen.logits, { splits: isSplits });
    out.is = { mean: r.mean, std: r.std, splits: isSplits };
  }
  if (metrics.includes('kid')) {
    const subsets = o.kidSubsets ?? 100;
    const size = o.kidSubsetSize ?? Math.min(1000, nGen, refN);
    if (size > nGen || size > refN) throw new EvalError(`too few images for KID subsets of ${size}: ${nGen} generated, ${refN} reference (lower --kid-subset-size)`);
    if (size < 1000 && o.kidSubsetSize === undefined) notes.push(`KID subsets of ${size} (fewer than the usual 1000 images)`);
    const r = await kid(refFeatures!, gen.features, { subsets, subsetSize: size, seed: o.seed ?? 0 });
    out.kid = { mean: r.mean, std: r.std, subsets, subsetSize: size };
  }
  if (metrics.includes('pr')) {
    const r = await precisionRecall(refFeatures!, gen.features, { k: prK });
    out.pr = { precision: r.precision, recall: r.recall, k: prK };
  }
  if (net.kind === 'fmnist')
    notes.push('FID-FMNIST/KID-FMNIST/IS-FMNIST use the features of a small Fashion-MNIST classifier trained by this project: they are not comparable to Inception-based FID/KID/IS, nor across classifier weights');
  return {
    featureNet: net.id,
    samples: { source: o.samples.name, n: nGen, size: sizeOf(o.samples) },
    reference: report,
    metrics: out,
    notes,
    seconds: (Date.now() - t0) / 1000,
  };
}

/** The report as an aligned text table. */
export function formatReport(r: EvalReport, suffix: string): string {
  const rows: [string, string, string][] = [];
  const m = r.metrics;
  const f = (v: number, d = 4) => (Math.abs(v) >= 1000 ? v.toFixed(1) : Number(v.toPrecision(6)).toFixed(d));
  if (m.fid) rows.push([`FID${suffix}`, f(m.fid.value), `${r.samples.n} generated vs ${r.reference!.n} reference`]);
  if (m.kid) rows.push([`KID${suffix}`, `${m.kid.mean.toExponential(4)} ± ${m.kid.std.toExponential(2)}`, `${m.kid.subsets} subsets of ${m.kid.subsetSize}`]);
  if (m.is) rows.push([`IS${suffix}`, `${f(m.is.mean)} ± ${f(m.is.std)}`, `${m.is.splits} splits`]);
  if (m.pr) {
    rows.push(['precision', f(m.pr.precision), `k = ${m.pr.k}`]);
    rows.push(['recall', f(m.pr.recall), `k = ${m.pr.k}`]);
  }
  const w0 = Math.max(6, ...rows.map((x) => x[0].length)), w1 = Math.max(5, ...rows.map((x) => x[1].length));
  const lines = [`${'metric'.padEnd(w0)}  ${'value'.padEnd(w1)}  detail`, `${'-'.repeat(w0)}  ${'-'.repeat(w1)}  ------`];
  for (const [a, b, c] of rows) lines.push(`${a.padEnd(w0)}  ${b.padEnd(w1)}  ${c}`);
  for (const n of r.notes) lines.push(`note: ${n}`);
  return lines.join('\n');
}
