// The Fashion-MNIST feature network behind "FID-FMNIST": a small CNN trained
// with this project on the Fashion-MNIST training split, whose 128-d
// penultimate features (global average of the last conv layer, the analogue of
// Inception's pool3) replace Inception features in FID, KID and
// precision/recall. It needs no external weights (models/fmnist-classifier.safetensors
// ships with the package), and at 28 x 28 it measures what a CPU-trained
// Fashion-MNIST model gets right or wrong.
//
// Its numbers are NOT comparable to Inception FID (another feature space,
// another scale), nor across different versions of this classifier: compare
// FID-FMNIST values only when computed with the same weights file (the eval
// JSON records its hash).
//
// Architecture: conv3x3(1->16)-ReLU-maxpool2, conv3x3(16->32)-ReLU-maxpool2,
// flatten (32*7*7) -> linear 128 = features -> ReLU -> linear -> 10 logits
// (about 1.2 M multiply-adds per image: epochs take a minute or two on 2 cores).
// The features are taken before the ReLU: no unit is clamped at zero, so
// their covariance has no degenerate directions from dead units.
import fs from 'node:fs';
import path from 'node:path';

import { FashionMnistDataset } from '../data/fashion_mnist';
import { DataLoader } from '../data/loader';
import { Module } from '../nn/module';
import { conv2dInit, linearInit } from '../nn/init';
import { backward, noGrad, record } from '../tensor/autograd';
import { softmax } from '../tensor/ops/activation';
import { conv2d } from '../tensor/ops/conv';
import { clamp, log, mul, relu, reshape, sum } from '../tensor/ops/elementwise';
import { linear } from '../tensor/ops/linalg';
import { maxPool2d, resizeBilinear } from '../tensor/ops/pool';
import { narrow } from '../tensor/ops/shape';
import { packageRoot } from '../tensor/native';
import { Adam } from '../optim/adam';
import { Generator } from '../tensor/random';
import { tidy } from '../tensor/scope';
import { type Tensor, fromArray, runOp1, shapeToString } from '../tensor/tensor';

export const FMNIST_FEATURE_DIM = 128;
export const FMNIST_NUM_CLASSES = 10;
export const FMNIST_INPUT_SIZE = 28;

/** The shipped weights. */
export function defaultFmnistClassifierPath(): string {
  return path.join(packageRoot, 'models', 'fmnist-classifier.safetensors');
}

/** weight and bias of a conv or linear layer (keys <name>.weight, <name>.bias). */
class Layer extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(init: { weight: Tensor; bias: Tensor | null }) {
    super();
    this.weight = this.registerParameter('weight', init.weight);
    this.bias = this.registerParameter('bias', init.bias!);
  }
}

export interface FmnistOutputs {
  /** (N, 128) penultimate features. */
  features: Tensor;
  /** (N, 10) class logits. */
  logits: Tensor;
}

export class FmnistClassifier extends Module {
  readonly conv1: Layer;
  readonly conv2: Layer;
  readonly fc1: Layer;
  readonly fc2: Layer;

  constructor(opts: { seed?: number } = {}) {
    super();
    const gen = new Generator(opts.seed ?? 0);
    this.conv1 = this.registerModule('conv1', new Layer(conv2dInit(1, 16, 3, { gen })));
    this.conv2 = this.registerModule('conv2', new Layer(conv2dInit(16, 32, 3, { gen })));
    this.fc1 = this.registerModule('fc1', new Layer(linearInit(32 * 7 * 7, FMNIST_FEATURE_DIM, { gen })));
    this.fc2 = this.registerModule('fc2', new Layer(linearInit(FMNIST_FEATURE_DIM, FMNIST_NUM_CLASSES, { gen })));
  }

  /**
   * Brings (N, 1, H, W) images in [-1, 1] to 28 x 28: a centred crop when the
   * image is 28 plus an even border (the 32 x 32 zero-padded Fashion-MNIST of
   * the diffusion configs), else a bilinear resize. RGB is averaged to gray.
   */
  preprocess(x: Tensor): Tensor {
    if (x.ndim !== 4 || (x.shape[1] !== 1 && x.shape[1] !== 3))
      throw new RangeError(`FmnistClassifier: images must be (N, 1 or 3, H, W), got ${shapeToString(x.shape)}`);
    let y = x;
    if (y.shape[1] === 3) y = runOp1('mean', [y], { dims: [1], keepdim: true });
    const [h, w] = [y.shape[2], y.shape[3]];
    const S = FMNIST_INPUT_SIZE;
    if (h === S && w === S) return y;
    if (h > S && w > S && (h - S) % 2 === 0 && (w - S) % 2 === 0 && h - S <= 8 && w - S <= 8)
      return narrow(narrow(y, 2, (h - S) / 2, S), 3, (w - S) / 2, S);
    return resizeBilinear(y, [S, S]);
  }

  /** (N, 1, H, W) -> features (N, 128) and logits (N, 10), differentiable. */
  outputs(x: Tensor): FmnistOutputs {
    let y = this.preprocess(x);
    y = maxPool2d(relu(conv2d(y, this.conv1.weight, this.conv1.bias, { padding: 1 })), 2); // 14
    y = maxPool2d(relu(conv2d(y, this.conv2.weight, this.conv2.bias, { padding: 1 })), 2); // 7
    const features = linear(reshape(y, [y.shape[0], 32 * 7 * 7]), this.fc1.weight, this.fc1.bias);
    return { features, logits: linear(relu(features), this.fc2.weight, this.fc2.bias) };
  }

