// PNG in and out for planar float images in [-1, 1]: value v is stored as
// round((clamp(v, -1, 1) + 1) * 127.5), so reading byte b gives b / 127.5 - 1
// and a read-write round trip is exact. One channel is written as grayscale,
// three as RGB.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { PNG } from 'pngjs';

import type { Tensor } from '../tensor/tensor';
import { writeFileAtomic, writeFileAtomicSync } from './atomic';

/** A planar (C, H, W) float image, values in [-1, 1]. */
export interface FloatImage {
  data: Float32Array;
  channels: number;
  height: number;
  width: number;
}

/** A batch of planar images (N, C, H, W). */
export interface FloatImages {
  data: ArrayLike<number>;
  shape: readonly [number, number, number, number];
}

export function toByte(v: number): number {
  if (!(v > -1)) return 0; // also NaN
  if (v >= 1) return 255;
  return Math.round((v + 1) * 127.5);
}

export function fromByte(b: number): number {
  return b / 127.5 - 1;
}

function checkChw(shape: readonly number[], what: string): [number, number, number] {
  if (shape.length !== 3) throw new RangeError(`${what}: expected a (C, H, W) shape, got [${shape.join(', ')}]`);
  const [c, h, w] = shape;
  if (c !== 1 && c !== 3) throw new RangeError(`${what}: PNG images need 1 (grayscale) or 3 (RGB) channels, got ${c}`);
  if (!(h > 0 && w > 0 && Number.isInteger(h) && Number.isInteger(w))) throw new RangeError(`${what}: bad image size ${h}x${w}`);
  return [c, h, w];
}

/** Encodes a planar (C, H, W) image in [-1, 1], C = 1 or 3, starting at data[offset]. */
export function encodePng(data: ArrayLike<number>, shape: readonly number[], offset = 0): Buffer {
  const [c, h, w] = checkChw(shape, 'encodePng');
  if (data.length < offset + c * h * w) throw new RangeError(`encodePng: ${data.length - offset} values for a ${c}x${h}x${w} image`);
  const hw = h * w;
  const px = Buffer.alloc(hw * c);
  for (let i = 0; i < hw; ++i) {
    for (let ch = 0; ch < c; ++ch) px[i * c + ch] = toByte(data[offset + ch * hw + i]);
  }
  const colorType = c === 1 ? 0 : 2;
  return PNG.sync.write(
    { width: w, height: h, data: px } as unknown as PNG,
    { colorType, inputColorType: colorType, inputHasAlpha: false, bitDepth: 8 },
  );
}

export interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  /** PNG color type: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA. */
  colorType: number;
  /** Color channels without alpha: 1 for gray types, 3 otherwise. */
  channels: 1 | 3;
  alpha: boolean;
}

/** Bit depths the PNG specification allows for each color type. */
const VALID_BIT_DEPTHS: Record<number, number[]> = { 0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16] };

/**
 * The largest image decodePng accepts by default, in pixels (8192 x 8192):
 * decoding costs about 16 bytes a pixel (RGBA bytes plus float planes), 1 GiB
 * here. A PNG is tiny for its declared size when its pixels compress well, so
 * the declared size is checked before any pixel is decoded.
 */
export const DEFAULT_MAX_PNG_PIXELS = 8192 * 8192;

