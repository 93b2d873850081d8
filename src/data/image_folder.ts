// A folder of PNG images (searched recursively), brought to the model's size.
// Headers are checked when the dataset is built, so a non-PNG file or a
// channel mismatch fails at once, naming the file; pixels are decoded lazily.
import fs from 'node:fs';
import path from 'node:path';

import { type PngHeader, readPng, readPngHeader } from '../io/png';
import { type Dataset, type FitOptions, type Size, checkIndex, fitImage, outputArray, sizeHW } from './dataset';

export interface ImageFolderOptions {
  root: string;
  /** Channels the model takes: 1 or 3. */
  channels: number;
  /** The model's image size. */
  size: Size;
  /** Default: mode 'crop' (largest centered box of the target aspect, then resampled), interpolation 'auto'. */
  fit?: FitOptions;
  /**
   * Convert color images to gray (luma) or gray images to RGB when they differ
   * from `channels`. Off by default: a mismatch is an error naming the file.
   */
  convert?: boolean;
  /** Label each image by its top-level subfolder (sorted names = classes 0..K-1). */
  classDirs?: boolean;
  /** Keep decoded, resized images in memory (size: N * C * H * W floats). */
  cache?: boolean;
  /** Use only the first `limit` files (in sorted order). */
  limit?: number;
}

export interface ImageFile {
  file: string;
  header: PngHeader;
  label: number;
}

/** Every *.png under root (case-insensitive extension), sorted by relative path; skips dot files. */
export function listPngFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch (e) {
      throw new Error(`cannot read folder ${dir}: ${(e as Error).message}`);
    }
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const p = path.join(dir, e.name);
      let isDir = e.isDirectory(), isFile = e.isFile();
      if (e.isSymbolicLink()) {
        try {
          const st = fs.statSync(p);
          isDir = st.isDirectory();
          isFile = st.isFile();
        } catch {
          continue; // a dangling link
        }
      }
      if (isDir) walk(p);
      else if (isFile && e.name.toLowerCase().endsWith('.png')) out.push(p);
    }
  };
  walk(root);
  // Code-point order, independent of the locale, so indices are stable everywhere.
  const rel = (p: string) => path.relative(root, p).split(path.sep).join('/');
  return out.sort((a, b) => (rel(a) < rel(b) ? -1 : rel(a) > rel(b) ? 1 : 0));
}

export class ImageFolderDataset implements Dataset {
  readonly name: string;
  readonly length: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  readonly numClasses: number;
  readonly files: readonly ImageFile[];
  /** Class names (top-level subfolders) when classDirs is on. */
  readonly classNames: readonly string[];
  private readonly fit: FitOptions;
  private readonly convert: boolean;
  private readonly cache: Map<number, Float32Array> | null;

  constructor(opts: ImageFolderOptions) {
    const root = path.resolve(opts.root);
    let st: fs.Stats;
    try {
      st = fs.statSync(root);
    } catch {
      throw new Error(`image folder not found: ${root}`);
    }
    if (!st.isDirectory()) throw new Error(`image folder ${root} is not a directory`);
    if (opts.channels !== 1 && opts.channels !== 3) throw new RangeError(`image folder: channels must be 1 or 3, got ${opts.channels}`);
    this.channels = opts.channels;
    [this.height, this.width] = sizeHW(opts.size, 'image folder size');
    this.fit = opts.fit ?? { mode: 'crop' };
    this.convert = opts.convert ?? false;
    let paths = listPngFiles(root);
    if (paths.length === 0) throw new Error(`image folder ${root} has no *.png files (searched recursively)`);
    if (opts.limit !== undefined) {
      if (!Number.isInteger(opts.limit) || opts.limit < 1) throw new RangeError(`image folder: limit must be a positive integer, got ${opts.limit}`);
      paths = paths.slice(0, opts.limit);
    }
    const topDir = (p: string): string | null => {
      const parts = path.relative(root, p).split(path.sep);
      return parts.length > 1 ? parts[0] : null;
    };
    let classNames: string[] = [];
    if (opts.classDirs) {
      const loose = paths.find((p) => topDir(p) === null);
      if (loose) throw new Error(`image folder ${root}: classDirs is on but ${loose} is not inside a class subfolder`);
      classNames = [...new Set(paths.map((p) => topDir(p) as string))].sort();
    }
    const files: ImageFile[] = [];
    for (const file of paths) {
      let header: PngHeader;
      try {
        header = readPngHeader(file);
      } catch (e) {
        throw new Error(`image folder: unreadable image ${file}: ${(e as Error).message.replace(`${file}: `, '')}`);
      }
      if (header.channels !== this.channels && !this.convert) {
        throw new Error(
          `image folder: ${file} is ${header.channels === 1 ? 'grayscale' : 'RGB'} but the model takes ${this.channels} channel${this.channels > 1 ? 's' : ''}; ` +
            `convert the images or set convert: true (data.params.convert) to convert them on load`,
        );
      }
      files.push({ file, header, label: opts.classDirs ? classNames.indexOf(topDir(file) as string) : -1 });
    }
    this.files = files;
    this.classNames = classNames;
    this.numClasses = classNames.length;
    this.length = files.length;
    this.cache = opts.cache ? new Map() : null;
    this.name = `image folder ${root} (${this.length}, ${this.channels}x${this.height}x${this.width})`;
  }

  get(index: number, out?: Float32Array, offset = 0): Float32Array {
    checkIndex(this, index);
    const size = this.channels * this.height * this.width;
    const dst = outputArray(size, out, offset);
    const cached = this.cache?.get(index);
    if (cached) {
      dst.set(cached, offset);
      return dst;
    }
    const { file } = this.files[index];
    let img;
    try {
      img = readPng(file, { channels: this.channels as 1 | 3 });
    } catch (e) {
      throw new Error(`image folder: unreadable image ${file}: ${(e as Error).message.replace(`${file}: `, '')}`);
    }
    fitImage(img.data, img.channels, img.height, img.width, this.height, this.width, this.fit, dst, offset);
    this.cache?.set(index, dst.slice(offset, offset + size));
    return dst;
  }

  label(index: number): number {
    checkIndex(this, index);
    return this.files[index].label;
  }
}