  forward(x: Tensor): Tensor {
    return this.outputs(x).logits;
  }
}

/**
 * Mean cross-entropy of logits (N, C) against integer labels. The gradient is
 * the textbook (softmax - onehot) / N, recorded directly, so no log of a
 * rounded-to-zero probability can reach it.
 */
export function crossEntropy(logits: Tensor, labels: Int32Array): Tensor {
  const [n, c] = logits.shape;
  if (logits.ndim !== 2 || labels.length !== n)
    throw new RangeError(`crossEntropy: logits (N, C) and N labels, got ${shapeToString(logits.shape)} and ${labels.length} labels`);
  const onehotData = new Float32Array(n * c);
  labels.forEach((l, i) => {
    if (!Number.isInteger(l) || l < 0 || l >= c) throw new RangeError(`crossEntropy: label ${l} at ${i} is not in [0, ${c})`);
    onehotData[i * c + l] = 1;
  });
  const onehot = fromArray(onehotData, [n, c]);
  const p = noGrad(() => softmax(logits, 1));
  const loss = noGrad(() => runOp1('affine', [sum(mul(onehot, log(clamp(p, 1e-30))))], { scale: -1 / n }));
  return record(loss, 'cross_entropy', [logits], (g) => [
    runOp1('mul', [runOp1('affine', [runOp1('sub', [p, onehot])], { scale: 1 / n }), g]),
  ]);
}

export interface TrainOptions {
  epochs?: number;
  batchSize?: number;
  lr?: number;
  seed?: number;
  /** Use the first `limit` training images (quick runs). */
  limit?: number;
  dataDir?: string;
  log?: (msg: string) => void;
}

/** Trains a classifier from scratch on the Fashion-MNIST training split (Adam, cross-entropy, cosine learning-rate decay). */
export async function trainFmnistClassifier(opts: TrainOptions = {}): Promise<{ model: FmnistClassifier; steps: number }> {
  const epochs = opts.epochs ?? 2, batchSize = opts.batchSize ?? 128, seed = opts.seed ?? 0;
  const log = opts.log ?? (() => {});
  const ds = new FashionMnistDataset({ split: 'train', dataDir: opts.dataDir, limit: opts.limit });
  const model = new FmnistClassifier({ seed });
  const lr0 = opts.lr ?? 2e-3;
  const opt = new Adam(model.namedParameters(), { lr: lr0 });
  const loader = new DataLoader(ds, { batchSize, seed, shuffle: true, dropLast: true });
  const stepsPerEpoch = Math.floor(ds.length / batchSize);
  const total = epochs * stepsPerEpoch;
  let steps = 0;
  for (let e = 0; e < epochs; ++e) {
    let lossSum = 0, lossCount = 0;
    for (let s = 0; s < stepsPerEpoch; ++s) {
      for (const g of opt.paramGroups) g.lr = 0.5 * lr0 * (1 + Math.cos((Math.PI * steps) / total));
      const batch = loader.next();
      const loss = tidy(() => {
        const l = crossEntropy(model.forward(batch.x), batch.labels);
        backward(l);
        return l;
      });
      opt.step();
      model.zeroGrad();
      batch.x.dispose();
      batch.y?.dispose();
      ++steps;
      if (s % 50 === 0 || s === stepsPerEpoch - 1) {
        lossSum += await loss.item();
        ++lossCount;
        if (s % 100 === 0) log(`epoch ${e + 1}/${epochs} step ${s}/${stepsPerEpoch} loss ${(lossSum / lossCount).toFixed(4)}`);
      }
      loss.dispose();
    }
  }
  return { model, steps };
}

/** Top-1 accuracy on a dataset split (default: the 10,000 test images). */
export async function fmnistAccuracy(model: FmnistClassifier, opts: { split?: 'train' | 'test'; dataDir?: string; limit?: number; batchSize?: number } = {}): Promise<number> {
  const ds = new FashionMnistDataset({ split: opts.split ?? 'test', dataDir: opts.dataDir, limit: opts.limit });
  const bs = opts.batchSize ?? 500;
  let correct = 0;
  for (let i = 0; i < ds.length; i += bs) {
    const n = Math.min(bs, ds.length - i);
    const data = new Float32Array(n * 28 * 28);
    for (let j = 0; j < n; ++j) ds.get(i + j, data, j * 784);
    const x = fromArray(data, [n, 1, 28, 28]);
    const logits = noGrad(() => model.forward(x));
    const l = (await logits.data()) as Float32Array;
    for (let j = 0; j < n; ++j) {
      let best = 0;
      for (let c = 1; c < FMNIST_NUM_CLASSES; ++c) if (l[j * 10 + c] > l[j * 10 + best]) best = c;
      if (best === ds.label(i + j)) ++correct;
    }
    x.dispose();
    logits.dispose();
  }
  return correct / ds.length;
}

export function fmnistClassifierExists(file = defaultFmnistClassifierPath()): boolean {
  return fs.existsSync(file);
}
