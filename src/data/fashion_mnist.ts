// MNIST-format idx files (Fashion-MNIST, MNIST, KMNIST...): a big-endian
// header (magic, then one uint32 per dimension) and raw uint8 data, optionally
// gzip-compressed (detected from the bytes, not the file name).
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

import { DataFileError } from './errors';
import { type Dataset, type FitOptions, type Size, checkIndex, fitImage, outputArray, sizeHW } from './dataset';

/** Where the Debian package dataset-fashion-mnist installs the files. */
export const DEFAULT_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';

export const FASHION_MNIST_CLASSES = [
  'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
] as const;

export const IDX_IMAGES_MAGIC = 2051; // uint8, 3 dimensions
export const IDX_LABELS_MAGIC = 2049; // uint8, 1 dimension

/** A malformed idx file (bad magic, truncated, lying sizes); `.file` names it. */
export class IdxFormatError extends DataFileError {
  constructor(file: string, reason: string, options?: { cause?: unknown }) {
    super(file, reason, options);
    this.name = 'IdxFormatError';
  }
}

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

/**
 * The largest data section readIdxFile accepts by default (1 GiB; Fashion-MNIST's
 * training images are 47 MB): a header claiming more is refused before any
 * allocation, and gzip data is never inflated past what the header claims.
 */
export const MAX_IDX_BYTES = 2 ** 30;

interface IdxHeader {
  dims: number[];
  headerLen: number;
  /** Bytes of data the dims call for. */
  expected: number;
}

function idxWhat(expectedMagic: number): string {
  return expectedMagic === IDX_IMAGES_MAGIC ? 'idx3 image file' : expectedMagic === IDX_LABELS_MAGIC ? 'idx1 label file' : 'idx file';
}

/** Parses the magic and the dims from the first bytes of an idx file. */
function parseIdxHeader(buf: Uint8Array, expectedMagic: number, file: string): IdxHeader {
  const what = idxWhat(expectedMagic);
  if (buf.length < 4) throw new IdxFormatError(file, `only ${buf.length} bytes, too short for an ${what} header`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = view.getUint32(0, false);
  if (magic !== expectedMagic) {
    throw new IdxFormatError(
      file,
      `bad magic number ${magic} (0x${magic.toString(16).padStart(8, '0')}), expected ${expectedMagic} for an ${what}` +
        (magic === IDX_IMAGES_MAGIC || magic === IDX_LABELS_MAGIC ? ' (images and labels swapped?)' : ''),
    );
  }
  const ndim = magic & 0xff;
  const headerLen = 4 + 4 * ndim;
  if (buf.length < headerLen) throw new IdxFormatError(file, `truncated header (${buf.length} of ${headerLen} bytes)`);
  const dims: number[] = [];
  for (let i = 0; i < ndim; ++i) dims.push(view.getUint32(4 + 4 * i, false));
  return { dims, headerLen, expected: dims.reduce((a, b) => a * b, 1) };
}

function checkDataLength(h: IdxHeader, have: number, file: string): void {
  if (have < h.expected) {
    throw new IdxFormatError(file, `truncated: the header says ${h.dims.join(' x ')} (${h.expected} bytes of data) but only ${have} bytes follow`);
  }
  if (have > h.expected) throw new IdxFormatError(file, `${have - h.expected} unexpected bytes after the ${h.dims.join(' x ')} data`);
}

function checkLimit(h: IdxHeader, maxBytes: number, file: string): void {
  if (h.expected > maxBytes) {
    throw new IdxFormatError(file, `the header says ${h.dims.join(' x ')} (${h.expected} bytes of data), more than the limit of ${maxBytes} bytes: a corrupt header?`);
  }
}

/** Parses an idx buffer holding uint8 data, checking the magic and the size. */
export function parseIdx(buf: Uint8Array, expectedMagic: number, file = '<buffer>'): IdxArray {
  const h = parseIdxHeader(buf, expectedMagic, file);
  checkDataLength(h, buf.length - h.headerLen, file);
  return { dims: h.dims, data: buf.subarray(h.headerLen, h.headerLen + h.expected) };
}

function readAt(fd: number, file: string, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  try {
    while (done < length) {
      const n = fs.readSync(fd, buf, done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
  } catch (e) {
    throw new IdxFormatError(file, `cannot read: ${(e as Error).message}`, { cause: e });
  }
  return buf.subarray(0, done);
}

/** The first bytes of a gzip stream's output (at most ~4 MB), from a prefix of the compressed bytes. */
function gunzipPrefix(prefix: Buffer): Buffer {
  try {
    return zlib.gunzipSync(prefix, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  } catch {
    return Buffer.alloc(0); // a corrupt start: the full inflate below names the cause
  }
}

export interface ReadIdxOptions {
  /** Refuse files whose header claims more data bytes than this (default MAX_IDX_BYTES). */
  maxBytes?: number;
}

/**
 * Reads an idx file, raw or gzip-compressed. The header is read and checked
 * first: wrong magic, a size that disagrees with the file, or a claim above
 * maxBytes fail before the data is read, and gzip data is inflated at most to
 * the size the header claims, so memory stays bounded whatever the file says.
 */
export function readIdxFile(file: string, expectedMagic: number, opts: ReadIdxOptions = {}): IdxArray {
  const maxBytes = opts.maxBytes ?? MAX_IDX_BYTES;
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') throw new Error(`idx file not found: ${file}`);
    throw new Error(`cannot read idx file ${file}: ${err.message}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    const prefix = readAt(fd, file, Math.min(size, 4096), 0);
    if (!(prefix.length >= 2 && prefix[0] === 0x1f && prefix[1] === 0x8b)) {
      const h = parseIdxHeader(prefix, expectedMagic, file);
      checkDataLength(h, size - h.headerLen, file);
      checkLimit(h, maxBytes, file);
      return parseIdx(readAt(fd, file, size, 0), expectedMagic, file);
    }
    // gzip: the header from the first compressed bytes, then a bounded inflate.
    let head = gunzipPrefix(prefix);
    if (head.length < 64 && size > prefix.length) head = gunzipPrefix(readAt(fd, file, Math.min(size, 65536), 0));
    let h: IdxHeader | null = null;
    if (head.length >= 4) {
      h = parseIdxHeader(head, expectedMagic, file);
      checkLimit(h, maxBytes, file);
      // Deflate adds well under 1% to incompressible data; far more compressed bytes than that is not this header's data.
      const maxCompressed = h.headerLen + h.expected + Math.ceil(h.expected / 100) + (1 << 20);
      if (size > maxCompressed) {
        throw new IdxFormatError(file, `${size} bytes of gzip data, more than ${h.dims.join(' x ')} (${h.expected} bytes) could compress to`);
      }
    }
    const raw = readAt(fd, file, size, 0);
    let out: Buffer;
    try {
      out = zlib.gunzipSync(raw, h ? { maxOutputLength: h.headerLen + h.expected + 1 } : { maxOutputLength: 64 });
    } catch (e) {
      if (h && (e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') {
        throw new IdxFormatError(file, `the gzip data holds more than the ${h.dims.join(' x ')} (${h.expected} bytes) the header says`);
      }
      throw new IdxFormatError(file, `cannot decompress gzip data (${(e as Error).message}); the file is probably truncated or corrupt`, { cause: e });
    }
    return parseIdx(out, expectedMagic, file);
  } finally {
    fs.closeSync(fd);
  }
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
    throw new IdxFormatError(files.labels, `has ${labels.length} labels but ${files.images} has ${images.count} images`);
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
