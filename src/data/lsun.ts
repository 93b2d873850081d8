// LSUN-style data as upstream LDM reads it (ldm.data.lsun.LSUNBase): a text
// file listing image paths relative to a data root, each image converted to
// RGB, center-cropped to a square, resized with Pillow's resampler to the
// configured size, and mapped to [-1, 1]. The random horizontal flip is the
// loader's (seeded and resumable), as for every dataset here.
//
// Only PNG is decoded: LSUN's exports are WebP or JPEG; convert them once
// (e.g. `mogrify -format png *.webp`) and list the .png names.
import fs from 'node:fs';
import path from 'node:path';

import { DEFAULT_MAX_PNG_PIXELS, checkPngPixels, fromByte, readPng, readPngHeader, toByte } from '../io/png';
import { type Dataset, checkIndex, outputArray } from './dataset';
import { DataFileError, reasonOf } from './errors';
import { type PilFilter, pilResize } from './pil_resize';

/** Upstream's interpolation names ('linear' is Pillow's LINEAR = BILINEAR). */
export const LSUN_INTERPOLATIONS = ['linear', 'bilinear', 'bicubic', 'lanczos'] as const;
export type LsunInterpolation = (typeof LSUN_INTERPOLATIONS)[number];

export interface LsunOptions {
  /** The file list: one path per line, relative to dataRoot. */
  txtFile: string;
  dataRoot: string;
  /** Output size (square). */
  size: number;
  interpolation?: LsunInterpolation;
  /** Use only the first `limit` files. */
  limit?: number;
  maxPixels?: number;
}

export class LsunDataset implements Dataset {
  readonly name: string;
  readonly length: number;
  readonly channels = 3;
  readonly height: number;
  readonly width: number;
  readonly numClasses = 0;
  readonly files: readonly string[];
  private readonly filter: PilFilter;
  private readonly maxPixels: number;

  constructor(opts: LsunOptions) {
    if (!Number.isInteger(opts.size) || opts.size < 1) throw new RangeError(`LSUN data: size must be a positive integer, got ${opts.size}`);
    const interp = opts.interpolation ?? 'bicubic';
    if (!LSUN_INTERPOLATIONS.includes(interp)) throw new RangeError(`LSUN data: interpolation must be one of ${LSUN_INTERPOLATIONS.join(', ')}, got ${JSON.stringify(interp)}`);
    this.filter = interp === 'linear' ? 'bilinear' : interp;
    this.height = this.width = opts.size;
    this.maxPixels = opts.maxPixels ?? DEFAULT_MAX_PNG_PIXELS;
    let text: string;
    try {
      text = fs.readFileSync(opts.txtFile, 'utf8');
    } catch (e) {
      throw new Error(`LSUN data: cannot read the file list ${opts.txtFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (txt_file, relative to the working directory as upstream)`);
    }
    let lines = text.split(/\r?\n/);
    if (lines.length && lines[lines.length - 1] === '') lines.pop();
    const blank = lines.findIndex((l) => l.trim() === '');
    if (blank >= 0) throw new Error(`LSUN data: ${opts.txtFile} line ${blank + 1} is empty`);
    if (opts.limit !== undefined) {
      if (!Number.isInteger(opts.limit) || opts.limit < 1) throw new RangeError(`LSUN data: limit must be a positive integer, got ${opts.limit}`);
      lines = lines.slice(0, opts.limit);
    }
    if (!lines.length) throw new Error(`LSUN data: ${opts.txtFile} lists no files`);
    const files = lines.map((l) => path.join(opts.dataRoot, l));
    for (const [i, f] of files.entries()) {
      if (!/\.png$/i.test(f)) throw new Error(`LSUN data: ${opts.txtFile} line ${i + 1}: ${f} is not a PNG; only PNG is decoded (convert the images, e.g. mogrify -format png, and list the .png names)`);
      try {
        checkPngPixels(readPngHeader(f, { requireEnd: true }), this.maxPixels, f);
      } catch (e) {
        throw new DataFileError(f, `unreadable image (${opts.txtFile} line ${i + 1}): ${reasonOf(e, f)}`, { cause: e });
      }
    }
    this.files = files;
    this.length = files.length;
    this.name = `LSUN-style ${opts.txtFile} (${this.length}, 3x${opts.size}x${opts.size}, ${interp})`;
  }

  get(index: number, out?: Float32Array, offset = 0): Float32Array {
    checkIndex(this, index);
    const file = this.files[index];
    const s = this.height;
    const dst = outputArray(3 * s * s, out, offset);
    let img;
    try {
      img = readPng(file, { channels: 3, maxPixels: this.maxPixels });
    } catch (e) {
      throw new DataFileError(file, `unreadable image: ${reasonOf(e, file)}`, { cause: e });
    }
    const { height: h, width: w } = img;
    // Center crop to a square on the 8-bit pixels, as upstream does.
    const crop = Math.min(h, w), y0 = Math.floor((h - crop) / 2), x0 = Math.floor((w - crop) / 2);
    const bytes = new Uint8Array(3 * crop * crop);
    for (let c = 0; c < 3; ++c)
      for (let y = 0; y < crop; ++y)
        for (let x = 0; x < crop; ++x) bytes[(c * crop + y) * crop + x] = toByte(img.data[(c * h + y0 + y) * w + x0 + x]);
    const r = pilResize(bytes, 3, crop, crop, s, s, this.filter);
    for (let i = 0; i < r.length; ++i) dst[offset + i] = fromByte(r[i]);
    return dst;
  }

  label(index: number): number {
    checkIndex(this, index);
    return -1;
  }
}