/** Throws (naming the file, its declared size and the limit) when a header declares more than maxPixels pixels. */
export function checkPngPixels(header: PngHeader, maxPixels: number, file = '<buffer>'): void {
  if (header.width * header.height > maxPixels) {
    throw new RangeError(
      `${file}: PNG declares ${header.width}x${header.height} = ${header.width * header.height} pixels, more than the limit of ${maxPixels} pixels ` +
        `(a corrupt or hostile header, or raise the limit: maxPixels)`,
    );
  }
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Parses the signature and IHDR chunk (the first 33 bytes); throws on anything else. */
export function parsePngHeader(buf: Uint8Array, file = '<buffer>'): PngHeader {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 8 || !b.subarray(0, 8).equals(PNG_SIGNATURE)) throw new Error(`${file}: not a PNG file (bad signature)`);
  if (b.length < 33 || b.toString('latin1', 12, 16) !== 'IHDR') throw new Error(`${file}: truncated or corrupt PNG header`);
  const width = b.readUInt32BE(16), height = b.readUInt32BE(20);
  const bitDepth = b[24], colorType = b[25];
  if (![0, 2, 3, 4, 6].includes(colorType)) throw new Error(`${file}: unknown PNG color type ${colorType}`);
  if (width === 0 || height === 0) throw new Error(`${file}: PNG has zero size ${width}x${height}`);
  if (width > 0x7fffffff || height > 0x7fffffff) throw new Error(`${file}: PNG declares an impossible size ${width}x${height} (at most 2^31-1 a side)`);
  if (!(VALID_BIT_DEPTHS[colorType] ?? []).includes(bitDepth)) throw new Error(`${file}: PNG color type ${colorType} cannot have bit depth ${bitDepth}`);
  return {
    width, height, bitDepth, colorType,
    channels: colorType === 0 || colorType === 4 ? 1 : 3,
    alpha: colorType === 4 || colorType === 6,
  };
}

const IEND_CHUNK = Buffer.from([0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]);

/**
 * Reads only the header of a PNG file. With requireEnd, also checks (reading
 * at most 4 KiB more) that the IEND chunk is near the end, which finds most
 * truncated files without decoding them.
 */
