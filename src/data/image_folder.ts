// A folder of PNG images (searched recursively), brought to the model's size.
// Headers are checked when the dataset is built, so a non-PNG file or a
// channel mismatch fails at once, naming the file; pixels are decoded lazily.
import fs from 'node:fs';
import path from 'node:path';

import { DEFAULT_MAX_PNG_PIXELS, type PngHeader, checkPngPixels, readPng, readPngHeader } from '../io/png';
import { DataFileError, reasonOf } from './errors';
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
  /**
   * Refuse images declaring more pixels than this (checked from each header
   * when the dataset opens, before any decoding). Default: defaultMaxPixels(size).
   */
  maxPixels?: number;
}

export interface ImageFile {
  file: string;
  header: PngHeader;
  label: number;
}

export interface PngScan {
  /** Every *.png found, each file once, sorted by relative path. */
  files: string[];
  /** Things skipped, each a sentence naming the path (dangling links, link loops). */
  notes: string[];
}

const isPngName = (name: string) => name.toLowerCase().endsWith('.png');
const statKey = (st: fs.Stats) => `${st.dev}:${st.ino}`;

/**
 * Every *.png under root (case-insensitive extension), searched recursively,
 * sorted by relative path; skips dot files. Symbolic links are followed, but
 * each folder is entered once and each file counted once (by device and inode),
 * so links to a parent (`ln -s . x`) cannot loop or duplicate images. The real
 * tree is walked first, so a file keeps its path without links when it has one.
 * A dangling link, or a link in a loop of links, is skipped with a note.
 */
export function scanPngFiles(root: string): PngScan {
  const out: string[] = [];
  const notes: string[] = [];
  const links: string[] = [];
  const seenDirs = new Set<string>();
  const seenFiles = new Set<string>();
  const statOf = (p: string): fs.Stats => {
    try {
      return fs.statSync(p);
    } catch (e) {
      throw new Error(`cannot read ${p}: ${(e as Error).message}`);
    }
  };
  const walk = (dir: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch (e) {
      throw new Error(`cannot read folder ${dir}: ${(e as Error).message}`);
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const p = path.join(dir, e.name);
      if (e.isSymbolicLink()) links.push(p);
      else if (e.isDirectory()) enterDir(p, statOf(p));
      else if (e.isFile() && isPngName(e.name)) addFile(p, statOf(p));
    }
  };
  const enterDir = (p: string, st: fs.Stats): void => {
    const k = statKey(st);
    if (seenDirs.has(k)) return;
    seenDirs.add(k);
    walk(p);
  };
  const addFile = (p: string, st: fs.Stats): void => {
    const k = statKey(st);
    if (seenFiles.has(k)) return;
    seenFiles.add(k);
    out.push(p);
  };
  seenDirs.add(statKey(statOf(root)));
  walk(root);
  // Links last, in the order found (breadth first over links), so the real tree wins.
  for (let i = 0; i < links.length; ++i) {
    const p = links[i];
    let st: fs.Stats;
    try {
      st = fs.statSync(p);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      let target = '?';
      try {
        target = fs.readlinkSync(p);
      } catch {
        /* keep '?' */
      }
      notes.push(
        code === 'ELOOP'
          ? `skipped ${p}: symbolic link in a loop of links (-> ${target})`
          : `skipped ${p}: dangling symbolic link (-> ${target}: ${code ?? (e as Error).message})`,
      );
      continue;
    }
    if (st.isDirectory()) enterDir(p, st);
    else if (st.isFile() && isPngName(path.basename(p))) addFile(p, st);
  }
  // Code-point order, independent of the locale, so indices are stable everywhere.
  const rel = (p: string) => path.relative(root, p).split(path.sep).join('/');
  const keyed = out.map((p) => [rel(p), p] as const).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return { files: keyed.map((k) => k[1]), notes };
}

/** The files of scanPngFiles; its notes go to `onNote` when given. */
export function listPngFiles(root: string, onNote?: (note: string) => void): string[] {
  const { files, notes } = scanPngFiles(root);
  if (onNote) for (const n of notes) onNote(n);
  return files;
}

/** The default pixel limit of an image folder: DEFAULT_MAX_PNG_PIXELS, or 16 model images when larger. */
export function defaultMaxPixels(height: number, width: number): number {
  return Math.max(DEFAULT_MAX_PNG_PIXELS, 16 * height * width);
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
  /** What the folder scan skipped (dangling links, link loops), one sentence each. */
  readonly notes: readonly string[];
  /** The pixel limit each image's declared size was checked against. */
  readonly maxPixels: number;
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
    this.maxPixels = opts.maxPixels ?? defaultMaxPixels(this.height, this.width);
    if (!(this.maxPixels >= 1)) throw new RangeError(`image folder: maxPixels must be positive, got ${opts.maxPixels}`);
    const scan = scanPngFiles(root);
    this.notes = scan.notes;
    let paths = scan.files;
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
        header = readPngHeader(file, { requireEnd: true });
        checkPngPixels(header, this.maxPixels, file);
      } catch (e) {
        throw new DataFileError(file, `unreadable image: ${reasonOf(e, file)}`, { cause: e });
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
      img = readPng(file, { channels: this.channels as 1 | 3, maxPixels: this.maxPixels });
    } catch (e) {
      throw new DataFileError(file, `unreadable image: ${reasonOf(e, file)}`, { cause: e });
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
