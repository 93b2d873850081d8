// Batches from a Dataset with a seeded shuffle per epoch. The permutation of
// epoch e is a pure function of (seed, e, dataset length), so the loader's
// whole state is (epoch, position, seed): saved in a checkpoint, it restores
// the exact batch sequence on --resume.
import { Generator, hash64 } from '../tensor/random';
import { type Tensor, fromArray } from '../tensor/tensor';
import type { Dataset } from './dataset';
import { DataFileError, reasonOf } from './errors';

export interface LoaderState {
  epoch: number;
  /** Samples of this epoch's order already handed out. */
  position: number;
  seed: number;
  /** The dataset length when saved; checked on restore when present. */
  length?: number;
}

export interface LoaderOptions {
  batchSize: number;
  /** Shuffle each epoch (default true); false gives 0..N-1 every epoch. */
  shuffle?: boolean;
  seed?: number;
  /** Skip a last batch smaller than batchSize (default true, so batch shapes stay fixed). */
  dropLast?: boolean;
  /** Mirror each sample left-right with probability 1/2 (decided by seed, epoch and position, so resumable). */
  hflip?: boolean;
  /**
   * Data-parallel: every rank walks the same global batches (same seed, same
   * order, same state) and loads only its own consecutive slice of each, so
   * every sample is used once per epoch across the ranks (a distributed
   * sampler) and a resume works on any number of ranks.
   */
  shard?: { rank: number; size: number };
}

export interface BatchArrays {
  /** (B, C, H, W) float32 in [-1, 1]. */
  data: Float32Array;
  shape: [number, number, number, number];
  /** Class per sample, -1 when the dataset is unlabeled. */
  labels: Int32Array;
  /** Dataset index per sample. */
  indices: Int32Array;
  /** The epoch these samples came from. */
  epoch: number;
  /** With a shard: where this slice starts in the global batch, and the global batch's size. */
  start?: number;
  total?: number;
}

export interface Batch {
  /** (B, C, H, W) float32. */
  x: Tensor;
  /** (B,) int32 labels, or null when the dataset is unlabeled. */
  y: Tensor | null;
  labels: Int32Array;
  indices: Int32Array;
  epoch: number;
  /** With a shard: this slice's start in the global batch, and the global batch size. */
  start?: number;
  total?: number;
}

// Flip decisions use counters far above any permutation counter (epoch * n + i).
const FLIP_COUNTER_BASE = 2 ** 50;