export function readPngHeader(file: string, opts: { requireEnd?: boolean } = {}): PngHeader {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as Error).message}`);
  }
  try {
    const buf = Buffer.alloc(33);
    let n: number;
    try {
      n = fs.readSync(fd, buf, 0, 33, 0);
    } catch (e) {
      throw new Error(`cannot read ${file}: ${(e as Error).message}`);
    }
    const header = parsePngHeader(buf.subarray(0, n), file);
    if (opts.requireEnd) {
      const size = fs.fstatSync(fd).size;
      const tailLen = Math.min(size - 33, 4096);
      const tail = Buffer.alloc(Math.max(tailLen, 0));
      const got = tailLen > 0 ? fs.readSync(fd, tail, 0, tailLen, size - tailLen) : 0;
      if (tail.subarray(0, got).indexOf(IEND_CHUNK) < 0) throw new Error(`${file}: truncated PNG (${size} bytes, no IEND chunk at the end)`);
    }
    return header;
  } finally {
    fs.closeSync(fd);
  }
}

export interface DecodeOptions {
  /**
   * Channels wanted: 1 converts color to luma (0.299 R + 0.587 G + 0.114 B),
   * 3 replicates gray. Default: the file's own (1 for gray PNGs, else 3).
   * Alpha is dropped (pixels are taken as opaque).
   */
  channels?: 1 | 3;
  /** Named in error messages. */
  file?: string;
  /** Refuse (before decoding) images declaring more pixels than this; default DEFAULT_MAX_PNG_PIXELS. */
  maxPixels?: number;
}

const SAMPLES_PER_PIXEL: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]];

/** Bytes of the filtered scanlines (one filter byte a row) of an image, interlaced or not. */
export function rawDataLength(h: Pick<PngHeader, 'width' | 'height' | 'bitDepth' | 'colorType'>, interlaced: boolean): number {
  const bits = h.bitDepth * SAMPLES_PER_PIXEL[h.colorType];
  const rows = (w: number, n: number) => (w > 0 && n > 0 ? n * (1 + Math.ceil((w * bits) / 8)) : 0);
  if (!interlaced) return rows(h.width, h.height);
  let total = 0;
  for (const [x0, y0, dx, dy] of ADAM7) total += rows(Math.ceil((h.width - x0) / dx), Math.ceil((h.height - y0) / dy));
  return total;
}

/**
 * Walks the chunks and inflates the image data once, checking that it is a
 * valid zlib stream of exactly the size the header implies. pngjs alone turns
 * some corrupt data into black pixels without a word; this makes it an error.
 */
function checkPngData(b: Buffer, header: PngHeader, file: string): void {
  const idat: Buffer[] = [];
  let off = 8, ended = false;
  while (off + 8 <= b.length) {
    const len = b.readUInt32BE(off);
    const type = b.toString('latin1', off + 4, off + 8);
    if (off + 12 + len > b.length) throw new Error(`${file}: cannot decode PNG: truncated: chunk ${JSON.stringify(type)} at byte ${off} declares ${len} bytes but ${Math.max(b.length - off - 12, 0)} remain`);
    if (type === 'IDAT') idat.push(b.subarray(off + 8, off + 8 + len));
    off += 12 + len;
    if (type === 'IEND') {
      ended = true;
      break;
    }
  }
  if (!ended) throw new Error(`${file}: cannot decode PNG: truncated (no IEND chunk)`);
  if (!idat.length) throw new Error(`${file}: cannot decode PNG: no image data (no IDAT chunk)`);
  const interlaced = b[28] === 1;
  const want = rawDataLength(header, interlaced);
  let raw: Buffer;
  try {
    raw = zlib.inflateSync(Buffer.concat(idat), { maxOutputLength: want });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ERR_BUFFER_TOO_LARGE') throw new Error(`${file}: cannot decode PNG: more pixel data than ${header.width}x${header.height} needs (${want} bytes)`);
    throw new Error(`${file}: cannot decode PNG: corrupt pixel data (zlib: ${err.message})`);
  }
  if (raw.length !== want) throw new Error(`${file}: cannot decode PNG: the pixel data holds ${raw.length} bytes, ${header.width}x${header.height} needs ${want}`);
}

/** Decodes PNG bytes to a planar float image in [-1, 1]. */
export function decodePng(buf: Uint8Array, opts: DecodeOptions = {}): FloatImage {
  const file = opts.file ?? '<buffer>';
  const header = parsePngHeader(buf, file);
  checkPngPixels(header, opts.maxPixels ?? DEFAULT_MAX_PNG_PIXELS, file);
  checkPngData(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), header, file);
  let png: { width: number; height: number; data: Buffer };
  try {
    png = PNG.sync.read(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength));
  } catch (e) {
    throw new Error(`${file}: cannot decode PNG: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (png.width !== header.width || png.height !== header.height || png.data.length < 4 * png.width * png.height) {
    throw new Error(`${file}: cannot decode PNG: decoded ${png.width}x${png.height} (${png.data.length} bytes) but the header says ${header.width}x${header.height}`);
  }
  const channels = opts.channels ?? header.channels;
  const { width, height, data: rgba } = png;
  const hw = width * height;
  const out = new Float32Array(channels * hw);
  for (let i = 0; i < hw; ++i) {
    const r = rgba[4 * i], g = rgba[4 * i + 1], bl = rgba[4 * i + 2];
    if (channels === 1) {
      out[i] = fromByte(header.channels === 1 ? r : 0.299 * r + 0.587 * g + 0.114 * bl);
    } else {
      out[i] = fromByte(r);
      out[hw + i] = fromByte(g);
      out[2 * hw + i] = fromByte(bl);
    }
  }
  return { data: out, channels, height, width };
}

export function readPng(file: string, opts: Omit<DecodeOptions, 'file'> = {}): FloatImage {
  // The header first: a file declaring a huge image is refused before it is read whole.
  checkPngPixels(readPngHeader(file), opts.maxPixels ?? DEFAULT_MAX_PNG_PIXELS, file);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    throw new Error(`cannot read ${file}: ${(e as Error).message}`);
  }
  return decodePng(buf, { ...opts, file });
}

/** Writes a planar (C, H, W) image atomically: a float32 tensor, or values with their shape. */
export async function writePng(file: string, image: Tensor | ArrayLike<number>, shape?: readonly number[]): Promise<void> {
  if ('isTensor' in image) {
    if (image.dtype !== 'float32') throw new TypeError(`writePng: the image must be float32, got ${image.dtype}`);
    await writeFileAtomic(file, encodePng(await image.float32(), image.shape));
    return;
  }
  if (!shape) throw new TypeError('writePng: the shape (C, H, W) of the values is required');
  await writeFileAtomic(file, encodePng(image, shape));
}

export function writePngSync(file: string, data: ArrayLike<number>, shape: readonly number[]): void {
  writeFileAtomicSync(file, encodePng(data, shape));
}

