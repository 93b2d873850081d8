// MNIST-format idx files (Fashion-MNIST, MNIST, KMNIST...): a big-endian
// header (magic, then one uint32 per dimension) and raw uint8 data, optionally
// gzip-compressed (detected from the bytes, not the file name).
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

import { type Dataset, type FitOptions, type Size, checkIndex, fitImage, outputArray, sizeHW } from './dataset';

/** Where the Debian package dataset-fashion-mnist installs the files. */
export const DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

export const FASHION_MNIST_CLASSES = [
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
] as const;

export const IDX_IMAGES_MAGIC = 2051; // uint8, 3 dimensions
export const IDX_LABELS_MAGIC = 2049; // uint8, 1 dimension

export class IdxFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IdxFormatError';
  }
}

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

function readMaybeGzip(file: string): Uint8Array {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') throw new Error(`idx file not found: ${file}`);
    throw new Error(`cannot read idx file ${file}: ${err.message}`);
  }
  if (raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b) {
    try {
      return zlib.gunzipSync(raw);
    } catch (e) {
      throw new IdxFormatError(`${file}: cannot decompress gzip data (${(e as Error).message}); the file is probably truncated or corrupt`);
    }
  }
  return raw;
}

/** Parses an idx buffer holding uint8 data, checking the magic and the size. */
export function parseIdx(buf: Uint8Array, expectedMagic: number, file = '<buffer>'): IdxArray {
  const what = expectedMagic === IDX_IMAGES_MAGIC ? 'idx3 image file' : expectedMagic === IDX_LABELS_MAGIC ? 'idx1 label file' : 'idx file';
  if (buf.length < 4) throw new IdxFormatError(`${file}: only ${buf.length} bytes, too short for an ${what} header`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = view.getUint32(0, false);
  if (magic !== expectedMagic) {
    throw new IdxFormatError(
      `${file}: bad magic number ${magic} (0x${magic.toString(16).padStart(8, '0')}), expected ${expectedMagic} for an ${what}` +
        (magic === IDX_IMAGES_MAGIC || magic === IDX_LABELS_MAGIC ? ' (images and labels swapped?)' : ''),
    );
  }
  const ndim = magic & 0xff;
  const headerLen = 4 + 4 * ndim;
  if (buf.length < headerLen) throw new IdxFormatError(`${file}: truncated header (${buf.length} of ${headerLen} bytes)`);
  const dims: number[] = [];
  for (let i = 0; i < ndim; ++i) dims.push(view.getUint32(4 + 4 * i, false));
  const expected = dims.reduce((a, b) => a * b, 1);
  const have = buf.length - headerLen;
  if (have < expected) {
    throw new IdxFormatError(
      `${file}: truncated: the header says ${dims.join(' x ')} (${expected} bytes of data) but only ${have} bytes follow`,
    );
  }
  if (have > expected) {
    throw new IdxFormatError(`${file}: ${have - expected} unexpected bytes after the ${dims.join(' x ')} data`);
  }
  return { dims, data: buf.subarray(headerLen, headerLen + expected) };
}

export function readIdxFile(file: string, expectedMagic: number): IdxArray {
  return parseIdx(readMaybeGzip(file), expectedMagic, file);
}

export interface IdxImages {
  count: number;
  rows: number;
  cols: number;
  /** (count, rows, cols) row-major, 0 = background. */
  data: Uint8Array;
}

export function readIdxImages(file: string): IdxImages {
  const { dims, data } = readIdxFile(file, IDX_IMAGES_MAGIC);
  return { count: dims[0], rows: dims[1], cols: dims[2], data };
}

export function readIdxLabels(file: string): Uint8Array {
  return readIdxFile(file, IDX_LABELS_MAGIC).data;
}

export type MnistSplit = 'train' | 'test';

function candidates(dir: string, prefix: string, kind: 'images' | 'labels'): string[] {
  const idx = kind === 'images' ? 'idx3' : 'idx1';
  return [`${prefix}-${kind}-${idx}-ubyte.gz`, `${prefix}-${kind}-${idx}-ubyte`, `${prefix}-${kind}.${idx}-ubyte`].map((n) => path.join(dir, n));
}

/** The image and label files of a split in dataDir; throws naming every path tried. */
export function findMnistFiles(dataDir: string, split: MnistSplit): { images: string; labels: string } {
  const prefix = split === 'train' ? 'train' : 't10k';
  const pick = (kind: 'images' | 'labels'): string => {
    const tried = candidates(dataDir, prefix, kind);
    const found = tried.find((p) => fs.existsSync(p));
    if (found) return found;
    const isDefault = path.resolve(dataDir) === DEFAULT_FASHION_MNIST_DIR;
    throw new Error(
      `Fashion-MNIST ${split} ${kind} not found: tried ${tried.join(', ')}. ` +
        (isDefault
          ? `Install the Debian package with 'apt-get install dataset-fashion-mnist', or pass --data-dir (data.params.data_dir) pointing at a folder with the idx files.`
          : `Pass --data-dir (data.params.data_dir) pointing at a folder with the idx files, or install 'apt-get install dataset-fashion-mnist' for the default ${DEFAULT_FASHION_MNIST_DIR}.`),
    );
  };
  return { images: pick('images'), labels: pick('labels') };
}

export interface MnistData extends IdxImages {
  labels: Uint8Array;
  files: { images: string; labels: string };
}

export function defaultFashionMnistDir(): string {
  return process.env.TDQ_FASHION_MNIST_DIR || DEFAULT_FASHION_MNIST_DIR;
}

/** Reads a split's images and labels (uint8) and checks that they agree. */
export function loadMnist(opts: { dataDir?: string; split?: MnistSplit } = {}): MnistData {
  const dataDir = opts.dataDir ?? defaultFashionMnistDir();
  const split = opts.split ?? 'train';
  const files = findMnistFiles(dataDir, split);
  const images = readIdxImages(files.images);
  const labels = readIdxLabels(files.labels);
  if (labels.length !== images.count) {
    throw new IdxFormatError(`${files.labels} has ${labels.length} labels but ${files.images} has ${images.count} images`);
  }
  return { ...images, labels, files };
}

export interface FashionMnistOptions {
  dataDir?: string;
  split?: MnistSplit;
  /** The model's image size; defaults to the files' 28 x 28. */
  size?: Size;
  /** Defaults: mode 'auto' (28 -> 32 pads 2 pixels a side), zero padding. */
  fit?: FitOptions;
  /** Use only the first `limit` samples (quick runs, tests). */
  limit?: number;
  /** Keep only samples of these classes (labels stay the original 0..9). */
  classes?: readonly number[];
  /** Already loaded data (skips the file system). */
  data?: MnistData;
}

/** Fashion-MNIST (or any idx-format MNIST) as 1-channel float images in [-1, 1]. */
export class FashionMnistDataset implements Dataset {
  readonly name: string;
  readonly length: number;
  readonly channels = 1;
  readonly height: number;
  readonly width: number;
  readonly numClasses: number;
  readonly source: MnistData;
  private readonly fit: FitOptions;
  private readonly order: Int32Array;
  private readonly plane: Float32Array;

  constructor(opts: FashionMnistOptions = {}) {
    const src = opts.data ?? loadMnist({ dataDir: opts.dataDir, split: opts.split });
    this.source = src;
    [this.height, this.width] = opts.size === undefined ? [src.rows, src.cols] : sizeHW(opts.size, 'Fashion-MNIST size');
    this.fit = opts.fit ?? {};
    let order: number[] | null = null;
    if (opts.classes) {
      const keep = new Set(opts.classes);
      order = [];
      for (let i = 0; i < src.count; ++i) if (keep.has(src.labels[i])) order.push(i);
    }
    let idx = order ? Int32Array.from(order) : Int32Array.from({ length: src.count }, (_, i) => i);
    if (opts.limit !== undefined) {
      if (!Number.isInteger(opts.limit) || opts.limit < 1) throw new RangeError(`Fashion-MNIST limit must be a positive integer, got ${opts.limit}`);
      idx = idx.subarray(0, Math.min(opts.limit, idx.length));
    }
    if (idx.length === 0) throw new RangeError(`Fashion-MNIST: no samples left after filtering (classes ${JSON.stringify(opts.classes)})`);
    this.order = idx;
    this.length = idx.length;
    let maxLabel = 0;
    for (let i = 0; i < src.count; ++i) maxLabel = Math.max(maxLabel, src.labels[i]);
    this.numClasses = maxLabel + 1;
    this.plane = new Float32Array(src.rows * src.cols);
    this.name = `fashion-mnist ${opts.split ?? 'train'} (${this.length}, ${this.height}x${this.width})`;
  }

  get(index: number, out?: Float32Array, offset = 0): Float32Array {
    checkIndex(this, index);
    const dst = outputArray(this.height * this.width, out, offset);
    const { rows, cols, data } = this.source;
    const base = this.order[index] * rows * cols;
    for (let i = 0; i < rows * cols; ++i) this.plane[i] = data[base + i] / 127.5 - 1;
    fitImage(this.plane, 1, rows, cols, this.height, this.width, this.fit, dst, offset);
    return dst;
  }

  label(index: number): number {
    checkIndex(this, index);
    return this.source.labels[this.order[index]];
  }
}