/** The sample order of an epoch: Fisher-Yates driven by Generator(seed) at offset epoch * n. */
export function epochPermutation(n: number, seed: number, epoch: number): Int32Array {
  const perm = Int32Array.from({ length: n }, (_, i) => i);
  const g = new Generator(seed);
  g.setState({ seed, offset: epoch * n });
  for (let i = n - 1; i > 0; --i) {
    const j = g.randint(i + 1);
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}

/** One sample as a (C, H, W) float32 tensor. */
export function sampleTensor(ds: Dataset, index: number): Tensor {
  return fromArray(ds.get(index), [ds.channels, ds.height, ds.width]);
}

/**
 * The error for a sample that failed to load: a DataFileError keeps its type
 * and file (and learns the sample index); anything else is wrapped in an
 * Error naming the dataset and index, with the original as its cause. The
 * loader's position is not advanced, so its state() stays consistent.
 */
function sampleError(e: unknown, ds: Dataset, index: number): Error {
  if (e instanceof DataFileError) {
    if (e.index === undefined) e.index = index;
    return e;
  }
  const msg = e instanceof Error ? e.message : String(e);
  const file = e instanceof Error ? (e as { file?: unknown }).file : undefined;
  // Another dataset's error that names its file is still a data-file error.
  if (typeof file === 'string') return Object.assign(new DataFileError(file, reasonOf(e, file), { cause: e }), { index });
  return new Error(`${ds.name}: cannot load sample ${index}: ${msg}`, { cause: e });
}

export class DataLoader {
  readonly dataset: Dataset;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly dropLast: boolean;
  readonly hflip: boolean;
  private seed: number;
  private epoch = 0;
  private position = 0;
  private order: Int32Array | null = null;
  private orderEpoch = -1;
  private readonly shard: { rank: number; size: number } | null;

  constructor(dataset: Dataset, opts: LoaderOptions) {
    const { batchSize } = opts;
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`DataLoader: batchSize must be a positive integer, got ${batchSize}`);
    this.dataset = dataset;
    this.batchSize = batchSize;
    this.shuffle = opts.shuffle ?? true;
    this.dropLast = opts.dropLast ?? true;
    this.hflip = opts.hflip ?? false;
    this.seed = opts.seed ?? 0;
    if (!Number.isSafeInteger(this.seed) || this.seed < 0) throw new RangeError(`DataLoader: seed must be a non-negative integer, got ${this.seed}`);
    if (dataset.length < 1) throw new RangeError(`DataLoader: ${dataset.name} is empty`);
    const sh = opts.shard;
    if (sh && !(Number.isInteger(sh.size) && sh.size >= 1 && Number.isInteger(sh.rank) && sh.rank >= 0 && sh.rank < sh.size))
      throw new RangeError(`DataLoader: shard must be {rank, size} with 0 <= rank < size, got ${JSON.stringify(sh)}`);
    if (sh && sh.size > 1 && batchSize % sh.size !== 0)
      throw new RangeError(`DataLoader: the global batch size ${batchSize} must be divisible by the ${sh.size} ranks`);
    this.shard = sh && sh.size > 1 ? { ...sh } : null;
    if (this.dropLast && batchSize > dataset.length) {
      throw new RangeError(`DataLoader: batch size ${batchSize} exceeds the ${dataset.length} samples of ${dataset.name} (lower the batch size or turn dropLast off)`);
    }
  }

  /** Batches per epoch. */
  get batchesPerEpoch(): number {
    const n = this.dataset.length;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  state(): LoaderState {
    return { epoch: this.epoch, position: this.position, seed: this.seed, length: this.dataset.length };
  }

  setState(s: LoaderState): void {
    const bad = (k: string, v: unknown) => new RangeError(`DataLoader.setState: ${k} must be a non-negative integer, got ${JSON.stringify(v)}`);
    if (!Number.isSafeInteger(s.epoch) || s.epoch < 0) throw bad('epoch', s.epoch);
    if (!Number.isSafeInteger(s.position) || s.position < 0) throw bad('position', s.position);
    if (!Number.isSafeInteger(s.seed) || s.seed < 0) throw bad('seed', s.seed);
    if (s.length !== undefined && s.length !== this.dataset.length) {
      throw new RangeError(`DataLoader.setState: the state was saved for a dataset of ${s.length} samples, this one (${this.dataset.name}) has ${this.dataset.length}`);
    }
    if (s.position > this.dataset.length) throw new RangeError(`DataLoader.setState: position ${s.position} is past the ${this.dataset.length} samples`);
    this.epoch = s.epoch;
    this.position = s.position;
    this.seed = s.seed;
    this.orderEpoch = -1;
  }

  private orderOf(epoch: number): Int32Array {
    if (this.orderEpoch !== epoch || !this.order) {
      const n = this.dataset.length;
      this.order = this.shuffle ? epochPermutation(n, this.seed, epoch) : Int32Array.from({ length: n }, (_, i) => i);
      this.orderEpoch = epoch;
    }
    return this.order;
  }

  /** The next batch as plain arrays; rolls over into the next epoch as needed. */
  nextArrays(): BatchArrays {
    const n = this.dataset.length;
    const remaining = n - this.position;
    if (remaining === 0 || (this.dropLast && remaining < this.batchSize)) {
      this.epoch += 1;
      this.position = 0;
    }
    const order = this.orderOf(this.epoch);
    const total = Math.min(this.batchSize, n - this.position);
    // This rank's slice of the global batch (all of it without a shard).
    const lo = this.shard ? Math.floor((total * this.shard.rank) / this.shard.size) : 0;
    const hi = this.shard ? Math.floor((total * (this.shard.rank + 1)) / this.shard.size) : total;
    const b = hi - lo;
    const { channels: c, height: h, width: w } = this.dataset;
    const size = c * h * w;
    const data = new Float32Array(b * size);
    const labels = new Int32Array(b);
    const indices = new Int32Array(b);
    for (let j = 0; j < b; ++j) {
      const k = lo + j; // position in the global batch
      const idx = order[this.position + k];
      indices[j] = idx;
      try {
        this.dataset.get(idx, data, j * size);
        labels[j] = this.dataset.label(idx);
      } catch (e) {
        throw sampleError(e, this.dataset, idx);
      }
      if (this.hflip && hash64(this.seed, FLIP_COUNTER_BASE + this.epoch * n + this.position + k) < 0.5) {
        for (let r = 0; r < c * h; ++r) data.subarray(j * size + r * w, j * size + (r + 1) * w).reverse();
      }
    }
    const epoch = this.epoch;
    this.position += total;
    return { data, shape: [b, c, h, w], labels, indices, epoch, ...(this.shard ? { start: lo, total } : {}) };
  }

  /** The next batch as tensors. */
  next(): Batch {
    const a = this.nextArrays();
    const x = fromArray(a.data, a.shape);
    const y = this.dataset.numClasses > 0 ? fromArray(a.labels, [a.labels.length], 'int32') : null;
    return { x, y, labels: a.labels, indices: a.indices, epoch: a.epoch };
  }

  /** The batches left in the current epoch (all of the next one when this one is done). */
  *epochBatches(): IterableIterator<BatchArrays> {
    const first = this.nextArrays();
    yield first;
    while (true) {
      const n = this.dataset.length;
      const remaining = n - this.position;
      if (remaining === 0 || (this.dropLast && remaining < this.batchSize)) return;
      yield this.nextArrays();
    }
  }
}