function checkNchw(shape: readonly number[], what: string): [number, number, number, number] {
  if (shape.length !== 4) throw new RangeError(`${what}: expected an (N, C, H, W) shape, got [${shape.join(', ')}]`);
  const [n, c, h, w] = shape;
  checkChw([c, h, w], what);
  return [n, c, h, w];
}

/** The values and (N, C, H, W) shape of an image tensor ((C, H, W) counts as N = 1). */
export async function tensorImages(t: Tensor): Promise<FloatImages> {
  if (t.dtype !== 'float32') throw new TypeError(`images must be float32, got ${t.dtype}`);
  const shape = t.shape.length === 3 ? [1, ...t.shape] : [...t.shape];
  const [n, c, h, w] = checkNchw(shape, 'tensorImages');
  return { data: await t.float32(), shape: [n, c, h, w] };
}

export interface GridOptions {
  /** Images per row (default min(N, 8)). */
  nrow?: number;
  /** Pixels between and around images (default 2). */
  padding?: number;
  /** Value of the padding in [-1, 1] (default 1, white). */
  padValue?: number;
}

/** Tiles (N, C, H, W) images into one (C, H', W') image, row by row. */
export function makeGrid(images: FloatImages, opts: GridOptions = {}): FloatImage {
  const [n, c, h, w] = checkNchw(images.shape, 'makeGrid');
  if (n < 1) throw new RangeError('makeGrid: no images');
  if (images.data.length < n * c * h * w) throw new RangeError(`makeGrid: ${images.data.length} values for ${n}x${c}x${h}x${w}`);
  const nrow = Math.max(1, Math.min(opts.nrow ?? 8, n));
  const pad = opts.padding ?? 2;
  if (!Number.isInteger(pad) || pad < 0) throw new RangeError(`makeGrid: padding must be a non-negative integer, got ${pad}`);
  const rows = Math.ceil(n / nrow);
  const gh = rows * (h + pad) + pad, gw = nrow * (w + pad) + pad;
  const out = new Float32Array(c * gh * gw).fill(opts.padValue ?? 1);
  for (let k = 0; k < n; ++k) {
    const y0 = pad + Math.floor(k / nrow) * (h + pad), x0 = pad + (k % nrow) * (w + pad);
    for (let ch = 0; ch < c; ++ch) {
      const src = (k * c + ch) * h * w, dst = ch * gh * gw;
      for (let y = 0; y < h; ++y) {
        for (let x = 0; x < w; ++x) out[dst + (y0 + y) * gw + x0 + x] = images.data[src + y * w + x];
      }
    }
  }
  return { data: out, channels: c, height: gh, width: gw };
}

/** Writes an image grid PNG atomically; accepts a tensor or arrays. */
export async function saveGrid(file: string, images: FloatImages | Tensor, opts: GridOptions = {}): Promise<void> {
  const arr = 'isTensor' in images ? await tensorImages(images) : images;
  const g = makeGrid(arr, opts);
  await fsp.mkdir(path.dirname(path.resolve(file)), { recursive: true });
  await writePng(file, g.data, [g.channels, g.height, g.width]);
}

export interface SaveImagesOptions {
  /** File name prefix (default ''). */
  prefix?: string;
  /** Number of the first image (default 0): continues numbering across batches. */
  start?: number;
  /** Zero-padded digits (default 6). */
  digits?: number;
}

/** Writes each image of a batch to dir/<prefix><number>.png; returns the paths. */
export async function saveImages(dir: string, images: FloatImages | Tensor, opts: SaveImagesOptions = {}): Promise<string[]> {
  const arr = 'isTensor' in images ? await tensorImages(images) : images;
  const [n, c, h, w] = checkNchw(arr.shape, 'saveImages');
  await fsp.mkdir(dir, { recursive: true });
  const start = opts.start ?? 0, digits = opts.digits ?? 6, prefix = opts.prefix ?? '';
  const files: string[] = [];
  for (let k = 0; k < n; ++k) {
    const file = path.join(dir, `${prefix}${String(start + k).padStart(digits, '0')}.png`);
    await writeFileAtomic(file, encodePng(arr.data, [c, h, w], k * c * h * w), { fsync: false });
    files.push(file);
  }
  return files;
}
